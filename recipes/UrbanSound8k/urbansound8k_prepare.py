"""Data preparation for UrbanSound8K (urban sound classification).

Expected layout of ``data_folder`` (the extracted ``UrbanSound8K`` folder)::

    audio/fold1/100032-3-0-0.wav ...   8,732 clips in 10 folders fold1..fold10;
                                       named <fsID>-<classID>-<occurrence>-
                                       <slice>.wav
    metadata/UrbanSound8K.csv          slice_file_name,fsID,start,end,
                                       salience,fold,classID,class

The clips are as heterogeneous as their Freesound sources: 8 to 96 kHz, 8-,
16- and 24-bit PCM or 32-bit float, mono or stereo, at most 4 s and many
shorter. They are used as they are: preparation decodes each once to check
it, and the data pipeline down-mixes and resamples to 16 kHz at load time
(:func:`speechbrain_petl.data.load_audio`).

Splits of the 10 pre-defined folds, for test fold ``k``:

* ``protocol="paper"`` (the dataset's 10-fold cross-validation, as in the
  PETL paper): train = the 9 other folds, test = fold k. There is no
  validation fold: ``valid.csv`` is written identical to ``test.csv`` (a
  warning says so), so validation scores are test scores;
* ``protocol="validation"``: test = fold k, valid = fold (k mod 10) + 1,
  train = the 8 other folds.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, classID, fold`` (``label`` is the class
name, e.g. ``dog_bark``; ``classID`` its index 0-9). Nothing is written
inside ``data_folder``.

Few-shot training sets (the PETL paper's Table 2): with ``few_shot=N``,
``train.csv`` keeps N clips per class, by default the first N in the order
of ``metadata/UrbanSound8K.csv``; ``valid.csv`` and ``test.csv`` are
unchanged.

Example
-------
>>> from urbansound8k_prepare import prepare_urbansound8k
>>> prepare_urbansound8k("/data/UrbanSound8K", "results/us8k/save", fold=10)
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

FOLDS = tuple(range(1, 11))
PROTOCOLS = ("paper", "validation")
# The 10 classes, indexed by classID.
CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark",
    "drilling", "engine_idling", "gun_shot", "jackhammer", "siren",
    "street_music",
)  # fmt: skip
META_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience",
                "fold", "classID", "class")
FIELDNAMES = ("ID", "duration", "wav", "label", "classID", "fold")
DATASET = "UrbanSound8K"
LAYOUT_HINT = (
    "is data_folder the extracted UrbanSound8K folder (containing "
    "audio/fold1..fold10/ and metadata/UrbanSound8K.csv)?"
)
# <fsID>-<classID>-<occurrenceID>-<sliceID>.wav
FILENAME = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)\.wav$")


def split_folds(fold, protocol):
    """The folds of each split for test fold ``fold``.

    Arguments
    ---------
    fold : int
        Test fold, 1 to 10.
    protocol : str
        ``"paper"`` or ``"validation"`` (see the module's docstring).

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Example
    -------
    >>> split_folds(10, "validation")
    {'train': [2, 3, 4, 5, 6, 7, 8, 9], 'valid': [1], 'test': [10]}
    >>> split_folds(3, "paper")
    {'train': [1, 2, 4, 5, 6, 7, 8, 9, 10], 'valid': [3], 'test': [3]}
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"{DATASET}: protocol must be one of {PROTOCOLS}, got "
            f"{protocol!r}"
        )
    return fold_splits(fold, 10, protocol == "validation", DATASET)


def prepare_urbansound8k(
    data_folder,
    save_folder,
    fold=10,
    protocol="paper",
    max_bad_fraction=0.01,
    skip_prep=False,
    few_shot=None,
    few_shot_sampling="first",
    few_shot_seed=0,
):
    """Writes the train/valid/test manifests of UrbanSound8K for one test
    fold.

    Skipped when ``save_folder`` already holds the three manifests of a
    preparation with the same settings (data folder, fold, protocol,
    ``max_bad_fraction``, few-shot options, script version). Every clip is
    decoded once; unusable clips are dropped and listed in
    ``<save_folder>/bad_clips.log``. With ``few_shot``, the training split
    is then cut down to ``few_shot`` clips per class.

    Arguments
    ---------
    data_folder : str
        The extracted ``UrbanSound8K`` folder (see the module's docstring).
    save_folder : str
        Where the manifests are written (never inside ``data_folder``).
    fold : int
        Test fold, 1 to 10.
    protocol : str
        ``"paper"`` (train on the 9 other folds; ``valid.csv`` = ``test.csv``)
        or ``"validation"`` (validate on fold ``fold % 10 + 1``).
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
        clips of each class in the order of ``metadata/UrbanSound8K.csv``,
        after dropping unusable clips; ``"random"``: ``few_shot`` clips per
        class drawn with ``few_shot_seed``.
    few_shot_seed : int
        Seed of ``few_shot_sampling="random"`` (unused otherwise).

    Raises
    ------
    ValueError
        Bad ``fold``/``protocol``/few-shot option, or inconsistent metadata.
    FileNotFoundError
        ``metadata/UrbanSound8K.csv``, a fold folder or a listed clip is
        missing.
    RuntimeError
        More than ``max_bad_fraction`` of the clips are unusable.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing UrbanSound8K")
        return
    folds = split_folds(fold, protocol)
    prepare_split_manifests(
        data_folder, save_folder,
        {"dataset": "urbansound8k", "fold": int(fold), "protocol": protocol,
         "version": PREP_VERSION},
        _check_layout, lambda layout: assign_folds(_read_meta(*layout), folds),
        FIELDNAMES, DATASET, max_bad_fraction=max_bad_fraction,
        few_shot=few_shot, few_shot_sampling=few_shot_sampling,
        few_shot_seed=few_shot_seed,
        split_notes={split: f"folds {folds[split]}" for split in folds},
    )


def _check_layout(data_folder):
    """``(metadata/UrbanSound8K.csv, audio/)`` of ``data_folder``, which must
    exist, as must ``audio/fold1`` to ``audio/fold10``."""
    meta = require_file(
        os.path.join(data_folder, "metadata", "UrbanSound8K.csv"), DATASET,
        data_folder, LAYOUT_HINT,
    )
    audio = require_folder(
        os.path.join(data_folder, "audio"), DATASET, data_folder, LAYOUT_HINT
    )
    for k in FOLDS:
        require_folder(
            os.path.join(audio, f"fold{k}"), DATASET, data_folder,
            LAYOUT_HINT,
        )
    return meta, audio


def _read_meta(meta, audio):
    """One manifest row (without duration) per line of UrbanSound8K.csv."""
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

    rows, missing_files, seen, class_of = [], [], set(), {}
    for number, line in enumerate(lines, start=2):
        name = line["slice_file_name"]
        where = f"{DATASET}: {meta} line {number} ({name})"
        try:
            fold, class_id = int(line["fold"]), int(line["classID"])
        except ValueError:
            raise ValueError(
                f"{where}: fold and classID must be integers"
            ) from None
        if fold not in FOLDS or not 0 <= class_id < len(CLASSES):
            raise ValueError(
                f"{where}: fold {fold} / classID {class_id} out of range "
                "(folds 1-10, classIDs 0-9)"
            )
        match = FILENAME.match(name)
        if not match or int(match[2]) != class_id:
            raise ValueError(
                f"{where}: the file name does not match "
                f"<fsID>-<classID>-<occurrence>-<slice>.wav with classID "
                f"{class_id}"
            )
        if name in seen:
            raise ValueError(f"{where}: listed twice")
        label = class_of.setdefault(class_id, line["class"])
        if line["class"] != label:
            raise ValueError(
                f"{where}: classID {class_id} is {line['class']!r} here but "
                f"{label!r} on an earlier line"
            )
        seen.add(name)
        wav = os.path.join(audio, f"fold{fold}", name)
        if not os.path.isfile(wav):
            missing_files.append(wav)
        rows.append(
            {
                "ID": os.path.splitext(name)[0],
                "wav": wav,
                "label": line["class"],
                "classID": class_id,
                "fold": fold,
            }
        )
    if missing_files:
        raise FileNotFoundError(
            f"{DATASET}: {len(missing_files)} clip(s) listed in {meta} are "
            f"missing (each is expected in audio/fold<fold>/), e.g. "
            f"{', '.join(missing_files[:3])}; is the extracted dataset "
            "complete?"
        )
    unknown = sorted(set(class_of.values()) - set(CLASSES))
    if unknown:
        logger.warning(
            "%s: class name(s) %s are not among the 10 UrbanSound8K classes",
            DATASET, unknown,
        )
    _warn_about_unlisted(audio, {row["wav"] for row in rows})
    return rows


def _warn_about_unlisted(audio, listed):
    unlisted = []
    for k in FOLDS:
        folder = os.path.join(audio, f"fold{k}")
        unlisted += [
            f"fold{k}/{n}"
            for n in sorted(os.listdir(folder))
            # Hidden files (.DS_Store, "._x.wav" forks) are not clips.
            if n.lower().endswith(".wav") and not n.startswith(".")
            and os.path.join(folder, n) not in listed
        ]
    if unlisted:
        logger.warning(
            "%s: ignoring %d file(s) of %s not listed in the metadata, e.g. "
            "%s",
            DATASET,
            len(unlisted),
            audio,
            ", ".join(unlisted[:3]),
        )
