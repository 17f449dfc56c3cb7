"""A dataset preparation in one call: :func:`prepare_split_manifests` (or
:func:`prepare_fold_manifests` for a dataset with pre-defined folds).

Every recipe's ``*_prepare.py`` reads its dataset's layout, decides each
clip's split and columns, and hands the rows to
:func:`prepare_split_manifests`, which runs the steps every preparation
shares:

1. :func:`~speechbrain_petl.data.layout.check_save_folder` (the layout
   checks themselves, :func:`~speechbrain_petl.data.layout.require_file` /
   :func:`~speechbrain_petl.data.layout.require_folder`, are the script's:
   they name the exact file that is missing and what the layout should be);
2. :func:`~speechbrain_petl.data.record.preparation_is_current`: skip when the
   stored settings equal the current ones, every output exists and no clip
   changed on disk since it was checked (size and modification time,
   :data:`~speechbrain_petl.data.record.CLIPS_RECORD`); otherwise
   :func:`~speechbrain_petl.data.record.invalidate_preparation` before
   writing anything;
3. :func:`~speechbrain_petl.data.manifests.filter_bad_clips`: decode every
   clip, drop (and report) the ones that cannot be used;
4. optionally :func:`~speechbrain_petl.data.few_shot.select_few_shot` on the
   training rows only (N clips per class; its settings are part of the
   preparation's settings);
5. :func:`~speechbrain_petl.data.manifests.write_manifest` for each split,
   then :func:`~speechbrain_petl.data.record.mark_prepared`.

Nothing is ever written inside the dataset's folder: outputs, the settings
record and the bad-clip report all go to ``save_folder``.

Every recipe's ``prepare_<dataset>(data_folder, save_folder, ...)`` ends with
the same options, documented here once:

* ``max_bad_fraction`` (0.01): the largest tolerated fraction of unusable
  clips; beyond it, a RuntimeError (see
  :func:`~speechbrain_petl.data.manifests.filter_bad_clips`);
* ``skip_prep`` (False): if True, the function does nothing;
* ``few_shot`` (None), ``few_shot_sampling`` (``"first"``), ``few_shot_seed``
  (0): ``train.csv`` keeps ``few_shot`` clips per class, the first ones in
  the dataset's order (the script names it) or ones drawn with the seed; a
  ValueError for a bad option (see
  :func:`~speechbrain_petl.data.few_shot.few_shot_settings`).

A preparation is skipped when ``save_folder`` already holds the manifests of
one with the same settings (data folder, the dataset's own settings such as
its fold, ``max_bad_fraction``, few-shot options, script version) and no clip
changed on disk since.
"""

import json
import logging
import os

from speechbrain_petl.data.few_shot import few_shot_settings, select_few_shot
from speechbrain_petl.data.folds import assign_folds
from speechbrain_petl.data.layout import check_save_folder
from speechbrain_petl.data.manifests import MANIFESTS, SPLITS, filter_bad_clips, write_manifest
from speechbrain_petl.data.record import (
    CLIPS_RECORD,
    clip_stats,
    invalidate_preparation,
    mark_prepared,
    preparation_is_current,
    write_text_atomically,
)

logger = logging.getLogger(__name__)


def prepare_split_manifests(
    data_folder,
    save_folder,
    settings,
    check_layout,
    read_clips,
    fieldnames,
    dataset,
    max_bad_fraction=0.01,
    few_shot=None,
    few_shot_sampling="first",
    few_shot_seed=0,
    split_notes=None,
    empty_split_hint="",
    summarize=None,
):
    """The preparation flow shared by the recipes' ``*_prepare.py`` scripts:
    everything but reading the dataset's layout and deciding each clip's
    split and columns.

    In order:

    1. checks the few-shot options (:func:`few_shot_settings`) and
       :func:`check_save_folder`, then calls ``check_layout(data_folder)``
       (which raises on a missing file or folder);
    2. returns None if :func:`preparation_is_current` (the settings are
       ``settings`` plus ``data_folder``, ``max_bad_fraction`` and the
       few-shot options, and no clip changed on disk since the last check:
       :data:`CLIPS_RECORD`); otherwise
    3. calls ``read_clips(layout)``, :func:`invalidate_preparation`, and
       :func:`filter_bad_clips`; warns when valid.csv will be a copy of
       test.csv (the same clips, e.g. a protocol without a validation fold);
    4. for each split, ``"train"``, ``"valid"`` and ``"test"``, keeps the
       usable clips assigned to it (a RuntimeError if there are none), cuts
       the training split down with :func:`select_few_shot`, writes
       ``<split>.csv`` with :func:`write_manifest` and logs its size;
    5. :func:`mark_prepared`.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The dataset's root (made absolute).
    save_folder : str or os.PathLike
        Where the manifests are written (made absolute; never inside
        ``data_folder``).
    settings : dict
        The dataset's own settings (e.g. ``dataset``, ``fold``,
        ``version``); JSON-serialisable.
    check_layout : callable
        ``check_layout(data_folder) -> layout``, given the absolute
        ``data_folder``; checks the files that must exist and returns what
        ``read_clips`` needs (anything).
    read_clips : callable
        ``read_clips(layout) -> [(row, splits), ...]``, called only when
        preparing: one manifest row per clip (its ``fieldnames`` but
        ``duration``, with a unique ``ID`` and the absolute ``wav``) in the
        dataset's order, and the split(s) it belongs to (a split name, or
        several, e.g. ``("valid", "test")`` when valid.csv copies test.csv).
    fieldnames : sequence of str
        Columns of the manifests.
    dataset : str
        The dataset's name in messages.
    max_bad_fraction : float
        See :func:`filter_bad_clips`.
    few_shot, few_shot_sampling, few_shot_seed
        See :func:`select_few_shot`; applied to the training split only.
    split_notes : dict, optional
        A short description of each split (e.g. ``"folds [1, 2]"``), shown
        in parentheses in the logs and errors.
    empty_split_hint : str
        Appended to the error of an empty split.
    summarize : callable, optional
        ``summarize(rows) -> str``, shown in parentheses after the size of
        each written split.

    Returns
    -------
    dict or None
        ``{split: rows written}``, or None when the preparation was current.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> data, save = tmp / "data", tmp / "save"
    >>> data.mkdir()
    >>> for name in "abcd":
    ...     sf.write(data / f"{name}.wav", np.zeros(800), 16000)
    >>> def read_clips(data):
    ...     return [({"ID": n, "wav": str(data / f"{n}.wav"), "label": "x"},
    ...              "train" if n in "ab" else ("valid", "test"))
    ...             for n in "abcd"]
    >>> written = prepare_split_manifests(
    ...     data, save, {"dataset": "toy", "version": 1}, lambda d: data,
    ...     read_clips, ["ID", "duration", "wav", "label"], "Toy", few_shot=1,
    ... )
    >>> {split: [r["ID"] for r in rows] for split, rows in written.items()}
    {'train': ['a'], 'valid': ['c', 'd'], 'test': ['c', 'd']}
    >>> prepare_split_manifests(
    ...     data, save, {"dataset": "toy", "version": 1}, lambda d: data,
    ...     read_clips, ["ID", "duration", "wav", "label"], "Toy", few_shot=1,
    ... ) is None
    True
    """
    few_shot_options = few_shot_settings(
        few_shot, few_shot_sampling, few_shot_seed
    )
    data_folder = os.path.abspath(os.fspath(data_folder))
    save_folder = os.path.abspath(os.fspath(save_folder))
    check_save_folder(data_folder, save_folder)
    layout = check_layout(data_folder)
    settings = {
        **settings,
        "data_folder": data_folder,
        "max_bad_fraction": max_bad_fraction,
        **few_shot_options,
    }
    if preparation_is_current(save_folder, settings, MANIFESTS, CLIPS_RECORD):
        return None

    rows, splits_of = [], {}
    for row, splits in read_clips(layout):
        splits = {splits} if isinstance(splits, str) else set(splits)
        if row["ID"] in splits_of:
            raise ValueError(
                f"{dataset}: clip ID {row['ID']!r} is listed twice"
            )
        if not splits or not splits <= set(SPLITS):
            raise ValueError(
                f"{dataset}: clip {row['ID']!r} is assigned to "
                f"{sorted(splits)}, not to one or more of {SPLITS}"
            )
        splits_of[row["ID"]] = splits
        rows.append(row)
    os.makedirs(save_folder, exist_ok=True)
    invalidate_preparation(save_folder)
    stats = clip_stats([row["wav"] for row in rows])  # before decoding: a later change is noticed
    good = filter_bad_clips(
        rows, save_folder, max_bad_fraction=max_bad_fraction
    )

    def note(split):
        """Notes a split's bad clips for the report."""
        return f" ({split_notes[split]})" if split_notes else ""

    valid_ids, test_ids = (
        {r["ID"] for r in good if split in splits_of[r["ID"]]}
        for split in ("valid", "test")
    )
    if valid_ids and valid_ids == test_ids:
        logger.warning(
            "%s has no validation split: valid.csv is a copy of test.csv%s, "
            "so validation scores are test scores; do not select checkpoints "
            "or hyperparameters on them",
            dataset,
            note("test"),
        )
    written = {}
    for split in SPLITS:
        split_rows = [r for r in good if split in splits_of[r["ID"]]]
        if not split_rows:
            raise RuntimeError(
                f"{dataset}: the {split} split{note(split)} is empty after "
                "removing "
                "bad clips" + (f"; {empty_split_hint}" if empty_split_hint
                               else "")
            )
        if split == "train":
            split_rows = select_few_shot(
                split_rows, few_shot, few_shot_sampling, few_shot_seed
            )
        write_manifest(
            os.path.join(save_folder, f"{split}.csv"), split_rows, fieldnames
        )
        summary = f" ({summarize(split_rows)})" if summarize else ""
        logger.info("%s %s%s: %d clips%s", dataset, split, note(split),
                    len(split_rows), summary)
        written[split] = split_rows
    write_text_atomically(os.path.join(save_folder, CLIPS_RECORD), json.dumps(stats) + "\n")
    mark_prepared(save_folder, settings)
    return written


def prepare_fold_manifests(
    data_folder, save_folder, settings, folds, check_layout, read_rows, fieldnames, dataset, **options
):
    """:func:`prepare_split_manifests` for a dataset with pre-defined folds:
    each row goes to the split(s) whose folds hold its ``"fold"``
    (:func:`~speechbrain_petl.data.folds.assign_folds`), and the logs name
    each split's folds.

    Arguments
    ---------
    data_folder, save_folder, settings, check_layout, fieldnames, dataset
        As for :func:`prepare_split_manifests`.
    folds : dict
        ``{split: [fold, ...]}`` for ``"train"``, ``"valid"`` and ``"test"``
        (see :func:`~speechbrain_petl.data.folds.fold_splits`).
    read_rows : callable
        ``read_rows(layout) -> [row, ...]``: one manifest row per clip, each
        with its ``"fold"``.
    **options
        Other keywords of :func:`prepare_split_manifests`
        (``max_bad_fraction`` and the few-shot options).

    Returns
    -------
    dict or None
        What :func:`prepare_split_manifests` returns.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> data = getfixture("tmp_path") / "data"
    >>> data.mkdir()
    >>> rows = []
    >>> for fold in (1, 2, 3):
    ...     sf.write(data / f"{fold}.wav", np.zeros(800), 16000)
    ...     rows.append({"ID": str(fold), "wav": str(data / f"{fold}.wav"), "fold": fold})
    >>> written = prepare_fold_manifests(
    ...     data, data.parent / "save", {"dataset": "toy", "version": 1},
    ...     {"train": [1, 2], "valid": [3], "test": [3]}, lambda d: d,
    ...     lambda layout: rows, ["ID", "duration", "wav", "fold"], "Toy",
    ... )
    >>> {split: [r["ID"] for r in kept] for split, kept in written.items()}
    {'train': ['1', '2'], 'valid': ['3'], 'test': ['3']}
    """
    return prepare_split_manifests(
        data_folder, save_folder, settings, check_layout,
        lambda layout: assign_folds(read_rows(layout), folds), fieldnames, dataset,
        split_notes={split: f"folds {folds[split]}" for split in folds}, **options,
    )
