"""Cross-validation folds: which folds a run trains, validates and tests on, reading a k-fold dataset's metadata, and assigning folds to rows."""

import numbers
import os

from speechbrain_petl.data.layout import read_csv_table
from speechbrain_petl.data.manifests import SPLITS


def fold_splits(fold, n_folds, separate_valid, dataset):
    """Folds of each split of a k-fold dataset for test fold ``fold``.

    With ``separate_valid``, fold ``fold mod n_folds + 1`` validates and the
    others train; otherwise every other fold trains and the test fold doubles
    as validation set (no held-out validation exists): ``valid.csv`` is then
    written identical to ``test.csv``, a warning says so (see
    :func:`~speechbrain_petl.data.prepare.prepare_split_manifests`), and
    validation scores are test scores.

    Arguments
    ---------
    fold : int
        Test fold, 1 to ``n_folds``.
    n_folds : int
        Number of folds of the dataset.
    separate_valid : bool
        Whether a fold of its own is used for validation.
    dataset : str
        Dataset name, for error messages.

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Example
    -------
    >>> fold_splits(5, 5, True, "ESC-50")
    {'train': [2, 3, 4], 'valid': [1], 'test': [5]}
    >>> fold_splits(2, 5, False, "ESC-50")
    {'train': [1, 3, 4, 5], 'valid': [2], 'test': [2]}
    """
    if not isinstance(fold, numbers.Integral) or isinstance(fold, bool) or not 1 <= fold <= n_folds:
        raise ValueError(f"{dataset}: fold must be an integer from 1 to {n_folds}, got {fold!r}")
    folds = range(1, n_folds + 1)
    if separate_valid:
        valid = fold % n_folds + 1
        return {"train": [f for f in folds if f not in (fold, valid)], "valid": [valid], "test": [fold]}
    return {"train": [f for f in folds if f != fold], "valid": [fold], "test": [fold]}


def protocol_fold_splits(fold, protocol, protocols, n_folds, dataset):
    """:func:`fold_splits` for a named protocol of a dataset, after checking
    the name.

    Arguments
    ---------
    fold, n_folds, dataset
        As for :func:`fold_splits`.
    protocol : str
        One of the names of ``protocols``.
    protocols : dict
        ``{name: separate_valid}``, the dataset's protocols in the order the
        error message lists them.

    Returns
    -------
    dict
        The folds of each split (see :func:`fold_splits`).

    Example
    -------
    >>> protocols = {"rotation": True, "official": False}
    >>> protocol_fold_splits(5, "rotation", protocols, 5, "ESC-50")["valid"]
    [1]
    >>> protocol_fold_splits(5, "paper", protocols, 5, "ESC-50")
    Traceback (most recent call last):
    ...
    ValueError: ESC-50: protocol must be one of ('rotation', 'official'), got 'paper'
    """
    if protocol not in protocols:
        raise ValueError(f"{dataset}: protocol must be one of {tuple(protocols)}, got {protocol!r}")
    return fold_splits(fold, n_folds, protocols[protocol], dataset)


def read_fold_metadata(meta, dataset, columns, keys, n_folds, n_classes, wav_of):
    """Manifest rows (without duration) of a k-fold dataset's metadata CSV,
    one per line, each checked.

    Every line names a clip, its fold (column ``fold``, 1 to ``n_folds``)
    and its class, by index (0 to ``n_classes - 1``) and by name; an index
    must have the same name on every line, and a clip must be listed once.

    Arguments
    ---------
    meta : str
        The metadata CSV file (see :func:`read_csv_table`).
    dataset : str
        Dataset name, for error messages.
    columns : sequence of str
        Columns the file must have.
    keys : tuple of str
        Its columns of the clip's file name, the class index and the class
        name, e.g. ``("filename", "target", "category")``.
    n_folds, n_classes : int
        Number of folds and of classes.
    wav_of : callable
        ``wav_of(name, fold, index, where) -> path`` of the clip; raises a
        ValueError starting with ``where`` (the line, for messages) when the
        file name does not match the line.

    Returns
    -------
    list of dict
        ``{"ID": file name without extension, "wav": ..., "label": class
        name, <class index column>: index, "fold": fold}``, in file order.

    Example
    -------
    >>> meta = getfixture("tmp_path") / "meta.csv"
    >>> _ = meta.write_text("filename,fold,target,category\\n1-a.wav,1,0,dog\\n")
    >>> keys = ("filename", "target", "category")
    >>> read_fold_metadata(meta, "ESC-50", keys, keys, 5, 50, lambda n, f, i, w: f"/audio/{n}")
    [{'ID': '1-a', 'wav': '/audio/1-a.wav', 'label': 'dog', 'target': 0, 'fold': 1}]
    >>> _ = meta.write_text("filename,fold,target,category\\n1-a.wav,1,50,dog\\n")
    >>> read_fold_metadata(meta, "ESC-50", keys, keys, 5, 50, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ESC-50: .../meta.csv line 2 (1-a.wav): fold 1 / target 50 out of range (folds 1-5, targets 0-49)
    """
    file_key, index_key, name_key = keys
    rows, seen, name_of = [], set(), {}
    for number, line in enumerate(read_csv_table(meta, columns, dataset), start=2):
        name = line[file_key]
        where = f"{dataset}: {meta} line {number} ({name})"
        try:
            fold, index = int(line["fold"]), int(line[index_key])
        except ValueError:
            raise ValueError(f"{where}: fold and {index_key} must be integers") from None
        if not 1 <= fold <= n_folds or not 0 <= index < n_classes:
            raise ValueError(
                f"{where}: fold {fold} / {index_key} {index} out of range "
                f"(folds 1-{n_folds}, {index_key}s 0-{n_classes - 1})"
            )
        wav = wav_of(name, fold, index, where)
        if name in seen:
            raise ValueError(f"{where}: listed twice")
        earlier = name_of.setdefault(index, line[name_key])
        if line[name_key] != earlier:
            raise ValueError(f"{where}: {index_key} {index} is {line[name_key]!r} here but {earlier!r} on an earlier line")
        seen.add(name)
        rows.append({"ID": os.path.splitext(name)[0], "wav": wav, "label": line[name_key],
                     index_key: index, "fold": fold})
    return rows


def assign_folds(rows, folds, fold_key="fold"):
    """Pairs each row with the split(s) whose folds hold ``row[fold_key]``:
    the ``read_clips`` result of a dataset with pre-defined folds (see
    :func:`prepare_split_manifests`).

    Arguments
    ---------
    rows : list of dict
        One manifest row per clip.
    folds : dict
        ``{split: [fold, ...]}`` for ``"train"``, ``"valid"`` and ``"test"``.
    fold_key : str
        Key of the fold in each row.

    Returns
    -------
    list of (dict, list of str)

    Example
    -------
    >>> folds = {"train": [1, 2], "valid": [3], "test": [3]}
    >>> assign_folds([{"fold": 2}, {"fold": 3}], folds)
    [({'fold': 2}, ['train']), ({'fold': 3}, ['valid', 'test'])]
    """
    return [
        (row, [split for split in SPLITS if row[fold_key] in folds[split]])
        for row in rows
    ]
