"""Helpers shared by the tests of the recipes' preparation scripts."""

import csv

SPLITS = ("train", "valid", "test")


def read_manifest(save, split, fields):
    """The rows of ``<save>/<split>.csv``, after checking its columns."""
    with open(save / f"{split}.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(fields)
        return list(reader)


def manifest_bytes(save):
    """``{split: bytes of <save>/<split>.csv}``, to compare preparations."""
    return {s: (save / f"{s}.csv").read_bytes() for s in SPLITS}
