"""Full fine-tuning: the reference point every PETL method is compared to."""

from speechbrain_petl.methods.base import PETLMethod


class FullFineTuning(PETLMethod):
    """Unfreezes backbone parameters instead of adding any.

    Without ``layers``, everything trains except the parts the lobe keeps
    frozen by design (Wav2Vec2's CNN feature encoder). With ``layers``, only
    those blocks train (e.g. ``[-3, -2, -1]``: the last three, as the
    paper's reference code did for Wav2Vec2).

    Unfrozen backbone tensors are part of the lobe's trainable state, so a
    checkpoint of a fully fine-tuned lobe holds the whole model.

    Its state is the backbone's own weights, and no plain copy of them is
    kept (it would double the model's memory). So it is always active:
    ``backbone.set_active`` refuses to leave it out, and ``backbone.active``
    lists it even when attached with ``active=False``. To compute with the
    plain backbone, build it again from its source; ``backbone.detach``
    restores it only while the weights are unchanged (the example of
    ``MethodHost.set_active`` shows the refusal).

    Example
    -------
    >>> method = FullFineTuning(layers=[-3, -2, -1])
    >>> method.layer_selection, method.trains_backbone_weights
    ([-3, -2, -1], True)
    """

    default_name = "full"
    trains_backbone_weights = True

    def _attach(self, backbone, name):
        if self.layer_selection is None:
            frozen = tuple(getattr(backbone, "always_frozen", ()))
            params = [
                param for param_name, param in backbone.named_parameters()
                if not param_name.startswith(("petl.",) + frozen)
            ]
        else:
            params = [
                param for layer in self.selected_layers(backbone)
                for param in backbone.layers[layer].parameters()
            ]
        # Unregistered record (the tensors belong to the backbone): which
        # parameters were unfrozen, and their version counters at that time.
        self.__dict__["_unfrozen"] = [(param, param._version) for param in params]
        for param in params:
            param.requires_grad_(True)

    def detach(self, backbone):
        """Freezes the parameters again; refused once they were changed,
        since the weights from before the attach no longer exist."""
        if any(param._version != version for param, version in self._unfrozen):
            raise RuntimeError(
                "FullFineTuning changed the backbone's own weights; detaching cannot "
                "restore them. Build the backbone again from its source instead."
            )
        for param, _ in self._unfrozen:
            param.requires_grad_(False)
        super().detach(backbone)
