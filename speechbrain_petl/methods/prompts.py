"""Prompt tuning: trainable tokens inserted into the token sequence."""

import functools

import torch
from torch import nn

from speechbrain_petl.methods.base import PETLMethod, check_positive_int


class PromptTuning(PETLMethod):
    """Shallow or deep prompt tuning (Jia et al., 2022).

    Shallow: ``length`` prompts are inserted once, before the first selected
    block (default block 0, i.e. right after the patch embedding). Deep:
    inserted before the first selected block and *overwritten* by that
    block's own prompts before every later selected block. Prompts go right
    after the backbone's special tokens (AST: CLS and distillation), count as
    real tokens in the padding mask, and are included in mean pooling.

    Arguments
    ---------
    length : int
        Prompts per layer (paper: 300 shallow, 25 deep).
    deep : bool
        Deep prompts (one set per selected layer) instead of shallow.
    layers : list of int, optional
        Shallow: the single block the prompts enter before (default [0]).
        Deep: the blocks that get prompts (default all).
    init_std : float
        Standard deviation of the normal initialisation.

    Example
    -------
    >>> PromptTuning(length=25, deep=True).deep
    True
    >>> PromptTuning(length=5000)
    Traceback (most recent call last):
     ...
    ValueError: PromptTuning: length 5000 exceeds the limit of 4096 tokens
    """

    default_name = "prompts"
    inserts_tokens = True

    #: Upper bound on ``length``: attention cost grows with the square of the
    #: sequence, and a longer prompt is almost surely a budget typed as length.
    MAX_LENGTH = 4096

    def __init__(self, length, deep=False, layers=None, init_std=0.02):
        if not deep and layers is not None and len(layers) != 1:
            raise ValueError(
                "PromptTuning: shallow prompts enter before one block; "
                f"got layers={layers}. Use deep=True for several."
            )
        super().__init__(layers=[0] if not deep and layers is None else layers)
        check_positive_int(length, "length", "PromptTuning")
        if length > self.MAX_LENGTH:
            raise ValueError(
                f"PromptTuning: length {length} exceeds the limit of {self.MAX_LENGTH} tokens"
            )
        self.length = length
        self.deep = deep
        self.init_std = init_std
        self.num_special_tokens = 0

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {
            **super().constructor_args(),
            "length": self.length,
            "deep": self.deep,
            "init_std": self.init_std,
        }

    def _attach(self, backbone, name):
        self.num_special_tokens = backbone.num_special_tokens
        for i, layer in enumerate(self.selected_layers(backbone)):
            prompts = torch.empty(self.length, backbone.hidden_size)
            nn.init.normal_(prompts, std=self.init_std)
            self.register(layer, "tokens", PromptTokens(prompts))
            hook = self._insert if i == 0 else self._overwrite
            backbone.site(layer, "tokens").attach(
                name, functools.partial(hook, self.layers[str(layer)]["tokens"])
            )

    def _insert(self, prompts, x, mask):
        s = self.num_special_tokens
        p = prompts.expand(x.shape[0], x.dtype)
        x = torch.cat([x[:, :s], p, x[:, s:]], dim=1)
        if mask is not None:
            real = mask.new_ones(mask.shape[0], self.length)
            mask = torch.cat([mask[:, :s], real, mask[:, s:]], dim=1)
        return x, mask

    def _overwrite(self, prompts, x, mask):
        s = self.num_special_tokens
        p = prompts.expand(x.shape[0], x.dtype)
        return torch.cat([x[:, :s], p, x[:, s + self.length :]], dim=1), mask


class PromptTokens(nn.Module):
    """One layer's prompt tokens ``(length, width)``."""

    def __init__(self, prompts):
        super().__init__()
        self.prompts = nn.Parameter(prompts)

    def expand(self, batch, dtype):
        """The prompts repeated for a batch: ``(batch, length, width)``."""
        return self.prompts.to(dtype).unsqueeze(0).expand(batch, -1, -1)
