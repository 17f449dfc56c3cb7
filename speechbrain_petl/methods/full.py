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

    Example
    -------
    >>> FullFineTuning(layers=[-3, -2, -1]).layer_selection
    [-3, -2, -1]
    """

    default_name = "full"

    def _attach(self, backbone, name):
        if self.layer_selection is None:
            frozen = tuple(getattr(backbone, "always_frozen", ()))
            for param_name, param in backbone.named_parameters():
                if not param_name.startswith(("petl.",) + frozen):
                    param.requires_grad_(True)
        else:
            for layer in self.selected_layers(backbone):
                for param in backbone.layers[layer].parameters():
                    param.requires_grad_(True)
