"""Data preparation for ESC-50 (environmental sound classification).

Expected layout of ``data_folder`` (the root of the ESC-50 release, e.g. the
extracted ``ESC-50-master``)::

    audio/1-100032-A-0.wav ...   2000 clips, 44.1 kHz mono, 5 s;
                                 named <fold>-<freesound id>-<take>-<target>
    meta/esc50.csv               filename,fold,target,category,esc10,
                                 src_file,take

Splits of the 5 pre-defined folds, for test fold ``k``:

* ``protocol="rotation"`` (as in the ESC-50 paper's cross-validation):
  test = fold k, valid = fold (k mod 5) + 1, train = the 3 other folds;
* ``protocol="official"``: train = the 4 other folds, test = fold k. There is
  no validation fold: ``valid.csv`` is written identical to ``test.csv`` (a
  warning says so), so validation scores are test scores.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, target, fold`` (``label`` is the category
name, ``target`` its index 0-49). Nothing is written inside ``data_folder``.
Clips stay at 44.1 kHz on disk; the data pipeline resamples when loading.

Few-shot training sets (the PETL paper's Table 2): with ``few_shot=N``,
``train.csv`` keeps N clips per class, by default the first N in the order
of ``meta/esc50.csv``; ``valid.csv`` and ``test.csv`` are unchanged.

Example
-------
>>> from esc50_prepare import prepare_esc50
>>> prepare_esc50("/data/ESC-50-master", "results/esc50/save", fold=1)
... # doctest: +SKIP
"""

import csv
import logging
import os
import re

from speechbrain_petl.data import (
    assign_folds,
    fold_splits,
    prepare_split_manifests,
    require_file,
    require_folder,
)

logger = logging.getLogger(__name__)

# Bump whenever the manifests' content or format changes, so that outputs of
# an older version of this script are never reused.
PREP_VERSION = 1

FOLDS = (1, 2, 3, 4, 5)
PROTOCOLS = ("rotation", "official")
META_COLUMNS = ("filename", "fold", "target", "category", "esc10",
                "src_file", "take")
FIELDNAMES = ("ID", "duration", "wav", "label", "target", "fold")
DATASET = "ESC-50"
LAYOUT_HINT = (
    "is data_folder the root of the ESC-50 release (containing audio/ and "
    "meta/)?"
)
# <fold>-<source file>-<take>-<target>.wav
FILENAME = re.compile(r"^(\d+)-([^-]+)-([^-]+)-(\d+)\.wav$")


def split_folds(fold, protocol):
    """The folds of each split for test fold ``fold``.

    Arguments
    ---------
    fold : int
        Test fold, 1 to 5.
    protocol : str
        ``"rotation"`` or ``"official"`` (see the module's docstring).

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Example
    -------
    >>> split_folds(5, "rotation")
    {'train': [2, 3, 4], 'valid': [1], 'test': [5]}
    >>> split_folds(2, "official")
    {'train': [1, 3, 4, 5], 'valid': [2], 'test': [2]}
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"{DATASET}: protocol must be one of {PROTOCOLS}, got "
            f"{protocol!r}"
        )
    return fold_splits(fold, 5, protocol == "rotation", DATASET)


def prepare_esc50(
    data_folder,
    save_folder,
    fold=1,
    protocol="rotation",
    max_bad_fraction=0.01,
    skip_prep=False,
    few_shot=None,
    few_shot_sampling="first",
    few_shot_seed=0,
):
    """Writes the train/valid/test manifests of ESC-50 for one test fold.

    Skipped when ``save_folder`` already holds the three manifests of a
    preparation with the same settings (data folder, fold, protocol,
    ``max_bad_fraction``, few-shot options, script version). Every clip is
    decoded once; unusable clips are dropped and listed in
    ``<save_folder>/bad_clips.log``. With ``few_shot``, the training split
    is then cut down to ``few_shot`` clips per class.

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
    max_bad_fraction : float
        Largest tolerated fraction of unusable clips before giving up.
    skip_prep : bool
        If True, does nothing.
    few_shot : int, optional
        If given, ``train.csv`` keeps only this many clips per class (the
        PETL paper's few-shot training sets, Table 2); a class with fewer
        keeps all of its clips, with a warning. ``valid.csv`` and
        ``test.csv`` are unaffected. None (default): every training clip.
    few_shot_sampling : str
        ``"first"`` (default, the paper's choice): the first ``few_shot``
        clips of each class in the order of ``meta/esc50.csv``, after
        dropping unusable clips; ``"random"``: ``few_shot`` clips per class
        drawn with ``few_shot_seed``.
    few_shot_seed : int
        Seed of ``few_shot_sampling="random"`` (unused otherwise).

    Raises
    ------
    ValueError
        Bad ``fold``/``protocol``/few-shot option, or inconsistent metadata.
    FileNotFoundError
        ``meta/esc50.csv``, ``audio/`` or a listed clip is missing.
    RuntimeError
        More than ``max_bad_fraction`` of the clips are unusable.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing ESC-50")
        return
    folds = split_folds(fold, protocol)
    prepare_split_manifests(
        data_folder, save_folder,
        {"dataset": "esc50", "fold": int(fold), "protocol": protocol,
         "version": PREP_VERSION},
        _check_layout, lambda layout: assign_folds(_read_meta(*layout), folds),
        FIELDNAMES, DATASET, max_bad_fraction=max_bad_fraction,
        few_shot=few_shot, few_shot_sampling=few_shot_sampling,
        few_shot_seed=few_shot_seed,
        split_notes={split: f"folds {folds[split]}" for split in folds},
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


def _read_meta(meta, audio):
    """One manifest row (without duration) per line of meta/esc50.csv."""
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in META_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{DATASET}: {meta} lacks column(s) {missing}; expected the "
                f"header {','.join(META_COLUMNS)}"
            )
        lines = list(reader)
    if not lines:
        raise ValueError(f"{DATASET}: {meta} lists no clips")

    rows, missing_files, seen, category_of = [], [], set(), {}
    for number, line in enumerate(lines, start=2):
        name = line["filename"]
        where = f"{DATASET}: {meta} line {number} ({name})"
        try:
            fold, target = int(line["fold"]), int(line["target"])
        except ValueError:
            raise ValueError(
                f"{where}: fold and target must be integers"
            ) from None
        if fold not in FOLDS or not 0 <= target <= 49:
            raise ValueError(
                f"{where}: fold {fold} / target {target} out of range "
                "(folds 1-5, targets 0-49)"
            )
        match = FILENAME.match(name)
        if not match or (int(match[1]), int(match[4])) != (fold, target):
            raise ValueError(
                f"{where}: the file name does not match "
                f"<fold>-<src_file>-<take>-<target>.wav with fold {fold} and "
                f"target {target}"
            )
        if name in seen:
            raise ValueError(f"{where}: listed twice")
        category = category_of.setdefault(target, line["category"])
        if line["category"] != category:
            raise ValueError(
                f"{where}: target {target} is {line['category']!r} here but "
                f"{category!r} on an earlier line"
            )
        seen.add(name)
        wav = os.path.join(audio, name)
        if not os.path.isfile(wav):
            missing_files.append(wav)
        rows.append(
            {
                "ID": os.path.splitext(name)[0],
                "wav": wav,
                "label": line["category"],
                "target": target,
                "fold": fold,
            }
        )
    if missing_files:
        raise FileNotFoundError(
            f"{DATASET}: {len(missing_files)} clip(s) listed in {meta} are "
            f"missing from {audio}, e.g. {', '.join(missing_files[:3])}; is "
            "the extracted dataset complete?"
        )
    unlisted = sorted(
        n
        for n in os.listdir(audio)
        if n.lower().endswith(".wav") and n not in seen
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
