"""LoRA: a trainable low-rank update of frozen projections."""

import math

import torch
from torch import nn

from speechbrain_petl.methods.base import PETLMethod, check_positive_int


class LowRankUpdate(nn.Module):
    """``delta(x) = scaling * B A x`` with ``A: in -> rank`` and ``B: rank -> out``.

    ``B`` starts at zero, so the adapted projection equals the frozen one at
    initialisation; ``A`` starts Kaiming-uniform.

    Arguments
    ---------
    in_features, out_features : int
        Shape of the adapted projection.
    rank : int
        Rank r of the update.
    scaling : float
        Multiplier of the update (``alpha / rank`` in :class:`LoRA`).
    dropout : float
        Dropout on the update's input.

    Example
    -------
    >>> update = LowRankUpdate(16, 16, rank=2, scaling=1.0)
    >>> update(torch.randn(3, 16)).abs().sum().item()
    0.0
    >>> update.delta_weight().shape
    torch.Size([16, 16])
    """

    def __init__(self, in_features, out_features, rank, scaling, dropout=0.0):
        super().__init__()
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        """``scaling * B A x`` for ``x`` whose last dimension is ``in_features``."""
        return self.up(self.down(self.dropout(x))) * self.scaling

    def delta_weight(self):
        """The update as a dense ``(out, in)`` matrix, for merging."""
        return (self.up.weight @ self.down.weight) * self.scaling

    def hook(self, x, y):
        """Linear-site hook: ``y + delta(x)``."""
        return y + self(x)


class LoRA(PETLMethod):
    """Low-rank adaptation of attention projections (Hu et al., 2021).

    Each targeted projection ``W`` computes ``W x + (alpha / rank) B A x``.
    The scaling is explicit: ``alpha / rank`` (alpha defaults to rank, i.e.
    scaling 1). The paper's reference code used an effective scaling of
    0.125 (``alpha = 0.125 * rank``).

    Arguments
    ---------
    rank : int
        Rank r (the paper uses 6 on AST).
    alpha : float, optional
        Scaling numerator; default ``rank``.
    targets : list of str
        Linear sites to adapt; the paper's: query and value projections.
    dropout : float
        Dropout on the input of each update.
    layers : list of int, optional
        Blocks to adapt (default all).

    Example
    -------
    >>> lora = LoRA(rank=6)
    >>> lora.scaling
    1.0
    >>> LoRA(rank=0)
    Traceback (most recent call last):
     ...
    ValueError: LoRA: rank must be an integer >= 1, got 0
    """

    default_name = "lora"

    def __init__(
        self,
        rank=8,
        alpha=None,
        targets=("attention.query", "attention.value"),
        dropout=0.0,
        layers=None,
    ):
        super().__init__(layers=layers)
        check_positive_int(rank, "rank", "LoRA")
        if not targets:
            raise ValueError("LoRA: targets must name at least one linear site")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.targets = list(targets)
        self.dropout = dropout

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {
            **super().constructor_args(),
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "dropout": self.dropout,
        }

    def updates(self):
        """``(layer, target, LowRankUpdate)`` for every adapted projection."""
        for layer, modules in self.layers.items():
            for target in self.targets:
                yield int(layer), target, modules.get_submodule(target)

    def merge(self, backbone, name):
        """Adds each update ``scaling * B A`` to its frozen weight, and the
        sites stop running the updates: one matmul per projection again."""
        for layer, target, update in self.updates():
            site = backbone.site(layer, target)
            weight = site.linear.weight
            site.fold(name, {"weight": weight + update.delta_weight().to(weight.dtype)})

    def _attach(self, backbone, name):
        for layer in self.selected_layers(backbone):
            for target in self.targets:
                site = backbone.site(layer, target)
                if not hasattr(site, "in_features"):
                    raise ValueError(
                        f"LoRA target '{target}' is not a linear site; "
                        "linear sites: attention.query/key/value/output, mlp.fc1/fc2"
                    )
                update = LowRankUpdate(
                    site.in_features, site.out_features, self.rank, self.scaling, self.dropout
                )
                self.register(layer, target, update)
                site.attach(name, update.hook)


__all__ = ["LoRA", "LowRankUpdate"]
