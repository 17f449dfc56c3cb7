"""BitFit: train only the biases."""

from speechbrain_petl.methods.base import ParameterCopy, PETLMethod
from speechbrain_petl.sites import LinearSite, NormSite


class BitFit(PETLMethod):
    """Trains the biases of every Linear and LayerNorm of the selected blocks,
    plus the bias of the final LayerNorm (Ben Zaken et al., 2022).

    The biases are trainable copies used by the sites in place of the frozen
    ones, so the backbone is untouched and the method holds the whole
    trained state. On AST-base: 12 x 8,448 + 768 = 102,144 parameters.

    Arguments
    ---------
    layers : list of int, optional
        Blocks whose biases train (default all).

    Example
    -------
    >>> BitFit().default_name
    'bitfit'
    """

    default_name = "bitfit"

    def _attach(self, backbone, name):
        covered = set()
        for layer in self.selected_layers(backbone):
            for path, site in backbone.layers[layer].named_modules():
                if isinstance(site, (LinearSite, NormSite)) and site.wrapped.bias is not None:
                    copy = self.register(layer, path, ParameterCopy(site, ("bias",)))
                    copy.override(name)
                    covered.add(id(site))
        final = backbone.final_norm_site()
        if final is not None and id(final) not in covered:
            self.final_norm = ParameterCopy(final, ("bias",))
            self.final_norm.override(name)
