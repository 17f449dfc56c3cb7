"""Building blocks of the dataset preparation scripts.

Every recipe's ``*_prepare.py`` follows the same steps:

1. :func:`check_save_folder` and :func:`require_file` / :func:`require_folder`:
   fail early, naming the exact file that is missing and what the dataset's
   layout should look like;
2. :func:`preparation_is_current`: skip when the stored settings equal the
   current ones and every output exists; otherwise
   :func:`invalidate_preparation` before writing anything;
3. :func:`filter_bad_clips`: decode every clip, drop (and report) the ones
   that cannot be used;
4. :func:`write_manifest` for each split, then :func:`mark_prepared`.

Nothing is ever written inside the dataset's folder: outputs, the settings
record and the bad-clip report all go to ``save_folder``.
"""

import concurrent.futures
import csv
import io
import json
import logging
import os
import tempfile

from speechbrain_petl.data.audio import inspect_clip

logger = logging.getLogger(__name__)

SETTINGS_FILE = "preparation_settings.json"
BAD_CLIPS_LOG = "bad_clips.log"


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


def preparation_is_current(save_folder, settings, outputs):
    """Whether a previous preparation can be reused.

    True only when ``save_folder`` holds a settings record equal to
    ``settings`` (see :func:`mark_prepared`) and every file of ``outputs``
    exists. Otherwise logs why the preparation has to be redone (no record,
    which setting changed, which output is missing) and returns False.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder of the outputs and of the settings record.
    settings : dict
        JSON-serialisable settings of the current call.
    outputs : list of str
        Output files, relative to ``save_folder`` (or absolute).

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
        reports = list(pool.map(inspect_clip, paths, chunksize=64))

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
            "max_bad_fraction to drop these clips anyway."
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
