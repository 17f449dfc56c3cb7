"""Cross-validation folds: which folds a run trains, validates and tests on, and assigning folds to rows."""

import numbers

from speechbrain_petl.data.manifests import SPLITS


def fold_splits(fold, n_folds, separate_valid, dataset):
    """Folds of each split of a k-fold dataset for test fold ``fold``.

    With ``separate_valid``, fold ``fold mod n_folds + 1`` validates and the
    others train; otherwise every other fold trains and the test fold doubles
    as validation set (no held-out validation exists).

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
