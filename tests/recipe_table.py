"""The recipe tables, read once for every test that needs them.

``tests/recipes/<Dataset>.csv`` lists every recipe yaml in SpeechBrain's own
schema (:data:`UPSTREAM_FIELDS`), with paths relative to the repository root
and debug flags that point at the miniature datasets and tiny backbone
configs committed under ``tests/samples/``. ``tests/recipe_params.csv`` holds
what SpeechBrain's schema has no column for: our parameter budget of each
yaml (keyed by ``Hparam_file``).
"""

import csv
import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parent.parent
TABLES = REPO / "tests" / "recipes"
PARAMS_TABLE = REPO / "tests" / "recipe_params.csv"

#: The columns of SpeechBrain's tests/recipes/*.csv, in its order.
UPSTREAM_FIELDS = [
    "Task", "Dataset", "Script_file", "Hparam_file", "Data_prep_file", "Readme_file",
    "Result_url", "HF_repo", "test_debug_flags", "test_debug_checks", "performance",
]  # fmt: skip


def read_rows():
    """Every row of every table, with ``table`` (the csv's name) added."""
    rows = []
    for table in sorted(TABLES.glob("*.csv")):
        with open(table, newline="", encoding="utf-8") as fin:
            for row in csv.DictReader(fin):
                rows.append({**row, "table": table.stem})
    return rows


ROWS = read_rows()
#: The rows run by ``train.py`` (the quickstart's driver row aside).
TRAIN_ROWS = [row for row in ROWS if row["Script_file"].endswith("/train.py")]

with open(PARAMS_TABLE, newline="") as fin:
    PARAMS = {row["Hparam_file"]: row for row in csv.DictReader(fin)}


def row_id(row):
    """The yaml's file name, as a test id."""
    return pathlib.Path(row["Hparam_file"]).name


def flags(row):
    """``test_debug_flags`` as an argument list."""
    return shlex.split(row["test_debug_flags"])


def flag(row, key):
    """The value of ``--key=value`` in the row's flags, or None."""
    for arg in flags(row):
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


#: The tiny backbone config folders under tests/samples, by backbone kind.
KINDS = ("ast", "w2v2", "hubert", "wavlm", "whisper")


def backbone_kind(row):
    """``"ast"``, ``"w2v2"``, ``"hubert"``, ``"wavlm"`` or ``"whisper"``: the
    tiny backbone config the row trains (``tests/samples/tiny_<kind>``)."""
    source = flag(row, "backbone_source") or ""
    return next((kind for kind in KINDS if source.endswith(f"tiny_{kind}")), "ast")


def expected_files(row):
    """The ``file_exists=[...]`` list of ``test_debug_checks``."""
    match = re.search(r"file_exists=\[(.*?)\]", row["test_debug_checks"])
    return [name.strip() for name in match.group(1).split(",")] if match else []


def runner_argv(row, output_folder):
    """What SpeechBrain's recipe runner passes to the script, after its name:
    ``<Hparam_file> <flags> --device=cpu --output_folder=... --debug --debug_persistently``."""
    return [
        row["Hparam_file"], *flags(row), "--device=cpu", f"--output_folder={output_folder}",
        "--debug", "--debug_persistently",
    ]  # fmt: skip
