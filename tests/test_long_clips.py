"""Clips longer than a model's crop length.

Every lobe crops its input to ``max_samples`` (an inference folder passes
the recipe's ``max_audio_samples``; AST's ``max_frames`` and Whisper's 30 s
window crop anyway), so our interface, SpeechBrain's stock one,
``foreign_class`` and the multi-task classifier give the same answer on a
clip of any length. Our interfaces can instead classify a long clip in
windows or refuse it (``long_clips``)."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.interfaces import foreign_class

from method_zoo import perturb_petl_
from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier, label_encoder, write_inference_folder
from speechbrain_petl.methods import LoRA

LABELS = ["dog", "rain", "siren"]
LOBES = {"ast": AST, "w2v2": Wav2Vec2, "hubert": HuBERT, "wavlm": WavLM, "whisper": WhisperEncoder}
#: The recipe's max_audio_samples of each kind's task (AST: none, its 64 frames crop at 10,480 samples).
MAX_AUDIO_SAMPLES = {"ast": None, "w2v2": 3000, "hubert": 3000, "wavlm": 3000, "whisper": 4000}
LOG = "speechbrain_petl.inference.classifier"


def write_task(folder, backbone_folder, kind, seed=0, max_audio_samples="default"):
    """An inference folder of a LoRA task (random trained values) on the tiny ``kind`` lobe."""
    options = {"max_frames": 64} if kind == "ast" else {}
    lobe = LOBES[kind](str(backbone_folder), petl={"task": LoRA(rank=2)}, **options)
    perturb_petl_(lobe, seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(lobe.hidden_size, len(LABELS))
    crop = MAX_AUDIO_SAMPLES[kind] if max_audio_samples == "default" else max_audio_samples
    return write_inference_folder(folder, lobe.eval(), head, label_encoder(LABELS), max_audio_samples=crop)


def noise(samples, seed=0):
    """``samples`` of quiet noise with a slow envelope (so windows differ)."""
    generator = torch.Generator().manual_seed(seed)
    envelope = 0.05 + 0.1 * torch.sin(torch.arange(samples) / 700.0).abs()
    return envelope * torch.randn(samples, generator=generator)


@pytest.fixture
def backbone_of(request):
    """``backbone_of(kind)``: the session's tiny saved backbone of ``kind``."""
    return lambda kind: request.getfixturevalue(f"tiny_{kind}_dir")


@pytest.fixture
def ast_task(tiny_ast_dir, tmp_path):
    """An AST task and our interface on it (crop length 10,480 samples)."""
    folder = write_task(tmp_path / "ast_task", tiny_ast_dir, "ast")
    return folder, AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache"))


@pytest.mark.parametrize("kind", list(LOBES))
def test_every_interface_crops_alike_at_any_length(kind, backbone_of, tmp_path):
    folder = write_task(tmp_path / "task", backbone_of(kind), kind)
    ours = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "ours"))
    stock = EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "stock"))
    foreign = foreign_class(
        source=str(folder), savedir=str(tmp_path / "foreign"), pymodule_file="custom_interface.py",
        classname="AudioClassifier",
    )
    server = MultiTaskClassifier.from_folders({"task": folder})
    crop = ours.mods.embedding_model.max_samples
    assert crop == (MAX_AUDIO_SAMPLES[kind] or 10480)
    assert stock.mods.embedding_model.max_samples == crop
    clip = noise(3 * crop)
    answers = {}
    for factor in (0.5, 1, 3):
        wav = clip[: int(factor * crop)].unsqueeze(0)
        with torch.no_grad():
            answers[factor] = ours.classify_batch(wav)[0][0]
            for interface in (stock, foreign):
                torch.testing.assert_close(interface.classify_batch(wav)[0][0], answers[factor], rtol=0, atol=1e-5)
        torch.testing.assert_close(server.classify_batch(wav, tasks=["task"])[0][0], answers[factor], rtol=0, atol=1e-5)
    # The long clip got what its first `crop` samples get, and that is not what the whole clip would.
    torch.testing.assert_close(answers[3], answers[1], rtol=0, atol=1e-5)
    assert not torch.allclose(answers[0.5], answers[1], atol=1e-4)
    # Files too: the IEMOCAP case (a 3x clip through our classify_file and the stock one).
    path = tmp_path / "long.wav"
    sf.write(path, clip.numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(stock.classify_file(str(path))[0][0], answers[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.classify_file(path)[0][0], answers[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", list(LOBES))
def test_the_lobe_crops_each_clip_of_a_padded_batch(kind, tiny_lobe):
    """The crop is the lobe's own, in forward, from (wavs, wav_lens): a clip
    longer than ``max_samples`` in a padded batch gets what its first
    ``max_samples`` samples get alone, a shorter one what it gets alone."""
    options = {"max_samples": 2400} if kind != "ast" else {}
    lobe = tiny_lobe(kind, petl=LoRA(rank=2), **options).eval()
    perturb_petl_(lobe, 1)
    crop = lobe.max_samples
    assert crop == {"ast": 10480}.get(kind, 2400)
    assert lobe.constructor_args()["max_samples"] == options.get("max_samples")
    long, short = noise(3 * crop, seed=1), noise(crop // 2, seed=2)
    wavs = torch.zeros(2, 3 * crop)
    wavs[0], wavs[1, : len(short)] = long, short
    with torch.no_grad():
        batch = lobe(wavs, torch.tensor([1.0, len(short) / (3 * crop)]))
        torch.testing.assert_close(batch[0], lobe(long[None, :crop])[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batch[1], lobe(short[None])[0], rtol=0, atol=1e-5)


def test_whispers_window_and_an_unlimited_lobe(tiny_lobe):
    """Whisper's 30 s window is its crop length; Wav2Vec2 without a
    max_samples setting has none; a crop shorter than the CNN's receptive
    field is refused."""
    assert tiny_lobe("whisper").max_samples == 30 * 16000
    assert tiny_lobe("whisper", max_samples=16000).max_samples == 16000
    assert tiny_lobe("w2v2").max_samples is None
    with pytest.raises(ValueError, match=r"max_samples=50 is shorter than the 105 samples Wav2Vec2 needs"):
        tiny_lobe("w2v2", max_samples=50)


def test_a_folder_written_before_the_lobe_cropped_still_crops_in_our_interfaces(tiny_w2v2_dir, tmp_path):
    """Such a folder records only ``max_audio_samples`` (its lobe has no
    ``max_samples``, nor ``trained_settings``): our interfaces crop to it,
    in ``classify_batch`` as in ``classify_file``."""
    folder = write_task(tmp_path / "task", tiny_w2v2_dir, "w2v2")
    yaml_file = folder / "hyperparams.yaml"
    text = yaml_file.read_text()
    text = text.replace("    max_samples: 3000\n", "").split("# The settings the tensors were trained with")[0]
    yaml_file.write_text(text)
    ours = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "ours"))
    server = MultiTaskClassifier.from_folders({"task": folder})
    assert ours.mods.embedding_model.max_samples is None and ours.max_samples == 3000
    clip = noise(9000).unsqueeze(0)
    expected = ours.classify_batch(clip[:, :3000])[0]
    torch.testing.assert_close(ours.classify_batch(clip)[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(server.classify_batch(clip, tasks=["task"])[0][0], expected[0], rtol=0, atol=1e-5)


def test_crop_is_the_default_and_is_logged_once(ast_task, tmp_path, caplog):
    _, classifier = ast_task
    crop = classifier.max_samples
    clip = noise(3 * crop)
    with caplog.at_level(logging.WARNING, logger=LOG):
        first = classifier.classify_batch(clip.unsqueeze(0))[0]
        classifier.classify_batch(clip.unsqueeze(0))
        path = tmp_path / "long.wav"
        sf.write(path, clip.numpy(), 16000, subtype="FLOAT")
        classifier.classify_file(path)
    notices = [record.getMessage() for record in caplog.records if record.name == LOG]
    assert len(notices) == 1
    assert notices[0].startswith(f"clip 0 of the batch is {3 * crop} samples long (1.97 s)")
    assert f"its first {crop} samples (0.66 s) only" in notices[0] and "long_clips='windows'" in notices[0]
    torch.testing.assert_close(first, classifier.classify_batch(clip[None, :crop])[0], rtol=0, atol=1e-6)
    # A clip no longer than the crop length is not a long clip: nothing logged for it.
    caplog.clear()
    fresh = AudioClassifier.from_hparams(source=str(ast_task[0]), savedir=str(tmp_path / "fresh"))
    with caplog.at_level(logging.WARNING, logger=LOG):
        fresh.classify_batch(clip[None, :crop])
    assert not [record for record in caplog.records if record.name == LOG]


def test_windows_average_the_posteriors_of_half_overlapping_windows(ast_task, tmp_path):
    folder, classifier = ast_task
    crop = classifier.max_samples
    hop = crop // 2
    clip = noise(2 * crop + crop // 3)  # windows at 0, hop, 2 hop and one ending at the clip's end
    starts = [0, hop, 2 * hop, len(clip) - crop]
    windows = torch.stack([clip[start : start + crop] for start in starts])
    each = classifier.classify_batch(windows)[0]
    expected = torch.log(each.exp().mean(dim=0))
    # A short clip, padded in the same batch: one window, what it gets alone.
    short = noise(crop // 2, seed=3)
    wavs = torch.zeros(2, len(clip))
    wavs[0], wavs[1, : len(short)] = clip, short
    log_probs, score, index, labels = classifier.classify_batch(
        wavs, torch.tensor([1.0, len(short) / len(clip)]), long_clips="windows"
    )
    torch.testing.assert_close(log_probs[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_probs[1], classifier.classify_batch(short[None])[0][0], rtol=0, atol=1e-5)
    assert not torch.allclose(log_probs[0], classifier.classify_batch(clip[None])[0][0], atol=1e-4)
    assert labels[0] == LABELS[int(expected.argmax())] and score[0] == pytest.approx(float(expected.max()), abs=1e-5)
    # Set on the interface, for files too; a clip of exactly the crop length is one window.
    windowed = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "w"), long_clips="windows")
    path = tmp_path / "long.wav"
    sf.write(path, clip.numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(windowed.classify_file(path)[0][0], expected, rtol=0, atol=1e-5)
    one = clip[None, :crop]
    torch.testing.assert_close(windowed.classify_batch(one)[0], classifier.classify_batch(one)[0], rtol=0, atol=0)


def test_refuse_names_the_clip_its_length_and_the_limit(ast_task, tmp_path):
    folder, _ = ast_task
    refusing = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "r"), long_clips="refuse")
    crop = refusing.max_samples
    wavs = torch.stack([noise(3 * crop), noise(3 * crop, seed=1)])  # clip 0 is (crop - 1000) long: padded
    message = (rf"clip 1 of the batch is {3 * crop} samples long \(1.97 s\); "
               rf"this model takes at most {crop} samples \(0.66 s\)")
    with pytest.raises(ValueError, match=message):
        refusing.classify_batch(wavs, torch.tensor([(crop - 1000) / (3 * crop), 1.0]))
    path = tmp_path / "long.wav"
    sf.write(path, noise(2 * crop).numpy(), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=rf"long.wav is {2 * crop} samples long"):
        refusing.classify_file(path)
    # Clips no longer than the limit are classified as ever.
    assert len(refusing.classify_batch(wavs[:, :crop])[3]) == 2
    with pytest.raises(ValueError, match=r"long_clips must be one of \('crop', 'windows', 'refuse'\), got 'trim'"):
        AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "t"), long_clips="trim")


def test_the_multitask_classifier_applies_each_policy_per_task(tiny_w2v2_dir, tmp_path, caplog):
    """Two tasks on one Wav2Vec2 with different crops (1,500 and 3,000
    samples): each clip of a mixed batch gets, under each policy, what its
    task's own AudioClassifier gives it."""
    folders = {
        "short": write_task(tmp_path / "short", tiny_w2v2_dir, "w2v2", seed=1, max_audio_samples=1500),
        "long": write_task(tmp_path / "long", tiny_w2v2_dir, "w2v2", seed=2, max_audio_samples=3000),
    }
    server = MultiTaskClassifier.from_folders(folders)
    assert [server.tasks[name].max_samples for name in ("short", "long")] == [1500, 3000]
    singles = {
        name: AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "single" / name))
        for name, folder in folders.items()
    }
    lengths = [5000, 5000, 1000, 2000]
    tasks = ["short", "long", "short", "long"]
    wavs = torch.zeros(4, 5000)
    for i, length in enumerate(lengths):
        wavs[i, :length] = noise(length, seed=i)
    wav_lens = torch.tensor(lengths) / 5000
    notices = []
    for policy in ("crop", "windows", "crop"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOG):
            log_probs, _, _, labels = server.classify_batch(wavs, wav_lens, tasks=tasks, long_clips=policy)
        notices += [record.getMessage() for record in caplog.records if record.name == LOG]
        for i, (task, length) in enumerate(zip(tasks, lengths)):
            alone = singles[task].classify_batch(wavs[i : i + 1, :length], long_clips=policy)
            torch.testing.assert_close(log_probs[i], alone[0][0], rtol=0, atol=1e-5, msg=f"{policy} {i}")
            assert labels[i] == alone[3][0]
    assert len(notices) == 1 and notices[0].startswith("clip 0 of the batch is 5000 samples long (0.31 s)")
    assert "its first 1500 samples" in notices[0]
    refused = r"clip 1 of the batch is 5000 samples long \(0.31 s\); this model takes at most 3000"
    with pytest.raises(ValueError, match=refused):
        server.classify_batch(wavs[[2, 1]], wav_lens[[2, 1]], tasks=["short", "long"], long_clips="refuse")
    # Set on the classifier; files are named.
    refusing = MultiTaskClassifier.from_folders(folders, long_clips="refuse")
    path = tmp_path / "clip.wav"
    sf.write(path, noise(2000).numpy(), 16000, subtype="FLOAT")
    assert len(refusing.classify_files([path], ["long"])[3]) == 1
    with pytest.raises(ValueError, match=r"clip.wav is 2000 samples long \(0.12 s\); this model takes at most 1500"):
        refusing.classify_files([path, path], ["long", "short"])
    with pytest.raises(ValueError, match="long_clips must be one of"):
        MultiTaskClassifier.from_folders(folders, long_clips=None)
    assert np.isfinite(server.classify_files([path], ["short"], long_clips="windows")[1].numpy()).all()
