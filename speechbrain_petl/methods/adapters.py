"""Bottleneck and Conformer adapters, and where they sit in a block.

An adapter block maps ``(batch, time, width)`` to a *correction* of the same
shape whose last projection starts at zero; :class:`Adapters` decides where
it is added:

* ``mode="parallel"``: ``out = sublayer(x) + A(x)``
* ``mode="sequential"``: ``y = sublayer(x); out = y + A(y)``

for the FFN only (``placement="pfeiffer"``) or for both MHSA and FFN
(``placement="houlsby"``). Either way the residual of the block is added
after. At initialisation the adapted model equals the frozen backbone.
"""

import functools

import torch
from torch import nn

from speechbrain_petl.methods.base import ParameterCopy, PETLMethod, check_positive_int
from speechbrain_petl.methods.masked_batch_norm import MaskedBatchNorm1d
from speechbrain_petl.sites import masked_fill_padding

PLACEMENTS = {"pfeiffer": ("ffn",), "houlsby": ("mhsa", "ffn")}
MODES = ("parallel", "sequential")


class BottleneckAdapter(nn.Module):
    """``up(act(down(x)))``: width -> bottleneck -> width.

    Arguments
    ---------
    input_size : int
        Token width d.
    bottleneck : int
        Hidden size r.
    activation : type
        Activation class (the paper's example: ReLU).

    Example
    -------
    >>> adapter = BottleneckAdapter(768, bottleneck=12)
    >>> sum(p.numel() for p in adapter.parameters())
    19212
    >>> adapter(torch.randn(2, 5, 768)).abs().sum().item()
    0.0
    """

    def __init__(self, input_size, bottleneck=12, activation=nn.ReLU):
        super().__init__()
        check_positive_int(bottleneck, "bottleneck", "BottleneckAdapter")
        self.down = nn.Linear(input_size, bottleneck)
        self.activation = activation()
        self.up = nn.Linear(bottleneck, input_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x, mask=None):
        """``x``: (batch, time, width) -> the adapter's correction, same shape."""
        return self.up(self.activation(self.down(x)))


class ConformerAdapter(nn.Module):
    """The Conformer convolution module as an adapter.

    LayerNorm -> pointwise conv d->2r -> GLU -> depthwise conv (kernel k,
    'same' padding, any k including even) -> BatchNorm -> Swish -> pointwise
    conv r->d. Padded frames are zeroed before the depthwise convolution so
    they never leak into real ones, and the BatchNorm's training statistics
    are taken over the real frames only (:class:`MaskedBatchNorm1d`).

    Arguments
    ---------
    input_size : int
        Token width d.
    bottleneck : int
        Channels r after the GLU.
    kernel_size : int
        Depthwise kernel size k (paper: 31 for speech, 8 for audio).

    Example
    -------
    >>> adapter = ConformerAdapter(768, bottleneck=8, kernel_size=31)
    >>> sum(p.numel() for p in adapter.parameters())
    21024
    >>> adapter(torch.randn(2, 50, 768)).shape
    torch.Size([2, 50, 768])
    """

    def __init__(self, input_size, bottleneck=8, kernel_size=31):
        super().__init__()
        check_positive_int(bottleneck, "bottleneck", "ConformerAdapter")
        check_positive_int(kernel_size, "kernel_size", "ConformerAdapter")
        self.norm = nn.LayerNorm(input_size)
        self.pointwise_in = nn.Conv1d(input_size, 2 * bottleneck, kernel_size=1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(
            bottleneck, bottleneck, kernel_size, padding="same", groups=bottleneck
        )
        self.batch_norm = MaskedBatchNorm1d(bottleneck)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Conv1d(bottleneck, input_size, kernel_size=1)
        nn.init.zeros_(self.pointwise_out.weight)
        nn.init.zeros_(self.pointwise_out.bias)

    def forward(self, x, mask=None):
        """``x``: (batch, time, width); ``mask``: (batch, time) bool or None."""
        h = self.glu(self.pointwise_in(self.norm(x).transpose(1, 2)))
        h = masked_fill_padding(h.transpose(1, 2), mask).transpose(1, 2)
        h = self.activation(self.batch_norm(self.depthwise(h), mask))
        return self.pointwise_out(h).transpose(1, 2)


class Adapters(PETLMethod):
    """Adapter blocks placed at the MHSA and/or FFN sub-layers of each block.

    Arguments
    ---------
    block : callable
        Builds one adapter given ``input_size`` (in YAML:
        ``!name:speechbrain_petl.methods.ConformerAdapter`` with its options).
    placement : str
        ``"pfeiffer"`` (FFN only) or ``"houlsby"`` (MHSA and FFN).
    mode : str
        ``"parallel"`` or ``"sequential"``.
    train_norm : bool
        Also train a copy of the LayerNorm of each adapted sub-layer, as the
        paper does (counted in its parameter budgets).
    layers : list of int, optional
        Blocks to adapt (default all).

    Example
    -------
    >>> import functools
    >>> adapters = Adapters(functools.partial(BottleneckAdapter, bottleneck=4),
    ...                     placement="houlsby", mode="sequential")
    >>> Adapters(BottleneckAdapter, placement="middle")
    Traceback (most recent call last):
     ...
    ValueError: Adapters: placement must be one of ['pfeiffer', 'houlsby'], got 'middle'
    """

    default_name = "adapters"

    def __init__(
        self, block, placement="pfeiffer", mode="parallel", train_norm=True, layers=None
    ):
        super().__init__(layers=layers)
        if placement not in PLACEMENTS:
            raise ValueError(
                f"Adapters: placement must be one of {list(PLACEMENTS)}, got {placement!r}"
            )
        if mode not in MODES:
            raise ValueError(f"Adapters: mode must be one of {list(MODES)}, got {mode!r}")
        if not callable(block):
            raise ValueError(f"Adapters: block must be a class or !name: partial, got {block!r}")
        self.block = block
        self.placement = placement
        self.mode = mode
        self.train_norm = train_norm

    def _attach(self, backbone, name):
        for layer in self.selected_layers(backbone):
            for sublayer in PLACEMENTS[self.placement]:
                adapter = self.register(layer, sublayer, self.block(input_size=backbone.hidden_size))
                backbone.site(layer, sublayer).attach(name, functools.partial(self._adapt, adapter))
                if self.train_norm:
                    norm_site = backbone.site(layer, f"{sublayer}_norm")
                    norm = self.register(
                        layer, f"{sublayer}_norm", ParameterCopy(norm_site, ("weight", "bias"))
                    )
                    norm.override(name)

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {
            **super().constructor_args(),
            "block": self.block,
            "placement": self.placement,
            "mode": self.mode,
            "train_norm": self.train_norm,
        }

    def _adapt(self, adapter, x, y, mask):
        if self.mode == "parallel":
            return y + adapter(x, mask)
        return y + adapter(y, mask)


__all__ = ["Adapters", "BottleneckAdapter", "ConformerAdapter"]
