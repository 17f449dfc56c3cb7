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
from speechbrain_petl.studies.paper import BEYOND_THE_PAPER, SUFFIXES, paper_accuracy
from speechbrain.utils.run_opts import RunOptions

#: SpeechBrain's run options (``--device`` and so on): the yaml check leaves them out.
RUN_OPTIONS = set(RunOptions().as_dict())


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
def backbones(tiny_ast_dir, tiny_w2v2_dir, tiny_hubert_dir, tiny_wavlm_dir, tiny_whisper_dir):
    return {
        "ast": tiny_ast_dir, "w2v2": tiny_w2v2_dir, "hubert": tiny_hubert_dir, "wavlm": tiny_wavlm_dir,
        "whisper": tiny_whisper_dir,
    }  # fmt: skip


def row_classes(row):
    """The ``n_classes`` of a recipe yaml (its head's width)."""
    text = (REPO / row["Hparam_file"]).read_text()
    return int(re.search(r"^n_classes: (\d+)", text, re.MULTILINE).group(1))


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
#: Every method on both lobes (Speech Commands), plus one row of every other
#: table and one conformer row of each backbone beyond the paper.
DEEP_ROWS = [r for r in TRAIN_ROWS if r["table"] == "Google-speech-commands"] + [
    next(r for r in TRAIN_ROWS if r["table"] == t)
    for t in sorted({r["table"] for r in TRAIN_ROWS} - {"Google-speech-commands"})
] + [
    next(r for r in TRAIN_ROWS if backbone_kind(r) == kind and "conformer" in row_id(r))
    for kind in ("hubert", "wavlm", "whisper")
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
    # score and per-class probabilities: one column per output unit, summing to 1
    labels = [brain.hparams.label_encoder.ind2lab.get(i, f"<unused output {i}>") for i in range(int(row_classes(row)))]
    assert list(predictions[0])[:4] == ["ID", "target", "prediction", "score"]
    assert list(predictions[0])[4:] == [f"prob_{label}" for label in labels]
    for pred in predictions:
        probs = {label: float(pred[f"prob_{label}"]) for label in labels}
        assert abs(sum(probs.values()) - 1) < 1e-4
        # the best unit a training label names: a head wider than the
        # miniature's labels never predicts an unused unit
        assert max(brain.hparams.label_encoder.lab2ind, key=probs.get) == pred["prediction"]
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
    trained = {row["Hparam_file"] for row in TRAIN_ROWS}
    assert set(PARAMS) == trained, "tests/recipe_params.csv must have one row per yaml train.py runs"


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


def declared_keys(yaml_text):
    """The yaml's top-level keys a script must use: SpeechBrain's yaml check
    leaves out keys another entry ``!ref``s, keys of ``!apply`` lines (run
    for their effect, e.g. seeding) and SpeechBrain's own run options."""
    keys = []
    for line in yaml_text.splitlines():
        match = re.match(r"([A-Za-z_][\w]*)\s*:", line)
        if match and "!apply" not in line and "!!" not in line:
            keys.append(match.group(1))
    referenced = set(re.findall(r"<(\w+)[>\[]", yaml_text))
    return [key for key in keys if key not in referenced and key not in RUN_OPTIONS]


def used_keys(script_text):
    """The hyper-parameters a script reads in the forms SpeechBrain's yaml
    check recognises: ``hparams["key"]``, ``hparams.get("key"``,
    ``hparams.key``, ``modules.key`` and ``getattr(self.hparams, "key"``."""
    patterns = [
        r'\["(\w+)"\]',
        r'hparams\.get\("(\w+)"',
        r"(?:hparams|modules)\.(\w+)",
        r'attr\(self\.hparams, "(\w+)"',
    ]
    return {key for pattern in patterns for key in re.findall(pattern, script_text)}


def test_yaml_key_check_sees_what_it_should():
    yaml_text = "seed: 1\n__set_seed: !apply:f [!ref <seed>]\na: 1\nb: !ref <a>\nc: 2\nd:\n    e: 3\ndevice: cpu\n"
    assert declared_keys(yaml_text) == ["b", "c", "d"]
    script = 'x = hparams["c"]\ny = hparams.get(\'d\')\n'
    assert used_keys(script) & {"b", "c", "d"} == {"c"}, "single quotes are not SpeechBrain's form"


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_every_yaml_key_is_used_by_its_script(row):
    """SpeechBrain's yaml-vs-script check (``tests/consistency/test_yaml.py``):
    every key the yaml declares is read by the row's script itself."""
    path = REPO / row["Hparam_file"]
    unused = [
        key for key in declared_keys(path.read_text())
        if key not in used_keys((REPO / row["Script_file"]).read_text())
    ]
    assert not unused, f"{path.name}: keys {row['Script_file']} never reads: {unused}"


@pytest.mark.parametrize("row", TRAIN_ROWS, ids=[row_id(r) for r in TRAIN_ROWS])
def test_every_yaml_exposes_the_common_keys(row):
    text = (REPO / row["Hparam_file"]).read_text()
    keys = set(re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE))
    common = {
        "data_folder", "output_folder", "seed", "number_of_epochs", "batch_size", "backbone_source", "pretrained",
        "max_bad_fraction",
    }
    if row["table"] == "ESC50":
        common |= {"fold", "protocol"}
    assert common <= keys, f"missing: {sorted(common - keys)}"


@pytest.mark.parametrize("row", TRAIN_ROWS, ids=[row_id(r) for r in TRAIN_ROWS])
def test_every_yaml_declares_its_dataset_and_method(row):
    """What a run records in its params.json (and reports read) is what its
    yaml declares: checked here against the recipe's folder and file name,
    so that reports never have to guess from names."""
    path = REPO / row["Hparam_file"]
    declared = dict(re.findall(r"^(dataset|method):[ \t]*(\S+)", path.read_text(), re.MULTILINE))
    assert set(declared) == {"dataset", "method"}, f"{path.name}: declare top-level dataset: and method:"
    if row["table"] == "Quickstart":
        stage = "source" if path.stem == "pretrain" else "target"
        assert declared["dataset"] == f"Quickstart-{stage}"
        assert declared["method"] == ("full" if stage == "source" else path.stem[len("target_"):])
        return
    dataset = path.parents[2].name  # recipes/<Dataset>/PETL/hparams/<method>_<suffix>.yaml
    assert declared["dataset"] == dataset == row["table"]
    assert f"{declared['method']}_{SUFFIXES[dataset]}" == path.stem
    beyond = declared["method"].startswith(BEYOND_THE_PAPER)
    assert (paper_accuracy(declared["method"], dataset) is not None) != beyond or dataset == "IEMOCAP"


def test_num_workers_default_to_the_machine(monkeypatch):
    """Recipes default to the CPUs this process may use, at most 4 (no
    DataLoader warning on a 2-core machine); the quickstart keeps 0."""
    from speechbrain_petl.data.pipelines import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers() == 4
    for row in TRAIN_ROWS:
        if row["table"] == "Quickstart":
            continue
        text = (REPO / row["Hparam_file"]).read_text()
        assert re.search(
            r"^num_workers: !apply:speechbrain_petl\.data\.pipelines\.default_num_workers \[\]", text, re.MULTILINE
        ), row["Hparam_file"]


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


@pytest.mark.parametrize("yaml", ["conformer_esc50.yaml", "soft_moa_esc50.yaml"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(yaml, mini_data, tmp_path, tiny_ast_dir):
    """SIGKILL a run at several points and restart it each time: it ends with
    bit-identical trained tensors, epoch statistics and test predictions to
    an uninterrupted run with the same seed (ESC-50's SpecAugment draws
    random numbers at every step; the Conformer adapter has BatchNorm;
    Soft-MoA, issue 23, slots and experts)."""
    row = next(r for r in ROWS if row_id(r) == yaml)
    data = mini_data["ESC50"]  # 24 training clips: 6 steps per epoch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}

    def run(out, point):
        argv = recipe_argv(
            row, data, tiny_ast_dir, out, "--number_of_epochs=2", "--batch_size=4", "--ckpt_interval_steps=2", "--max_frames=64"
        )
        cmd = [sys.executable, str(REPO / "tests" / "killable_run.py"), row["table"], point] + argv
        return subprocess.run(
            cmd, cwd=REPO / pathlib.Path(row["Script_file"]).parent, env=env, capture_output=True, text=True, timeout=300
        )

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

    row = next(r for r in ROWS if row_id(r) == "linear_esc50.yaml")
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


def test_docs_document_resuming_cpu_torchrun_and_prediction_columns():
    readme = (REPO / "docs" / "architecture.md").read_text()
    resuming = readme[readme.index("* **Resuming**"):]
    resuming = resuming[: resuming.index("\n* ")]
    assert "--ckpt_interval_minutes=N" in resuming and "--ckpt_interval_steps=N" in resuming
    assert "whole minutes" in resuming
    distributed = (REPO / "docs" / "distributed.md").read_text()
    cpu = distributed[distributed.index("torchrun --nproc_per_node=8 train.py"):]
    assert "CPU-only" in cpu[:400] and "torchrun --nproc_per_node=2 train.py hparams/conformer_gsc.yaml" in cpu[:400]
    assert "`ID, target, prediction, score`" in readme and "`prob_<label>`" in readme
    for row in TRAIN_ROWS:
        if row["table"] != "Quickstart":
            assert "--ckpt_interval_steps" in (REPO / row["Readme_file"]).read_text(), row["Readme_file"]
