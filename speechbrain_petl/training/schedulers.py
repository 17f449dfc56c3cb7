"""Learning-rate schedules stepped once per optimizer step.

The Brain builds the scheduler named in the yaml once the training loader is
known, passing ``total_steps`` (optimizer steps over all epochs)::

    lr_scheduler: !name:speechbrain_petl.training.schedulers.warmup_cosine
        warmup_fraction: 0.0
"""

import math

import torch


def warmup_cosine(optimizer, total_steps, warmup_fraction=0.0, final_factor=0.0):
    """Linear warm-up then cosine annealing to ``final_factor`` x the base lr.

    With ``warmup_fraction=0`` this is the paper's schedule: cosine annealing
    over every step, no warm-up. Returns a ``LambdaLR`` (checkpointed by
    SpeechBrain like any torch scheduler).

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        The optimizer whose learning rates are scheduled.
    total_steps : int
        Optimizer steps over the whole training.
    warmup_fraction : float
        Fraction of ``total_steps`` spent warming up linearly from 0.
    final_factor : float
        Learning-rate multiplier reached at the last step.

    Example
    -------
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = warmup_cosine(opt, total_steps=10, warmup_fraction=0.2)
    >>> lrs = []
    >>> for _ in range(10):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.0, 0.5, 1.0, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    warmup = int(round(warmup_fraction * total_steps))

    def factor(step):
        """Learning-rate multiplier at optimizer step ``step``."""
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
