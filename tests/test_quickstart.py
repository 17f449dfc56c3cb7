"""A reduced quickstart (same pipeline, fewer clips and epochs) end to end."""

import csv
import json
import pathlib
import re

import pytest

from recipe_utils import REPO, load_recipe_module
from speechbrain_petl.inference import AudioClassifier
from speechbrain_petl.studies.results import training_curves

SMALL = [
    "--source_clips_per_class=10",
    "--target_clips_per_class=10",
    "--pretrain_epochs=3",
    "--target_epochs=1",
]


def run_quickstart(output_folder):
    quickstart = load_recipe_module("Quickstart", "quickstart")
    yaml_file = REPO / "recipes" / "Quickstart" / "hparams" / "quickstart.yaml"
    return quickstart, quickstart.main([str(yaml_file), f"--output_folder={output_folder}", *SMALL])


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
