"""A finished recipe run as an artefact: export CLI, and runs that moved."""

import csv
import pathlib
import shutil

import pytest
import torch

from mini_datasets import make_speech_commands
from recipe_utils import REPO, load_recipe_module
from speechbrain_petl.export import cli as export
from speechbrain_petl.studies.runs import rebase
from speechbrain_petl.inference import AudioClassifier
from tiny import save_tiny_ast


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A LoRA Speech Commands run (2 debug epochs) on its own tiny backbone."""
    root = tmp_path_factory.mktemp("finished_run")
    data = make_speech_commands(root / "speech_commands_v0.02")
    backbone = save_tiny_ast(root / "backbone")
    train = load_recipe_module("Google-speech-commands", "train")
    out = root / "run"
    train.main([
        str(REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams" / "lora_gsc.yaml"),
        f"--data_folder={data}", f"--backbone_source={backbone}", f"--output_folder={out}",
        "--num_workers=0", "--device=cpu", "--debug", "--debug_persistently",
    ])
    with open(out / "test_predictions.csv", newline="") as fin:
        predictions = list(csv.DictReader(fin))
    with open(out / "save" / "test.csv", newline="") as fin:
        wav_of = {row["ID"]: row["wav"] for row in csv.DictReader(fin)}
    return {"out": out, "backbone": backbone, "predictions": predictions, "wav_of": wav_of}


def predicted(classifier, run):
    return [classifier.classify_file(run["wav_of"][row["ID"]])[3][0] for row in run["predictions"]]


def expected(run):
    return [row["prediction"] for row in run["predictions"]]


def test_a_copied_run_loads_its_own_checkpoint_and_writes_nothing_elsewhere(finished_run, tmp_path):
    original = finished_run["out"]
    copy = shutil.copytree(original, tmp_path / "copied_run")
    # Break the original's checkpoints: the copy must not be reading them.
    hidden = tmp_path / "original_save"
    shutil.move(str(original / "save"), hidden)
    try:
        classifier = AudioClassifier.from_experiment(copy)
        assert predicted(classifier, finished_run) == expected(finished_run)
        assert not (original / "save").exists(), "from_experiment wrote into the original run"
    finally:
        shutil.move(str(hidden), original / "save")


def test_a_run_whose_backbone_moved_loads_with_an_override(finished_run, tmp_path):
    run = shutil.copytree(finished_run["out"], tmp_path / "run")
    moved = shutil.copytree(finished_run["backbone"], tmp_path / "backbone_moved")
    classifier = AudioClassifier.from_experiment(run, overrides={"backbone_source": str(moved)})
    assert classifier.mods.embedding_model.source == str(moved)
    assert predicted(classifier, finished_run) == expected(finished_run)
    with pytest.raises(ValueError, match=r"Cannot override \['pretrained'\]"):
        AudioClassifier.from_experiment(run, overrides={"pretrained": False})
    with pytest.raises(FileNotFoundError, match="expected the output folder of a recipe run"):
        AudioClassifier.from_experiment(tmp_path / "backbone_moved")


def test_export_command_writes_the_run_as_an_inference_folder(finished_run, tmp_path, capsys):
    out = finished_run["out"]
    # (the command loads the run from --backbone_source too: see test_export_cli.py;
    # export_run records a source without loading from it)
    dest = export.export_run(out, tmp_path / "exported", backbone_source="MIT/ast-finetuned-audioset-10-10-0.4593")
    recorded = torch.load(dest / "embedding_model.ckpt", weights_only=True)
    written_by_run = torch.load(out / "inference" / "embedding_model.ckpt", weights_only=True)
    assert recorded["state"].keys() == written_by_run["state"].keys()
    assert all(torch.equal(recorded["state"][k], written_by_run["state"][k]) for k in recorded["state"])
    assert 'backbone_source: "MIT/ast-finetuned-audioset-10-10-0.4593"' in (dest / "hyperparams.yaml").read_text()
    card = (dest / "README.md").read_text()
    accuracy = sum(a == b for a, b in zip(expected(finished_run), [r["target"] for r in finished_run["predictions"]]))
    assert f"{100 * accuracy / len(finished_run['predictions']):.2f} % on {len(finished_run['predictions'])} test clips" in card
    # The recorded source is information; the weights decide. Here it names a
    # hub id, so the local copy is given as an override.
    classifier = AudioClassifier.from_hparams(
        source=str(dest), savedir=str(tmp_path / "cache"), overrides={"backbone_source": finished_run["backbone"]}
    )
    assert predicted(classifier, finished_run) == expected(finished_run)
    with pytest.raises(SystemExit):
        export.main([str(out)])  # the run's own inference/ is never overwritten by hand
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main([str(out), "--dest=x"])
    assert "unrecognized arguments: --dest=x" in capsys.readouterr().err


def test_rebase_keeps_unrelated_values():
    text = "output_folder: results/a\nsave_folder: results/a/save\nlog: results/ab\nx: [results/a]\n"
    rebased = rebase(text, "output_folder", "/new")
    assert rebased == "output_folder: /new\nsave_folder: /new/save\nlog: results/ab\nx: [results/a]\n"
    # Long values are folded by the yaml writer onto the next line.
    folded = "output_folder: \n  /a/very/long/run\nsave_folder: \n  /a/very/long/run/save\nmodel:\n  n: 1\n"
    assert rebase(folded, "output_folder", "/new") == (
        "output_folder: /new\nsave_folder: /new/save\nmodel:\n  n: 1\n"
    )
    with pytest.raises(ValueError, match="no top-level 'backbone_source'"):
        rebase(text, "backbone_source", "/b", pathlib.Path("hyperparams.yaml"))
