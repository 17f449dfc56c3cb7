"""A run folder never lies about the run: a recipe's ``train.py`` rerun in a
folder holding a trained run with other settings (yaml values and
overrides, run options, backbone weights) is refused before it writes
anything; a value equal to the yaml's, or a moved folder, is no change; and
``--continue_with_new_settings`` goes on, recording the change."""

import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML

from mini_datasets import make_esc50
from recipe_utils import REPO, load_recipe_module
from tiny import save_tiny_ast

LORA_ESC50 = REPO / "recipes" / "ESC50" / "PETL" / "hparams" / "lora_esc50.yaml"
#: One short epoch on the miniature ESC-50 (lora_esc50.yaml says lr: 0.005, lora_rank: 6).
SMALL = ["--device=cpu", "--num_workers=0", "--max_frames=64", "--number_of_epochs=1", "--batch_size=8"]


def argv(data, backbone, out, *extra):
    """``train.py`` arguments: the small run, with ``extra`` overriding its flags."""
    given = {arg.split("=")[0] for arg in extra}
    small = [arg for arg in SMALL if arg.split("=")[0] not in given]
    return [str(LORA_ESC50), f"--data_folder={data}", f"--backbone_source={backbone}", f"--output_folder={out}",
            *small, *extra]


def snapshot(folder):
    """Every file's bytes and modification time, and every folder's time,
    once the log files of earlier runs in this process are closed (as in a
    new process, where nothing logs to a file before the experiment folder
    is set up)."""
    for handler in list(logging.root.handlers):
        if isinstance(handler, logging.FileHandler):
            logging.root.removeHandler(handler)
            handler.close()
    found = {}
    for here, _, files in os.walk(folder):
        found[here] = os.stat(here).st_mtime_ns
        for name in files:
            path = os.path.join(here, name)
            found[path] = (os.stat(path).st_mtime_ns, pathlib.Path(path).read_bytes())
    return found


def recorded(out):
    """The run folder's hyperparams.yaml, parsed (tags kept)."""
    return YAML().load((out / "hyperparams.yaml").read_text())


def epochs(out):
    return [line for line in (out / "train_log.txt").read_text().splitlines() if line.startswith("epoch:")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_ast_dir):
    """A finished one-epoch LoRA run on the miniature ESC-50."""
    root = tmp_path_factory.mktemp("run_folder")
    data = make_esc50(root / "ESC-50-master")
    train = load_recipe_module("ESC50", "train")
    train.main(argv(data, tiny_ast_dir, root / "run"))
    return train, data, root / "run"


@pytest.fixture
def copied_run(finished_run, tmp_path):
    """A copy of the finished run in another folder (a run that moved)."""
    train, data, out = finished_run
    copy = tmp_path / "moved_run"
    shutil.copytree(out, copy)
    return train, data, copy


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--lr=0.5"], "lr: 0.005 -> 0.5"),
        (["--lora_rank=7"], "lora_rank: 6 -> 7"),
        (["--debug"], "--debug: False -> True"),
    ],
    ids=["lr", "lora_rank", "debug"],
)
def test_a_changed_setting_is_refused_before_anything_is_written(finished_run, tiny_ast_dir, extra, named):
    """Rerunning train.py with --lr=0.5 used to complete, leaving a
    hyperparams.yaml that said 0.5 for a model trained at 0.005."""
    train, data, out = finished_run
    before = snapshot(out)
    with pytest.raises(ValueError) as refused:
        train.main(argv(data, tiny_ast_dir, out, *extra))
    message = str(refused.value)
    assert str(out) in message and named in message
    assert "--output_folder" in message and "--continue_with_new_settings" in message
    assert snapshot(out) == before


def test_another_backbone_is_refused_before_anything_is_written(finished_run, tmp_path):
    """Another backbone used to be refused only when the checkpoint was
    loaded, after hyperparams.yaml named it and params.json said
    ``finished: false``."""
    train, data, out = finished_run
    other = save_tiny_ast(tmp_path / "other_ast", seed=1)  # same architecture, other weights
    before = snapshot(out)
    with pytest.raises((ValueError, RuntimeError)) as refused:
        train.main(argv(data, other, out))
    message = str(refused.value)
    assert "frozen weights differ" in message and str(other) in message and "Nothing was written" in message
    assert snapshot(out) == before


def test_a_value_equal_to_the_yaml_default_in_a_moved_folder_is_no_change(copied_run, tiny_ast_dir, tmp_path):
    """The moved run, with a copy of its backbone elsewhere and --lr=0.005
    (the yaml's value) given explicitly, resumes: no epoch is trained again
    and the test gives the same predictions; --lr=0.5 there is refused."""
    train, data, out = copied_run
    backbone = shutil.copytree(tiny_ast_dir, tmp_path / "ast_copy")
    before = snapshot(out)
    with pytest.raises(ValueError, match="lr: 0.005 -> 0.5"):
        train.main(argv(data, backbone, out, "--lr=0.5"))
    assert snapshot(out) == before

    trained, predictions = epochs(out), (out / "test_predictions.csv").read_text()
    train.main(argv(data, backbone, out, "--lr=0.005", "--num_workers=1"))
    assert epochs(out) == trained and (out / "test_predictions.csv").read_text() == predictions
    record = json.loads((out / "params.json").read_text())
    assert record["finished"] and "settings_changes" not in record
    hparams = recorded(out)
    assert (hparams["output_folder"], hparams["lr"]) == (str(out), 0.005)  # where the run is now


def test_continuing_with_new_settings_is_recorded(copied_run, tiny_ast_dir):
    """--continue_with_new_settings trains on from the checkpoint with the
    new settings; the folder's hyperparams.yaml says them, the old one is
    kept, and params.json lists the change. The old settings are then a
    change in turn."""
    train, data, out = copied_run
    old_hparams = (out / "hyperparams.yaml").read_bytes()
    train.main(argv(data, tiny_ast_dir, out, "--number_of_epochs=2", "--lr=0.5", "--continue_with_new_settings"))

    assert [line.split(",")[0] for line in epochs(out)] == ["epoch: 1", "epoch: 2"]  # epoch 1 not trained again
    hparams = recorded(out)
    assert (hparams["number_of_epochs"], hparams["lr"]) == (2, 0.5)
    assert (out / "hyperparams_before_change_1.yaml").read_bytes() == old_hparams
    record = json.loads((out / "params.json").read_text())
    assert record["finished"] and len(record["settings_changes"]) == 1
    change = record["settings_changes"][0]
    assert {"number_of_epochs: 1 -> 2", "lr: 0.005 -> 0.5"} <= set(change["changes"])
    assert change["previous_hyperparams"] == "hyperparams_before_change_1.yaml"
    assert "learning rates included" in change["note"]
    assert "continue_with_new_settings" not in (out / "hyperparams.yaml").read_text()  # no yaml override

    before = snapshot(out)
    with pytest.raises(ValueError, match="(?s)number_of_epochs: 2 -> 1.*lr: 0.5 -> 0.005"):
        train.main(argv(data, tiny_ast_dir, out))
    assert snapshot(out) == before


def test_what_counts_as_a_setting(tmp_path):
    """Values, not text; locations and how a run executes are not settings."""
    from speechbrain_petl.studies.run_record import changed_settings, command_settings, record_run_options

    yaml = tmp_path / "x.yaml"
    text = (
        "output_folder: !PLACEHOLDER\ndata_folder: !PLACEHOLDER\nbackbone_source: hub/id\n"
        "save_folder: !ref <output_folder>/save\nnum_workers: 2\nrecompute: null\n"
        "lr: 0.005\nloader: {workers: !ref <num_workers>}\nopt: !name:torch.optim.AdamW\n    lr: !ref <lr>\n"
    )
    yaml.write_text(text)
    run = tmp_path / "run"
    first = f"output_folder: {run}\ndata_folder: /data/one"
    settings = command_settings(yaml, first, {"debug": False, "device": "cpu"})
    assert changed_settings(settings) == []  # nothing trained there yet
    run.mkdir()
    with open(yaml) as fin:
        (run / "hyperparams.yaml").write_text(resolve_references(fin, first).getvalue())
    (run / "save" / "CKPT+1").mkdir(parents=True)
    (run / "save" / "CKPT+1" / "CKPT.yaml").write_text("end-of-epoch: true\n")
    record_run_options(run, settings.run_options)

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    same = [
        f"output_folder: {moved}\ndata_folder: /data/two\nbackbone_source: /copy/of/weights",
        f"output_folder: {moved}\ndata_folder: /data/one\nnum_workers: 0\nrecompute: ffn\nlr: 5.0e-3",
    ]
    for overrides in same:
        assert changed_settings(command_settings(yaml, overrides, {"debug": False, "device": "cuda:0"})) == []
    yaml.write_text(text.replace("lr: 0.005\n", "lr: 0.005  # the paper's\n"))
    assert changed_settings(command_settings(yaml, same[0], {"debug": False})) == []

    yaml.write_text(text.replace("torch.optim.AdamW", "torch.optim.SGD"))
    assert changed_settings(command_settings(yaml, same[0], {"debug": True})) == [
        "opt: !name:torch.optim.AdamW {lr: 0.005} -> !name:torch.optim.SGD {lr: 0.005}",
        "--debug: False -> True",
    ]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_torchrun_process_refuses_before_writing(finished_run, tiny_ast_dir):
    """Under torchrun (2 CPU processes, gloo) a changed setting is refused
    by every process before the main one writes anything."""
    _, data, out = finished_run
    before = snapshot(out)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    script = REPO / "recipes" / "ESC50" / "PETL" / "train.py"
    cmd = [torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script),
           *argv(data, tiny_ast_dir, out, "--lr=0.5")]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{script.parent}", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "RunSettingsError" in output and "lr: 0.005 -> 0.5" in output
    assert "Beginning experiment" not in output  # no process set the folder up
    assert snapshot(out) == before
