"""Every recipe yaml, end to end on miniature data and a tiny backbone.

``tests/recipes.csv`` lists every recipe yaml (in the spirit of
SpeechBrain's tests/recipes tables); each row runs ``train.py <yaml> --debug``
on CPU and the output folder is checked. Consistency tests fail when a yaml
is missing from the table or holds a key nothing uses.
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
from speechbrain_petl.inference import AudioClassifier
from speechbrain_petl.methods import FullFineTuning
from speechbrain_petl.paper import SUFFIXES, paper_accuracy
from recipe_utils import REPO, load_recipe_module

TABLE = pathlib.Path(__file__).parent / "recipes.csv"
with open(TABLE, newline="") as fin:
    ROWS = list(csv.DictReader(fin))

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
        "SpeechCommands": str(make_speech_commands(root / "speech_commands_v0.02")),
        "ESC50": str(make_esc50(root / "ESC-50-master")),
        "UrbanSound8k": str(make_urbansound8k(root / "UrbanSound8K")),
        "FluentSpeechCommands": str(make_fluent_speech_commands(root / "fluent_speech_commands_dataset")),
        "IEMOCAP": str(make_iemocap(root / "IEMOCAP_full_release")),
    }


@pytest.fixture(scope="session")
def backbones(tiny_ast_dir, tiny_w2v2_dir):
    return {"ast": tiny_ast_dir, "w2v2": tiny_w2v2_dir}


def recipe_argv(row, data, backbone, output_folder, *extra):
    return [
        str(REPO / row["Recipe"] / row["Hparams"]),
        f"--data_folder={data}",
        f"--backbone_source={backbone}",
        f"--output_folder={output_folder}",
        "--num_workers=0",
        "--device=cpu",
        *row["Test_flags"].split(),
        *extra,
    ]


@pytest.mark.parametrize("row", ROWS, ids=[r["Hparams"].split("/")[-1] for r in ROWS])
def test_recipe_runs_end_to_end(row, mini_data, backbones, tmp_path):
    train = load_recipe_module(row["Dataset"], "train")
    out = tmp_path / "out"
    argv = recipe_argv(
        row, mini_data[row["Dataset"]], backbones[row["Backbone"]], out, "--debug", "--debug_persistently"
    )
    brain = train.main(argv)

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


#: yamls read by a recipe's own driver script instead of train.py, and their tests.
DRIVER_YAMLS = {"recipes/Quickstart/hparams/quickstart.yaml": "tests/test_quickstart.py"}


def test_table_lists_every_recipe_yaml():
    listed = {os.path.join(r["Recipe"], r["Hparams"]) for r in ROWS} | set(DRIVER_YAMLS)
    found = {
        str(path.relative_to(REPO))
        for path in (REPO / "recipes").glob("*/hparams/*.yaml")
    }
    assert found == listed, f"not in {TABLE.name}: {sorted(found - listed)}; missing: {sorted(listed - found)}"


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


@pytest.mark.parametrize("row", ROWS, ids=[r["Hparams"].split("/")[-1] for r in ROWS])
def test_every_yaml_key_is_used(row):
    path = REPO / row["Recipe"] / row["Hparams"]
    text = path.read_text()
    keys = [k for k in re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE) if not k.startswith("__")]
    consumed = _consumed_keys(REPO / "recipes" / row["Dataset"] / "train.py")
    unused = [k for k in keys if f"<{k}>" not in text and k not in consumed]
    assert not unused, f"{path.name}: keys nothing uses: {unused}"


@pytest.mark.parametrize("row", ROWS, ids=[r["Hparams"].split("/")[-1] for r in ROWS])
def test_every_yaml_exposes_the_common_keys(row):
    text = (REPO / row["Recipe"] / row["Hparams"]).read_text()
    keys = set(re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE))
    common = {"data_folder", "output_folder", "seed", "number_of_epochs", "batch_size", "backbone_source", "pretrained"}
    if row["Dataset"] == "ESC50":
        common |= {"fold", "protocol"}
    assert common <= keys, f"missing: {sorted(common - keys)}"


def test_recipe_readmes_cover_every_yaml():
    for row in ROWS:
        readme = (REPO / row["Recipe"] / "README.md").read_text()
        assert row["Hparams"] in readme, f"{row['Recipe']}/README.md does not mention {row['Hparams']}"
        stem = pathlib.Path(row["Hparams"]).stem
        method = stem[: -len(SUFFIXES[row["Dataset"]]) - 1] if stem.endswith(SUFFIXES[row["Dataset"]]) else stem
        paper = paper_accuracy(method, row["Dataset"])
        if paper is not None and row["Recipe"] != "recipes/Quickstart":
            line = [line for line in readme.splitlines() if line.startswith(f"| {row['Hparams']} |")][-1]
            assert f"| {paper:.2f} |" in line, f"{row['Recipe']}/README.md: {row['Hparams']} lacks the paper's {paper}"


def test_killed_run_resumes_from_its_intra_epoch_checkpoint(mini_data, tiny_ast_dir, tmp_path):
    """SIGKILL a training subprocess mid-epoch; the restarted run resumes
    from the intra-epoch checkpoint and finishes."""
    row = next(r for r in ROWS if r["Hparams"] == "hparams/conformer_gsc.yaml")
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py"] + recipe_argv(
        row,
        mini_data["SpeechCommands"],
        tiny_ast_dir,
        out,
        "--number_of_epochs=1",
        "--batch_size=1",
        "--ckpt_interval_steps=2",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cwd = REPO / row["Recipe"]
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
