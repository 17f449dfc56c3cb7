"""What every PETL method shares: layer selection, ownership of its tensors.

A method is an ``nn.Module`` that is configured in YAML without knowing its
backbone, and builds its parameters in :meth:`PETLMethod.attach`, when it
meets one. Its per-layer modules are registered under ``self.layers`` with
the paths of the sites they hook, so the method's ``state_dict`` reads like
the backbone's anatomy (``layers.3.attention.query.down.weight``) and is,
by itself, the trained artefact.
"""

import abc

import torch
from torch import nn


class PETLMethod(nn.Module, abc.ABC):
    """Base class of PETL methods.

    Arguments
    ---------
    layers : list of int, optional
        Blocks the method is applied to (negative indices count from the
        end); default: every block.
    """

    #: Name under which the method attaches when none is given.
    default_name = "petl"

    def __init__(self, layers=None):
        super().__init__()
        if layers is not None:
            layers = list(layers)
            if not layers or not all(isinstance(i, int) for i in layers):
                raise ValueError(
                    f"layers must be a non-empty list of block indices, got {layers!r}"
                )
        self.layer_selection = layers
        self.layers = nn.ModuleDict()
        self.attached_name = None
        self.spent = False

    #: True for methods that add tokens to the sequence (prompts): two of
    #: them active at once would shift each other's token positions.
    inserts_tokens = False

    #: True for methods that train the backbone's own tensors (full
    #: fine-tuning): their state already is in the weights, nothing to merge,
    #: and they cannot be deactivated (``backbone.set_active`` refuses).
    trains_backbone_weights = False

    def attach(self, backbone, name):
        """Builds the method's tensors for ``backbone`` and hooks its sites.

        Called by ``backbone.attach``; a method instance attaches once, to
        one backbone (after ``backbone.detach`` it is spent)."""
        if self.attached_name is not None or self.spent:
            raise RuntimeError(
                f"This {type(self).__name__} is already attached as "
                f"'{self.attached_name}' (or was detached); create one instance per attachment."
            )
        self._attach(backbone, name)
        self.attached_name = name

    @abc.abstractmethod
    def _attach(self, backbone, name):
        """Creates parameters and attaches hooks/overrides to ``backbone``."""

    def detach(self, backbone):
        """Called by ``backbone.detach`` once the sites forgot this method:
        undoes what the method changed in the backbone itself, if anything."""
        self.attached_name = None
        self.spent = True

    def merge(self, backbone, name):
        """Folds the method's trained state into the frozen weights.

        The default folds every :class:`ParameterCopy` the method owns (its
        trained biases and LayerNorm affines) into the parameters it replaces;
        hooks that are not changes of weights (adapter blocks) keep running.
        """
        copies = [m for m in self.modules() if isinstance(m, ParameterCopy)]
        if not copies:
            raise TypeError(
                f"{type(self).__name__} has nothing that folds into the frozen weights: "
                "only LoRA, BitFit and trained LayerNorm copies (adapters, linear probing) merge."
            )
        for copy in copies:
            copy.fold(name)

    def constructor_args(self):
        """The constructor arguments that rebuild this method (for export).

        Example
        -------
        >>> from speechbrain_petl.methods import LoRA
        >>> LoRA(rank=4, layers=[0]).constructor_args()["layers"]
        [0]
        """
        return {"layers": self.layer_selection}

    def selected_layers(self, backbone):
        """The block indices this method applies to, validated and sorted."""
        count = backbone.num_layers
        if self.layer_selection is None:
            return list(range(count))
        chosen = []
        for index in self.layer_selection:
            if not -count <= index < count:
                raise ValueError(
                    f"{type(self).__name__}: layer {index} does not exist; the "
                    f"backbone has {count} layers (0..{count - 1})."
                )
            chosen.append(index % count)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"{type(self).__name__}: repeated layers in {self.layer_selection}")
        return sorted(chosen)

    def register(self, layer, path, module):
        """Registers ``module`` as ``layers.<layer>.<path>`` (path may be dotted)."""
        node = self.layers
        for key in [str(layer)] + path.split(".")[:-1]:
            if key not in node:
                node[key] = nn.ModuleDict()
            node = node[key]
        node[path.split(".")[-1]] = module
        return module

    def num_trainable(self):
        """Number of trainable parameters the method owns."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class ParameterCopy(nn.Module):
    """Trainable copies of some parameters of the frozen module at a site.

    The site then uses the copies instead of the frozen originals, so the
    backbone itself is never modified (BitFit biases, adapter LayerNorms),
    unless the copies are merged (:meth:`fold`).

    Example
    -------
    >>> from speechbrain_petl.sites import NormSite
    >>> site = NormSite(torch.nn.LayerNorm(4))
    >>> copy = ParameterCopy(site, ("bias",))
    >>> copy.override("bitfit")
    >>> [name for name, _ in copy.named_parameters()]
    ['bias']
    """

    def __init__(self, site, names):
        super().__init__()
        self.names = tuple(names)
        # Unregistered: the site belongs to the backbone, not to the method.
        self.__dict__["site"] = site
        for name in self.names:
            original = site.wrapped.get_parameter(name)
            self.register_parameter(name, nn.Parameter(original.detach().clone()))

    def override(self, owner):
        """Makes the site use the copies whenever ``owner`` is active."""
        for name in self.names:
            self.site.override(owner, name, getattr(self, name))

    def fold(self, owner):
        """Writes the copies into the frozen parameters (see ``Site.fold``)."""
        self.site.fold(owner, {name: getattr(self, name) for name in self.names})


def check_positive_int(value, what, owner):
    """Raises a clear ValueError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {what} must be an integer >= 1, got {value!r}")


__all__ = ["PETLMethod", "ParameterCopy", "check_positive_int"]
