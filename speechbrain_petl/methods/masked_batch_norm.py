"""Batch normalisation over the real frames of a padded batch only."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class MaskedBatchNorm1d(nn.Module):
    """:class:`torch.nn.BatchNorm1d` whose training statistics ignore padding.

    With a ``mask`` (batch, time) of real frames, training-mode statistics
    (used to normalise and to update the running ones) are computed over the
    real frames only: a padded batch gives the statistics and outputs of the
    same clips without padding. Running statistics follow
    :class:`torch.nn.BatchNorm1d`'s rules (``momentum``, or a cumulative
    average when ``momentum`` is None; unbiased running variance); in eval
    mode it normalises with them, as :class:`torch.nn.BatchNorm1d` does.
    Parameters and buffers have BatchNorm1d's names, so checkpoints and
    parameter counts are the same. Half-precision inputs get float32
    statistics and an output of their own precision, as from BatchNorm1d.

    In a distributed run (an initialised process group of more than one
    process) training statistics are taken over the real frames of all
    processes, as :class:`torch.nn.SyncBatchNorm` does over all frames. It
    is deliberately no subclass of BatchNorm: SpeechBrain's DDP wrapping
    would replace it by a SyncBatchNorm, which counts padding.

    Training needs at least 2 real frames (as BatchNorm1d needs 2 values
    per channel). The forward never reads a device tensor's value (no
    GPU-to-CPU sync): the count is checked on the host where it is there
    for free (CPU tensors, or no mask in a single process), raising a
    ValueError as before. On an accelerator a batch with 0 or 1 real frames
    gives NaN outputs (a non-finite loss) and leaves the running statistics
    and ``num_batches_tracked`` as they were.

    Arguments
    ---------
    num_features : int
        Channels.
    eps, momentum, affine, track_running_stats
        As :class:`torch.nn.BatchNorm1d`.

    Example
    -------
    >>> norm = MaskedBatchNorm1d(2)
    >>> x = torch.tensor([[[1.0, 3.0, 100.0]], [[5.0, 7.0, 100.0]]]).expand(2, 2, 3)
    >>> mask = torch.tensor([[True, True, False], [True, True, False]])
    >>> out = norm(x, mask)
    >>> norm.running_mean.tolist()  # 0.9 * 0 + 0.1 * 4 (the padding's 100 is ignored)
    [0.4000000059604645, 0.4000000059604645]
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self):
        """As BatchNorm1d's."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def forward(self, x, mask=None):
        """``x``: (batch, channels, time); ``mask``: (batch, time) bool, True
        on real frames, or None (every frame is real)."""
        if x.dim() != 3 or x.shape[1] != self.num_features:
            raise ValueError(
                f"MaskedBatchNorm1d: expected x (batch, {self.num_features}, time), got {tuple(x.shape)}"
            )
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):  # statistics in float32, as BatchNorm's kernels
            x = x.float()
        if not (self.training or self.running_mean is None):
            out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return out.to(dtype)
        if mask is None:
            if not _distributed():  # every frame is real: the count is known on the host
                _refuse_too_few(x.shape[0] * x.shape[2])
            mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
        if mask.shape != (x.shape[0], x.shape[2]):
            raise ValueError(
                f"MaskedBatchNorm1d: expected mask (batch, time) = {(x.shape[0], x.shape[2])}, got {tuple(mask.shape)}"
            )
        real = mask.unsqueeze(1).to(x.dtype)  # (batch, 1, time)
        sums = _sum_over_processes(torch.cat([real.sum().reshape(1), (x * real).sum(dim=(0, 2))]))
        count, total = sums[0], sums[1:]
        if count.device.type == "cpu":  # on the host already: reading it syncs nothing
            _refuse_too_few(count)
        enough = count >= 2  # a device tensor: never branched on in Python
        mean = total / count
        centred = x - mean[None, :, None]
        var = _sum_over_processes((centred.square() * real).sum(dim=(0, 2))) / count
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count, enough)
        # NaN for every output of a batch with too few real frames (accelerators only)
        scale = torch.where(enough, torch.rsqrt(var + self.eps), torch.nan)
        out = centred * scale[None, :, None]
        if self.affine:
            out = out * self.weight[None, :, None] + self.bias[None, :, None]
        return out.to(dtype)

    def _update_running_stats(self, mean, var, count, enough):
        """As :class:`torch.nn.BatchNorm1d`: ``momentum`` or a cumulative
        average, and the unbiased variance; unchanged unless ``enough``
        (a device bool), all without reading a device value."""
        with torch.no_grad():
            tracked = self.num_batches_tracked + enough.long()
            if self.momentum is None:  # 1 / batches, in float64 as a Python float would be
                factor = 1.0 / tracked.double()
            else:
                factor = self.momentum
            running_mean = self.running_mean.mul(1 - factor).add(factor * mean.detach())
            running_var = self.running_var.mul(1 - factor).add(factor * var.detach() * count / (count - 1))
            self.running_mean.copy_(torch.where(enough, running_mean, self.running_mean))
            self.running_var.copy_(torch.where(enough, running_var, self.running_var))
            self.num_batches_tracked.copy_(tracked)


def _refuse_too_few(count):
    """Raises the ValueError of a training batch with fewer than 2 real
    frames; ``count`` is an int or a CPU tensor (read on the host)."""
    if count < 2:
        raise ValueError(
            f"MaskedBatchNorm1d: expected more than 1 real frame per channel when training, got {int(count)}"
        )


def _sum_over_processes(values):
    """``values`` summed over the processes of a distributed run (gradients
    flow back to every process), or as they are in a single process."""
    if _distributed():
        from torch.distributed.nn.functional import all_reduce

        values = all_reduce(values)
    return values


def _distributed():
    """Whether an initialised process group has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
