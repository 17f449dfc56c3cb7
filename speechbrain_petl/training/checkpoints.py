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
loads the next one; with none left, when a file cannot be loaded, or when a
checkpoint's ``CKPT.yaml`` or files record cannot be read, a
:class:`CheckpointError` names the checkpoint and the file, and says which
folder to delete to resume from the previous checkpoint (or start afresh).
"""

import hashlib
import json
import logging
import os
import pickle
import shutil
import zipfile

from speechbrain.utils import checkpoints as sb_checkpoints

from speechbrain_petl.backbones.trained_state import FingerprintMismatch
from speechbrain_petl.data.files import DamagedFileError, read_json, read_yaml

logger = logging.getLogger(__name__)

PENDING = sb_checkpoints.METAFNAME + ".pending"
#: Size and SHA-256 of every file of a checkpoint, written when it is saved.
FILES_RECORD = "files.json"
#: What a loading hook raises on a damaged or foreign file.
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


class CheckpointError(DamagedFileError):
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
    try:
        saved = read_json(record)
    except DamagedFileError as err:
        return [(FILES_RECORD, f"{err.reason}; it records the files of the checkpoint, which cannot be checked")]
    if not isinstance(saved, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in saved.values()
    ):
        return [(FILES_RECORD, "not a record of files ({name: {bytes, sha256}})")]
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

    def list_checkpoints(self):
        """SpeechBrain's, except that a ``CKPT.yaml`` that cannot be read (or
        lacks what SpeechBrain writes in it) is a :class:`CheckpointError`
        naming it, not a KeyError or a TypeError."""
        checkpoints = []
        for folder in self._list_checkpoint_dirs():
            meta_file = folder / sb_checkpoints.METAFNAME
            try:
                meta = read_yaml(meta_file)
            except DamagedFileError as err:
                raise CheckpointError(meta_file, err.reason, self._damaged_advice(folder)) from None
            missing = [key for key in ("end-of-epoch", "unixtime") if not isinstance(meta, dict) or key not in meta]
            if missing:
                raise CheckpointError(
                    meta_file,
                    f"no {missing} in it ({meta_file.stat().st_size} bytes: truncated or overwritten?)",
                    self._damaged_advice(folder),
                )
            paramfiles = {p.stem: p for p in folder.iterdir() if p.suffix == sb_checkpoints.PARAMFILE_EXT}
            checkpoints.append(sb_checkpoints.Checkpoint(folder, meta, paramfiles))
        return checkpoints

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
                + "\nThe checkpoints are damaged: delete these folders to start the run afresh, "
                "or restore them from a backup."
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
            except FingerprintMismatch:
                raise  # not damage: another backbone, which every checkpoint of the run would meet
            except LOAD_ERRORS as err:
                raise CheckpointError(self._load_error(checkpoint, path, err)) from None

    def _load_error(self, checkpoint, path, err):
        if isinstance(err, DamagedFileError) and err.reason:
            reason = err.reason
        elif isinstance(err, pickle.UnpicklingError):
            # (torch's own message suggests weights_only=False: never do that
            # for a file that may not be what it claims)
            reason = "it is not a tensors-only torch file (unpickling failed)"
        else:
            reason = str(err).strip() or type(err).__name__
        if (checkpoint.path / FILES_RECORD).is_file() and not damaged_files(checkpoint):
            # The file is as it was saved: not damage, which deleting would not cure.
            advice = (
                f"{path.name} is as it was saved, for other settings of '{path.stem}' than this run's: "
                "resume with the settings the run was saved with (its hyperparams.yaml)."
            )
        else:
            advice = self._damaged_advice(checkpoint.path)
        return f"Cannot load {path.name} of checkpoint {checkpoint.path}: {reason}. {advice}"

    def _damaged_advice(self, folder):
        """What to do about the damaged checkpoint ``folder``."""
        others = sorted(
            p.name for p in self.checkpoints_dir.iterdir()
            if p != folder and self._is_checkpoint_dir(p)
        )
        if others:
            return (
                f"The checkpoint is damaged: delete {folder} to resume from the previous one "
                f"(other checkpoints: {', '.join(others)})."
            )
        return (
            f"The checkpoint is damaged and it is the only one: delete {folder} to start the run "
            "afresh, or restore it from a backup."
        )

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
