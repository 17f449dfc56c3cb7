"""Linear probing: the backbone is frozen; only the final LayerNorm (and the
classification head, which lives in the recipe) train."""

from speechbrain_petl.methods.base import ParameterCopy, PETLMethod


class LinearProbing(PETLMethod):
    """Trains a copy of the backbone's final LayerNorm.

    Together with the recipe's linear head this is the paper's "linear"
    baseline (AST-base: 1,536 + head; 9,226 for 10 classes).

    Example
    -------
    >>> LinearProbing().default_name
    'linear'
    """

    default_name = "linear"

    def __init__(self):
        super().__init__(layers=None)

    def constructor_args(self):
        """No arguments: linear probing has none."""
        return {}

    def _attach(self, backbone, name):
        final = backbone.final_norm_site()
        if final is None:
            raise ValueError(f"{type(backbone).__name__} has no final LayerNorm to train.")
        self.final_norm = ParameterCopy(final, ("weight", "bias"))
        self.final_norm.override(name)
