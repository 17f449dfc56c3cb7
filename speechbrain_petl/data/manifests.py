"""Bad-clip filtering (decode every clip, drop and report the unusable ones) and the CSV manifests a recipe reads."""

import concurrent.futures
import csv
import io
import logging
import math
import os

from tqdm import tqdm

from speechbrain_petl.data.audio import inspect_clip
from speechbrain_petl.data.record import write_text_atomically

logger = logging.getLogger(__name__)

#: The splits of every recipe, and their manifest files.
SPLITS = ("train", "valid", "test")
MANIFESTS = tuple(f"{split}.csv" for split in SPLITS)

BAD_CLIPS_LOG = "bad_clips.log"


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
    write_text_atomically(report_path, "\n".join(lines) + "\n")
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
    write_text_atomically(path, buffer.getvalue())
    logger.info("Wrote %s (%d rows)", path, len(rows))
