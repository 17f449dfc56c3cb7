"""Runs a recipe's ``train.py`` and SIGKILLs itself at a chosen point.

Used by the exact-resume test in test_recipes.py::

    python killable_run.py <Recipe> <kill point> <train.py arguments...>

Kill points (epochs and steps count from 1):

* ``none``: run to the end;
* ``step:E:S``: right after training step S of epoch E;
* ``save:E:S:K``: inside the checkpoint saved after step S of epoch E, once
  its K-th ``torch.save`` file is written (the checkpoint is incomplete).

SIGKILL gives the process no chance to clean up, like a machine failure.
"""

import os
import pathlib
import signal
import sys

import torch

from recipe_utils import load_recipe_module
from speechbrain_petl.training.brain import ClassificationBrain

_where = {"epoch": None, "step": None}


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point):
    kind, *numbers = point.split(":")
    numbers = [int(n) for n in numbers]
    fit_batch = ClassificationBrain.fit_batch

    def fit_batch_then_maybe_die(self, batch):
        loss = fit_batch(self, batch)
        _where.update(epoch=self.hparams.epoch_counter.current, step=self.step)
        if kind == "step" and [_where["epoch"], _where["step"]] == numbers:
            die()
        return loss

    ClassificationBrain.fit_batch = fit_batch_then_maybe_die
    if kind == "save":
        save, written = torch.save, []

        def save_then_maybe_die(obj, path, *args, **kwargs):
            save(obj, path, *args, **kwargs)
            if [_where["epoch"], _where["step"]] == numbers[:2] and pathlib.Path(path).parent.name.startswith("CKPT"):
                written.append(path)
                if len(written) == numbers[2]:
                    die()

        torch.save = save_then_maybe_die


if __name__ == "__main__":
    recipe, point, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if point != "none":
        arm(point)
    load_recipe_module(recipe, "train").main(argv)
