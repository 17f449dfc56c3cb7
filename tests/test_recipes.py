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


def row_classes(row):
    """The ``n_classes`` of a recipe yaml (its head's width)."""
    text = (REPO / row["Recipe"] / row["Hparams"]).read_text()
    return int(re.search(r"^n_classes: (\d+)", text, re.MULTILINE).group(1))


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
    # score and per-class probabilities: one column per output unit, summing to 1
    labels = [brain.hparams.label_encoder.ind2lab.get(i, f"<unused output {i}>") for i in range(int(row_classes(row)))]
    assert list(predictions[0])[:4] == ["ID", "target", "prediction", "score"]
    assert list(predictions[0])[4:] == [f"prob_{label}" for label in labels]
    for pred in predictions:
        probs = {label: float(pred[f"prob_{label}"]) for label in labels}
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert max(probs, key=probs.get) == pred["prediction"]
        assert float(pred["score"]) == pytest.approx(probs[pred["prediction"]], rel=1e-5)

    with open(out / "save" / "test.csv", newline="") as fin:
        wav_of = {row["ID"]: row["wav"] for row in csv.DictReader(fin)}
    if not lobe.pretrained:  # random weights exist nowhere else: no inference folder
        assert not (out / "inference").exists()
        return
    # The run wrote its inference folder; loaded through SpeechBrain's
    # interface, it gives the run's test probabilities again, clip by clip
    # (alone instead of in a batch: equal up to float rounding), and its
    # predictions (up to exact ties).
    assert (out / "inference" / "README.md").is_file()
    classifier = AudioClassifier.from_hparams(source=str(out / "inference"), savedir=str(tmp_path / "cache"))
    trained = AudioClassifier.from_modules(
        lobe, brain.hparams.classifier, brain.hparams.label_encoder,
        max_audio_samples=getattr(brain.hparams, "max_audio_samples", None),
    )
    for row_pred in predictions:
        log_probs, _, _, predicted = classifier.classify_file(wav_of[row_pred["ID"]])
        expected, _, _, _ = trained.classify_file(wav_of[row_pred["ID"]])
        torch.testing.assert_close(log_probs, expected, rtol=0, atol=1e-5)
        recorded = torch.tensor([float(row_pred[f"prob_{label}"]) for label in labels])
        torch.testing.assert_close(log_probs[0].exp(), recorded, rtol=0, atol=1e-4)
        top2 = log_probs[0].topk(2).values
        if top2[0] - top2[1] > 1e-3:
            assert predicted[0] == row_pred["prediction"], row_pred["ID"]
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
    common = {
        "data_folder", "output_folder", "seed", "number_of_epochs", "batch_size", "backbone_source", "pretrained",
        "max_bad_fraction",
    }
    if row["Dataset"] == "ESC50":
        common |= {"fold", "protocol"}
    assert common <= keys, f"missing: {sorted(common - keys)}"


def test_num_workers_default_to_the_machine(monkeypatch):
    """Recipes default to the CPUs this process may use, at most 4 (no
    DataLoader warning on a 2-core machine); the quickstart keeps 0."""
    from speechbrain_petl.data.pipelines import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers() == 4
    for row in ROWS:
        if row["Recipe"] == "recipes/Quickstart":
            continue
        text = (REPO / row["Recipe"] / row["Hparams"]).read_text()
        assert re.search(
            r"^num_workers: !apply:speechbrain_petl\.data\.pipelines\.default_num_workers \[\]", text, re.MULTILINE
        ), row["Hparams"]


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


def _latest_end_of_epoch_tensors(out):
    """Every tensor of the run's last end-of-epoch checkpoint, by file and key."""
    import yaml

    ckpts = [p.parent for p in (out / "save").glob("CKPT*/CKPT.yaml")]
    metas = {c: yaml.safe_load((c / "CKPT.yaml").read_text()) for c in ckpts}
    latest = max((c for c in ckpts if metas[c]["end-of-epoch"]), key=lambda c: metas[c]["unixtime"])
    tensors = {}

    def collect(prefix, value):
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                collect(f"{prefix}/{index}", item)

    for name in ("backbone", "classifier", "optimizer", "lr_scheduler"):
        collect(name, torch.load(latest / f"{name}.ckpt", weights_only=True))
    return tensors


#: Where the resumed run of the exact-resume test is killed, in order (see
#: tests/killable_run.py): before the first checkpoint (epoch 1, step 1),
#: during the intra-epoch checkpoint after epoch 1 step 4 (once 2 of its
#: files are written), and mid-epoch (epoch 2 step 3, one step after a
#: checkpoint).
KILL_POINTS = ("step:1:1", "save:1:4:2", "step:2:3")


def test_killed_and_resumed_run_equals_an_uninterrupted_one(mini_data, tmp_path, tiny_ast_dir):
    """SIGKILL a run at several points and restart it each time: it ends with
    bit-identical trained tensors, epoch statistics and test predictions to
    an uninterrupted run with the same seed (ESC-50's SpecAugment draws
    random numbers at every step; the Conformer adapter has BatchNorm)."""
    row = next(r for r in ROWS if r["Hparams"] == "hparams/conformer_esc50.yaml")
    data = mini_data["ESC50"]  # 24 training clips: 6 steps per epoch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}

    def run(out, point):
        argv = recipe_argv(
            row, data, tiny_ast_dir, out, "--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_steps=2", "--max_frames=64"
        )
        cmd = [sys.executable, str(REPO / "tests" / "killable_run.py"), row["Dataset"], point] + argv
        return subprocess.run(cmd, cwd=REPO / row["Recipe"], env=env, capture_output=True, text=True, timeout=300)

    plain = run(tmp_path / "plain", "none")
    assert plain.returncode == 0, (plain.stdout + plain.stderr)[-3000:]
    resumed = tmp_path / "resumed"
    loaded = []
    for point in KILL_POINTS:
        killed = run(resumed, point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        loaded += re.findall(r"Loading a checkpoint from \S*/(CKPT\S+)", killed.stdout + killed.stderr)
        if point.startswith("save:"):  # the checkpoint being written is left unfinished
            assert [p for p in (resumed / "save").glob("CKPT*") if not (p / "CKPT.yaml").exists()]
    last = run(resumed, "none")
    assert last.returncode == 0, last.stderr[-3000:]
    loaded += re.findall(r"Loading a checkpoint from \S*/(CKPT\S+)", last.stdout + last.stderr)
    assert len(loaded) >= 3  # two resumes from intra-epoch checkpoints, then the best one for the test

    a, b = _latest_end_of_epoch_tensors(tmp_path / "plain"), _latest_end_of_epoch_tensors(resumed)
    assert a.keys() == b.keys() and a
    max_diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    print(f"kill points {KILL_POINTS}: max abs difference of {len(a)} trained tensors = {max_diff}")
    assert max_diff == 0.0
    epochs = [
        [line for line in (out / "train_log.txt").read_text().splitlines() if line.startswith("epoch:")]
        for out in (tmp_path / "plain", resumed)
    ]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1]  # whole-epoch statistics, logged once
    assert (tmp_path / "plain" / "test_predictions.csv").read_text() == (resumed / "test_predictions.csv").read_text()


def test_a_clip_damaged_after_preparation_is_named_and_rechecked(tmp_path, tiny_ast_dir):
    """A clip broken after preparation: training names it (with and without
    DataLoader workers); preparing again notices the change and re-checks
    it, refusing or, with ``--max_bad_fraction``, dropping it."""
    from speechbrain_petl.data.audio import AudioFileError

    row = next(r for r in ROWS if r["Hparams"] == "hparams/linear_esc50.yaml")
    data = make_esc50(tmp_path / "ESC-50-master")
    out = tmp_path / "out"
    train = load_recipe_module("ESC50", "train")
    prepare = load_recipe_module("ESC50", "esc50_prepare")
    prepare.prepare_esc50(data, out / "save", fold=2, protocol="official")
    with open(out / "save" / "train.csv", newline="") as fin:
        broken = next(csv.DictReader(fin))["wav"]
    with open(broken, "wb") as fout:
        fout.write(b"RIFF\x00\x00\x00\x00WAVEjunk")
    argv = [a for a in recipe_argv(row, data, tiny_ast_dir, out, "--max_frames=64") if not a.startswith("--num_workers")]
    for workers in (0, 2):  # the recipe's pipeline adds what to do about it
        with pytest.raises(AudioFileError, match=re.escape(broken) + ".*prepare again"):
            train.main(argv + ["--skip_prep=True", f"--num_workers={workers}", "--batch_size=64"])
    with pytest.raises(RuntimeError, match=r"--max_bad_fraction="):
        train.main(argv + ["--num_workers=0"])
    train.main(argv + ["--num_workers=0", "--max_bad_fraction=0.05", "--number_of_epochs=1", "--debug"])
    assert broken in (out / "save" / "bad_clips.log").read_text()
    assert broken not in (out / "save" / "train.csv").read_text()


def test_readme_documents_resuming_cpu_torchrun_and_prediction_columns():
    readme = (REPO / "README.md").read_text()
    resuming = readme[readme.index("* **Resuming**"):]
    resuming = resuming[: resuming.index("\n* ")]
    assert "--ckpt_interval_minutes=N" in resuming and "--ckpt_interval_steps=N" in resuming
    assert "whole minutes" in resuming
    cpu = readme[readme.index("torchrun --nproc_per_node=8 train.py"):]
    assert "CPU-only" in cpu[:400] and "torchrun --nproc_per_node=2 train.py hparams/conformer_gsc.yaml" in cpu[:400]
    assert "`ID, target, prediction, score`" in readme and "`prob_<label>`" in readme
    for row in ROWS:
        if row["Recipe"] != "recipes/Quickstart":
            assert "--ckpt_interval_steps" in (REPO / row["Recipe"] / "README.md").read_text(), row["Recipe"]
