"""Runs one recipe under torchrun and saves each rank's trained tensors.

Used by test_ddp.py: ``torchrun --nproc_per_node=2 ddp_probe.py <Recipe>
<probe_dir> <train.py arguments...>``.
"""

import os
import sys

import torch

from recipe_utils import load_recipe_module

if __name__ == "__main__":
    recipe, probe_dir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    brain = load_recipe_module(recipe, "train").main(argv)
    state = brain.backbone.trainable_state_dict()
    state.update({f"classifier.{k}": v for k, v in brain.modules.classifier.module.state_dict().items()})
    torch.save(state, os.path.join(probe_dir, f"rank{os.environ['RANK']}.pt"))
    # Both ranks finish their work before the group goes away: a rank that
    # exits while gloo still serves the other can abort (SIGABRT) at exit.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
