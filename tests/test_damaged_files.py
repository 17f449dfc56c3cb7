"""Every file the package reads, truncated to half or emptied, gives one
error that names the file (as the user knows it), says what is wrong and
what to do: inference folders, training checkpoints and the files beside
them (manifests, label encoder), and PEFT adapters."""

import shutil

import pytest
import torch
from speechbrain.utils.fetching import LocalStrategy

from recipe_utils import load_recipe_module, train_tiny_lora_run
from speechbrain_petl.backbones import AST
from speechbrain_petl.backbones.trained_state import FingerprintMismatch
from speechbrain_petl.data.files import DamagedFileError
from speechbrain_petl.export.peft import lora_from_peft, write_peft_adapter
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier, label_encoder, write_inference_folder
from speechbrain_petl.inference.folder import InferenceFolder
from speechbrain_petl.methods import LoRA
from speechbrain_petl.studies.runs import load_run
from speechbrain_petl.training.checkpoints import FILES_RECORD, CheckpointError, Checkpointer
from tiny import save_tiny_ast

DAMAGES = {
    "half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
}


def damaged_copy(folder, name, how, where):
    """A copy of ``folder`` at ``where`` whose file ``name`` is damaged ``how``."""
    copy = shutil.copytree(folder, where)
    DAMAGES[how](copy / name)
    return copy


def assert_names(err, path, *says):
    message = str(err)
    assert message.startswith(f"{path}: "), message
    for words in says:
        assert words in message, message


# ---------------------------------------------------------------- inference folders
@pytest.fixture(scope="module")
def task_folder(tiny_ast_dir, tmp_path_factory):
    """An inference folder of a LoRA task on the tiny AST."""
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    return write_inference_folder(
        tmp_path_factory.mktemp("task") / "task", lobe, torch.nn.Linear(32, 2), label_encoder(["no", "yes"])
    )


LOADERS = {
    "from_hparams": lambda folder, tmp: AudioClassifier.from_hparams(
        source=str(folder), savedir=str(tmp / "cache")
    ),
    "from_folders": lambda folder, tmp: MultiTaskClassifier.from_folders({"task": folder}),
    "InferenceFolder": lambda folder, tmp: (
        InferenceFolder.read(folder).trained_state(), InferenceFolder.read(folder).head()
    ),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("how", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["embedding_model.ckpt", "head.ckpt"])
def test_a_damaged_inference_folder_names_the_file_and_says_to_export_again(
    name, how, loader, task_folder, tmp_path
):
    folder = damaged_copy(task_folder, name, how, tmp_path / "task")
    with pytest.raises(DamagedFileError) as err:
        LOADERS[loader](folder, tmp_path)
    what = "empty file (0 bytes)" if how == "empty" else "cannot be read as a torch file"
    assert_names(err.value, folder / name, what, "python -m speechbrain_petl.export")
    assert str(tmp_path / "cache") not in str(err.value)  # not SpeechBrain's savedir


@pytest.mark.parametrize("strategy", [LocalStrategy.SYMLINK, LocalStrategy.COPY])
def test_a_hash_mismatch_names_the_folder_given_not_the_savedir(strategy, task_folder, tmp_path):
    other = save_tiny_ast(tmp_path / "other_weights", seed=3)
    with pytest.raises(FingerprintMismatch) as err:
        AudioClassifier.from_hparams(
            source=str(task_folder), savedir=str(tmp_path / "cache"), local_strategy=strategy,
            overrides={"backbone_source": other},
        )
    message = str(err.value)
    assert message.startswith(f"{task_folder / 'embedding_model.ckpt'} "), message
    assert "frozen weights differ" in message and other in message


def test_a_damaged_file_read_through_a_copy_names_the_folder_and_the_copy(task_folder, tmp_path):
    folder = damaged_copy(task_folder, "head.ckpt", "empty", tmp_path / "task")
    with pytest.raises(DamagedFileError) as err:
        AudioClassifier.from_hparams(
            source=str(folder), savedir=str(tmp_path / "cache"), local_strategy=LocalStrategy.COPY
        )
    copy = tmp_path / "cache" / "head.ckpt"
    assert_names(err.value, f"{folder / 'head.ckpt'} (read through its copy {copy})", "empty file (0 bytes)")


# ---------------------------------------------------------------- PEFT adapters
@pytest.fixture(scope="module")
def adapter(tiny_ast_dir, tmp_path_factory):
    """A PEFT adapter of a LoRA on the tiny AST."""
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    return write_peft_adapter(
        tmp_path_factory.mktemp("adapter") / "adapter", lobe, torch.nn.Linear(32, 2), label_encoder(["no", "yes"])
    )


@pytest.mark.parametrize("how", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_damaged_peft_adapter_names_the_file(name, how, adapter, tiny_ast_dir, tmp_path):
    folder = damaged_copy(adapter, name, how, tmp_path / "adapter")
    lobe = AST(tiny_ast_dir, max_frames=64)
    with pytest.raises(DamagedFileError) as err:
        lora_from_peft(folder, lobe)
    what = "empty file (0 bytes)" if how == "empty" else "truncated or overwritten?"
    assert_names(err.value, folder / name, what, "export it again")
    assert not lobe.petl  # nothing attached


# ---------------------------------------------------------------- a recipe run
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished LoRA Speech Commands run (debug epochs) on a tiny AST."""
    run = train_tiny_lora_run(tmp_path_factory.mktemp("damaged_run"))
    return {**run, "train": load_recipe_module("Google-speech-commands", "train")}


@pytest.mark.parametrize("how", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["CKPT.yaml", FILES_RECORD])
def test_a_checkpoint_with_damaged_metadata_names_it_and_the_folder_to_delete(name, how, finished_run, tmp_path):
    run = shutil.copytree(finished_run["out"], tmp_path / "run")
    checkpoint = next((run / "save").glob("CKPT+*"))
    DAMAGES[how](checkpoint / name)
    with pytest.raises(CheckpointError) as err:
        load_run(run)
    message = str(err.value)
    assert f"{checkpoint / name}: " in message or f"{checkpoint}: {name}: " in message, message
    assert f"delete {checkpoint}" in message or "delete these folders" in message, message


@pytest.mark.parametrize("how", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["train.csv", "valid.csv", "test.csv", "label_encoder.txt"])
def test_resuming_a_run_with_a_damaged_manifest_or_label_encoder_names_it(name, how, finished_run, tmp_path):
    run = shutil.copytree(finished_run["out"], tmp_path / "run")
    DAMAGES[how](run / "save" / name)
    with pytest.raises(DamagedFileError) as err:
        finished_run["train"].main(finished_run["argv"] + [f"--output_folder={run}"])
    what = "empty file (0 bytes)" if how == "empty" else ("cut short" if name.endswith(".csv") else "truncated")
    todo = "prepare again" if name.endswith(".csv") else "delete it and run again"
    assert_names(err.value, run / "save" / name, what, todo)


@pytest.mark.parametrize("how", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["hyperparams.yaml", "save/label_encoder.txt"])
def test_loading_a_run_with_a_damaged_yaml_or_label_encoder_names_it(name, how, finished_run, tmp_path):
    """load_run (the export command, AudioClassifier.from_experiment) on a
    run whose own hyperparams.yaml or label_encoder.txt was cut or emptied."""
    run = shutil.copytree(finished_run["out"], tmp_path / "run")
    DAMAGES[how](run / name)
    with pytest.raises(DamagedFileError) as err:
        load_run(run)
    assert_names(err.value, (run / name).resolve(), "empty file (0 bytes)" if how == "empty" else "", "again")


# ---------------------------------------------------------------- checkpoint advice
def test_an_unreadable_checkpoint_file_says_which_folder_to_delete(tmp_path):
    """A checkpoint from before the files record (damage not told in
    advance), the only one: the error says to delete it, to start afresh."""
    checkpointer = Checkpointer(tmp_path, {"layer": torch.nn.Linear(2, 2)})
    checkpoint = checkpointer.save_checkpoint()
    (checkpoint.path / FILES_RECORD).unlink()
    DAMAGES["half"](checkpoint.path / "layer.ckpt")
    with pytest.raises(CheckpointError) as err:
        checkpointer.recover_if_possible()
    assert f"Cannot load layer.ckpt of checkpoint {checkpoint.path}" in str(err.value)
    assert f"delete {checkpoint.path} to start the run afresh" in str(err.value)


def test_an_intact_checkpoint_that_does_not_fit_is_never_called_damaged(tmp_path):
    """Other settings than the run's (here a wider layer): the file is as it
    was saved, and deleting it would lose a good checkpoint."""
    Checkpointer(tmp_path, {"layer": torch.nn.Linear(2, 2)}).save_checkpoint()
    with pytest.raises(CheckpointError) as err:
        Checkpointer(tmp_path, {"layer": torch.nn.Linear(2, 3)}).recover_if_possible()
    message = str(err.value)
    assert "layer.ckpt is as it was saved, for other settings of 'layer'" in message
    assert "damaged" not in message and "delete" not in message
