"""Choose a method's size to land on a PETL parameter budget (Figure 2).

Usage::

    python -m speechbrain_petl.studies.budget recipes/Google-speech-commands/PETL/hparams/conformer_gsc.yaml \\
        --key=adapter_bottleneck --targets=50000,100000,250000,500000,1000000

For each target, finds the integer value of the top-level yaml ``key``
(``adapter_bottleneck``, ``lora_rank``, ``prompt_length``, ``prefix_length``,
the mixtures' ``experts`` and ``slots`` ...) whose model has the PETL parameter count closest to it, counting the
model the yaml really builds (on PyTorch's meta device: no memory, no
weights, no download). Prints the exact counts and the ``--sweep`` argument
for :mod:`speechbrain_petl.studies.study`. Other keys are fixed with
``--key=value`` overrides: a mixture's budget is experts x expert size
(+ slots or router), e.g. ``--key=adapter_bottleneck --experts=4``.
"""

import argparse
import functools

import torch

from speechbrain_petl.studies.params import load_modules, summarize


def petl_count(hparams, key, value, overrides=()):
    """PETL parameters of ``hparams`` with ``key`` set to ``value``."""
    with torch.device("meta"):
        modules = load_modules([hparams, "--pretrained=False", f"--{key}={value}", *overrides])
    return summarize(modules)["petl"]


def solve(count, target, low=1, high=1 << 16):
    """Smallest-error integer ``v`` in [low, high] for a non-decreasing
    ``count(v)``: doubling from ``low`` until ``target`` is reached (so a
    key whose models grow fast, such as a mixture's number of experts, is
    never built at a huge value), binary search for the first value
    reaching it, then the closer of it and its predecessor.

    Example
    -------
    >>> solve(lambda v: 1000 * v + 50, 12_345)
    12
    >>> tried = []
    >>> solve(lambda v: tried.append(v) or 76_842 * v, 500_000), max(tried)
    (7, 9)
    """
    if count(low) >= target:
        return low
    lo, hi = low, low + 1
    while hi < high and count(hi) < target:  # doubling: count(lo) < target throughout
        lo, hi = hi, min(high, low + 2 * (hi - low))
    lo += 1
    while lo < hi:  # first v in (lo - 1, hi] with count(v) >= target
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > low and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        return lo - 1
    return lo


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.studies.budget``."""
    parser = argparse.ArgumentParser(description="Solve a method's size for PETL parameter budgets.")
    parser.add_argument("hparams")
    parser.add_argument("--key", required=True, help="top-level yaml key to solve for")
    parser.add_argument("--targets", required=True, help="comma-separated parameter budgets")
    args, overrides = parser.parse_known_args(argv)
    count = functools.lru_cache(maxsize=None)(
        lambda value: petl_count(args.hparams, args.key, value, overrides)
    )
    rows = []
    for target in (int(t) for t in args.targets.split(",")):
        value = solve(count, target)
        rows.append((target, value, count(value)))
        print(f"target {target:>10,}: {args.key}={value:<6} -> {count(value):,} PETL parameters")
    print(f"--sweep={args.key}:" + ",".join(str(value) for _, value, _ in rows))
    return rows


if __name__ == "__main__":
    main()
