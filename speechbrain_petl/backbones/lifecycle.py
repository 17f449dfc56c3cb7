"""The life of PETL methods on a backbone: attach, detach, activate, merge.

:class:`MethodHost` is a mixin of :class:`speechbrain_petl.backbones.Backbone`.
It relies on the backbone's ``petl`` (a :class:`MethodDict`), ``_inactive``
(a set of names) and ``named_modules`` (its sites). The one record of what
is attached where is the sites' dicts keyed by method name; ``petl`` changes
only through :meth:`MethodHost.attach` and :meth:`MethodHost.detach`, so the
two never drift apart.

The questions other code asks about that state are answered here and
nowhere else: :meth:`MethodHost.named_sites` (where the sites are),
:attr:`MethodHost.merged` and :meth:`MethodHost.running_sites` (what is
folded into the weights, what still runs as hooks), and
:meth:`MethodHost.merged_weights` (everything folded for the duration of a
block, then restored bit for bit; the exporters write plain models inside it).
"""

import contextlib

from torch import nn

from speechbrain_petl.methods.base import PETLMethod
from speechbrain_petl.sites import KeyValueSite, RouteKey, Site, TokenSite, _ParameterSite, routing


class NotMergeable(TypeError):
    """A method's trained state cannot be written into the frozen weights
    (adapter blocks, prompts, prefixes); the message names the method."""


class MethodHost:
    """Attaching, detaching, activating and merging PETL methods (a mixin of
    the backbone lobes; see the module docstring for what it relies on)."""

    def attach(self, method, name=None, active=True):
        """Attaches a PETL method under ``name`` (default: the method's own).

        Arguments
        ---------
        method : PETLMethod
            A fresh method instance (one instance per attachment).
        name : str, optional
            Key under ``self.petl`` and at every site it uses.
        active : bool
            Whether the method takes part in the forward pass right away.

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import LoRA
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64)
        >>> ast.attach(LoRA(rank=2))
        >>> ast.attach(LoRA(rank=4), "task_b", active=False)
        >>> list(ast.petl), ast.active
        (['lora', 'task_b'], ['lora'])
        >>> ast.detach("task_b")
        >>> list(ast.petl)
        ['lora']
        """
        if not isinstance(method, PETLMethod):
            raise TypeError(
                f"petl entries must be PETL methods (e.g. "
                f"!new:speechbrain_petl.methods.LoRA), got {method!r}"
            )
        name = name or method.default_name
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"A PETL method's name must be a non-empty string without dots, got {name!r}")
        if name in self.petl:
            raise ValueError(f"A PETL method named '{name}' is already attached.")
        method.attach(self, name)
        self.petl._register(name, method)
        self._forget_sites()
        if not active:
            self._inactive.add(name)
        try:
            self._sync_sites()
        except RuntimeError:
            self.detach(name)
            raise

    def detach(self, name):
        """Removes method ``name``: its hooks, overrides and tensors. The
        backbone then computes exactly what it computed before the attach.
        A merged method must be unmerged first."""
        method = self._method(name)
        if name in self.merged:
            raise RuntimeError(f"'{name}' is merged into the frozen weights; unmerge('{name}') first.")
        for site in self.sites():
            site.remove_owner(name)
        method.detach(self)
        self.petl._unregister(name)
        self._forget_sites()
        self._inactive.discard(name)
        self._sync_sites()

    @property
    def active(self):
        """Names of the methods that take part in the forward pass.

        A method that trains the backbone's own weights (full fine-tuning)
        always does, even if attached with ``active=False``: its state is
        those weights."""
        return [
            name for name, method in self.petl.items()
            if name not in self._inactive or method.trains_backbone_weights
        ]

    def set_active(self, names):
        """Makes exactly ``names`` active (the others stay attached, unused):
        outputs are then those of the backbone with only ``names`` attached.

        Refused when two active methods would replace the same frozen tensor
        or both insert tokens, for a merged method left out (its update is
        in the weights: unmerge it first), and for a method that trains the
        backbone's own weights left out (``FullFineTuning``: the weights
        are its state, and no plain copy is kept). The active set is then
        unchanged.

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import FullFineTuning, LoRA
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, petl=LoRA(rank=2))
        >>> ast.set_active([])
        >>> ast.active
        []
        >>> ast.attach(FullFineTuning())
        >>> ast.set_active(["lora"])
        Traceback (most recent call last):
        ...
        RuntimeError: ['full'] train the backbone's own weights: ...
        >>> ast.active
        ['full']
        """
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            self._method(name)
        inactive = set(self.petl) - set(names)
        in_weights = [name for name in self.petl if name in inactive and self.petl[name].trains_backbone_weights]
        if in_weights:
            raise RuntimeError(
                f"{in_weights} train the backbone's own weights: every forward pass uses them, "
                "active or not, and the plain weights are not kept. Keep them in set_active([...]); "
                "for the plain backbone's outputs, build the backbone again from its source "
                f"(detach('{in_weights[0]}') restores it only while its weights are unchanged)."
            )
        merged_off = sorted(inactive & self.merged)
        if merged_off:
            raise RuntimeError(f"{merged_off} are merged into the weights; unmerge them before deactivating.")
        previous = self._inactive
        self._inactive = inactive
        try:
            self._sync_sites()
        except RuntimeError:
            self._inactive = previous
            self._sync_sites()
            raise

    def merge(self, name):
        """Folds method ``name`` into the frozen weights (LoRA updates, BitFit
        biases, trained LayerNorm copies); its sites stop running what was
        folded. Outputs are unchanged up to float rounding.

        Exact undo: the sites keep a copy of every tensor they overwrite, and
        :meth:`unmerge` copies it back (bit-identical; the copy costs the
        memory of the touched tensors: about 57 MB for LoRA on AST-base's
        query and value projections).
        """
        method = self._method(name)
        if name in self._inactive:
            raise RuntimeError(f"'{name}' is inactive; activate it before merging.")
        if name in self.merged:
            raise RuntimeError(f"'{name}' is merged already.")
        try:
            method.merge(self, name)
        finally:
            self.__dict__.pop("_merged", None)

    def unmerge(self, name):
        """Restores the frozen weights ``merge(name)`` changed, bit for bit."""
        self._method(name)
        if name not in self.merged:
            raise RuntimeError(f"'{name}' is not merged.")
        try:
            for site in self.sites():
                if name in site.folded_owners():
                    site.unfold(name)
        finally:
            self.__dict__.pop("_merged", None)

    @property
    def merged(self):
        """Names of the methods folded into the frozen weights (read from
        the sites after each merge, unmerge, attach or detach; kept in
        ``__dict__`` meanwhile, since every routed call asks)."""
        merged = self.__dict__.get("_merged")
        if merged is None:
            merged = frozenset(owner for site in self.sites() for owner in site.folded_owners())
            self.__dict__["_merged"] = merged
        return set(merged)

    def running_sites(self):
        """``{method: [site paths]}``: where each active method still runs
        as a hook or an override (not folded into the frozen weights).

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import LoRA
        >>> ast = AST(tiny_config("ast", num_hidden_layers=1), pretrained=False, max_frames=64, petl=LoRA(rank=2))
        >>> ast.running_sites()
        {'lora': ['layers.0.attention.query', 'layers.0.attention.value']}
        >>> ast.merge("lora")
        >>> ast.running_sites(), ast.merged
        ({}, {'lora'})
        """
        active = set(self.active)
        running = {}
        for path, site in self.named_sites():
            for owner in sorted((site.owners() & active) - site.folded_owners()):
                running.setdefault(owner, []).append(path)
        return running

    @contextlib.contextmanager
    def merged_weights(self):
        """Within the block, every active method is folded into the frozen
        weights and no hook or override runs: the backbone computes with
        plain weights what it computed with its methods (up to float
        rounding). Afterwards the weights are restored bit for bit.

        Methods that train the backbone's own weights (full fine-tuning) are
        in them already. Raises :class:`NotMergeable` (after restoring) when
        a method keeps running: adapter blocks, prompts and prefixes are not
        changes of weights.

        Example
        -------
        >>> import torch
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import LoRA
        >>> ast = AST(tiny_config("ast", num_hidden_layers=1), pretrained=False, max_frames=64, petl=LoRA(rank=2)).eval()
        >>> before = {k: v.clone() for k, v in ast.state_dict().items()}
        >>> with ast.merged_weights():
        ...     sorted(ast.merged)
        ['lora']
        >>> all(torch.equal(before[k], v) for k, v in ast.state_dict().items()), ast.merged
        (True, set())
        """
        inactive = [name for name in self.petl if name not in self.active]
        if inactive:
            raise NotMergeable(f"Methods {inactive} are inactive; detach or activate them first.")
        if self.merged:
            raise NotMergeable(f"Methods {sorted(self.merged)} are merged already; unmerge them first.")
        done = []
        try:
            for name, method in self.petl.items():
                if method.trains_backbone_weights:
                    continue
                try:
                    self.merge(name)
                except TypeError as err:
                    raise NotMergeable(
                        f"'{name}' ({type(method).__name__}) cannot be written into plain weights: {err}"
                    ) from None
                done.append(name)
            left = {
                owner: paths for owner, paths in self.running_sites().items()
                if not self.petl[owner].trains_backbone_weights
            }
            if left:
                raise NotMergeable(
                    "After merging, these methods still run modules that plain weights cannot "
                    f"hold: {left}. Only LoRA, BitFit, linear probing and full fine-tuning "
                    "become plain weights."
                )
            yield self
        finally:
            for name in reversed(done):
                self.unmerge(name)

    @contextlib.contextmanager
    def routed(self, rows):
        """Within the block, only the methods in ``rows`` run, each on its
        rows of the batch: ``{name: LongTensor of batch indices, or None for
        every row}``; the active set is ignored meanwhile. One forward pass
        then serves several tasks (see :class:`speechbrain_petl.inference.MultiTaskClassifier`).

        The routes live in a context variable (:func:`speechbrain_petl.sites.routing`),
        not on the sites: they are seen only by the thread or asyncio task
        inside the block, and only by this backbone's sites, so concurrent
        calls with other routes (or on other backbones) never mix.

        Methods that change the number of tokens or keys (prompts, prefixes;
        :meth:`needs_own_batch`) can only be routed to a whole batch.

        Example
        -------
        >>> import torch
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import BitFit
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64)
        >>> ast.attach(BitFit(), "a", active=False)
        >>> ast.attach(BitFit(), "b", active=False)
        >>> with ast.routed({"a": torch.tensor([0, 2]), "b": torch.tensor([1])}):
        ...     ast(torch.randn(3, 8000)).shape
        torch.Size([3, 32])
        """
        for name in rows:
            self._method(name)
        merged = sorted(set(rows) & self.merged) if rows else ()
        if merged:
            raise RuntimeError(f"{merged} are merged into the weights: a routed method must not be merged.")
        self.named_sites()  # gives every site this backbone's route key
        with routing(self._route_key(), rows):
            yield self

    def needs_own_batch(self, name):
        """Whether method ``name`` changes the number of tokens or keys
        (prompts, prefixes): routed, it must have a (sub-)batch to itself."""
        self._method(name)
        return any(
            name in site.owners() for site in self.sites() if isinstance(site, (TokenSite, KeyValueSite))
        )

    def first_layer_used(self, names):
        """The lowest block any of the methods ``names`` touches
        (``num_layers`` when only the final norm, or nothing): the blocks
        below compute the same for all of them."""
        names = set(names)
        for index, block in enumerate(self.layers):
            if any(isinstance(m, Site) and m.owners() & names for m in block.modules()):
                return index
        return self.num_layers

    def named_sites(self):
        """``[(path, site)]``: every site of the backbone (all blocks, and
        the final norm) with its module path, e.g.
        ``("layers.0.attention.q_proj", LinearSite)``. Built once per
        attach/detach, not on every call."""
        cached = self.__dict__.get("_named_sites")
        if cached is None:
            cached = tuple(
                (path, module) for path, module in self.named_modules()
                if isinstance(module, Site) and not path.startswith("petl.")
            )
            key = self._route_key()
            for _, site in cached:
                site.route_key = key
            # A plain attribute (not registered): the sites are the backbone's own modules.
            self.__dict__["_named_sites"] = cached
        return list(cached)

    def sites(self):
        """Every site of the backbone (see :meth:`named_sites`)."""
        return [site for _, site in self.named_sites()]

    def _route_key(self):
        """The key :meth:`routed` routes this backbone's sites by (one per
        backbone, kept in ``__dict__``: not a module, not state)."""
        # setdefault: atomic, so threads racing here still agree on one key.
        return self.__dict__.setdefault("_route_key_value", RouteKey())

    def _forget_sites(self):
        self.__dict__.pop("_named_sites", None)
        self.__dict__.pop("_merged", None)

    def _method(self, name):
        if name not in self.petl:
            raise KeyError(f"No PETL method named '{name}'; attached: {list(self.petl)}")
        return self.petl[name]

    def _sync_sites(self):
        """Tells every site which owners to skip; checks the active set."""
        active = set(self.active)
        inserting = [name for name in self.active if self.petl[name].inserts_tokens]
        if len(inserting) > 1:
            raise RuntimeError(
                f"{inserting} all insert tokens; two prompt methods active at once would "
                "shift each other's token positions. Keep one active (backbone.set_active)."
            )
        for site in self.sites():
            if isinstance(site, _ParameterSite):
                site.check_overrides(active)
        for site in self.sites():
            site.skip(self._inactive)


class MethodDict(nn.ModuleDict):
    """``backbone.petl``: the attached methods by name, changed only through
    ``backbone.attach``/``backbone.detach`` (item assignment and deletion are
    refused: they would leave hooks behind, or a method without hooks)."""

    def __setitem__(self, key, module):
        raise TypeError("Use backbone.attach(method, name) to add a PETL method.")

    def __delitem__(self, key):
        raise TypeError("Use backbone.detach(name) to remove a PETL method.")

    def _register(self, name, method):
        nn.ModuleDict.__setitem__(self, name, method)

    def _unregister(self, name):
        nn.ModuleDict.__delitem__(self, name)


def as_named_methods(petl):
    """Normalises the ``petl`` argument: None, a method, a list or a dict."""
    if petl is None:
        return []
    if isinstance(petl, dict):
        return list(petl.items())
    if isinstance(petl, (list, tuple)):
        return [(None, method) for method in petl]
    return [(None, petl)]
