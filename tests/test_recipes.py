"""Every recipe yaml, end to end, as SpeechBrain's own recipe tests run them.

``tests/recipes/<Dataset>.csv`` (SpeechBrain's schema, see
``recipe_table.py``) lists every recipe yaml with debug flags pointing at the
miniature datasets and tiny backbone configs committed under
``tests/samples/``. Each row is run the way SpeechBrain's recipe runner runs
it (``python <Script_file> <Hparam_file> <flags> --device=cpu
--output_folder=... --debug --debug_persistently`` from the repository root,
the script's folder on the path) and its ``file_exists`` checks are applied.
Deeper checks run the recipes on a *pretrained* tiny backbone, whose
inference folder must reproduce the run's test predictions. Consistency
tests fail when a yaml is missing from the tables, a listed file is missing,
or a yaml holds a key nothing uses.
"""

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from mini_datasets import (
    make_esc50,
    make_fluent_speech_commands,
    make_iemocap,
    make_speech_commands,
    make_urbansound8k,
)
from recipe_table import (
    PARAMS,
    ROWS,
    TABLES,
    TRAIN_ROWS,
    UPSTREAM_FIELDS,
    backbone_kind,
    expected_files,
    flag,
    flags,
    row_id,
    runner_argv,
)
from recipe_utils import REPO, load_recipe_module
from speechbrain_petl.inference import AudioClassifier
from speechbrain_petl.methods import FullFineTuning
from speechbrain_petl.paper import SUFFIXES, paper_accuracy

#: Files that read hyper-parameters besides the yaml itself.
CONSUMERS = [
    REPO / "speechbrain_petl" / "brain.py",
    REPO / "speechbrain_petl" / "recipe.py",
    REPO / "speechbrain_petl" / "data" / "pipelines.py",
]


@pytest.fixture(scope="session")
def mini_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_data")
    return {
        "Google-speech-commands": str(make_speech_commands(root / "speech_commands_v0.02")),
        "ESC50": str(make_esc50(root / "ESC-50-master")),
        "UrbanSound8k": str(make_urbansound8k(root / "UrbanSound8K")),
        "fluent-speech-commands": str(make_fluent_speech_commands(root / "fluent_speech_commands_dataset")),
        "IEMOCAP": str(make_iemocap(root / "IEMOCAP_full_release")),
    }


@pytest.fixture(scope="session")
def backbones(tiny_ast_dir, tiny_w2v2_dir):
    return {"ast": tiny_ast_dir, "w2v2": tiny_w2v2_dir}


def recipe_argv(row, data, backbone, output_folder, *extra):
    """The row's debug flags with another dataset and backbone (a pretrained
    tiny one, written by a fixture)."""
    own = [a for a in flags(row) if not a.startswith(("--data_folder=", "--backbone_source=", "--pretrained="))]
    return [
        str(REPO / row["Hparam_file"]),
        f"--data_folder={data}",
        f"--backbone_source={backbone}",
        f"--output_folder={output_folder}",
        "--device=cpu",
        *own,
        *extra,
    ]


def run_in_process(row, argv, monkeypatch):
    """Runs the row's script's ``main(argv)`` from the repository root."""
    script = REPO / row["Script_file"]
    monkeypatch.chdir(REPO)
    dataset = script.parent.relative_to(REPO / "recipes").parts[0]
    return load_recipe_module(dataset, script.stem).main(argv)


# ------------------------------------------------------ SpeechBrain's runner
@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_recipe_runs_as_speechbrains_runner_runs_it(row, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_in_process(row, runner_argv(row, out), monkeypatch)
    missing = [name for name in expected_files(row) if not (out / name).exists()]
    assert expected_files(row) and not missing, missing


@pytest.mark.parametrize(
    "row", [next(r for r in TRAIN_ROWS if r["table"] == t) for t in sorted({r["table"] for r in TRAIN_ROWS})],
    ids=lambda r: r["table"],
)
def test_speechbrains_exact_command_line(row, tmp_path):
    """One row per table through the very command SpeechBrain's runner
    composes: a subprocess from the root, PYTHONPATH = the script's folder."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / pathlib.Path(row["Script_file"]).parent)}
    result = subprocess.run(
        [sys.executable, row["Script_file"], *runner_argv(row, out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all((out / name).exists() for name in expected_files(row))


# ------------------------------------------- deeper: a pretrained tiny backbone
#: Every method on both lobes (Speech Commands), plus one row of every other table.
DEEP_ROWS = [r for r in TRAIN_ROWS if r["table"] == "Google-speech-commands"] + [
    next(r for r in TRAIN_ROWS if r["table"] == t)
    for t in sorted({r["table"] for r in TRAIN_ROWS} - {"Google-speech-commands"})
]


@pytest.mark.parametrize("row", DEEP_ROWS, ids=[row_id(r) for r in DEEP_ROWS])
def test_recipe_runs_end_to_end(row, backbones, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = recipe_argv(
        row, REPO / flag(row, "data_folder"), backbones[backbone_kind(row)], out, "--debug", "--debug_persistently"
    )
    brain = run_in_process(row, argv, monkeypatch)

    for name in ("train_log.txt", "hyperparams.yaml", "log.txt", "test_stats.txt", "test_predictions.csv"):
        assert (out / name).is_file(), name
    assert (out / "save" / "label_encoder.txt").is_file()
    log = (out / "train_log.txt").read_text()
    assert "epoch: 2" in log and "train acc" in log and "valid acc" in log and "test acc" in log
    checkpoints = sorted((out / "save").glob("CKPT*"))
    assert checkpoints
    for name in ("backbone.ckpt", "classifier.ckpt", "optimizer.ckpt", "lr_scheduler.ckpt", "counter.ckpt"):
        assert (checkpoints[-1] / name).is_file(), name
    saved = torch.load(checkpoints[-1] / "backbone.ckpt", weights_only=True)
    lobe = brain.backbone
    assert set(saved["state"]) == set(lobe.trainable_state_dict())
    if not any(isinstance(method, FullFineTuning) for method in lobe.petl.values()):
        assert all(key.startswith("petl.") for key in saved["state"])
    with open(out / "test_predictions.csv", newline="") as fin:
        predictions = list(csv.DictReader(fin))
    assert len(predictions) == len(brain.stats.ids) > 0
    with open(out / "save" / "test.csv", newline="") as fin:
        wav_of = {row["ID"]: row["wav"] for row in csv.DictReader(fin)}
    if not lobe.pretrained:  # random weights exist nowhere else: no inference folder
        assert not (out / "inference").exists()
        return
    # The run wrote its inference folder; loaded through SpeechBrain's
    # interface, it computes what the trained model computes, clip by clip,
    # and gives the run's test predictions again (up to exact ties).
    assert (out / "inference" / "README.md").is_file()
    classifier = AudioClassifier.from_hparams(source=str(out / "inference"), savedir=str(tmp_path / "cache"))
    trained = AudioClassifier.from_modules(
        lobe, brain.hparams.classifier, brain.hparams.label_encoder,
        max_audio_samples=getattr(brain.hparams, "max_audio_samples", None),
    )
    for row_pred in predictions:
        log_probs, _, _, labels = classifier.classify_file(wav_of[row_pred["ID"]])
        expected, _, _, _ = trained.classify_file(wav_of[row_pred["ID"]])
        torch.testing.assert_close(log_probs, expected, rtol=0, atol=1e-5)
        top2 = log_probs[0].topk(2).values
        if top2[0] - top2[1] > 1e-3:
            assert labels[0] == row_pred["prediction"], row_pred["ID"]
    # So does the run folder itself.
    from_run = AudioClassifier.from_experiment(out)
    first = wav_of[predictions[0]["ID"]]
    torch.testing.assert_close(from_run.classify_file(first)[0], trained.classify_file(first)[0], rtol=0, atol=1e-5)



# ------------------------------------------------------------ consistency
def test_tables_have_speechbrains_columns_and_cover_every_yaml():
    for table in TABLES.glob("*.csv"):
        with open(table, newline="") as fin:
            assert next(csv.reader(fin)) == UPSTREAM_FIELDS, table.name
    listed = [row["Hparam_file"] for row in ROWS]
    assert len(listed) == len(set(listed)), "a yaml is listed twice"
    found = {
        str(path.relative_to(REPO)) for path in (REPO / "recipes").rglob("*.yaml")
        if "results" not in path.parts
    }
    assert found == set(listed), f"not listed: {sorted(found - set(listed))}; missing: {sorted(set(listed) - found)}"
    assert set(PARAMS) == set(listed), "tests/recipe_params.csv must have one row per recipe yaml"


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_row_files_exist_and_no_result_is_claimed(row):
    for field in ("Script_file", "Hparam_file", "Data_prep_file", "Readme_file"):
        assert (REPO / row[field]).is_file(), f"{row['table']}.csv: {field} {row[field]} does not exist"
    assert row["table"] == pathlib.Path(row["Hparam_file"]).parts[1]
    assert row["performance"] == "" and row["Result_url"] == "", "no real run exists yet"
    for value in (flag(row, "data_folder"), flag(row, "backbone_source")):
        if value is not None:
            assert (REPO / value).is_dir() and value.startswith("tests/samples/"), value
    assert flag(row, "pretrained") in (None, "False"), "commit no weights: tiny configs only"


def test_task_folders_follow_speechbrains_layout():
    for row in TRAIN_ROWS:
        folder = (REPO / row["Script_file"]).parent
        requirements = folder / "extra_requirements.txt"
        if folder.name == "PETL":
            assert requirements.is_file() and "speechbrain_petl" in requirements.read_text(), folder
        prepare = REPO / row["Data_prep_file"]
        assert prepare.parent == folder
        # The preparation script lives at the dataset level; the task folder links it.
        assert prepare.is_symlink() and prepare.resolve().parent.parent == (REPO / "recipes")


def test_committed_samples_are_small():
    samples = REPO / "tests" / "samples"
    for folder in samples.iterdir():
        if folder.is_dir():
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            assert size < 800_000, f"{folder.name}: {size} bytes"
            assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin")), "no weights"


def _consumed_keys(script):
    text = "\n".join(path.read_text() for path in CONSUMERS + [script])
    patterns = [
        r"hparams\[\s*[\"'](\w+)[\"']\s*\]",
        r"hparams\.get\(\s*[\"'](\w+)[\"']",
        r"self\.hparams\.(\w+)",
        r"getattr\(\s*self\.hparams,\s*[\"'](\w+)[\"']",
    ]
    keys = {key for pattern in patterns for key in re.findall(pattern, text)}
    for call in re.findall(r"preparation_kwargs\(hparams((?:,\s*\"\w+\")*)\)", text):
        keys |= set(re.findall(r"\"(\w+)\"", call))
    return keys


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_every_yaml_key_is_used(row):
    path = REPO / row["Hparam_file"]
    text = path.read_text()
    keys = [k for k in re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE) if not k.startswith("__")]
    consumed = _consumed_keys(REPO / row["Script_file"])
    unused = [k for k in keys if f"<{k}>" not in text and k not in consumed]
    assert not unused, f"{path.name}: keys nothing uses: {unused}"


@pytest.mark.parametrize("row", TRAIN_ROWS, ids=[row_id(r) for r in TRAIN_ROWS])
def test_every_yaml_exposes_the_common_keys(row):
    text = (REPO / row["Hparam_file"]).read_text()
    keys = set(re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE))
    common = {"data_folder", "output_folder", "seed", "number_of_epochs", "batch_size", "backbone_source", "pretrained"}
    if row["table"] == "ESC50":
        common |= {"fold", "protocol"}
    assert common <= keys, f"missing: {sorted(common - keys)}"


def test_recipe_readmes_cover_every_yaml():
    for row in ROWS:
        readme = (REPO / row["Readme_file"]).read_text()
        name = "hparams/" + row_id(row)
        assert name in readme, f"{row['Readme_file']} does not mention {name}"
        dataset = row["table"]
        if dataset not in SUFFIXES:
            continue
        stem = pathlib.Path(name).stem
        method = stem[: -len(SUFFIXES[dataset]) - 1] if stem.endswith(SUFFIXES[dataset]) else stem
        paper = paper_accuracy(method, dataset)
        if paper is not None:
            line = [line for line in readme.splitlines() if line.startswith(f"| {name} |")][-1]
            assert f"| {paper:.2f} |" in line, f"{row['Readme_file']}: {name} lacks the paper's {paper}"


def test_killed_run_resumes_from_its_intra_epoch_checkpoint(mini_data, tiny_ast_dir, tmp_path):
    """SIGKILL a training subprocess mid-epoch; the restarted run resumes
    from the intra-epoch checkpoint and finishes."""
    row = next(r for r in ROWS if row_id(r) == "conformer_gsc.yaml")
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py"] + recipe_argv(
        row,
        mini_data["Google-speech-commands"],
        tiny_ast_dir,
        out,
        "--number_of_epochs=1",
        "--batch_size=1",
        "--ckpt_interval_steps=2",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cwd = REPO / pathlib.Path(row["Script_file"]).parent
    first = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and first.poll() is None:
            if any("brain_intra_epoch_ckpt" in p.read_text() for p in out.glob("save/CKPT*/CKPT.yaml")):
                break
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    assert not (out / "train_log.txt").exists() or "epoch: 1" not in (out / "train_log.txt").read_text()
    intra_epoch = {
        p.parent.name for p in out.glob("save/CKPT*/CKPT.yaml") if "brain_intra_epoch_ckpt" in p.read_text()
    }
    assert intra_epoch

    second = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    loaded = re.findall(r"Loading a checkpoint from \S*/(CKPT\S+)", second.stdout + second.stderr)
    assert loaded and loaded[0] in intra_epoch, loaded
    train_log = (out / "train_log.txt").read_text()
    assert train_log.count("epoch: 1,") == 1 and "test acc" in train_log
