"""SpeechBrain's Checkpointer, safe against a run killed while saving.

Upstream writes a checkpoint's ``CKPT.yaml`` first and its parameter files
after; a run killed in between leaves a folder that looks complete but holds
truncated files, and the restarted run crashes on it. Here the metadata is
written under a pending name and renamed to ``CKPT.yaml`` (atomically) only
once every file is on disk, so a half-written checkpoint is never loaded;
it is removed by the next successful save.
"""

import logging
import os
import shutil

from speechbrain.utils import checkpoints as sb_checkpoints

logger = logging.getLogger(__name__)

PENDING = sb_checkpoints.METAFNAME + ".pending"


class Checkpointer(sb_checkpoints.Checkpointer):
    """Drop-in replacement of ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import torch
    >>> folder = getfixture("tmp_path")
    >>> checkpointer = Checkpointer(folder, {"layer": torch.nn.Linear(2, 2)})
    >>> ckpt = checkpointer.save_checkpoint()
    >>> sorted(p.name for p in ckpt.path.iterdir())
    ['CKPT.yaml', 'layer.ckpt']
    """

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        return super()._save_checkpoint_metafile(
            fpath.with_name(PENDING), meta_to_include, end_of_epoch
        )

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        checkpoint = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        if checkpoint is not None:  # main process
            os.replace(checkpoint.path / PENDING, checkpoint.path / sb_checkpoints.METAFNAME)
            self._remove_unfinished(keep=checkpoint.path)
        return checkpoint

    def _remove_unfinished(self, keep):
        for folder in self.checkpoints_dir.iterdir():
            if (
                folder != keep
                and folder.is_dir()
                and folder.name.startswith(sb_checkpoints.CKPT_PREFIX)
                and (folder / PENDING).exists()
                and not (folder / sb_checkpoints.METAFNAME).exists()
            ):
                logger.info(f"Removing unfinished checkpoint {folder}")
                shutil.rmtree(folder)
