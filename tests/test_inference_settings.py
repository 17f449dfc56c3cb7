"""What an inference folder is loaded with: the settings it was trained
with (a hand-edited yaml is refused, naming the key, unless overrides name
it), the inputs ``classify_batch`` accepts, and output units no label maps to."""

import shutil

import pytest
import torch
from speechbrain.inference.interfaces import foreign_class

from method_zoo import perturb_petl_
from speechbrain_petl.backbones import AST
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier, label_encoder, write_inference_folder
from speechbrain_petl.methods import LoRA

LABELS = ["dog", "rain", "siren"]
WAVS = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def task_folder(tiny_ast_dir, tmp_path_factory):
    """A LoRA task (alpha 0.75, random trained values) on the tiny AST, trained on 8,000-sample crops."""
    lobe = AST(str(tiny_ast_dir), max_frames=64, petl={"task": LoRA(rank=2, alpha=0.75)})
    perturb_petl_(lobe, 0)
    torch.manual_seed(0)
    head = torch.nn.Linear(lobe.hidden_size, len(LABELS))
    folder = tmp_path_factory.mktemp("settings") / "task"
    return write_inference_folder(folder, lobe.eval(), head, label_encoder(LABELS), max_audio_samples=8000)


def edited_copy(folder, destination, old, new):
    """A copy of ``folder`` whose yaml has its first ``old`` replaced by ``new``."""
    copy = shutil.copytree(folder, destination)
    yaml_file = copy / "hyperparams.yaml"
    text = yaml_file.read_text()
    assert old in text, old
    yaml_file.write_text(text.replace(old, new, 1))
    return copy


#: Hand edits of the yaml and the settings key each one changes.
EDITS = {
    "alpha": ("alpha: 0.75", "alpha: 1.5", "embedding_model.petl.task.alpha"),
    "pooling": ('pooling: "mean"', 'pooling: "cls_dist"', "embedding_model.pooling"),
    "crop": ("    max_samples: 8000", "    max_samples: 9000", "embedding_model.max_samples"),
    "labels": ('labels: ["dog", "rain", "siren"]', 'labels: ["rain", "dog", "siren"]', "labels"),
    "rate": ("\nsample_rate: 16000", "\nsample_rate: 8000", "sample_rate"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_hand_edited_setting_is_refused_naming_the_key(edit, task_folder, tmp_path):
    old, new, key = EDITS[edit]
    edited = edited_copy(task_folder, tmp_path / "edited", old, new)
    message = rf"does not describe the model it was trained as: '{key}' is"
    with pytest.raises(ValueError, match=message):
        AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "ours"))
    with pytest.raises(ValueError, match=message):
        foreign_class(source=str(edited), savedir=str(tmp_path / "foreign"), pymodule_file="custom_interface.py",
                      classname="AudioClassifier")
    with pytest.raises(ValueError, match=message):
        MultiTaskClassifier.from_folders({"task": edited})
    # The untouched folder loads through both.
    AudioClassifier.from_hparams(source=str(task_folder), savedir=str(tmp_path / "untouched"))
    MultiTaskClassifier.from_folders({"task": task_folder})


def test_the_error_says_what_was_trained_and_how_to_change_it_on_purpose(task_folder, tmp_path):
    edited = edited_copy(task_folder, tmp_path / "edited", "alpha: 0.75", "alpha: 1.5")
    with pytest.raises(ValueError) as error:
        AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "c"))
    text = str(error.value)
    assert str(edited / "hyperparams.yaml") in text
    assert "'embedding_model.petl.task.alpha' is 1.5 there, trained with 0.75" in text
    assert "overrides={'embedding_model': {'petl': {'task': {'alpha': 1.5}}}}" in text


def test_overrides_naming_the_key_change_it_on_purpose(task_folder, tmp_path):
    change = {"embedding_model": {"petl": {"task": {"alpha": 1.5}}}}
    trained = AudioClassifier.from_hparams(source=str(task_folder), savedir=str(tmp_path / "trained"))
    changed = AudioClassifier.from_hparams(source=str(task_folder), savedir=str(tmp_path / "o"), overrides=change)
    assert changed.mods.embedding_model.petl["task"].alpha == 1.5
    assert not torch.allclose(changed.classify_batch(WAVS)[0], trained.classify_batch(WAVS)[0], atol=1e-4)
    # The hand-edited yaml loads with the same override, and so does yaml text naming the key.
    edited = edited_copy(task_folder, tmp_path / "edited", "alpha: 0.75", "alpha: 1.5")
    for overrides in (change, "embedding_model:\n    petl:\n        task:\n            alpha: 1.5\n"):
        loaded = AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "e"), overrides=overrides)
        torch.testing.assert_close(loaded.classify_batch(WAVS)[0], changed.classify_batch(WAVS)[0], rtol=0, atol=0)
    # An override of another key does not excuse the edit.
    with pytest.raises(ValueError, match="'embedding_model.petl.task.alpha' is 1.5 there"):
        AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "x"),
                                     overrides={"embedding_model": {"pooling": "mean"}})
    # The multi-task classifier takes overrides per task.
    server = MultiTaskClassifier.from_folders({"task": edited}, overrides={"task": change})
    torch.testing.assert_close(server.classify_batch(WAVS, tasks=["task", "task"])[0][0],
                               changed.classify_batch(WAVS)[0][0], rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match=r"overrides name tasks \['other'\]"):
        MultiTaskClassifier.from_folders({"task": edited}, overrides={"other": change})


def test_an_edited_record_of_the_settings_is_refused(task_folder, tmp_path):
    """Editing the setting and its record alike does not pass: the record's digest no longer matches."""
    edited = edited_copy(task_folder, tmp_path / "edited", "alpha: 0.75", "alpha: 1.5")
    yaml_file = edited / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace(
        '"embedding_model.petl.task.alpha": 0.75', '"embedding_model.petl.task.alpha": 1.5'))
    for load in (
        lambda: AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "c")),
        lambda: MultiTaskClassifier.from_folders({"task": edited}),
    ):
        with pytest.raises(ValueError, match="'trained_settings' does not match 'trained_settings_sha256'"):
            load()


def test_a_folder_without_recorded_settings_loads_as_before(task_folder, tmp_path):
    """Folders written before settings were recorded (tests/samples/legacy_inference)
    are not checked: an edit there still loads, as it always did."""
    edited = edited_copy(task_folder, tmp_path / "edited", "alpha: 0.75", "alpha: 1.5")
    yaml_file = edited / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().split("# The settings the tensors were trained with")[0])
    loaded = AudioClassifier.from_hparams(source=str(edited), savedir=str(tmp_path / "c"))
    assert loaded.mods.embedding_model.petl["task"].alpha == 1.5
    # The same edit where the settings are recorded is refused.
    recorded = edited_copy(task_folder, tmp_path / "recorded", "alpha: 0.75", "alpha: 1.5")
    with pytest.raises(ValueError, match="'embedding_model.petl.task.alpha' is 1.5 there"):
        AudioClassifier.from_hparams(source=str(recorded), savedir=str(tmp_path / "d"))


def test_classify_batch_refuses_integer_waveforms_and_lengths_outside_0_1(task_folder, tmp_path):
    ours = AudioClassifier.from_hparams(source=str(task_folder), savedir=str(tmp_path / "c"))
    server = MultiTaskClassifier.from_folders({"task": task_folder})
    pcm = (WAVS * 32767).to(torch.int16)
    calls = [
        lambda wavs, wav_lens=None: ours.classify_batch(wavs, wav_lens),
        lambda wavs, wav_lens=None: server.classify_batch(wavs, wav_lens, tasks=["task", "task"]),
    ]
    for classify in calls:
        with pytest.raises(TypeError, match=r"expects float waveforms \(samples in \[-1, 1\]\), got torch.int16"):
            classify(pcm)
        for lengths, shown in (([1.0, 1.5], "1.5"), ([0.0, 1.0], "0.0"), ([1.0, float("nan")], "nan")):
            clip = 1 if shown != "0.0" else 0
            message = rf"relative lengths in \(0, 1\]; clip {clip} of the batch has {shown}"
            with pytest.raises(ValueError, match=message):
                classify(WAVS, torch.tensor(lengths))
        assert len(classify(WAVS, torch.tensor([1.0, 0.5]))[3]) == 2


def test_an_unused_output_unit_is_never_the_answer(tiny_ast_dir, tmp_path):
    """A head with a fourth unit no label maps to, made the most likely one:
    every interface of ours picks among the labels; the probabilities are
    the head's own (the unused unit keeps its share)."""
    lobe = AST(str(tiny_ast_dir), max_frames=64, petl={"task": LoRA(rank=2)}).eval()
    perturb_petl_(lobe, 0)
    head = torch.nn.Linear(lobe.hidden_size, len(LABELS) + 1)
    with torch.no_grad():
        head.bias[3] = 10.0
    folder = write_inference_folder(tmp_path / "task", lobe, head, label_encoder(LABELS))
    interfaces = {
        "live": AudioClassifier.from_modules(lobe, head, label_encoder(LABELS)),
        "folder": AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "c")),
        "windows": AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "w"), long_clips="windows"),
    }
    for name, interface in interfaces.items():
        log_probs, score, index, labels = interface.classify_batch(torch.cat([WAVS, WAVS], dim=1))
        assert (log_probs.argmax(-1) == 3).all(), name  # the head does prefer it...
        assert set(labels) <= set(LABELS) and (index < 3).all(), name  # ...but it is never the answer
        torch.testing.assert_close(score, log_probs[:, :3].max(-1).values)
        assert labels == [LABELS[i] for i in log_probs[:, :3].argmax(-1).tolist()]
    server = MultiTaskClassifier.from_folders({"task": folder})
    log_probs, scores, indices, labels = server.classify_batch(WAVS, tasks=["task", "task"])
    assert set(labels) <= set(LABELS) and (indices < 3).all()
    assert labels == [LABELS[int(row[:3].argmax())] for row in log_probs]
