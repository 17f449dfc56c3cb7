"""``python -m speechbrain_petl.export``: --backbone_source loads a run whose
backbone moved, every expected failure is one line on stderr, and a PEFT
adapter we export refuses another backbone."""

import json
import shutil

import pytest
import torch

from recipe_utils import train_tiny_lora_run
from speechbrain_petl.backbones import AST
from speechbrain_petl.backbones.trained_state import FingerprintMismatch
from speechbrain_petl.export import cli as export
from speechbrain_petl.export.peft import BASE_FINGERPRINT, lora_from_peft
from speechbrain_petl.inference import AudioClassifier
from tiny import save_tiny_ast

PROG = "python -m speechbrain_petl.export: error: "


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A finished LoRA Speech Commands run (debug epochs, AST at 100 frames)
    whose tiny backbone was moved after training, and other weights."""
    root = tmp_path_factory.mktemp("moved_run")
    run = train_tiny_lora_run(root)
    out, data, trained_on = run["out"], run["data"], run["backbone"]
    moved = shutil.move(trained_on, root / "backbone_moved")
    return {
        "out": out,
        "trained_on": trained_on,
        "moved": str(moved),
        "other": save_tiny_ast(root / "other_weights", seed=1),
        "wav": next((data / "yes").glob("*.wav")),
    }


def fails(argv, capsys):
    """The error line that ``main(argv)`` ends with, exiting with status 2
    (stderr may hold transformers' progress bars before it)."""
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.endswith("\n") and "Traceback" not in err, err
    last = err[:-1].split("\n")[-1]
    assert last.startswith(PROG) and err.count(PROG) == 1, err
    return last


def test_backbone_source_loads_a_run_whose_backbone_moved(moved_run, tmp_path, capsys):
    out = moved_run["out"]
    err = fails([out, tmp_path / "no"], capsys)
    assert f"Backbone folder '{moved_run['trained_on']}' does not exist" in err
    dest = export.main([str(out), str(tmp_path / "task"), f"--backbone_source={moved_run['moved']}"])
    assert f"Wrote {dest}" in capsys.readouterr().out
    assert f'backbone_source: "{moved_run["moved"]}"' in (dest / "hyperparams.yaml").read_text()
    written = torch.load(dest / "embedding_model.ckpt", weights_only=True)
    by_the_run = torch.load(out / "inference" / "embedding_model.ckpt", weights_only=True)
    assert written["fingerprint"]["frozen_sha256"] == by_the_run["fingerprint"]["frozen_sha256"]
    assert all(torch.equal(v, by_the_run["state"][k]) for k, v in written["state"].items())
    # The folder loads from the source it records, as it is.
    classifier = AudioClassifier.from_hparams(source=str(dest), savedir=str(tmp_path / "cache"))
    assert classifier.mods.embedding_model.source == moved_run["moved"]
    classifier.classify_file(moved_run["wav"])


def _no_checkpoint(run):
    for folder in (run / "save").glob("CKPT+*"):
        shutil.rmtree(folder)


def _empty_backbone_ckpt(run):
    (next((run / "save").glob("CKPT+*")) / "backbone.ckpt").write_bytes(b"")


FAILURES = {
    # case: (arguments, what to do to a copy of the run, what the line says)
    "no run folder": (
        ["{no_run}", "{dest}"], None, "{no_run}/hyperparams.yaml not found: expected the output folder of a recipe run"
    ),
    "no checkpoint": (["{run}", "{dest}", "--backbone_source={moved}"], _no_checkpoint, "No checkpoint under"),
    "backbone not found": (["{run}", "{dest}"], None, "Backbone folder '{trained_on}' does not exist"),
    "backbone not found (--merged)": (
        ["--merged", "{run}", "{dest}"], None, "Backbone folder '{trained_on}' does not exist"
    ),
    "fingerprint mismatch": (["{run}", "{dest}", "--backbone_source={other}"], None, "frozen weights differ"),
    "not representable": (["--merged", "{run}", "{dest}", "--backbone_source={moved}"], None, "not exported. "),
    "destination exists": (
        ["{run}", "{exists}", "--backbone_source={moved}"], None, "already exists and is not an empty folder"
    ),
    "damaged checkpoint": (
        ["{run}", "{dest}", "--backbone_source={moved}"], _empty_backbone_ckpt, "backbone.ckpt: empty file"
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_expected_failure_is_one_line_on_stderr(case, moved_run, tmp_path, capsys):
    arguments, damage, says = FAILURES[case]
    run = moved_run["out"]
    if damage is not None:
        run = shutil.copytree(run, tmp_path / "run")
        damage(run)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine")
    names = {**moved_run, "run": run, "dest": tmp_path / "dest", "exists": tmp_path / "exists",
             "no_run": tmp_path / "no_run"}
    err = fails([arg.format(**names) for arg in arguments], capsys)
    assert says.format(**names) in err, err
    assert not (tmp_path / "dest").exists() and (tmp_path / "exists" / "keep.txt").read_text() == "mine"
    if case == "fingerprint mismatch":
        assert moved_run["trained_on"] in err and moved_run["other"] in err
    if case == "not representable":  # loaded from the moved backbone, then refused
        assert "pooling: the run pools 'mean'" in err
    if case == "damaged checkpoint":
        assert str(next((run / "save").glob("CKPT+*"))) in err and "delete these folders" in err


def test_an_exported_peft_adapter_refuses_another_backbone(moved_run, tmp_path, capsys):
    # The base at the run's length (100 frames), made from the moved weights.
    base = tmp_path / "base_100"
    AST(moved_run["moved"], max_frames=100).save_pretrained(base)
    adapter = export.main(["--peft", str(moved_run["out"]), str(tmp_path / "adapter"), f"--backbone_source={base}"])
    recorded = json.loads((adapter / BASE_FINGERPRINT).read_text())
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)

    lora, _ = lora_from_peft(adapter, AST(str(base), max_frames=100))
    assert lora.rank == 6
    other = AST(moved_run["other"], max_frames=100)
    theirs = other.fingerprint()["frozen_sha256"]
    with pytest.raises(FingerprintMismatch) as err:
        lora_from_peft(adapter, other)
    message = str(err.value)
    assert str(adapter) in message and recorded["frozen_sha256"][:16] in message and theirs[:16] in message
    assert not other.petl  # nothing attached
    # An adapter made elsewhere records no fingerprint, and loads.
    (adapter / BASE_FINGERPRINT).unlink()
    lora_from_peft(adapter, other)
    assert list(other.petl) == ["lora"]
