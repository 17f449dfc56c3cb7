"""Building blocks of the dataset preparation scripts.

Every recipe's ``*_prepare.py`` follows the same steps:

1. :func:`check_save_folder` and :func:`require_file` / :func:`require_folder`:
   fail early, naming the exact file that is missing and what the dataset's
   layout should look like;
2. :func:`preparation_is_current`: skip when the stored settings equal the
   current ones, every output exists and no clip changed on disk since it
   was checked (size and modification time, :data:`CLIPS_RECORD`); otherwise
   :func:`invalidate_preparation` before writing anything;
3. :func:`filter_bad_clips`: decode every clip, drop (and report) the ones
   that cannot be used;
4. optionally :func:`select_few_shot` on the training rows only (N clips per
   class; its settings, from :func:`few_shot_settings`, are part of the
   preparation's settings);
5. :func:`write_manifest` for each split, then :func:`mark_prepared`.

:func:`prepare_split_manifests` runs steps 1 to 5 (but the dataset-specific
layout checks and reading), so that a script only reads its dataset's layout
and decides each clip's split and columns.

Nothing is ever written inside the dataset's folder: outputs, the settings
record and the bad-clip report all go to ``save_folder``.
"""

import concurrent.futures
import csv
import io
import json
import logging
import math
import numbers
import os
import random
import tempfile

from tqdm import tqdm

from speechbrain_petl.data.audio import inspect_clip

logger = logging.getLogger(__name__)

SETTINGS_FILE = "preparation_settings.json"
BAD_CLIPS_LOG = "bad_clips.log"
#: Size and modification time of every clip when it was checked.
CLIPS_RECORD = "prepared_clips.json"
FEW_SHOT_SAMPLINGS = ("first", "random")


def _require(path, dataset_name, data_folder, hint, want_dir):
    path = os.path.abspath(os.fspath(path))
    exists = os.path.isdir(path) if want_dir else os.path.isfile(path)
    if exists:
        return path
    what = "folder" if want_dir else "file"
    if data_folder is not None:
        rel = os.path.relpath(path, os.path.abspath(os.fspath(data_folder)))
        rel = rel.replace(os.sep, "/") + ("/" if want_dir else "")
        where = f"expected {rel} at {path}"
    else:
        where = f"expected {what} {path}"
    if os.path.exists(path):
        problem = f" (it exists but is not a {what})"
    else:
        problem = " (not found)"
    message = f"{dataset_name}: {where}{problem}"
    if hint:
        message += f"; {hint}"
    raise FileNotFoundError(message)


def require_file(path, dataset_name, data_folder=None, hint=""):
    """Raises a ``FileNotFoundError`` naming ``path`` unless it is a file.

    Arguments
    ---------
    path : str or os.PathLike
        The file that must exist.
    dataset_name : str
        Prefix of the message (e.g. ``"ESC-50"``).
    data_folder : str or os.PathLike, optional
        When given, the message also names ``path`` relative to it.
    hint : str
        What the dataset's layout should look like.

    Returns
    -------
    str
        The absolute path.

    Example
    -------
    >>> root = getfixture("tmp_path")
    >>> require_file(
    ...     root / "meta" / "esc50.csv", "ESC-50", data_folder=root,
    ...     hint="is data_folder the root of the ESC-50 release?",
    ... )  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ESC-50: expected meta/esc50.csv at .../meta/esc50.csv (not found); is data_folder the root of the ESC-50 release?
    """
    return _require(path, dataset_name, data_folder, hint, want_dir=False)


def require_folder(path, dataset_name, data_folder=None, hint=""):
    """Like :func:`require_file`, for a folder.

    Example
    -------
    >>> root = getfixture("tmp_path")
    >>> require_folder(root, "GSC") == str(root)
    True
    """
    return _require(path, dataset_name, data_folder, hint, want_dir=True)


def _is_within(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_save_folder(data_folder, save_folder):
    """Refuses a ``save_folder`` that is, or is inside, ``data_folder``:
    preparation never writes into the dataset.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The dataset's root.
    save_folder : str or os.PathLike
        Where the preparation writes its outputs.

    Example
    -------
    >>> check_save_folder("/data/ESC-50", "/exp/esc50")
    >>> check_save_folder("/data/ESC-50", "/data/ESC-50/manifests")
    Traceback (most recent call last):
    ...
    ValueError: save_folder /data/ESC-50/manifests is inside data_folder /data/ESC-50; preparation never writes into the dataset's folder, choose another save_folder
    """
    if _is_within(save_folder, data_folder):
        raise ValueError(
            f"save_folder {save_folder} is inside data_folder {data_folder}; "
            "preparation never writes into the dataset's folder, choose "
            "another save_folder"
        )


def _normalise(settings):
    # What the settings look like once read back from JSON (tuples become
    # lists, keys strings), so that stored and current settings compare.
    return json.loads(json.dumps(settings, sort_keys=True))


def _atomic_write_text(path, text):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def clip_stats(paths):
    """``{path: [size in bytes, modification time in ns]}`` (None for a
    missing file): what :func:`preparation_is_current` compares to notice a
    clip that changed after it was checked.

    Example
    -------
    >>> path = getfixture("tmp_path") / "a.wav"
    >>> _ = path.write_bytes(b"1234")
    >>> clip_stats([str(path), str(path) + ".gone"])[str(path) + ".gone"] is None
    True
    """
    stats = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            stats[path] = None
            continue
        stats[path] = [stat.st_size, stat.st_mtime_ns]
    return stats


def _changed_clips(record):
    try:
        with open(record, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        return [f"{record} cannot be read ({err})"]
    if not isinstance(stored, dict):
        return [f"{record} does not hold a dict of clips"]
    current = clip_stats(list(stored))
    return [path for path, stat in stored.items() if current[path] != stat]


def preparation_is_current(save_folder, settings, outputs, clips_record=None):
    """Whether a previous preparation can be reused.

    True only when ``save_folder`` holds a settings record equal to
    ``settings`` (see :func:`mark_prepared`), every file of ``outputs``
    exists and, when ``clips_record`` is given (a file of
    :func:`clip_stats`, relative to ``save_folder``), no clip's size or
    modification time changed since it was checked. Otherwise logs why the
    preparation has to be redone (no record, which setting changed, which
    output is missing, which clip changed) and returns False.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder of the outputs and of the settings record.
    settings : dict
        JSON-serialisable settings of the current call.
    outputs : list of str
        Output files, relative to ``save_folder`` (or absolute).
    clips_record : str, optional
        File written from :func:`clip_stats` when the clips were checked.

    Returns
    -------
    bool

    Example
    -------
    >>> save = getfixture("tmp_path")
    >>> _ = (save / "train.csv").write_text("ID\\n")
    >>> preparation_is_current(save, {"fold": 1}, ["train.csv"])
    False
    >>> mark_prepared(save, {"fold": 1})
    >>> preparation_is_current(save, {"fold": 1}, ["train.csv"])
    True
    >>> preparation_is_current(save, {"fold": 2}, ["train.csv"])
    False
    """
    save_folder = os.fspath(save_folder)
    record = os.path.join(save_folder, SETTINGS_FILE)
    if not os.path.isfile(record):
        logger.info("No record of a previous preparation in %s", save_folder)
        return False
    try:
        with open(record, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        logger.warning("Cannot read %s (%s); preparing again", record, err)
        return False
    current = _normalise(settings)
    if not isinstance(stored, dict):
        logger.warning("%s does not hold a settings dict; preparing again",
                       record)
        return False
    if stored != current:
        for key in sorted(set(stored) | set(current)):
            if stored.get(key, "<unset>") != current.get(key, "<unset>"):
                logger.info(
                    "Preparation setting %r changed: %r -> %r; preparing "
                    "again",
                    key,
                    stored.get(key, "<unset>"),
                    current.get(key, "<unset>"),
                )
        return False
    missing = [
        o for o in outputs if not os.path.isfile(os.path.join(save_folder, o))
    ]
    if missing:
        logger.info(
            "Output(s) %s missing in %s; preparing again",
            ", ".join(missing),
            save_folder,
        )
        return False
    if clips_record is not None:
        record = os.path.join(save_folder, clips_record)
        if not os.path.isfile(record):
            logger.info("%s missing; preparing again", record)
            return False
        changed = _changed_clips(record)
        if changed:
            logger.info(
                "%d clip(s) changed on disk since they were checked (size or "
                "modification time), e.g. %s; preparing again",
                len(changed),
                changed[0],
            )
            return False
    logger.info(
        "%s is already prepared with the same settings; skipping preparation",
        save_folder,
    )
    return True


def mark_prepared(save_folder, settings):
    """Records ``settings`` as those of the preparation in ``save_folder``
    (``<save_folder>/preparation_settings.json``, written atomically). Call
    it last, once every output is written.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder of the outputs.
    settings : dict
        JSON-serialisable settings.
    """
    text = json.dumps(_normalise(settings), indent=2, sort_keys=True) + "\n"
    _atomic_write_text(os.path.join(os.fspath(save_folder), SETTINGS_FILE),
                       text)


def invalidate_preparation(save_folder):
    """Removes the settings record of ``save_folder``, if any. Call it before
    rewriting outputs, so that a preparation interrupted half-way is never
    taken for a complete one.

    Example
    -------
    >>> save = getfixture("tmp_path")
    >>> mark_prepared(save, {"fold": 1})
    >>> invalidate_preparation(save)
    >>> (save / SETTINGS_FILE).exists()
    False
    """
    record = os.path.join(os.fspath(save_folder), SETTINGS_FILE)
    if os.path.isfile(record):
        os.remove(record)


def filter_bad_clips(
    rows,
    save_folder,
    wav_key="wav",
    max_bad_fraction=0.01,
    duration_key="duration",
    num_workers=4,
):
    """Decodes every clip of ``rows`` and drops the unusable ones.

    Unusable clips (missing, undecodable, empty, NaN/Inf samples; see
    :func:`~speechbrain_petl.data.audio.inspect_clip`) are listed with their
    reasons in ``<save_folder>/bad_clips.log`` and counted in a warning; a
    report left by an earlier run is removed when all clips are fine. If more
    than ``max_bad_fraction`` of the clips are unusable the dataset is
    probably damaged, and a RuntimeError is raised (after writing the report).

    Arguments
    ---------
    rows : list of dict
        One dict per clip; ``row[wav_key]`` is its path.
    save_folder : str or os.PathLike
        Where the report is written.
    wav_key : str
        Key of the path in each row.
    max_bad_fraction : float
        Largest tolerated fraction of unusable clips, in [0, 1].
    duration_key : str
        The usable rows are returned as copies with this key set to the
        decoded duration in seconds.
    num_workers : int
        Threads decoding clips concurrently.

    Returns
    -------
    list of dict
        The usable rows, in their original order.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.zeros(16000), 16000, subtype="PCM_16")
    >>> _ = (tmp / "b.wav").write_bytes(b"")
    >>> rows = [{"wav": str(tmp / "a.wav")}, {"wav": str(tmp / "b.wav")}]
    >>> good = filter_bad_clips(rows, tmp, max_bad_fraction=0.5)
    >>> [(os.path.basename(r["wav"]), r["duration"]) for r in good]
    [('a.wav', 1.0)]
    >>> print((tmp / BAD_CLIPS_LOG).read_text().splitlines()[0])
    1 of 2 clips (50.00%) are unusable and were excluded from the manifests:
    """
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(
            f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}"
        )
    save_folder = os.fspath(save_folder)
    report_path = os.path.join(save_folder, BAD_CLIPS_LOG)
    paths = [row[wav_key] for row in rows]
    logger.info("Checking %d clips (decoding each once)", len(paths))
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        reports = list(
            tqdm(
                pool.map(inspect_clip, paths, chunksize=64),
                total=len(paths),
                desc="Checking clips",
                unit="clip",
                dynamic_ncols=True,
            )
        )

    good, bad = [], []
    for row, report in zip(rows, reports):
        if report.ok:
            row = dict(row)
            row[duration_key] = report.duration
            good.append(row)
        else:
            bad.append((row[wav_key], report.reason))

    if not bad:
        if os.path.isfile(report_path):
            logger.info("All clips are usable; removing the stale %s",
                        report_path)
            os.remove(report_path)
        return good

    fraction = len(bad) / len(rows)
    lines = [
        f"{len(bad)} of {len(rows)} clips ({100 * fraction:.2f}%) are "
        "unusable and were excluded from the manifests:"
    ]
    lines += [f"{path}\t{reason}" for path, reason in bad]
    _atomic_write_text(report_path, "\n".join(lines) + "\n")
    logger.warning(
        "%d of %d clips (%.2f%%) are unusable and were excluded; "
        "see %s",
        len(bad),
        len(rows),
        100 * fraction,
        report_path,
    )
    if fraction > max_bad_fraction:
        examples = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise RuntimeError(
            f"{len(bad)} of {len(rows)} clips ({100 * fraction:.2f}%) are "
            f"unusable, more than max_bad_fraction={max_bad_fraction}; the "
            f"dataset looks damaged (e.g. {examples}). The full list is in "
            f"{report_path}. Re-download/extract the dataset, or raise "
            "max_bad_fraction (a top-level key of every recipe yaml, e.g. "
            f"--max_bad_fraction={math.ceil(100 * fraction) / 100:g}) to "
            "drop these clips anyway."
        )
    return good


def write_manifest(path, rows, fieldnames):
    """Writes a SpeechBrain CSV manifest, atomically (temporary file in the
    same folder, then rename).

    Arguments
    ---------
    path : str or os.PathLike
        The CSV file.
    rows : list of dict
        One dict per clip, holding exactly the keys of ``fieldnames``.
    fieldnames : list of str
        Columns; the first must be ``ID`` (unique per row). A ``wav`` column
        must hold absolute paths.

    Example
    -------
    >>> path = getfixture("tmp_path") / "train.csv"
    >>> rows = [{"ID": "a", "duration": 1.0, "wav": "/data/a.wav",
    ...          "label": "dog"}]
    >>> write_manifest(path, rows, ["ID", "duration", "wav", "label"])
    >>> print(path.read_text(), end="")
    ID,duration,wav,label
    a,1.0,/data/a.wav,dog
    """
    fieldnames = list(fieldnames)
    if not fieldnames or fieldnames[0] != "ID":
        raise ValueError(f"the first column must be 'ID', got {fieldnames}")
    seen = set()
    for row in rows:
        missing = [k for k in fieldnames if k not in row]
        extra = [k for k in row if k not in fieldnames]
        if missing or extra:
            raise ValueError(
                f"row {row.get('ID')!r} for {path}: missing columns "
                f"{missing}, unexpected columns {extra}"
            )
        if row["ID"] in seen:
            raise ValueError(f"duplicate ID {row['ID']!r} in {path}")
        seen.add(row["ID"])
        if "wav" in row and not os.path.isabs(os.fspath(row["wav"])):
            raise ValueError(
                f"row {row['ID']!r} for {path}: wav must be an absolute path, "
                f"got {row['wav']!r}"
            )

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(path, buffer.getvalue())
    logger.info("Wrote %s (%d rows)", path, len(rows))


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def few_shot_settings(shots, sampling="first", seed=0):
    """Checks the few-shot options and returns them as preparation settings.

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


SPLITS = ("train", "valid", "test")
MANIFESTS = tuple(f"{split}.csv" for split in SPLITS)


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
    _atomic_write_text(os.path.join(save_folder, CLIPS_RECORD), json.dumps(stats) + "\n")
    mark_prepared(save_folder, settings)
    return written


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
