#!/usr/bin/env python3
"""Soft-MoA against Dense-MoA against one bottleneck adapter: step time, adapter FLOPs, tensor peak.

On AST-base with random weights (the shipped config: no hub, no download),
for N = 2, 4, 7, 15 experts, at Speech Commands' size (100 frames) and
ESC-50's (500 frames), in one run:

* the median time of one training step (forward, backward, AdamW step of
  the method and a linear head; cross-entropy on random labels), the
  methods interleaved round by round so that drift hits them alike;
* the analytic FLOPs of the adapters in one step (forward and backward, as
  :mod:`speechbrain_petl.perf.flops` counts the PETL modules' products, plus
  Soft-MoA's three slot products, ``logits = X Φ``, ``X̃ = Dᵀ X`` and
  ``Y = C Ỹ``, which are no ``nn.Linear``: ``2·b·m·d·n·p`` each forward);
* the tensor peak of one step above the model (:class:`~speechbrain_petl.perf.measure.TensorPeak`
  on CPU, ``max_memory_allocated`` on CUDA).

The methods share one frozen backbone (attached side by side, one active
at a time). Experts and the single adapter are GELU bottlenecks of width
``768 / 128 = 6`` beside the MHSA (the single one: Pfeiffer, at the FFN),
Soft-MoA with 1 slot per expert. Goal, from the method's design and stated
with the measurement (never asserted): Soft-MoA's step grows by at most 10 %
from N = 2 to 15, while Dense-MoA's adapter FLOPs grow linearly with N::

    python benchmarks/moa_bench.py --markdown moa_bench.md --json moa_bench.json

``--quick`` runs a 2-block, width-32 AST at 64 frames, N = 2 and 4, two
steps: a check that the script works (seconds), not a measurement.

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import functools
import json
import pathlib
import sys

import torch

from transformers import ASTConfig

from speechbrain_petl.backbones import AST, tiny_config
from speechbrain_petl.methods import Adapters, BottleneckAdapter, DenseMoA, SoftMoA
from speechbrain_petl.methods.moa import SoftMixture
from speechbrain_petl.perf.flops import count_step_flops
from speechbrain_petl.perf.measure import TensorPeak, median, provenance, provenance_line, synchronize, timed

#: Dataset sizes: name -> (frames, batch).
SIZES = {"GSC": (100, 128), "ESC": (500, 32)}
SAMPLES_PER_FRAME = 160  # 10 ms hop at 16 kHz


def bottleneck_block(width):
    """The experts' (and the single adapter's) block: a GELU bottleneck."""
    return functools.partial(BottleneckAdapter, bottleneck=width, activation=torch.nn.GELU)


def configurations(experts, width):
    """``{name: (method factory, n)}``: the single adapter, then each mixture at each N."""
    configs = {"bottleneck": (lambda: Adapters(bottleneck_block(width)), 1)}
    for n in experts:
        configs[f"soft_moa_{n}"] = (functools.partial(SoftMoA, bottleneck_block(width), experts=n, slots=1), n)
        configs[f"dense_moa_{n}"] = (functools.partial(DenseMoA, bottleneck_block(width), experts=n), n)
    return configs


def slot_product_flops(backbone, name, batch, tokens):
    """Soft-MoA's three slot products in one step (forward + backward): each
    ``2·b·m·d·n·p`` forward; backward twice that (input and parameter side)."""
    total = 0
    for module in backbone.petl[name].modules():
        if isinstance(module, SoftMixture):
            d, n, p = module.slots.shape
            total += 3 * 2 * batch * tokens * d * n * p
    return 3 * total  # forward + a backward of twice the forward


def measure(args):
    """The benchmark's rows (one per size and configuration)."""
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        frames, batch = SIZES[size]
        if args.quick:
            frames, batch = 64, 4
        batch = args.batch or batch
        source = tiny_config("ast") if args.quick else ASTConfig()  # ASTConfig(): AST-base's shape
        torch.manual_seed(0)
        backbone = AST(source, pretrained=False, max_frames=frames).to(device)
        width = max(1, round(backbone.hidden_size / 128))
        configs = configurations(args.experts, width)
        for name, (factory, _) in configs.items():
            backbone.attach(factory().to(device), name, active=False)
        head = torch.nn.Linear(backbone.hidden_size, 10).to(device)
        generator = torch.Generator().manual_seed(0)
        wavs = torch.randn(batch, frames * SAMPLES_PER_FRAME + 240, generator=generator).to(device)
        labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
        optimizers = {
            name: torch.optim.AdamW(list(backbone.petl[name].parameters()) + list(head.parameters()), lr=1e-3)
            for name in configs
        }
        backbone.train()

        def step(name):
            optimizer = optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(head(backbone(wavs)), labels)
            loss.backward()
            optimizer.step()

        times = {name: [] for name in configs}
        for round_index in range(args.warmup + args.steps):
            for name in configs:
                backbone.set_active([name])
                seconds, _ = timed(lambda: step(name), device)
                if round_index >= args.warmup:
                    times[name].append(seconds)
        for name, (_, n) in configs.items():
            backbone.set_active([name])
            flops = count_step_flops(backbone, head, wavs)
            petl = flops["by_kind"].get("petl", {"forward": 0, "backward": 0})
            tokens = _tokens(backbone, wavs)
            adapter_flops = petl["forward"] + petl["backward"] + slot_product_flops(backbone, name, batch, tokens)
            optimizers[name].zero_grad(set_to_none=True)
            peak = _peak(lambda: step(name), device)
            rows.append({
                "size": size, "frames": frames, "batch": batch, "tokens": tokens,
                "method": "bottleneck" if name == "bottleneck" else name.rsplit("_", 1)[0], "experts": n,
                "trainable": sum(p.numel() for p in backbone.petl[name].parameters()),
                "step_ms": 1000 * median(times[name]), "adapter_gflop": adapter_flops / 1e9,
                "step_gflop": flops["step"] / 1e9 + slot_product_flops(backbone, name, batch, tokens) / 1e9,
                "tensor_peak_mb": peak / 1e6,
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
        del backbone, optimizers
    return rows


def _tokens(backbone, wavs):
    """Tokens per clip entering the blocks."""
    seen = {}
    handle = backbone.layers[0].mhsa_norm.register_forward_hook(lambda m, i, o: seen.update(n=o.shape[1]))
    try:
        with torch.no_grad():
            backbone(wavs[:1])
    finally:
        handle.remove()
    return seen["n"]


def _peak(fn, device):
    """Peak tensor bytes allocated during ``fn()`` above what existed before."""
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with TensorPeak() as peak:
        fn()
    return peak.bytes


def goals(rows):
    """The design goals, with what was measured (never asserted)."""
    lines = []
    for size in dict.fromkeys(row["size"] for row in rows):
        of = {(r["method"], r["experts"]): r for r in rows if r["size"] == size}
        ns = sorted(n for m, n in of if m == "soft_moa")
        if len(ns) < 2:
            continue
        low, high = ns[0], ns[-1]
        growth = 100 * (of["soft_moa", high]["step_ms"] / of["soft_moa", low]["step_ms"] - 1)
        dense = of["dense_moa", high]["adapter_gflop"] / of["dense_moa", low]["adapter_gflop"]
        soft = of["soft_moa", high]["adapter_gflop"] / of["soft_moa", low]["adapter_gflop"]
        lines.append(
            f"- {size}: Soft-MoA step N={low} → {high}: {growth:+.1f} % (goal ≤ +10 %: "
            f"{'met' if growth <= 10 else 'not met'}); adapter FLOPs ×{soft:.2f} for Soft-MoA, "
            f"×{dense:.2f} for Dense-MoA (N ratio ×{high / low:.2f})."
        )
    return lines


def markdown(rows, facts, args):
    """The report: provenance, settings, one table, the goals."""
    out = [
        provenance_line(facts),
        f"Median of {args.steps} interleaved steps after {args.warmup} warm-up rounds; random weights; "
        f"{'tiny AST (--quick: not a measurement)' if args.quick else 'AST-base'}; device {args.device}.",
        "",
        "| size | method | N | trainable | step (ms) | adapter GFLOP / step | step GFLOP | tensor peak (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['size']} ({r['frames']} frames, batch {r['batch']}) | {r['method']} | {r['experts']} | "
            f"{r['trainable']:,} | {r['step_ms']:.1f} | {r['adapter_gflop']:.3f} | {r['step_gflop']:.1f} | "
            f"{r['tensor_peak_mb']:.0f} |"
        )
    return "\n".join(out + ["", *goals(rows), ""])


def parser():
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", default="2,4,7,15", help="numbers of experts N (comma-separated)")
    p.add_argument("--sizes", default="GSC,ESC", help=f"dataset sizes among {sorted(SIZES)}")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's, 128 GSC / 32 ESC)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny AST, N=2,4, 2 steps: checks the script in seconds")
    p.add_argument("--markdown", help="also write the report (with where, when and how it was measured) here")
    p.add_argument("--json", help="also write the rows here")
    return p


def main(argv=None):
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.experts = [int(n) for n in args.experts.split(",")]
    args.sizes = [s.strip() for s in args.sizes.split(",")]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; known: {sorted(SIZES)}")
    if args.quick:
        args.experts, args.sizes, args.steps, args.warmup = args.experts[:2], args.sizes[:1], 2, 1
    facts = provenance("python benchmarks/moa_bench.py", argv)
    rows = measure(args)
    text = markdown(rows, facts, args)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"provenance": facts, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
