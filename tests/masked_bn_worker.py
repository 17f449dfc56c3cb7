"""One process of a 2-process gloo group training a MaskedBatchNorm1d on its
own padded batch (used by tests/test_methods.py)."""

import os

import torch
import torch.distributed as dist

from speechbrain_petl.methods.masked_batch_norm import MaskedBatchNorm1d


def run_rank(rank, port, batches, out_folder):
    """Normalises ``batches[rank]`` (x, mask) in training mode and saves the
    outputs, the running statistics and the input's gradient."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(batches))
    try:
        torch.manual_seed(0)
        norm = MaskedBatchNorm1d(3)
        torch.nn.init.normal_(norm.weight)
        x, mask = batches[rank]
        x = x.clone().requires_grad_()
        out = norm(x, mask)
        (out * mask.unsqueeze(1)).square().sum().backward()
        state = {"out": out.detach(), "x_grad": x.grad}
        state.update({k: v for k, v in norm.state_dict().items()})
        torch.save(state, os.path.join(out_folder, f"rank{rank}.pt"))
        # Both ranks leave the group together: a rank tearing gloo down while
        # the other still talks to it was seen to abort (SIGABRT) in CI.
        dist.barrier()
    finally:
        dist.destroy_process_group()
