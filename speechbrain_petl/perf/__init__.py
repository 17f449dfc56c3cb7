"""Measuring what a training step costs: analytic FLOP counts
(:mod:`~speechbrain_petl.perf.flops`) and the step's time, memory and saved
activations (:mod:`~speechbrain_petl.perf.measure`). The command that uses
them is ``python -m speechbrain_petl.bench``."""
