"""Batch normalisation over the real frames of a padded batch only."""

import torch
from torch import nn


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` whose training statistics ignore padding.

    With a ``mask`` (batch, time) of real frames, training-mode statistics
    (used to normalise and to update the running ones) are computed over the
    real frames only: a padded batch gives the statistics and outputs of the
    same clips without padding. Running statistics follow
    :class:`torch.nn.BatchNorm1d`'s rules (``momentum``, or a cumulative
    average when ``momentum`` is None; unbiased running variance). Without a
    mask, or when normalising with running statistics (eval mode), it *is*
    :class:`torch.nn.BatchNorm1d`; parameters and buffers are the same, so
    are checkpoints.

    Example
    -------
    >>> norm = MaskedBatchNorm1d(2)
    >>> x = torch.tensor([[[1.0, 3.0, 100.0]], [[5.0, 7.0, 100.0]]]).expand(2, 2, 3)
    >>> mask = torch.tensor([[True, True, False], [True, True, False]])
    >>> out = norm(x, mask)
    >>> norm.running_mean.tolist()  # 0.9 * 0 + 0.1 * 4 (the padding's 100 is ignored)
    [0.4000000059604645, 0.4000000059604645]
    """

    def forward(self, x, mask=None):
        """``x``: (batch, channels, time); ``mask``: (batch, time) bool, True
        on real frames, or None."""
        batch_stats = self.training or self.running_mean is None
        if mask is None or not batch_stats:
            return super().forward(x)
        if x.dim() != 3 or mask.shape != (x.shape[0], x.shape[2]):
            raise ValueError(
                f"MaskedBatchNorm1d: expected x (batch, channels, time) and mask (batch, time), "
                f"got x {tuple(x.shape)} and mask {tuple(mask.shape)}"
            )
        real = mask.unsqueeze(1).to(x.dtype)  # (batch, 1, time)
        count = real.sum()
        if count < 2:
            raise ValueError(
                f"MaskedBatchNorm1d: expected more than 1 real frame per channel when training, got {int(count)}"
            )
        mean = (x * real).sum(dim=(0, 2)) / count
        var = (((x - mean[None, :, None]) * real) ** 2).sum(dim=(0, 2)) / count
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count)
        out = (x - mean[None, :, None]) * torch.rsqrt(var + self.eps)[None, :, None]
        if self.affine:
            out = out * self.weight[None, :, None] + self.bias[None, :, None]
        return out

    def _update_running_stats(self, mean, var, count):
        """As :class:`torch.nn.BatchNorm1d`: ``momentum`` or a cumulative
        average, and the unbiased variance."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
            self.running_var.mul_(1 - factor).add_(factor * var.detach() * count / (count - 1))
