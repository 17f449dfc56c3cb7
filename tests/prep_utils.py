"""Helpers shared by the tests of the recipes' preparation scripts."""

import csv

SPLITS = ("train", "valid", "test")


def read_table(path, fields):
    """The rows of the CSV file ``path``, after checking its columns."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(fields), path
        return list(reader)


def read_manifest(save, split, fields):
    """The rows of ``<save>/<split>.csv``, after checking its columns."""
    return read_table(save / f"{split}.csv", fields)


def manifest_bytes(save):
    """``{split: bytes of <save>/<split>.csv}``, to compare preparations."""
    return {s: (save / f"{s}.csv").read_bytes() for s in SPLITS}


def first_n_per_class(lines, n, folds, name_key, label_key, skip=()):
    """IDs (file names without ``.wav``) of the first ``n`` metadata lines of
    each class among ``folds``, in the order of ``lines``, skipping the file
    names in ``skip``: what few-shot "first" sampling must keep."""
    counts, ids = {}, []
    for line in lines:
        name, label = line[name_key], line[label_key]
        if int(line["fold"]) in folds and name not in skip:
            if counts.get(label, 0) < n:
                counts[label] = counts.get(label, 0) + 1
                ids.append(name[:-4])
    return ids
