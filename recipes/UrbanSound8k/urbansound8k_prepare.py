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

The test fold ``k`` is one of the 10 pre-defined folds; the other splits
depend on the protocol (:func:`speechbrain_petl.data.folds.fold_splits`):

* ``protocol="paper"`` (the dataset's 10-fold cross-validation, as in the
  PETL paper): train = the 9 other folds; there is no validation fold, so
  ``valid.csv`` is a copy of ``test.csv``;
* ``protocol="validation"``: valid = fold (k mod 10) + 1, train = the 8
  other folds.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, classID, fold`` (``label`` is the class
name, e.g. ``dog_bark``; ``classID`` its index 0-9). With ``few_shot=N``,
``train.csv`` keeps N clips per class, by default the first N in the order
of ``metadata/UrbanSound8K.csv``.

Example
-------
>>> from urbansound8k_prepare import prepare_urbansound8k
>>> prepare_urbansound8k("/data/UrbanSound8K", "results/us8k/save", fold=10)
... # doctest: +SKIP
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

FOLDS = tuple(range(1, 11))
# Protocol -> whether it validates on a fold of its own.
SEPARATE_VALID = {"paper": False, "validation": True}
PROTOCOLS = tuple(SEPARATE_VALID)
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
    """Which folds train, validate and test when ``fold`` is the test fold.

    Arguments
    ---------
    fold : int
        Test fold, 1 to 10.
    protocol : str
        ``"paper"`` (no validation fold) or ``"validation"``.

    Returns
    -------
    dict
        ``{split: folds}``, as
        :func:`speechbrain_petl.data.folds.fold_splits` returns it.

    Example
    -------
    >>> split_folds(10, "validation")
    {'train': [2, 3, 4, 5, 6, 7, 8, 9], 'valid': [1], 'test': [10]}
    >>> split_folds(3, "paper")
    {'train': [1, 2, 4, 5, 6, 7, 8, 9, 10], 'valid': [3], 'test': [3]}
    """
    return protocol_fold_splits(
        fold, protocol, SEPARATE_VALID, len(FOLDS), DATASET
    )


def prepare_urbansound8k(
    data_folder, save_folder, fold=10, protocol="paper", max_bad_fraction=0.01,
    skip_prep=False, few_shot=None, few_shot_sampling="first", few_shot_seed=0,
):
    """Writes the train/valid/test manifests of UrbanSound8K for one test
    fold.

    Each clip is decoded once to check it; what a preparation does and when
    it is skipped: :mod:`speechbrain_petl.data.prepare`.

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
    max_bad_fraction, skip_prep, few_shot, few_shot_sampling, few_shot_seed
        As for every preparation: see :mod:`speechbrain_petl.data.prepare`.
        With ``few_shot_sampling="first"``, a class keeps its clips listed
        first in ``metadata/UrbanSound8K.csv``.

    Raises
    ------
    ValueError
        Bad ``fold`` or ``protocol``, or inconsistent metadata.
    FileNotFoundError
        ``metadata/UrbanSound8K.csv``, a fold folder or a listed clip is
        missing.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing UrbanSound8K")
        return
    folds = split_folds(fold, protocol)  # checks fold and protocol first
    prepare_fold_manifests(
        data_folder, save_folder,
        {"dataset": "urbansound8k", "fold": int(fold), "protocol": protocol,
         "version": PREP_VERSION},
        folds, _check_layout, _read_meta, FIELDNAMES, DATASET,
        max_bad_fraction=max_bad_fraction, few_shot=few_shot,
        few_shot_sampling=few_shot_sampling, few_shot_seed=few_shot_seed,
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


def _read_meta(layout):
    """One manifest row (without duration) per line of UrbanSound8K.csv."""
    meta, audio = layout

    def wav_of(name, fold, class_id, where):
        """``audio/fold<fold>/<name>``, once the name's classID is checked."""
        match = FILENAME.match(name)
        if not match or int(match[2]) != class_id:
            raise ValueError(
                f"{where}: the file name does not match "
                f"<fsID>-<classID>-<occurrence>-<slice>.wav with classID "
                f"{class_id}"
            )
        return os.path.join(audio, f"fold{fold}", name)

    rows = read_fold_metadata(
        meta, DATASET, META_COLUMNS, ("slice_file_name", "classID", "class"),
        len(FOLDS), len(CLASSES), wav_of,
    )
    missing_files = [r["wav"] for r in rows if not os.path.isfile(r["wav"])]
    if missing_files:
        raise FileNotFoundError(
            f"{DATASET}: {len(missing_files)} clip(s) listed in {meta} are "
            f"missing (each is expected in audio/fold<fold>/), e.g. "
            f"{', '.join(missing_files[:3])}; is the extracted dataset "
            "complete?"
        )
    unknown = sorted({row["label"] for row in rows} - set(CLASSES))
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
