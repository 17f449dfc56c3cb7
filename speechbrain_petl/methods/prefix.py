"""Prefix tuning: trainable key and value vectors prepended in attention."""

import functools

import torch
from torch import nn

from speechbrain_petl.methods.base import PETLMethod, check_positive_int


class PrefixTuning(PETLMethod):
    """Prefix tuning (Li & Liang, 2021) on every selected attention layer.

    ``length`` learned vectors per layer: ``length / 2`` keys and as many
    values, concatenated after the key/value projections (queries are
    unchanged). The prefixes are always attended to, whatever the padding.

    Arguments
    ---------
    length : int
        Total prefix vectors per layer, keys plus values (paper: 24); even.
    layers : list of int, optional
        Blocks that get prefixes (default all).
    init_std : float
        Standard deviation of the normal initialisation.

    Example
    -------
    >>> PrefixTuning(length=24).num_pairs
    12
    >>> PrefixTuning(length=7)
    Traceback (most recent call last):
     ...
    ValueError: PrefixTuning: length must be even (length/2 keys + length/2 values), got 7
    """

    default_name = "prefix"

    def __init__(self, length=24, layers=None, init_std=0.02):
        super().__init__(layers=layers)
        check_positive_int(length, "length", "PrefixTuning")
        if length % 2:
            raise ValueError(
                "PrefixTuning: length must be even (length/2 keys + length/2 "
                f"values), got {length}"
            )
        self.length = length
        self.num_pairs = length // 2
        self.init_std = init_std

    def constructor_args(self):
        """The arguments that rebuild this method (for export)."""
        return {**super().constructor_args(), "length": self.length, "init_std": self.init_std}

    def _attach(self, backbone, name):
        for layer in self.selected_layers(backbone):
            vectors = self.register(
                layer,
                "attention.keys_values",
                PrefixVectors(self.num_pairs, backbone.hidden_size, self.init_std),
            )
            backbone.site(layer, "attention.keys_values").attach(
                name, functools.partial(self._prepend, vectors)
            )

    def _prepend(self, vectors, keys, values, mask):
        batch = keys.shape[0]
        prefix_k = vectors.key.to(keys.dtype).unsqueeze(0).expand(batch, -1, -1)
        prefix_v = vectors.value.to(values.dtype).unsqueeze(0).expand(batch, -1, -1)
        keys = torch.cat([prefix_k, keys], dim=1)
        values = torch.cat([prefix_v, values], dim=1)
        if mask is not None:
            mask = torch.cat([mask.new_ones(batch, self.num_pairs), mask], dim=1)
        return keys, values, mask


class PrefixVectors(nn.Module):
    """One layer's prefix: ``key`` and ``value``, each ``(pairs, width)``."""

    def __init__(self, pairs, width, init_std):
        super().__init__()
        self.key = nn.Parameter(torch.randn(pairs, width) * init_std)
        self.value = nn.Parameter(torch.randn(pairs, width) * init_std)
