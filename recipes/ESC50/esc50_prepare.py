"""Data preparation for ESC-50 (environmental sound classification).

Expected layout of ``data_folder`` (the root of the ESC-50 release, e.g. the
extracted ``ESC-50-master``)::

    audio/1-100032-A-0.wav ...   2000 clips, 44.1 kHz mono, 5 s;
                                 named <fold>-<freesound id>-<take>-<target>
    meta/esc50.csv               filename,fold,target,category,esc10,
                                 src_file,take

Test fold ``k`` is one of the 5 pre-defined folds
(:func:`speechbrain_petl.data.folds.fold_splits`):

* ``protocol="rotation"`` (as in the ESC-50 paper's cross-validation):
  valid = fold (k mod 5) + 1, train = the 3 other folds;
* ``protocol="official"``: train = the 4 other folds; no validation fold,
  ``valid.csv`` is a copy of ``test.csv``.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, target, fold`` (``label`` is the category
name, ``target`` its index 0-49). Clips stay at 44.1 kHz on disk; the data
pipeline resamples when loading. With ``few_shot=N``, ``train.csv`` keeps N
clips per class, by default the first N in the order of ``meta/esc50.csv``.

Example
-------
>>> from esc50_prepare import prepare_esc50
>>> prepare_esc50("/data/ESC-50-master", "results/esc50/save", fold=1)
... # doctest: +SKIP
>>> prepare_esc50("/data/ESC-50-master", "results/esc50_8shot/save",
...               fold=2, protocol="official", few_shot=8)  # doctest: +SKIP
"""

import logging
import os
import re

from speechbrain_petl.data import (
    prepare_fold_manifests, protocol_fold_splits, read_fold_metadata,
    require_file, require_folder,
)

logger = logging.getLogger(__name__)

# Bump whenever the manifests' content or format changes, so that outputs of
# an older version of this script are never reused.
PREP_VERSION = 1

DATASET = "ESC-50"
LAYOUT_HINT = (
    "is data_folder the root of the ESC-50 release (containing audio/ and "
    "meta/)?"
)
FOLDS = (1, 2, 3, 4, 5)
# Protocol -> whether it validates on a fold of its own.
SEPARATE_VALID = {"rotation": True, "official": False}
PROTOCOLS = tuple(SEPARATE_VALID)
FIELDNAMES = ("ID", "duration", "wav", "label", "target", "fold")
META_COLUMNS = ("filename", "fold", "target", "category", "esc10",
                "src_file", "take")
# <fold>-<source file>-<take>-<target>.wav
FILENAME = re.compile(r"^(\d+)-([^-]+)-([^-]+)-(\d+)\.wav$")


def split_folds(fold, protocol):
    """The folds of each split for test fold ``fold``.

    Arguments
    ---------
    fold : int
        Test fold, 1 to 5 (each fold holds 400 clips, 8 per class).
    protocol : str
        ``"rotation"`` or ``"official"`` (see the module's docstring).

    Returns
    -------
    dict
        The folds of ``"train"``, ``"valid"`` and ``"test"``.

    Example
    -------
    >>> split_folds(5, "rotation")
    {'train': [2, 3, 4], 'valid': [1], 'test': [5]}
    >>> split_folds(2, "official")
    {'train': [1, 3, 4, 5], 'valid': [2], 'test': [2]}
    """
    return protocol_fold_splits(
        fold, protocol, SEPARATE_VALID, len(FOLDS), DATASET
    )


def prepare_esc50(
    data_folder, save_folder, fold=1, protocol="rotation",
    max_bad_fraction=0.01, skip_prep=False, few_shot=None,
    few_shot_sampling="first", few_shot_seed=0,
):
    """Writes the train/valid/test manifests of ESC-50 for one test fold,
    decoding every clip once (the steps and the skip when nothing changed:
    :mod:`speechbrain_petl.data.prepare`).

    Arguments
    ---------
    data_folder : str
        Root of the ESC-50 release (see the module's docstring).
    save_folder : str
        Where the manifests are written (never inside ``data_folder``).
    fold : int
        Test fold, 1 to 5.
    protocol : str
        ``"rotation"`` or ``"official"``.
    max_bad_fraction, skip_prep, few_shot, few_shot_sampling, few_shot_seed
        As for every preparation: see :mod:`speechbrain_petl.data.prepare`.
        ``few_shot`` counts clips per class; ``"first"`` takes those listed
        first in ``meta/esc50.csv``.

    Raises
    ------
    ValueError
        Bad ``fold``/``protocol``, or inconsistent metadata.
    FileNotFoundError
        ``meta/esc50.csv``, ``audio/`` or a listed clip is missing.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing ESC-50")
        return
    folds = split_folds(fold, protocol)
    settings = {"dataset": "esc50", "fold": int(fold), "protocol": protocol,
                "version": PREP_VERSION}
    prepare_fold_manifests(
        data_folder, save_folder, settings, folds, _check_layout, _read_meta,
        FIELDNAMES, DATASET, max_bad_fraction=max_bad_fraction,
        few_shot=few_shot, few_shot_sampling=few_shot_sampling,
        few_shot_seed=few_shot_seed,
    )


def _check_layout(data_folder):
    """``(meta/esc50.csv, audio/)`` of ``data_folder``, which must exist."""
    meta = require_file(
        os.path.join(data_folder, "meta", "esc50.csv"), DATASET, data_folder,
        LAYOUT_HINT,
    )
    audio = require_folder(
        os.path.join(data_folder, "audio"), DATASET, data_folder, LAYOUT_HINT
    )
    return meta, audio


def _read_meta(layout):
    """One manifest row (without duration) per line of meta/esc50.csv."""
    meta, audio = layout

    def wav_of(name, fold, target, where):
        """The clip's path, once its name is checked against its line."""
        match = FILENAME.match(name)
        if not match or (int(match[1]), int(match[4])) != (fold, target):
            raise ValueError(
                f"{where}: the file name does not match "
                f"<fold>-<src_file>-<take>-<target>.wav with fold {fold} and "
                f"target {target}"
            )
        return os.path.join(audio, name)

    rows = read_fold_metadata(
        meta, DATASET, META_COLUMNS, ("filename", "target", "category"),
        len(FOLDS), 50, wav_of,
    )
    missing_files = [r["wav"] for r in rows if not os.path.isfile(r["wav"])]
    if missing_files:
        raise FileNotFoundError(
            f"{DATASET}: {len(missing_files)} clip(s) listed in {meta} are "
            f"missing from {audio}, e.g. {', '.join(missing_files[:3])}; is "
            "the extracted dataset complete?"
        )
    listed = {row["wav"] for row in rows}
    unlisted = sorted(
        n
        for n in os.listdir(audio)
        if n.lower().endswith(".wav") and os.path.join(audio, n) not in listed
    )
    if unlisted:
        logger.warning(
            "%s: ignoring %d file(s) of %s not listed in %s, e.g. %s",
            DATASET,
            len(unlisted),
            audio,
            meta,
            ", ".join(unlisted[:3]),
        )
    return rows
