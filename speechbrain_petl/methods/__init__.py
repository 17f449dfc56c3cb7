"""PETL methods, one small module each, attached to a lobe's named sites.

Attach them through a lobe's ``petl`` argument (in YAML) or
``backbone.attach(method)``.
"""

from speechbrain_petl.methods.adapters import Adapters, BottleneckAdapter, ConformerAdapter
from speechbrain_petl.methods.base import ParameterCopy, PETLMethod
from speechbrain_petl.methods.bitfit import BitFit
from speechbrain_petl.methods.full import FullFineTuning
from speechbrain_petl.methods.linear import LinearProbing
from speechbrain_petl.methods.lora import LoRA, LowRankUpdate
from speechbrain_petl.methods.moa import DenseMoA, SoftMoA
from speechbrain_petl.methods.prefix import PrefixTuning
from speechbrain_petl.methods.prompts import PromptTuning

__all__ = [
    "Adapters",
    "BitFit",
    "BottleneckAdapter",
    "ConformerAdapter",
    "DenseMoA",
    "FullFineTuning",
    "LinearProbing",
    "LoRA",
    "LowRankUpdate",
    "ParameterCopy",
    "PETLMethod",
    "PrefixTuning",
    "PromptTuning",
    "SoftMoA",
]
