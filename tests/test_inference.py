"""Inference folders: written from live modules, loaded through our interface,
SpeechBrain's stock EncoderClassifier and foreign_class, anywhere on disk."""

import functools
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.interfaces import foreign_class
from speechbrain.nnet.linear import Linear

from method_zoo import ALL_METHODS, perturb_petl_
from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder
from speechbrain_petl.inference import write_inference_folder
from speechbrain_petl.inference import AudioClassifier, label_encoder
from speechbrain_petl.methods import Adapters, ConformerAdapter, LoRA
from tiny import save_tiny_ast

LABELS = ["dog", "rain", "siren"]


def make_lobe(kind, folder, petl=None):
    """A tiny lobe of ``kind`` ("ast", "w2v2", "hubert", "wavlm", "whisper") loaded from ``folder``."""
    if kind == "ast":
        return AST(folder, max_frames=64, petl=petl)
    lobe_class = {"w2v2": Wav2Vec2, "hubert": HuBERT, "wavlm": WavLM, "whisper": WhisperEncoder}[kind]
    return lobe_class(folder, petl=petl)


def trained_task(kind, folder, method, seed=0):
    """A lobe with ``method`` attached and random trained values, a head and labels."""
    torch.manual_seed(seed)
    lobe = make_lobe(kind, folder, {"task": ALL_METHODS[method]()})
    perturb_petl_(lobe, seed)
    if method == "full":
        with torch.no_grad():
            lobe.layers[0].mlp.fc1.linear.weight.add_(0.3)
    head = Linear(input_size=lobe.hidden_size, n_neurons=4)  # one output more than labels
    return lobe.eval(), head, label_encoder(LABELS)


@pytest.fixture(params=["ast", "w2v2"])
def kind_and_folder(request, tiny_ast_dir, tiny_w2v2_dir):
    return request.param, tiny_ast_dir if request.param == "ast" else tiny_w2v2_dir


WAVS = torch.randn(3, 8000, generator=torch.Generator().manual_seed(1))
WAV_LENS = torch.tensor([1.0, 0.8, 0.55])


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_inference_folder_round_trip(method, kind_and_folder, tmp_path):
    kind, backbone_folder = kind_and_folder
    lobe, head, encoder = trained_task(kind, backbone_folder, method)
    folder = write_inference_folder(tmp_path / "task", lobe, head, encoder)
    names = sorted(os.listdir(folder))
    assert names == sorted(
        ["README.md", "custom_interface.py", "embedding_model.ckpt", "head.ckpt", "hyperparams.yaml", "label_encoder.txt"]
    )
    live = AudioClassifier.from_modules(lobe, head, encoder)
    expected = live.classify_batch(WAVS, WAV_LENS)
    loaded = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache"))
    stock = EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache_stock"))
    for interface in (loaded, stock):
        log_probs, score, index, labels = interface.classify_batch(WAVS, WAV_LENS)
        torch.testing.assert_close(log_probs, expected[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3))
    # Ours never names the head's unused unit (the stock interface knows nothing of it).
    log_probs, score, index, labels = loaded.classify_batch(WAVS, WAV_LENS)
    assert torch.equal(index, expected[2]) and labels == expected[3]
    assert set(expected[3]) <= set(LABELS)
    # The files are plain tensors: readable without unpickling any code.
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    assert set(state["state"]) == set(lobe.trainable_state_dict())
    assert state["fingerprint"]["frozen_sha256"] == lobe.fingerprint()["frozen_sha256"]


@pytest.mark.parametrize("method", ["prefix", "conformer_houlsby_sequential", "full"])
@pytest.mark.parametrize("kind", ["hubert", "wavlm", "whisper"])
def test_inference_folder_round_trip_of_the_speech_encoders(kind, method, tmp_path, request):
    """The artefact round trip on HuBERT, WavLM and Whisper's encoder: the
    loaded folder classifies as the live modules and keeps the fingerprint."""
    lobe, head, encoder = trained_task(kind, request.getfixturevalue(f"tiny_{kind}_dir"), method)
    folder = write_inference_folder(tmp_path / "task", lobe, head, encoder)
    expected = AudioClassifier.from_modules(lobe, head, encoder).classify_batch(WAVS, WAV_LENS)
    loaded = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache"))
    log_probs, _, index, labels = loaded.classify_batch(WAVS, WAV_LENS)
    torch.testing.assert_close(log_probs, expected[0], rtol=0, atol=1e-6)
    assert torch.equal(index, expected[2]) and labels == expected[3]
    state = torch.load(folder / "embedding_model.ckpt", weights_only=True)
    assert state["fingerprint"]["frozen_sha256"] == lobe.fingerprint()["frozen_sha256"]
    assert type(loaded.mods.embedding_model) is type(lobe)


def test_foreign_class_and_a_moved_copy(tiny_ast_dir, tmp_path):
    lobe, head, encoder = trained_task("ast", tiny_ast_dir, "conformer_pfeiffer_parallel")
    original = write_inference_folder(tmp_path / "made_here", lobe, head, encoder)
    moved = tmp_path / "elsewhere" / "task"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    for path in moved.iterdir():
        assert str(tmp_path / "made_here") not in path.read_bytes().decode("latin-1"), path.name
    expected = AudioClassifier.from_modules(lobe, head, encoder).classify_batch(WAVS, WAV_LENS)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative to nothing: the folder is found by its own path only
    try:
        custom = foreign_class(
            source=str(moved),
            pymodule_file="custom_interface.py",
            classname="AudioClassifier",
            savedir=str(tmp_path / "cache"),
        )
    finally:
        os.chdir(cwd)
    assert type(custom).__name__ == "AudioClassifier"
    torch.testing.assert_close(custom.classify_batch(WAVS, WAV_LENS)[0], expected[0], rtol=0, atol=1e-6)


def test_wrong_backbone_is_refused_and_a_copy_of_the_weights_accepted(tiny_ast_dir, tmp_path):
    lobe, head, encoder = trained_task("ast", tiny_ast_dir, "lora")
    folder = write_inference_folder(tmp_path / "task", lobe, head, encoder)
    other = save_tiny_ast(tmp_path / "other_ast", seed=7)
    with pytest.raises(RuntimeError, match=r"frozen weights differ(.|\n)*tiny_ast(.|\n)*other_ast"):
        AudioClassifier.from_hparams(
            source=str(folder), savedir=str(tmp_path / "c1"), overrides={"backbone_source": other}
        )
    copy = shutil.copytree(tiny_ast_dir, tmp_path / "copy_of_tiny_ast")
    same = AudioClassifier.from_hparams(
        source=str(folder), savedir=str(tmp_path / "c2"), overrides={"backbone_source": str(copy)}
    )
    expected = AudioClassifier.from_modules(lobe, head, encoder).classify_batch(WAVS)
    torch.testing.assert_close(same.classify_batch(WAVS)[0], expected[0], rtol=0, atol=1e-6)


def test_classify_file_reads_any_rate_channels_and_format(tiny_ast_dir, tmp_path):
    lobe, head, encoder = trained_task("ast", tiny_ast_dir, "bitfit")
    folder = write_inference_folder(tmp_path / "task", lobe, head, encoder)
    classifier = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache"))
    stock = EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache_stock"))
    rng = np.random.default_rng(0)
    for name, rate, channels, subtype in [
        ("mono16k.wav", 16000, 1, "PCM_16"),
        ("stereo8k.flac", 8000, 2, "PCM_24"),
        ("mono44k.wav", 44100, 1, "FLOAT"),
    ]:
        path = tmp_path / name
        sf.write(path, (0.1 * rng.standard_normal((rate // 2, channels))).astype(np.float32), rate, subtype=subtype)
        log_probs, score, index, labels = classifier.classify_file(path)
        assert log_probs.shape == (1, 4) and len(labels) == 1
        assert score.item() == pytest.approx(log_probs.max().item())
        stock_log_probs, _, _, _ = stock.classify_file(str(path))
        assert torch.equal(stock_log_probs.argmax(-1), log_probs.argmax(-1))


@pytest.mark.parametrize("kind", ["ast", "w2v2"])
def test_bad_clips_get_errors_that_name_them(kind, tiny_ast_dir, tiny_w2v2_dir, tmp_path):
    folder = tiny_ast_dir if kind == "ast" else tiny_w2v2_dir
    lobe, head, encoder = trained_task(kind, folder, "lora")
    classifier = AudioClassifier.from_modules(lobe, head, encoder)
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        classifier.classify_file(tmp_path / "nowhere.wav")
    (tmp_path / "notes.wav").write_text("this is not audio")
    with pytest.raises(ValueError, match=r"notes.wav is not an audio file"):
        classifier.classify_file(tmp_path / "notes.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav is empty"):
        classifier.classify_file(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav holds 4000 NaN/Inf samples"):
        classifier.classify_file(tmp_path / "nan.wav")
    with pytest.raises(ValueError, match="clip 1 of the batch holds 1 NaN"):
        wavs = torch.randn(2, 8000)
        wavs[1, 10] = float("nan")
        classifier.classify_batch(wavs)
    # Shorter than one AST patch (16 frames, ~175 ms) and than one 25 ms window.
    sf.write(tmp_path / "short.wav", 0.1 * np.ones(200, dtype=np.float32), 16000)
    if kind == "ast":  # padded, as every clip shorter than max_frames
        log_probs, _, _, _ = classifier.classify_file(tmp_path / "short.wav")
        padded = torch.zeros(1, 8000)
        padded[0, :200] = 0.1
        expected = classifier.classify_batch(padded, torch.tensor([200 / 8000]))[0]
        torch.testing.assert_close(log_probs, expected, rtol=1e-5, atol=1e-5)
    else:  # shorter than the CNN's receptive field (wav2vec2-base: 400 samples): refused
        minimum = lobe.min_samples
        assert minimum == 105 and Wav2Vec2(pretrained=False).min_samples == 400
        sf.write(tmp_path / "short.wav", 0.1 * np.ones(minimum - 1, dtype=np.float32), 16000)
        with pytest.raises(ValueError, match=f"short.wav has {minimum - 1} samples; this model needs at least {minimum}"):
            classifier.classify_file(tmp_path / "short.wav")
        sf.write(tmp_path / "just_enough.wav", 0.1 * np.ones(minimum, dtype=np.float32), 16000)
        assert len(classifier.classify_file(tmp_path / "just_enough.wav")[3]) == 1


def test_bad_inference_folders_get_errors_that_name_the_file(tiny_ast_dir, tmp_path):
    lobe, head, encoder = trained_task("ast", tiny_ast_dir, "lora")
    folder = write_inference_folder(tmp_path / "task", lobe, head, encoder)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_inference_folder(folder, lobe, head, encoder)
    missing = shutil.copytree(folder, tmp_path / "missing")
    (missing / "head.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="head.ckpt missing"):
        AudioClassifier.from_hparams(source=str(missing), savedir=str(tmp_path / "c0"))
    # Tensors that do not match the yaml: rank 2 trained, the yaml says rank 3.
    mismatch = shutil.copytree(folder, tmp_path / "mismatch")
    yaml_file = mismatch / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("rank: 2", "rank: 3"))
    with pytest.raises(RuntimeError, match=r"embedding_model.ckpt: 'petl.task.layers.0.attention.query.down.weight' has shape \(2, 32\)"):
        AudioClassifier.from_hparams(source=str(mismatch), savedir=str(tmp_path / "c1"))
    head_mismatch = shutil.copytree(folder, tmp_path / "head_mismatch")
    yaml_file = head_mismatch / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("n_neurons: 4", "n_neurons: 5"))
    with pytest.raises(RuntimeError, match=r"head.ckpt: 'w.weight' has shape \(4, 32\)"):
        AudioClassifier.from_hparams(source=str(head_mismatch), savedir=str(tmp_path / "c2"))


def test_export_refuses_what_could_not_be_loaded(tiny_ast_dir, tmp_path):
    random = AST(tiny_ast_dir, max_frames=64, pretrained=False, petl=LoRA(rank=2))
    head, encoder = Linear(input_size=32, n_neurons=3), label_encoder(LABELS)
    with pytest.raises(ValueError, match="random weights"):
        write_inference_folder(tmp_path / "random", random, head, encoder)
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    lobe.merge("lora")
    with pytest.raises(RuntimeError, match="unmerge"):
        write_inference_folder(tmp_path / "merged", lobe, head, encoder)
    assert not (tmp_path / "random").exists() and not (tmp_path / "merged").exists()


def test_paper_budget_artefacts_are_about_a_megabyte(tmp_path):
    """AST-base with the GSC recipes' budgets (35 classes): the folder is the
    PETL state plus the head, not the 344 MB backbone."""
    AST(pretrained=False, max_frames=100).save_pretrained(tmp_path / "ast_base")
    lobe = AST(str(tmp_path / "ast_base"), max_frames=100)
    head, encoder = Linear(input_size=768, n_neurons=35), label_encoder([f"word{i}" for i in range(35)])
    methods = {
        "conformer": (Adapters(functools.partial(ConformerAdapter, bottleneck=8, kernel_size=31)), 1.3e6),
        "lora": (LoRA(rank=6, alpha=0.75), 1.1e6),
    }
    sizes = {}
    for name, (method, bound) in methods.items():
        lobe.attach(method, name)
        folder = write_inference_folder(tmp_path / name, lobe, head, encoder)
        sizes[name] = sum(p.stat().st_size for p in folder.iterdir())
        assert sizes[name] < bound, (name, sizes[name])
        lobe.detach(name)
    assert sizes["lora"] > 221184 * 4 and sizes["conformer"] > 270720 * 4
