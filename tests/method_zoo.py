"""The PETL methods the tests try, in small configurations that fit the tiny
backbones of ``tiny.py`` and in the paper's configurations, and a helper that
makes every method non-trivial."""

import functools

import torch

from speechbrain_petl.methods import (
    Adapters,
    BitFit,
    BottleneckAdapter,
    ConformerAdapter,
    DenseMoA,
    FullFineTuning,
    LinearProbing,
    LoRA,
    PrefixTuning,
    PromptTuning,
    SoftMoA,
)


def bottleneck(placement="pfeiffer", mode="parallel"):
    """Bottleneck adapters of width 4."""
    return Adapters(functools.partial(BottleneckAdapter, bottleneck=4), placement, mode)


def conformer(placement="pfeiffer", mode="parallel", kernel_size=5):
    """Conformer adapters of width 4."""
    block = functools.partial(ConformerAdapter, bottleneck=4, kernel_size=kernel_size)
    return Adapters(block, placement, mode)


#: The mixtures' bottleneck experts: width 4, GELU (as the authors').
_MOA_BOTTLENECK = functools.partial(BottleneckAdapter, bottleneck=4, activation=torch.nn.GELU)


def soft_moa(experts=3, slots=2, **options):
    """Soft-MoA with GELU bottleneck experts of width 4."""
    return SoftMoA(_MOA_BOTTLENECK, experts=experts, slots=slots, **options)


def dense_moa(experts=3, conformer_experts=False, **options):
    """Dense-MoA with bottleneck (or Conformer, kernel 5) experts of width 4."""
    if conformer_experts:
        block = functools.partial(ConformerAdapter, bottleneck=4, kernel_size=5)
    else:
        block = _MOA_BOTTLENECK
    return DenseMoA(block, experts=experts, **options)


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
    "soft_moa": soft_moa,
    "soft_moa_houlsby_normalized": lambda: soft_moa(placement="houlsby", normalize=True),
    "dense_moa_conformer": lambda: dense_moa(conformer_experts=True),
    "soft_moa_default_experts": lambda: SoftMoA(experts=2, reduction_rate=8),
    "dense_moa_ffn": lambda: dense_moa(location="ffn"),
}
TOKEN_METHODS = {
    "prompt_shallow": lambda: PromptTuning(length=3),
    "prompt_deep": lambda: PromptTuning(length=3, deep=True),
    "prefix": lambda: PrefixTuning(length=4),
}
ALL_METHODS = {**IDENTITY_AT_INIT, **TOKEN_METHODS}

_PAPER_BOTTLENECK = functools.partial(BottleneckAdapter, bottleneck=12)
_PAPER_CONFORMER = functools.partial(ConformerAdapter, bottleneck=8, kernel_size=31)
#: The paper's configuration of each method (for AST-base), named as in the
#: method x backbone table of docs/architecture.md.
PAPER_METHODS = {
    "Full fine-tuning": FullFineTuning,
    "Linear probing": LinearProbing,
    "BitFit": BitFit,
    "Shallow prompts": lambda: PromptTuning(length=300),
    "Deep prompts": lambda: PromptTuning(length=25, deep=True),
    "Prefix tuning": lambda: PrefixTuning(length=24),
    "LoRA": lambda: LoRA(rank=6, alpha=0.75, targets=["attention.query", "attention.value"]),
    "Bottleneck (Pfeiffer)": lambda: Adapters(_PAPER_BOTTLENECK),
    "Bottleneck (Houlsby)": lambda: Adapters(_PAPER_BOTTLENECK, placement="houlsby"),
    "Conformer (Pfeiffer)": lambda: Adapters(_PAPER_CONFORMER),
    "Conformer (Houlsby)": lambda: Adapters(_PAPER_CONFORMER, placement="houlsby"),
}
#: The follow-up paper's mixtures at the authors' defaults (7 bottleneck
#: experts of width 768 / 128 = 6, 1 slot, beside the attention).
MOA_METHODS = {
    "Soft-MoA": SoftMoA,
    "Dense-MoA": DenseMoA,
}


def perturb_petl_(lobe, seed=0):
    """Random values in every PETL tensor, so no method is a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lobe.petl.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)


#: Methods whose trained state folds (wholly or partly) into the frozen weights.
MERGEABLE = ["linear", "bitfit", "lora", "lora_all_linear", "bottleneck_houlsby_sequential", "conformer_pfeiffer_parallel"]
