"""A reduced quickstart (same pipeline, fewer clips and epochs) end to end."""

import csv
import json
import pathlib
import re

import pytest
import torch

from recipe_utils import REPO, load_recipe_module
from speechbrain_petl.inference import AudioClassifier
from speechbrain_petl.studies.results import training_curves

SMALL = [
    "--source_clips_per_class=10",
    "--target_clips_per_class=10",
    "--pretrain_epochs=3",
    "--target_epochs=1",
]


def run_quickstart(output_folder, *options):
    quickstart = load_recipe_module("Quickstart", "quickstart")
    yaml_file = REPO / "recipes" / "Quickstart" / "hparams" / "quickstart.yaml"
    return quickstart, quickstart.main([str(yaml_file), f"--output_folder={output_folder}", *SMALL, *options])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    quickstart, rows = run_quickstart(out)
    return quickstart, rows, out


def test_every_stage_produced_its_files(finished):
    _, rows, out = finished
    for path in [
        "data/source/meta/esc50.csv",
        "data/target/meta/esc50.csv",
        "pretrain/train_log.txt",
        "pretrain/test_predictions.csv",
        "pretrained_ast/config.json",
        "pretrained_ast/model.safetensors",
        "results.md",
        "results.png",
        "results.json",
        "new_clip.wav",
        "target/target_conformer/inference/embedding_model.ckpt",
        "pretrained_models/embedding_model.ckpt",
    ]:
        assert (out / path).is_file(), path
    assert [row["method"] for row in rows] == [
        "Linear probing", "LoRA", "Bottleneck adapter", "Conformer adapter", "Full fine-tuning",
    ]
    for row in rows:
        assert (out / "target" / row["folder"].split("/")[-1] / "test_predictions.csv").is_file()
        assert any((out / "target" / row["folder"].split("/")[-1] / "save").glob("CKPT*/backbone.ckpt"))


def test_pretraining_loss_fell(finished):
    _, _, out = finished
    losses = training_curves(out / "pretrain" / "train_log.txt")["train loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_table_accuracies_are_recomputed_from_saved_predictions(finished):
    _, rows, out = finished
    table = (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == rows
    assert results["settings"]["target_epochs"] == 1 and results["command"].startswith("python quickstart.py")
    assert set(results["environment"]) >= {"cpu", "torch", "transformers", "speechbrain"}
    assert results["new_clip"]["predicted"] in {"ai", "ia", "au", "ua", "iu", "ui", "aiu", "uia", "iua", "aui"}
    for row in rows:
        with open(out / "target" / row["folder"].split("/")[-1] / "test_predictions.csv", newline="") as fin:
            predictions = list(csv.DictReader(fin))
        correct = sum(p["target"] == p["prediction"] for p in predictions)
        assert row["accuracy"] == correct / len(predictions)
        assert row["n_test"] == len(predictions) == 20  # 10 classes x 2 clips in the test fold
        assert f"| {row['method']} | {row['trainable']:,} |" in table
        assert f"{100 * correct / len(predictions):.1f}%" in table


def test_frozen_runs_train_a_small_fraction(finished):
    _, rows, _ = finished
    by_method = {row["method"]: row for row in rows}
    assert by_method["Full fine-tuning"]["percent"] == pytest.approx(100.0)
    for method in ("Linear probing", "LoRA", "Bottleneck adapter", "Conformer adapter"):
        assert by_method[method]["percent"] < 5.0
    # the bottleneck adapter is sized like the Conformer adapter (within 1%)
    ratio = by_method["Bottleneck adapter"]["trainable"] / by_method["Conformer adapter"]["trainable"]
    assert abs(ratio - 1) < 0.01


def test_same_seed_same_results(finished, tmp_path):
    _, rows, _ = finished
    _, again = run_quickstart(tmp_path / "again")
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    for first, second in zip(rows, again):
        name = first["folder"].split("/")[-1]
        assert (tmp_path / "again" / "target" / name / "test_predictions.csv").read_text() == (
            pathlib.Path(first["folder"]) / "test_predictions.csv"
        ).read_text()


def test_every_quickstart_yaml_key_is_used():
    text = (REPO / "recipes" / "Quickstart" / "hparams" / "quickstart.yaml").read_text()
    script = (REPO / "recipes" / "Quickstart" / "quickstart.py").read_text()
    keys = re.findall(r"^([A-Za-z_]\w*):", text, re.MULTILINE)
    assert keys
    used = set(re.findall(r"hparams\[[\"'](\w+)[\"']\]", script))
    unused = [k for k in keys if f"<{k}>" not in text and k not in used]
    assert not unused


def test_the_conformer_task_is_a_small_folder_that_classifies_the_new_clip(finished, capsys):
    quickstart, _, out = finished
    inference = out / "target" / "target_conformer" / "inference"
    assert quickstart.folder_size(inference) < quickstart.folder_size(out / "pretrained_ast") / 4
    truth, predicted = quickstart.classify_new_clip(inference, out, seed=1986)
    assert truth in quickstart.synthetic_data.TARGET_CLASSES
    # The folder gives what the run's own best checkpoint gives.
    from_run = AudioClassifier.from_experiment(inference.parent)
    assert from_run.classify_file(out / "new_clip.wav")[3][0] == predicted


def test_readme_quotes_the_committed_results_of_a_full_run():
    """recipes/Quickstart/README.md's numbers are results.md of the
    committed results.json, a run with the yaml's own settings."""
    from hyperpyyaml import load_hyperpyyaml

    quickstart = load_recipe_module("Quickstart", "quickstart")
    folder = REPO / "recipes" / "Quickstart"
    results = json.loads((folder / "results.json").read_text())
    readme = (folder / "README.md").read_text()
    block = readme.split("<!-- results.md of results.json -->\n", 1)[1].split("<!-- end of results.md -->", 1)[0]
    assert block.strip() == quickstart.measured_markdown(results).strip()
    with open(folder / "hparams" / "quickstart.yaml") as fin:
        defaults = load_hyperpyyaml(fin)
    assert results["settings"] == {key: defaults[key] for key in quickstart.SETTINGS}
    assert results["command"] == "python quickstart.py hparams/quickstart.yaml"


STAGES = ["pretrain", *(f"target/target_{m}" for m in ("linear", "lora", "bottleneck", "conformer", "full"))]
FROZEN = {f"target/target_{m}" for m in ("linear", "lora", "bottleneck", "conformer")}


def trained_precision(stage_folder):
    """What a stage ran in, from its own files: SpeechBrain's log line and
    the lobe's resolved ``backbone_dtype`` in its hyperparams.yaml."""
    log = (stage_folder / "log.txt").read_text()
    train = re.findall(r"Using training precision: `--precision=(\w+)`", log)
    evaluation = re.findall(r"Using evaluation precision: `--eval_precision=(\w+)`", log)
    stored = re.findall(r"^  backbone_dtype: (\w+)$", (stage_folder / "hyperparams.yaml").read_text(), re.MULTILINE)
    return train[-1], evaluation[-1], stored


def check_stages_ran_in(out, precision):
    for stage in STAGES:
        train, evaluation, stored = trained_precision(out / stage)
        assert (train, evaluation) == (precision, precision), stage
        # Frozen stages store the AST in the run's precision; stages that train it keep fp32 storage.
        assert stored == ([precision] if stage in FROZEN else []), stage
        # Checkpoints hold fp32 tensors only, whatever the precision.
        ckpt = torch.load(next((out / stage / "save").glob("CKPT*/backbone.ckpt")), map_location="cpu")
        floats = [t for t in ckpt["state"].values() if t.is_floating_point()]
        assert floats and {t.dtype for t in floats} == {torch.float32}, stage


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16(finished, capsys):
    from speechbrain_petl.backbones.precision import cpu_flags, training_precision

    _, _, out = finished
    results = json.loads((out / "results.json").read_text())
    native = cpu_flags()["avx512_bf16"] or cpu_flags()["amx_bf16"]
    assert results["settings"]["precision"] == "auto"
    assert results["precision"] == dict(zip(("used", "why"), training_precision("auto")))
    assert results["precision"]["used"] == ("bf16" if native else "fp32")
    check_stages_ran_in(out, results["precision"]["used"])
    assert f"Precision {results['precision']['used']} (" in (out / "results.md").read_text()


def test_the_other_precision_runs_in_its_own_folder_and_a_mixed_folder_is_refused(finished, tmp_path):
    quickstart, rows, out = finished
    used = json.loads((out / "results.json").read_text())["precision"]["used"]
    other = "fp32" if used == "bf16" else "bf16"
    # Into the folder trained in the auto precision: refused before anything is written.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=f"holds stages trained in {used}; this run would train in {other}"):
        run_quickstart(out, f"--precision={other}")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # In a folder of its own it trains every stage in that precision.
    _, other_rows = run_quickstart(tmp_path / other, f"--precision={other}")
    results = json.loads((tmp_path / other / "results.json").read_text())
    assert results["precision"] == {"used": other, "why": f"{other}: as set"}
    check_stages_ran_in(tmp_path / other, other)
    assert [r["method"] for r in other_rows] == [r["method"] for r in rows]
    with pytest.raises(ValueError, match="precision must be one of"):
        quickstart.choose_precision({"precision": "fp16"}, tmp_path)


def test_precision_comparison_reports_both_precisions_from_the_runs_own_results(tmp_path):
    comparison = load_recipe_module("Quickstart", "precision_comparison")
    yaml_file = REPO / "recipes" / "Quickstart" / "hparams" / "quickstart.yaml"
    markdown = tmp_path / "report.md"
    argv = [str(yaml_file), "--seeds=7", "--precisions=fp32,bf16", f"--root={tmp_path / 'runs'}",
            f"--markdown={markdown}", *SMALL]
    runs = comparison.main(argv)
    assert sorted(runs) == [(7, "bf16"), (7, "fp32")]
    text = markdown.read_text()
    for (seed, precision), results in runs.items():
        assert results["precision"]["used"] == precision and results["settings"]["seed"] == seed
        check_stages_ran_in(tmp_path / "runs" / precision / "7", precision)
        over_bottleneck, over_full = comparison.margins(results)
        assert f"| 7 | {precision} | {over_bottleneck:+.1f} | {over_full:+.1f} | {results['wall_seconds']:.1f} |" in text
    conformer = {p: 100 * next(r["accuracy"] for r in runs[(7, p)]["rows"] if r["method"] == "Conformer adapter")
                 for p in ("fp32", "bf16")}
    assert f"| Conformer adapter | {conformer['fp32']:.1f} ± 0.0 | {conformer['bf16']:.1f} ± 0.0 |" in text
    # A second call finds both runs finished with the same settings: nothing runs, the figures are the recorded ones.
    stamps = {p: (tmp_path / "runs" / p / "7" / "results.json").stat().st_mtime_ns for p in ("fp32", "bf16")}
    assert comparison.main(argv) == runs
    assert {p: (tmp_path / "runs" / p / "7" / "results.json").stat().st_mtime_ns for p in ("fp32", "bf16")} == stamps
    with pytest.raises(SystemExit):
        comparison.main([str(yaml_file), "--precisions=fp16"])


def test_moa_comparison_runs_each_pair_per_seed_in_the_quickstarts_precision(tmp_path):
    comparison = load_recipe_module("Quickstart", "moa_comparison")
    yaml_file = REPO / "recipes" / "Quickstart" / "hparams" / "quickstart.yaml"
    markdown = tmp_path / "moa.md"
    rows = comparison.main([str(yaml_file), "--seeds=3", f"--output_folder={tmp_path / 'run'}", "--precision=fp32",
                            f"--markdown={markdown}", *SMALL])
    assert [(row["seed"], row["yaml"]) for row in rows] == [(3, yaml) for _, _, yaml in comparison.RUNS]
    assert json.loads((tmp_path / "run" / "precision.json").read_text())["precision"] == "fp32"
    text = markdown.read_text()
    assert "precision fp32, seeds [3]" in text
    for row in rows:
        assert f"| {row['method']} | {row['trainable']:,} | {100 * row['accuracy']:.1f} ± 0.0 | 1 |" in text
