"""Named insertion points ("sites") of a frozen transformer layer.

A backbone lobe re-states its transformer block as a short forward that calls
sites instead of raw modules. A PETL method never reaches into a backbone's
internals: it asks the backbone for a site by name (``"attention.query"``,
``"mhsa"``, ``"ffn_norm"``, ...) and attaches a hook to it under the method's
name. A site keeps its hooks in a dict keyed by that name, so several methods
(or, later, several task adapters) compose at one site without special cases.

The hooks' parameters are owned by the method module (registered under the
backbone's ``petl`` ModuleDict), never by the site: a site only holds
references. Hence ``backbone.petl.state_dict()`` is exactly the trained state.

Site kinds and the hook signature each expects:

* :class:`LinearSite` wraps a frozen ``nn.Linear``. Hooks: ``hook(x, y) -> y``
  (e.g. LoRA adds its low-rank update). Parameters may be overridden
  (BitFit replaces the bias with a trainable copy).
* :class:`NormSite` wraps a frozen ``nn.LayerNorm``. Hooks: ``hook(x, y) -> y``.
  Parameters may be overridden (an adapter trains a copy of its LayerNorm).
* :class:`SublayerSite` wraps a whole sub-layer (``mhsa`` or ``ffn``).
  Hooks: ``hook(x, y, mask) -> y`` where ``x`` is the sub-layer input and
  ``y`` its output before the residual addition (adapters).
* :class:`TokenSite` sits before a layer. Hooks: ``hook(x, mask) -> (x, mask)``
  (prompts add or overwrite tokens and extend the padding mask).
* :class:`KeyValueSite` sits after the key/value projections of attention.
  Hooks: ``hook(k, v, mask) -> (k, v, mask)`` (prefix tuning).

Shapes: ``x`` is ``(batch, time, channels)``; ``mask`` is a boolean
``(batch, time)`` tensor, True for real tokens, or None when every token is real.

Example
-------
>>> import torch
>>> site = LinearSite(torch.nn.Linear(4, 3))
>>> x = torch.randn(2, 5, 4)
>>> site.attach("double", lambda x, y: 2 * y)
>>> torch.allclose(site(x), 2 * site.linear(x))
True
>>> site.detach("double")
>>> site.hook_names()
[]
"""

import abc
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Site(nn.Module):
    """Base class: a named place that holds hooks keyed by method name."""

    def __init__(self):
        super().__init__()
        # Plain dict on purpose: hooks belong to the PETL method modules,
        # which are registered elsewhere; registering them here too would
        # duplicate every PETL tensor in the backbone's state_dict.
        self._hooks: Dict[str, Callable] = {}

    def attach(self, name: str, hook: Callable):
        """Adds ``hook`` under ``name``; hooks run in the order attached."""
        if name in self._hooks:
            raise ValueError(
                f"A hook named '{name}' is already attached to this site; "
                "give the second method another name."
            )
        self._hooks[name] = hook

    def detach(self, name: str):
        """Removes the hook attached under ``name``."""
        if name not in self._hooks:
            raise KeyError(f"No hook named '{name}' at this site.")
        del self._hooks[name]

    def hook_names(self):
        """Names of the attached hooks, in the order they run."""
        return list(self._hooks)


class _ParameterSite(Site, abc.ABC):
    """A site around a frozen module whose parameters may be overridden.

    An override replaces one parameter of the wrapped module (e.g. ``bias``)
    by a tensor owned by a PETL method, for every call of the site.
    """

    def __init__(self):
        super().__init__()
        self._overrides: Dict[str, tuple] = {}

    @property
    @abc.abstractmethod
    def wrapped(self) -> nn.Module:
        """The frozen module whose computation this site runs."""

    def override(self, owner: str, param_name: str, value: torch.Tensor):
        """Uses ``value`` in place of the wrapped module's ``param_name``."""
        current = getattr(self.wrapped, param_name, None)
        if current is None:
            raise ValueError(
                f"{type(self.wrapped).__name__} has no parameter "
                f"'{param_name}' to override."
            )
        if current.shape != value.shape:
            raise ValueError(
                f"Override of '{param_name}' has shape {tuple(value.shape)}, "
                f"expected {tuple(current.shape)}."
            )
        if param_name in self._overrides:
            raise ValueError(
                f"'{param_name}' is already overridden by "
                f"'{self._overrides[param_name][0]}'; '{owner}' cannot "
                "override it too."
            )
        self._overrides[param_name] = (owner, value)

    def param(self, name: str) -> Optional[torch.Tensor]:
        """The tensor to use for ``name``: the override, else the frozen one."""
        if name in self._overrides:
            return self._overrides[name][1]
        return getattr(self.wrapped, name)

    def _run_hooks(self, x, y):
        for hook in self._hooks.values():
            y = hook(x, y)
        return y


class LinearSite(_ParameterSite):
    """A frozen ``nn.Linear`` that hooks and overrides can modify.

    Arguments
    ---------
    linear : torch.nn.Linear
        The frozen projection (its weights are used, never copied).

    Example
    -------
    >>> site = LinearSite(torch.nn.Linear(8, 8))
    >>> site(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    @property
    def wrapped(self):
        return self.linear

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def forward(self, x):
        y = F.linear(x, self.param("weight"), self.param("bias"))
        return self._run_hooks(x, y)


class NormSite(_ParameterSite):
    """A frozen ``nn.LayerNorm`` that hooks and overrides can modify.

    Example
    -------
    >>> site = NormSite(torch.nn.LayerNorm(8))
    >>> site(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm

    @property
    def wrapped(self):
        return self.norm

    def forward(self, x):
        y = F.layer_norm(
            x,
            self.norm.normalized_shape,
            self.param("weight"),
            self.param("bias"),
            self.norm.eps,
        )
        return self._run_hooks(x, y)


class SublayerSite(Site):
    """A whole sub-layer (``mhsa`` or ``ffn``) seen from outside.

    ``forward(x, sublayer, mask)`` computes ``y = sublayer(x, mask)`` and lets
    each hook transform ``y`` given ``x``; the block adds the residual after.

    Example
    -------
    >>> site = SublayerSite()
    >>> site.attach("parallel", lambda x, y, mask: y + x)
    >>> x = torch.ones(1, 2, 4)
    >>> site(x, lambda x, mask: 2 * x).sum().item()
    24.0
    """

    def forward(self, x, sublayer, mask=None):
        y = sublayer(x, mask)
        for hook in self._hooks.values():
            y = hook(x, y, mask)
        return y


class TokenSite(Site):
    """The token sequence entering a layer: prompts insert or overwrite here.

    Example
    -------
    >>> site = TokenSite()
    >>> x, mask = site(torch.zeros(2, 5, 4), None)
    >>> x.shape, mask
    (torch.Size([2, 5, 4]), None)
    """

    def forward(self, x, mask=None):
        for hook in self._hooks.values():
            x, mask = hook(x, mask)
        return x, mask


class KeyValueSite(Site):
    """Keys and values after their projections, before the heads are split.

    Example
    -------
    >>> site = KeyValueSite()
    >>> k, v, mask = site(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4), None)
    >>> k.shape
    torch.Size([2, 5, 4])
    """

    def forward(self, keys, values, mask=None):
        for hook in self._hooks.values():
            keys, values, mask = hook(keys, values, mask)
        return keys, values, mask
