"""Measuring what training and inference cost: time, memory, saved activations and FLOPs per method.

:mod:`~speechbrain_petl.perf.flops` counts a step's matrix-product FLOPs
analytically; :mod:`~speechbrain_petl.perf.measure` times a step and
measures its memory and saved activations; ``python -m
speechbrain_petl.perf.bench`` (:mod:`~speechbrain_petl.perf.bench`) runs
them over every method.
"""
