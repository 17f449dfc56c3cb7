"""The PETL methods the tests try, in small configurations that fit the tiny
backbones of ``tiny.py``, and a helper that makes every method non-trivial."""

import functools

import torch

from speechbrain_petl.methods import (
    Adapters,
    BitFit,
    BottleneckAdapter,
    ConformerAdapter,
    FullFineTuning,
    LinearProbing,
    LoRA,
    PrefixTuning,
    PromptTuning,
)


def bottleneck(placement="pfeiffer", mode="parallel"):
    """Bottleneck adapters of width 4."""
    return Adapters(functools.partial(BottleneckAdapter, bottleneck=4), placement, mode)


def conformer(placement="pfeiffer", mode="parallel", kernel_size=5):
    """Conformer adapters of width 4."""
    block = functools.partial(ConformerAdapter, bottleneck=4, kernel_size=kernel_size)
    return Adapters(block, placement, mode)


#: Methods whose adapted model equals the frozen backbone at initialisation.
IDENTITY_AT_INIT = {
    "full": FullFineTuning,
    "linear": LinearProbing,
    "bitfit": BitFit,
    "lora": lambda: LoRA(rank=2),
    "lora_all_linear": lambda: LoRA(
        rank=2,
        targets=[
            "attention.query",
            "attention.key",
            "attention.value",
            "attention.output",
            "mlp.fc1",
            "mlp.fc2",
        ],
    ),
    "bottleneck_pfeiffer_parallel": bottleneck,
    "bottleneck_houlsby_sequential": lambda: bottleneck("houlsby", "sequential"),
    "conformer_pfeiffer_parallel": conformer,
    "conformer_houlsby_sequential": lambda: conformer("houlsby", "sequential"),
    "conformer_even_kernel": lambda: conformer(kernel_size=8),
}
TOKEN_METHODS = {
    "prompt_shallow": lambda: PromptTuning(length=3),
    "prompt_deep": lambda: PromptTuning(length=3, deep=True),
    "prefix": lambda: PrefixTuning(length=4),
}
ALL_METHODS = {**IDENTITY_AT_INIT, **TOKEN_METHODS}


def perturb_petl_(lobe, seed=0):
    """Random values in every PETL tensor, so no method is a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lobe.petl.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)


#: Methods whose trained state folds (wholly or partly) into the frozen weights.
MERGEABLE = ["linear", "bitfit", "lora", "lora_all_linear", "bottleneck_houlsby_sequential", "conformer_pfeiffer_parallel"]
