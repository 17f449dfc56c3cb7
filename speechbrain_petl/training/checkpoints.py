"""SpeechBrain's Checkpointer, safe against a run killed while saving.

Upstream writes a checkpoint's ``CKPT.yaml`` first and its parameter files
after; a run killed in between leaves a folder that looks complete but holds
truncated files, and the restarted run crashes on it. Here the metadata is
written under a pending name and renamed to ``CKPT.yaml`` (atomically) only
once every file is on disk, so a half-written checkpoint is never loaded;
it is removed by the next successful save.

Each checkpoint also records the size and SHA-256 of its files
(:data:`FILES_RECORD`). Resuming skips a checkpoint whose files changed
since (truncated, overwritten, emptied), with a warning naming the file, and
loads the next one; with none left, or when a file cannot be loaded, the
error names the checkpoint and the file.
"""

import hashlib
import json
import logging
import os
import pickle
import shutil
import zipfile

from speechbrain.utils import checkpoints as sb_checkpoints

logger = logging.getLogger(__name__)

PENDING = sb_checkpoints.METAFNAME + ".pending"
#: Size and SHA-256 of every file of a checkpoint, written when it is saved.
FILES_RECORD = "files.json"
#: What a loading hook raises on a damaged or foreign file.
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names it and the file."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damaged_files(checkpoint):
    """``[(file name, what is wrong)]`` for the files of ``checkpoint`` that
    differ from what was saved (empty when intact, or when the checkpoint
    predates the record of its files and only emptiness can be told).

    Example
    -------
    >>> import torch
    >>> checkpointer = Checkpointer(getfixture("tmp_path"), {"layer": torch.nn.Linear(2, 2)})
    >>> ckpt = checkpointer.save_checkpoint()
    >>> damaged_files(ckpt)
    []
    >>> _ = (ckpt.path / "layer.ckpt").write_bytes(b"")
    >>> damaged_files(ckpt)  # doctest: +ELLIPSIS
    [('layer.ckpt', 'empty file (... bytes when saved)')]
    """
    folder = checkpoint.path
    record = folder / FILES_RECORD
    if not record.is_file():
        return [(p.name, "empty file") for p in checkpoint.paramfiles.values() if p.stat().st_size == 0]
    with open(record, encoding="utf-8") as fin:
        saved = json.load(fin)
    problems = []
    for name, expected in sorted(saved.items()):
        path = folder / name
        if not path.is_file():
            problems.append((name, "missing"))
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            what = "empty file" if size == 0 else f"{size} bytes: truncated or overwritten"
            problems.append((name, f"{what} ({expected['bytes']} bytes when saved)"))
        elif _sha256(path) != expected["sha256"]:
            problems.append((name, "content changed since it was saved (SHA-256 differs)"))
    return problems


class Checkpointer(sb_checkpoints.Checkpointer):
    """Drop-in replacement of ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import torch
    >>> folder = getfixture("tmp_path")
    >>> checkpointer = Checkpointer(folder, {"layer": torch.nn.Linear(2, 2)})
    >>> ckpt = checkpointer.save_checkpoint()
    >>> sorted(p.name for p in ckpt.path.iterdir())
    ['CKPT.yaml', 'files.json', 'layer.ckpt']
    """

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        return super()._save_checkpoint_metafile(
            fpath.with_name(PENDING), meta_to_include, end_of_epoch
        )

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """SpeechBrain's save, then the atomic rename of the metadata and the file record."""
        checkpoint = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        if checkpoint is not None:  # main process
            files = {
                p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(checkpoint.path.iterdir())
                if p.suffix == sb_checkpoints.PARAMFILE_EXT
            }
            with open(checkpoint.path / FILES_RECORD, "w", encoding="utf-8") as fout:
                json.dump(files, fout, indent=1)
            os.replace(checkpoint.path / PENDING, checkpoint.path / sb_checkpoints.METAFNAME)
            self._remove_unfinished(keep=checkpoint.path)
        # Under DDP every process must then see the same checkpoints: the
        # deletions that follow (save_and_keep_only) are collective calls.
        sb_checkpoints.ddp_barrier()
        return checkpoint

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """SpeechBrain's, except that a damaged checkpoint (see
        :func:`damaged_files`) is skipped with a warning for the next one in
        the same order (the next most recent, or next best by the key)."""
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        damaged = []
        for checkpoint in candidates:
            problems = damaged_files(checkpoint)
            if not problems:
                for bad, bad_problems in damaged:
                    logger.warning(
                        "Checkpoint %s is damaged (%s); falling back to checkpoint %s",
                        bad.path, _describe(bad_problems), checkpoint.path,
                    )
                self.load_checkpoint(checkpoint)
                return checkpoint
            damaged.append((checkpoint, problems))
        if damaged:
            raise CheckpointError(
                f"No intact checkpoint in {self.checkpoints_dir}:\n  "
                + "\n  ".join(f"{c.path}: {_describe(problems)}" for c, problems in damaged)
                + "\nMove these folders away to start afresh (or restore the files from a backup)."
            )
        logger.info("Would load a checkpoint here, but none found yet.")
        return None

    def _call_load_hooks(self, checkpoint):
        """Loads every recoverable, naming the checkpoint and the file when
        one cannot be loaded."""
        logger.info(f"Loading a checkpoint from {checkpoint.path}")
        end_of_epoch = checkpoint.meta["end-of-epoch"]
        for name, obj in self.recoverables.items():
            path = checkpoint.paramfiles.get(name)
            if path is None:
                if self.allow_partial_load or self.optional_recoverables.get(name) or "dataloader" in name:
                    logger.warning("Checkpoint %s has no %s.ckpt; '%s' keeps its state", checkpoint.path, name, name)
                    continue
                raise CheckpointError(f"Checkpoint {checkpoint.path} has no {name}.ckpt (for the recoverable '{name}').")
            hook = self.custom_load_hooks.get(name) or sb_checkpoints.get_default_hook(
                obj, sb_checkpoints.DEFAULT_LOAD_HOOKS
            )
            if hook is None:
                raise RuntimeError(f"Don't know how to load {type(obj).__name__} ('{name}'): register a load hook.")
            try:
                hook(obj, path, end_of_epoch)
            except LOAD_ERRORS as err:
                raise CheckpointError(self._load_error(checkpoint, path, err)) from None

    def _load_error(self, checkpoint, path, err):
        if isinstance(err, pickle.UnpicklingError):
            # (torch's own message suggests weights_only=False: never do that
            # for a file that may not be what it claims)
            reason = "it is not a tensors-only torch file (unpickling failed)"
        else:
            reason = str(err).strip() or type(err).__name__
        older = [
            c.path.name for c in self.find_checkpoints()
            if c.path != checkpoint.path and not damaged_files(c)
        ]
        advice = (
            f" Other intact checkpoint(s): {', '.join(older)}; move {checkpoint.path} away to resume from the most recent."
            if older else ""
        )
        return f"Cannot load {path.name} of checkpoint {checkpoint.path}: {reason}.{advice}"

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


def _describe(problems):
    return "; ".join(f"{name}: {what}" for name, what in problems)
