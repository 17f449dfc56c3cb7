"""Few-shot selection: N training clips per class, the first ones (the paper's choice) or a seeded random draw."""

import logging
import numbers
import random


logger = logging.getLogger(__name__)


FEW_SHOT_SAMPLINGS = ("first", "random")


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def few_shot_settings(shots, sampling="first", seed=0):
    """Checks the few-shot options and returns them as preparation settings.

    Every recipe's ``prepare_<dataset>`` takes these options as ``few_shot``,
    ``few_shot_sampling`` and ``few_shot_seed``, for the few-shot training
    sets of the PETL paper's Table 2: ``train.csv`` keeps ``few_shot`` clips
    per class (None, the default: every training clip; a class with fewer
    keeps all of its clips, with a warning), the first ones in the dataset's
    order after dropping unusable clips (``"first"``, the default and the
    paper's choice; the script names the order) or ones drawn with
    ``few_shot_seed`` (``"random"``); ``valid.csv`` and ``test.csv`` are
    unaffected. See :func:`select_few_shot`.

    The returned dict is meant to be merged into the settings given to
    :func:`preparation_is_current` and :func:`mark_prepared`, so that a
    change of the few-shot options prepares again. Options that do not
    affect the manifests are recorded as None, so that changing them does
    not: ``sampling`` and ``seed`` when ``shots`` is None, and ``seed`` when
    ``sampling`` is ``"first"`` (a recipe may pass its run's seed, which then
    varies without re-preparing).

    Arguments
    ---------
    shots : int or None
        Training clips kept per class, at least 1; None keeps them all.
    sampling : str
        ``"first"`` or ``"random"`` (see :func:`select_few_shot`).
    seed : int
        Seed of ``sampling="random"``.

    Returns
    -------
    dict
        ``{"few_shot": ..., "few_shot_sampling": ..., "few_shot_seed": ...}``.

    Raises
    ------
    ValueError
        ``shots`` is neither None nor an integer >= 1, ``sampling`` is not
        one of :data:`FEW_SHOT_SAMPLINGS`, or ``seed`` is not an integer.

    Example
    -------
    >>> few_shot_settings(None, "random", 3)
    {'few_shot': None, 'few_shot_sampling': None, 'few_shot_seed': None}
    >>> few_shot_settings(8, "first", 3)
    {'few_shot': 8, 'few_shot_sampling': 'first', 'few_shot_seed': None}
    >>> few_shot_settings(8, "random", 3)
    {'few_shot': 8, 'few_shot_sampling': 'random', 'few_shot_seed': 3}
    >>> few_shot_settings(0)
    Traceback (most recent call last):
    ...
    ValueError: few_shot must be None (keep every training clip) or an integer >= 1 (clips kept per class), got 0
    """
    if shots is not None and (not _is_integer(shots) or shots < 1):
        raise ValueError(
            "few_shot must be None (keep every training clip) or an integer "
            f">= 1 (clips kept per class), got {shots!r}"
        )
    if not isinstance(sampling, str) or sampling not in FEW_SHOT_SAMPLINGS:
        raise ValueError(
            f"few_shot_sampling must be one of {FEW_SHOT_SAMPLINGS}, got "
            f"{sampling!r}"
        )
    if not _is_integer(seed):
        raise ValueError(f"few_shot_seed must be an integer, got {seed!r}")
    if shots is None:
        return {"few_shot": None, "few_shot_sampling": None,
                "few_shot_seed": None}
    return {
        "few_shot": int(shots),
        "few_shot_sampling": sampling,
        "few_shot_seed": int(seed) if sampling == "random" else None,
    }


def select_few_shot(rows, shots, sampling="first", seed=0, label_key="label"):
    """Keeps ``shots`` rows of each class (the few-shot training sets of the
    PETL paper's Table 2).

    * ``sampling="first"`` (the paper's choice): the first ``shots`` rows of
      each class in the order of ``rows``, which the preparation scripts
      build in the dataset's own order (metadata file or sorted file names),
      after dropping unusable clips;
    * ``sampling="random"``: ``shots`` rows of each class drawn without
      replacement by a :class:`random.Random` of the class's own, seeded
      with ``seed`` and the class label, so that the draw is deterministic
      for a seed and independent of the other classes.

    A class with fewer than ``shots`` rows keeps all of them, and a warning
    names it with its count. ``rows`` is not modified.

    Arguments
    ---------
    rows : list of dict
        The training rows, each with a class under ``label_key``.
    shots : int or None
        Rows kept per class, at least 1; None keeps every row.
    sampling : str
        ``"first"`` or ``"random"``.
    seed : int
        Seed of ``sampling="random"`` (unused by ``"first"``).
    label_key : str
        Key of the class in each row.

    Returns
    -------
    list of dict
        The kept rows (the same objects), in their original order.

    Raises
    ------
    ValueError
        Bad ``shots``/``sampling``/``seed`` (see :func:`few_shot_settings`),
        or a row without ``label_key``.

    Example
    -------
    >>> rows = [{"ID": i, "label": c} for i, c in enumerate("aabbbab")]
    >>> [r["ID"] for r in select_few_shot(rows, 2)]
    [0, 1, 2, 3]
    >>> [r["ID"] for r in select_few_shot(rows, 2, "random", seed=1)]
    [0, 2, 5, 6]
    >>> len(select_few_shot(rows, None))
    7
    >>> [r["ID"] for r in select_few_shot(rows, 4)]  # only 3 of class a
    [0, 1, 2, 3, 4, 5, 6]
    """
    few_shot_settings(shots, sampling, seed)  # checks the arguments
    rows = list(rows)
    if shots is None:
        return rows
    by_class = {}
    for index, row in enumerate(rows):
        if label_key not in row:
            raise ValueError(
                f"few-shot selection: row {row.get('ID', index)!r} has no "
                f"{label_key!r} (class) key"
            )
        by_class.setdefault(row[label_key], []).append(index)

    kept, short = [], []
    for label, indices in by_class.items():
        if len(indices) <= shots:
            if len(indices) < shots:
                short.append((label, len(indices)))
            kept += indices
        elif sampling == "first":
            kept += indices[:shots]
        else:
            rng = random.Random(f"{seed}:{label}")
            kept += rng.sample(indices, shots)
    if short:
        logger.warning(
            "few_shot=%d: %d class(es) have fewer than %d training clips; "
            "keeping all of theirs: %s",
            shots,
            len(short),
            shots,
            ", ".join(f"{label!r} ({n})" for label, n in short),
        )
    logger.info(
        "few_shot=%d (%s sampling): kept %d of %d training clips",
        shots, sampling, len(kept), len(rows),
    )
    return [rows[i] for i in sorted(kept)]
