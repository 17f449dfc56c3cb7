"""Reading finished runs back: test accuracy from saved predictions, and
per-epoch curves from ``train_log.txt``."""

import csv
import os
import re

from speechbrain_petl.studies.run_record import read_record

EPOCH_LINE = re.compile(r"^epoch: (\d+),")
STAT = re.compile(r"(train|valid) (loss|acc): ([-+0-9.e]+)")


def test_accuracy(run_folder):
    """(accuracy, number of test clips) recomputed from the run's
    ``test_predictions.csv``; None if the run has not been tested."""
    path = os.path.join(run_folder, "test_predictions.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as fin:
        rows = list(csv.DictReader(fin))
    if not rows:
        raise ValueError(f"{path} holds no prediction")
    return sum(row["target"] == row["prediction"] for row in rows) / len(rows), len(rows)


def is_finished(run_folder):
    """True when the run trained and was tested: its ``params.json`` says
    ``finished: true`` (see :mod:`speechbrain_petl.studies.run_record`) and its
    test predictions exist.

    Example
    -------
    >>> from speechbrain_petl.studies.run_record import write_record
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "test_predictions.csv").write_text("ID,target,prediction\\nu1,yes,yes\\n")
    >>> write_record(folder, {"finished": False})
    >>> is_finished(folder)
    False
    """
    if not os.path.isfile(os.path.join(run_folder, "test_predictions.csv")):
        return False
    record = read_record(run_folder)
    return record is not None and record.get("finished") is True


def training_curves(train_log):
    """Per-epoch statistics of a ``train_log.txt``.

    Returns
    -------
    dict
        ``{"epoch": [...], "train loss": [...], "train acc": [...],
        "valid loss": [...], "valid acc": [...]}``.

    Example
    -------
    >>> path = getfixture("tmp_path") / "train_log.txt"
    >>> _ = path.write_text("epoch: 1, lr: 1.00e-03 - train loss: 2.5, train acc: 1.00e-01 - "
    ...                     "valid loss: 2.4, valid acc: 2.00e-01\\n")
    >>> training_curves(path)["valid acc"]
    [0.2]
    """
    curves = {"epoch": [], "train loss": [], "train acc": [], "valid loss": [], "valid acc": []}
    with open(train_log) as fin:
        for line in fin:
            match = EPOCH_LINE.match(line)
            if not match:
                continue
            curves["epoch"].append(int(match.group(1)))
            for split, stat, value in STAT.findall(line):
                curves[f"{split} {stat}"].append(float(value))
    return curves
