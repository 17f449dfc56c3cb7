"""Named insertion points ("sites") of a frozen transformer layer.

A backbone lobe re-states its transformer block as a short forward that calls
sites instead of raw modules. A PETL method never reaches into a backbone's
internals: it asks the backbone for a site by name (``"attention.query"``,
``"mhsa"``, ``"ffn_norm"``, ...) and attaches a hook to it under the method's
name. A site keeps what each owner attached in dicts keyed by that name, so
several methods (or several tasks) compose at one site without special cases.

The hooks' parameters are owned by the method module (registered under the
backbone's ``petl`` ModuleDict), never by the site: a site only holds
references. Hence ``backbone.petl.state_dict()`` is exactly the trained state.

The lifecycle (attach, detach, activation, merging) is driven by the
backbone (:class:`speechbrain_petl.backbones.Backbone`); a site only keeps,
per owner name, what was attached to it:

* ``skip(names)`` makes the site ignore the hooks and overrides of those
  owners (inactive methods, merged ones);
* ``fold(owner, values)`` writes new values into the frozen module's
  parameters (merging) and keeps the originals, which ``unfold(owner)``
  puts back bit for bit;
* routing (one backbone serving several tasks in one batch) is **not**
  stored on the site: :func:`routing` sets it for the duration of a
  ``with`` block in a :class:`contextvars.ContextVar`, so it is seen only by
  the thread or asyncio task that set it, and only by the sites whose
  :attr:`Site.route_key` it names (a backbone gives all its sites one key).
  While set, only the owners it names run, each on its own rows of the
  batch (``{owner: LongTensor of batch indices, or None for every row}``),
  whatever the active set. Hooks see just their rows; overridden parameters
  become per-sample tensors. Sites that change the number of tokens or keys
  (:class:`TokenSite`, :class:`KeyValueSite`) refuse an owner routed to part
  of a batch: such methods run on a sub-batch of their own.

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
>>> site.skip({"double"})
>>> torch.allclose(site(x), site.linear(x))
True
>>> site.skip(())
>>> with routing(site.route_key, {"double": torch.tensor([1])}):
...     y = site(x)
>>> torch.equal(y[0], site.linear(x)[0]), torch.equal(y[1], 2 * site.linear(x)[1])
(True, True)
>>> site.remove_owner("double")
>>> site.owners()
set()
"""

import abc
import contextlib
import contextvars
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


#: The routes of the current call: ``{route key: _Routes}``. A context
#: variable, so each thread and each asyncio task sees only the routes it set
#: itself (see :func:`routing`); never mutated in place.
#: Plain dicts (read by ``torch.compile`` without a graph break), replaced
#: whole and never changed after they are set.
_ROUTES = contextvars.ContextVar("speechbrain_petl_routes", default={})

#: How many plans (see :meth:`Site._plan`) a site keeps: one per set of
#: routed owners seen, plus the active set's; beyond, the cache starts afresh.
MAX_PLANS = 64


class _Routes:
    """One :func:`routing` block's routes for one key: ``rows``
    (``{owner: LongTensor or None}``, a copy never changed) and ``owners``,
    the frozenset of their names (hashed once: it keys the sites' plans)."""

    __slots__ = ("rows", "owners")

    def __init__(self, rows):
        self.rows = dict(rows)
        self.owners = frozenset(self.rows)


class _Plan:
    """What runs at a site for one set of routed owners (or for the active
    set): ``hooks``, the ``(owner, hook)`` pairs in order, and ``overrides``,
    ``{parameter name: ((owner, value), ...)}`` of the owners that run.
    Computed when that set is first seen after a change, not on every call."""

    __slots__ = ("hooks", "overrides")

    def __init__(self, hooks, overrides=None):
        self.hooks = hooks
        self.overrides = overrides or {}


class RouteKey:
    """The key under which :func:`routing` routes a group of sites (a
    backbone gives its sites one); compared by identity."""

    __slots__ = ()

    def __repr__(self):
        return f"<RouteKey {id(self):#x}>"


@contextlib.contextmanager
def routing(key, rows):
    """Within the block, and only in the calling thread or asyncio task,
    the sites whose :attr:`Site.route_key` is ``key`` run only the owners in
    ``rows`` (``{owner: LongTensor of batch indices, or None for every row}``),
    each on its rows. Other keys' routes (outer blocks, other backbones) are
    kept; the previous routes come back at the end of the block.

    Example
    -------
    >>> site = SublayerSite()
    >>> site.attach("a", lambda x, y, mask: y + 1)
    >>> with routing(site.route_key, {}):
    ...     site(torch.zeros(1, 2), lambda x, mask: x).tolist()
    [[0.0, 0.0]]
    >>> site(torch.zeros(1, 2), lambda x, mask: x).tolist()
    [[1.0, 1.0]]
    """
    routes = dict(_ROUTES.get())
    routes[key] = _Routes(rows)
    token = _ROUTES.set(routes)
    try:
        yield
    finally:
        _ROUTES.reset(token)


class Site(nn.Module):
    """Base class: a named place that holds hooks keyed by owner name.

    What runs at a site is decided by its owners, the skipped ones, the
    folded ones and, in a :func:`routing` block, the routed ones. A site
    works that out once per set of routed owners (and once for the active
    set) after each change, in a :class:`_Plan`, so a call only looks its
    plan up (:meth:`_plan`)."""

    def __init__(self):
        super().__init__()
        # Plain dict on purpose: hooks belong to the PETL method modules,
        # which are registered elsewhere; registering them here too would
        # duplicate every PETL tensor in the backbone's state_dict.
        self._hooks: Dict[str, Callable] = {}
        self._skipped = frozenset()
        #: The key :func:`routing` routes this site by (its backbone's, once
        #: the backbone lists its sites; its own before).
        self.route_key = RouteKey()
        # {frozenset of routed owners, or None for the active set: _Plan}
        self._plans = {}

    def _changed(self):
        """Forgets the plans: owners, skipped or folded ones have changed.
        A new dict, so a call still holding the old one never sees a half
        updated cache."""
        self._plans = {}

    def _call_routes(self) -> Optional[_Routes]:
        """This call's routes for this site (None: not routed); read from
        the calling thread's or task's context, never stored here."""
        return _ROUTES.get().get(self.route_key)

    def _plan(self, routes: Optional[_Routes]) -> _Plan:
        """The plan for ``routes`` (None: the active set), made on first use."""
        key = None if routes is None else routes.owners
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            plan = self._make_plan(key)
            if len(plans) >= MAX_PLANS:
                plans = self._plans = {}
            plans[key] = plan
        return plan

    def _runs_in(self, owner, routed):
        """Whether ``owner`` runs when the owners ``routed`` are routed
        (None: not routed, the active set decides)."""
        if routed is not None:
            return owner in routed
        return owner not in self._skipped

    def _make_plan(self, routed):
        return _Plan(tuple((name, hook) for name, hook in self._hooks.items() if self._runs_in(name, routed)))

    def attach(self, name: str, hook: Callable):
        """Adds ``hook`` under ``name``; hooks run in the order attached."""
        if name in self._hooks:
            raise ValueError(
                f"A hook named '{name}' is already attached to this site; "
                "give the second method another name."
            )
        self._hooks[name] = hook
        self._changed()

    def remove_owner(self, name: str):
        """Removes everything ``name`` attached here (nothing if it has nothing)."""
        self._hooks.pop(name, None)
        self._changed()

    def owners(self):
        """Names of the owners with something attached here."""
        return set(self._hooks)

    def hook_names(self):
        """Names of the attached hooks, in the order they run."""
        return list(self._hooks)

    def folded_owners(self):
        """Owners whose values are folded into the wrapped weights (none
        here: only sites around a frozen module fold)."""
        return set()

    def skip(self, names):
        """Ignores the hooks (and overrides) of the owners in ``names`` from
        now on; ``skip(())`` runs everything again."""
        names = frozenset(names)
        if names != self._skipped:
            self._skipped = names
            self._changed()

    def running_hooks(self):
        """``(owner, hook, rows)`` of the hooks that run in this call, in
        order; ``rows`` is None when the hook sees the whole batch."""
        routes = self._call_routes()
        plan = self._plan(routes)
        if routes is None:
            return [(name, hook, None) for name, hook in plan.hooks]
        return [(name, hook, routes.rows[name]) for name, hook in plan.hooks]

    def active_hooks(self):
        """The hooks that run, in order."""
        return [hook for _, hook, _ in self.running_hooks()]

    def _whole_batch_hooks(self):
        """The running hooks of a site that changes the number of tokens or keys."""
        hooks = []
        for name, hook, rows in self.running_hooks():
            if rows is not None:
                raise RuntimeError(
                    f"'{name}' changes the number of tokens or keys at {type(self).__name__}: it "
                    "cannot run on part of a batch. Run its samples as a sub-batch of their own."
                )
            hooks.append(hook)
        return hooks

    def _apply_hooks(self, plan, routes, x, y, *extra):
        """``y`` after the plan's hooks (``hook(x, y, *extra)``), each on its
        rows. Without autograd, routed rows are written into ``y`` in place
        (no full-size copy per owner) once ``y`` is known to be this call's
        own tensor: the site's output, not an input a hook passed through."""
        if routes is None:
            for _, hook in plan.hooks:
                y = hook(x, y, *extra)
            return y
        # torch.compile: out of place (a compiled graph reuses buffers itself).
        in_place = not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not _shares_memory(x, y)
        for name, hook in plan.hooks:
            rows = routes.rows[name]
            if rows is None:
                y = hook(x, y, *extra)
                in_place = in_place and not _shares_memory(x, y)
            else:
                y = on_rows(rows, hook, x, y, *extra, in_place=in_place)
        return y

    def may_train(self):
        """Whether autograd may be needed here: an active hook runs (its
        method's tensors may train) or, at parameter sites, a tensor in use
        requires a gradient."""
        return bool(self.active_hooks())


def _shares_memory(x, y):
    """Whether ``y`` lives in ``x``'s memory (a hook that passed its input through)."""
    return x is y or x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


def on_rows(rows, hook, x, y, *extra, in_place=False):
    """``hook(x, y, *extra)`` applied to the ``rows`` of the batch only (all
    rows when ``rows`` is None); the other rows of ``y`` pass unchanged.
    ``extra`` are batch-first tensors or None (e.g. a padding mask). With
    ``in_place`` the rows are written into ``y`` itself (no autograd, and
    ``y`` held by no one else) instead of into a copy.

    Example
    -------
    >>> y = on_rows(torch.tensor([1]), lambda x, y: y + x, torch.ones(2, 3), torch.zeros(2, 3))
    >>> y[:, 0].tolist()
    [0.0, 1.0]
    """
    if rows is None:
        return hook(x, y, *extra)
    pick = [None if t is None else t.index_select(0, rows) for t in (x, y) + extra]
    if in_place:
        return y.index_copy_(0, rows, hook(*pick))
    return y.index_copy(0, rows, hook(*pick))


class _ParameterSite(Site, abc.ABC):
    """A site around a frozen module whose parameters may be overridden.

    An override replaces one parameter of the wrapped module (e.g. ``bias``)
    by a tensor owned by a PETL method, for every call of the site. Several
    owners may override the same parameter (one BitFit per task, say); the
    backbone lets at most one of them be active (:meth:`check_overrides`).
    """

    def __init__(self):
        super().__init__()
        self._overrides: Dict[str, Dict[str, torch.Tensor]] = {}
        # parameter name -> stack of (owner, original values) pushed by fold()
        self._folds: Dict[str, List[Tuple[str, torch.Tensor]]] = {}

    @property
    @abc.abstractmethod
    def wrapped(self) -> nn.Module:
        """The frozen module whose computation this site runs."""

    def override(self, owner: str, param_name: str, value: torch.Tensor):
        """Uses ``value`` in place of the wrapped module's ``param_name``
        whenever ``owner`` is active."""
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
        owners = self._overrides.setdefault(param_name, {})
        if owner in owners:
            raise ValueError(f"'{owner}' already overrides '{param_name}' at this site.")
        owners[owner] = value
        self._changed()

    def remove_owner(self, name: str):
        """Removes the hooks and overrides of ``name`` (refused while it is folded)."""
        if self.folded_owners() & {name}:
            raise RuntimeError(f"'{name}' is merged into this site's weights; unmerge it first.")
        for owners in self._overrides.values():
            owners.pop(name, None)
        self._overrides = {k: v for k, v in self._overrides.items() if v}
        super().remove_owner(name)

    def owners(self):
        """Names of the owners with hooks or overrides here."""
        return super().owners() | {o for owners in self._overrides.values() for o in owners}

    def check_overrides(self, active):
        """Raises if two owners in ``active`` override the same parameter."""
        for param_name, owners in self._overrides.items():
            clash = [owner for owner in owners if owner in active]
            if len(clash) > 1:
                raise RuntimeError(
                    f"{clash[0]!r} and {clash[1]!r} both replace '{param_name}' of the "
                    f"same {type(self.wrapped).__name__}; only one of them can be "
                    "active at a time (see backbone.set_active)."
                )

    def _make_plan(self, routed):
        runs = lambda owner: self._runs_in(owner, routed) and not self._is_folded(owner)  # noqa: E731
        overrides = {
            param_name: tuple((owner, value) for owner, value in owners.items() if runs(owner))
            for param_name, owners in self._overrides.items()
        }
        return _Plan(
            tuple((name, hook) for name, hook in self._hooks.items() if runs(name)),
            {param_name: owners for param_name, owners in overrides.items() if owners},
        )

    def param(self, name: str) -> Optional[torch.Tensor]:
        """The tensor to use for ``name`` in this call (not routed): the
        active override, else the frozen one (which holds the override's
        values once it is folded)."""
        return self._param(self._plan(self._call_routes()), name)

    def _param(self, plan, name):
        owners = plan.overrides.get(name)
        if owners:
            return owners[0][1]
        return getattr(self.wrapped, name)

    def _routed_param(self, plan, routes, name, batch):
        """``(tensor, per_sample)`` for ``name`` in a routed call: the shared
        tensor (``per_sample`` False), or, when routed owners override it for
        part of the batch, a ``(batch, *shape)`` stack holding each sample's
        own values (its owner's override, else the frozen tensor)."""
        owners = plan.overrides.get(name)
        frozen = getattr(self.wrapped, name)
        if not owners:
            return frozen, False
        if len(owners) == 1 and routes.rows[owners[0][0]] is None:
            return owners[0][1], False
        choice = torch.zeros(batch, dtype=torch.long, device=frozen.device)
        for index, (owner, _) in enumerate(owners, start=1):
            rows = routes.rows[owner]
            choice[slice(None) if rows is None else rows] = index
        return torch.stack([frozen] + [value for _, value in owners])[choice], True

    def may_train(self):
        """Whether autograd may be needed here: an active hook runs, or the
        weight or bias in use (override or frozen original) requires grad."""
        if super().may_train():
            return True
        return any(
            value is not None and value.requires_grad
            for value in (self.param(name) for name in ("weight", "bias"))
        )

    def _is_folded(self, owner):
        return any(o == owner for stack in self._folds.values() for o, _ in stack)

    def fold(self, owner: str, values: Dict[str, torch.Tensor]):
        """Writes ``values`` into the wrapped module's parameters in place
        (merging), keeping a copy of the originals for :meth:`unfold`."""
        with torch.no_grad():
            for param_name, value in values.items():
                target = self.wrapped.get_parameter(param_name)
                self._folds.setdefault(param_name, []).append((owner, target.detach().clone()))
                target.copy_(value)
        self._changed()

    def unfold(self, owner: str):
        """Puts back, bit for bit, the parameters ``owner`` folded. Folds into
        one tensor are undone last-in first-out."""
        for param_name, stack in self._folds.items():
            if any(o == owner for o, _ in stack) and stack[-1][0] != owner:
                raise RuntimeError(
                    f"'{stack[-1][0]}' was merged into '{param_name}' after '{owner}': "
                    f"unmerge '{stack[-1][0]}' first."
                )
        with torch.no_grad():
            for param_name, stack in self._folds.items():
                if stack and stack[-1][0] == owner:
                    self.wrapped.get_parameter(param_name).copy_(stack.pop()[1])
        self._folds = {k: v for k, v in self._folds.items() if v}
        self._changed()

    def folded_owners(self):
        """Owners whose values are folded into the wrapped module's weights."""
        return {owner for stack in self._folds.values() for owner, _ in stack}



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
        """The frozen module this site runs."""
        return self.linear

    @property
    def in_features(self):
        """Input width of the wrapped projection."""
        return self.linear.in_features

    @property
    def out_features(self):
        """Output width of the wrapped projection."""
        return self.linear.out_features

    def forward(self, x):
        """Runs the site on ``x`` (see the class docstring for the hooks' signature)."""
        routes = self._call_routes()
        plan = self._plan(routes)
        if not plan.overrides:  # the frozen projection, maybe with hooks
            linear = self.linear
            y = F.linear(x, linear.weight, linear.bias)
            return self._apply_hooks(plan, routes, x, y) if plan.hooks else y
        if routes is None:
            y = F.linear(x, self._param(plan, "weight"), self._param(plan, "bias"))
            return self._apply_hooks(plan, None, x, y)
        weight, per_sample = self._routed_param(plan, routes, "weight", x.shape[0])
        if per_sample:
            raise RuntimeError("Routed owners replace this projection's weight for part of the batch: not supported.")
        bias, per_sample = self._routed_param(plan, routes, "bias", x.shape[0])
        if per_sample:
            y = F.linear(x, weight) + _per_row(bias, x)
        else:
            y = F.linear(x, weight, bias)
        return self._apply_hooks(plan, routes, x, y)


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
        """The frozen module this site runs."""
        return self.norm

    def forward(self, x):
        """Runs the site on ``x`` (see the class docstring for the hooks' signature)."""
        routes = self._call_routes()
        plan = self._plan(routes)
        norm = self.norm
        if not plan.overrides:  # the frozen norm, maybe with hooks
            y = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            return self._apply_hooks(plan, routes, x, y) if plan.hooks else y
        if routes is None:
            y = F.layer_norm(x, norm.normalized_shape, self._param(plan, "weight"), self._param(plan, "bias"), norm.eps)
            return self._apply_hooks(plan, None, x, y)
        weight, weight_per_sample = self._routed_param(plan, routes, "weight", x.shape[0])
        bias, bias_per_sample = self._routed_param(plan, routes, "bias", x.shape[0])
        if weight_per_sample or bias_per_sample:
            y = F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
            y = y * _per_row(weight, x, weight_per_sample) + _per_row(bias, x, bias_per_sample)
        else:
            y = F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
        return self._apply_hooks(plan, routes, x, y)


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
        """Runs the site on ``x`` (see the class docstring for the hooks' signature)."""
        routes = self._call_routes()
        plan = self._plan(routes)
        y = sublayer(x, mask)
        if not plan.hooks:
            return y
        return self._apply_hooks(plan, routes, x, y, mask)


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
        """Runs the site on ``x`` (see the class docstring for the hooks' signature)."""
        if not self._hooks:  # the common case: nothing inserts tokens here
            return x, mask
        for hook in self._whole_batch_hooks():
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
        """Runs the site on ``x`` (see the class docstring for the hooks' signature)."""
        if not self._hooks:
            return keys, values, mask
        for hook in self._whole_batch_hooks():
            keys, values, mask = hook(keys, values, mask)
        return keys, values, mask


def _per_row(value, x, per_sample=True):
    """``value`` shaped to broadcast over ``x`` (batch, time, channels): a
    ``(batch, channels)`` per-sample tensor gets singleton middle dimensions."""
    if not per_sample:
        return value
    return value.view(value.shape[0], *([1] * (x.dim() - 2)), value.shape[-1])


def masked_fill_padding(x, mask):
    """Zeros the padded positions of ``x`` (batch, time, ch); no-op if mask is None.

    Example
    -------
    >>> x = torch.ones(1, 3, 2)
    >>> masked_fill_padding(x, torch.tensor([[True, True, False]]))[0, :, 0].tolist()
    [1.0, 1.0, 0.0]
    """
    if mask is None:
        return x
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)
