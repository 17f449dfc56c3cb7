"""The backbone lobes: equivalence with transformers, features, loading, freezing."""

import pytest
import torch
from transformers import (
    ASTFeatureExtractor,
    ASTModel,
    HubertModel,
    Wav2Vec2Model,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder
from speechbrain_petl.backbones.ast import adapt_position_embeddings
from speechbrain_petl.backbones.loading import load_config
from speechbrain_petl.backbones.wavlm import GatedPositionBias
from speechbrain_petl.backbones.features import Fbank
from speechbrain_petl.methods import FullFineTuning, PrefixTuning, PromptTuning
from tiny import save_tiny, save_tiny_ast, tiny_ast_config

#: The waveform lobes and their transformers models.
WAVEFORM = {"w2v2": (Wav2Vec2, Wav2Vec2Model), "hubert": (HuBERT, HubertModel), "wavlm": (WavLM, WavLMModel)}


def _mask(lobe, wav_lens, samples):
    frames = lobe.output_lengths(torch.round(wav_lens * samples).long())
    return torch.arange(int(frames.max()))[None] < frames[:, None]


# ------------------------------------------------------------------ features
@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.37])
def test_fbank_equals_ast_feature_extractor(seconds):
    torch.manual_seed(0)
    wav = torch.randn(int(16000 * seconds)) * 0.1
    extractor = ASTFeatureExtractor(max_length=100)
    expected = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_values
    ours = Fbank(max_frames=100)(wav.unsqueeze(0))
    assert ours.shape == expected.shape == (1, 100, 128)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_fbank_of_padded_batch_uses_each_clip_true_length():
    torch.manual_seed(0)
    short, long = torch.randn(5000), torch.randn(16000)
    batch = torch.zeros(2, 16000)
    batch[0, :5000], batch[1] = short, long
    extractor = ASTFeatureExtractor(max_length=100)
    expected = extractor(
        [short.numpy(), long.numpy()], sampling_rate=16000, return_tensors="pt"
    ).input_values
    ours = Fbank(max_frames=100)(batch, torch.tensor([5000 / 16000, 1.0]))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_fbank_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        Fbank()(torch.randn(16000))


# ------------------------------------------------------- numerical equivalence
def test_ast_equals_transformers_forward(tiny_ast_dir):
    hf = ASTModel.from_pretrained(tiny_ast_dir).eval()
    lobe = AST(tiny_ast_dir, max_frames=64, pooling=None).eval()
    wavs = torch.randn(3, 9000)
    with torch.no_grad():
        expected = hf(lobe.features(wavs)).last_hidden_state
        ours = lobe(wavs)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(WAVEFORM))
@pytest.mark.parametrize("stable", [False, True], ids=["post_ln_base", "pre_ln_large"])
def test_waveform_lobes_equal_transformers_forward(tmp_path, stable, kind):
    folder = save_tiny(
        kind,
        tmp_path / kind,
        do_stable_layer_norm=stable,
        feat_extract_norm="layer" if stable else "group",
    )
    lobe_class, model_class = WAVEFORM[kind]
    hf = model_class.from_pretrained(folder).eval()
    lobe = lobe_class(folder, pooling=None, normalize_waveform=False).eval()
    wavs = torch.randn(2, 8000)
    wav_lens = torch.tensor([1.0, 0.55])
    with torch.no_grad():
        torch.testing.assert_close(lobe(wavs), hf(wavs).last_hidden_state, rtol=1e-5, atol=1e-5)
        # A padded batch gives every clip what transformers gives it alone.
        ours = lobe(wavs, wav_lens)
        real = _mask(lobe, wav_lens, 8000)
        for i, rel in enumerate(wav_lens.tolist()):
            alone = hf(wavs[i : i + 1, : round(rel * 8000)]).last_hidden_state[0]
            torch.testing.assert_close(ours[i][real[i]], alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- Whisper
@pytest.mark.parametrize("seconds", [30.0, 0.77, 3.0])
def test_whisper_log_mel_equals_the_feature_extractor(seconds, tiny_whisper_dir):
    torch.manual_seed(0)
    wav = torch.randn(int(16000 * seconds)) * 0.1
    expected = WhisperFeatureExtractor()(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    lobe = WhisperEncoder(tiny_whisper_dir, crop_positions=False)
    padded = torch.randn(2, 16000 * 31)  # garbage after the clip, longer than 30 s
    padded[0, : len(wav)] = wav
    full, _ = lobe.features(padded, torch.tensor([len(wav), 16000 * 31]), full=True)
    torch.testing.assert_close(full[:1], expected, rtol=0, atol=1e-4)
    cropped, frames = lobe.features(wav.unsqueeze(0))  # a clip alone: its own frames only
    assert frames is None and cropped.shape[2] == len(wav) // 160
    torch.testing.assert_close(cropped, expected[..., : cropped.shape[2]], rtol=0, atol=1e-4)


def test_whisper_encoder_equals_transformers_forward_at_full_length(tiny_whisper_dir):
    """On 30 s, both position modes are transformers' forward; on a shorter
    clip, ``crop_positions=False`` still is (30 s of zero padding, all
    attended), while the default crops the positions to the clip's tokens:
    a different input for the frozen encoder (the documented trade-off)."""
    hf = WhisperModel.from_pretrained(tiny_whisper_dir).encoder.eval()
    extractor = WhisperFeatureExtractor()
    full = WhisperEncoder(tiny_whisper_dir, pooling=None, crop_positions=False).eval()
    crop = WhisperEncoder(tiny_whisper_dir, pooling=None).eval()
    torch.manual_seed(0)
    long, short = torch.randn(16000 * 30) * 0.1, torch.randn(12345) * 0.1
    with torch.no_grad():
        for wav in (long, short):
            expected = hf(extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt").input_features)
            expected = expected.last_hidden_state
            assert expected.abs().mean() > 0.1
            torch.testing.assert_close(full(wav[None]), expected, rtol=1e-4, atol=1e-4)
        long_expected = hf(extractor(long.numpy(), sampling_rate=16000, return_tensors="pt").input_features)
        torch.testing.assert_close(crop(long[None]), long_expected.last_hidden_state, rtol=1e-4, atol=1e-4)
        cropped = crop(short[None])
    assert cropped.shape[1] == -(-(12345 // 160) // 2)  # ceil(frames / 2) tokens
    assert not torch.allclose(cropped, expected[:, : cropped.shape[1]], atol=1e-2)


def test_whisper_augments_its_log_mel_and_refuses_a_shape_change(tiny_whisper_dir):
    lobe = WhisperEncoder(tiny_whisper_dir).eval()
    wavs, lens = torch.randn(2, 8000) * 0.1, torch.tensor([1.0, 0.6])
    seen = {}

    def record(feats):
        """Keeps the log-mel it is given."""
        seen["shape"] = feats.shape
        return feats

    with torch.no_grad():
        plain = lobe(wavs, lens)
        torch.testing.assert_close(lobe(wavs, lens, augment=record), plain)
        assert not torch.allclose(lobe(wavs, lens, augment=torch.zeros_like), plain, atol=1e-3)
        with pytest.raises(ValueError, match=r"\(batch, frames, mels\) from \(2, 50, 80\) to \(2, 40, 80\)"):
            lobe(wavs, lens, augment=lambda feats: feats[:, :40])
    assert seen["shape"] == (2, 50, 80)  # (batch, frames, mels), as AST's fbank


def test_whisper_positions_stay_frozen_under_full_finetuning(tiny_whisper_dir):
    lobe = WhisperEncoder(tiny_whisper_dir, petl=FullFineTuning())
    assert not lobe.pos_embed.weight.requires_grad
    assert lobe.conv1.weight.requires_grad and lobe.layers[0].attention.key.linear.weight.requires_grad


# --------------------------------------------------- WavLM's position bias
def test_wavlm_added_tokens_get_zero_position_bias(tiny_wavlm_dir):
    """Prompts (before the frames) and prefix keys have no position: zero
    bias as queries and as keys; the frames keep WavLM's bias."""
    lobe = WavLM(tiny_wavlm_dir).eval()
    gate = lobe.layers[1].attention.position_bias
    assert isinstance(gate, GatedPositionBias)
    frames, prompts, prefixes = 30, 3, 2
    lobe.relative_positions.num_frames = frames
    x = torch.randn(2, prompts + frames, 32)
    with torch.no_grad():
        plain = gate(x[:, prompts:], frames)
        added = gate(x, prompts + frames + prefixes)
    assert plain.shape == (2, 2, frames, frames) and plain.abs().mean() > 0.1
    assert added.shape == (2, 2, prompts + frames, prompts + frames + prefixes)
    assert added[:, :, :prompts].abs().sum() == 0 and added[..., : prompts + prefixes].abs().sum() == 0
    torch.testing.assert_close(added[:, :, prompts:, prompts + prefixes :], plain)
    lobe.relative_positions.num_frames = None
    with pytest.raises(RuntimeError, match="run the blocks through the lobe"):
        gate(x, frames)


@pytest.mark.parametrize("petl", [PromptTuning(length=3, deep=True), PrefixTuning(length=4)], ids=["prompts", "prefix"])
def test_wavlm_frames_keep_their_bias_when_tokens_are_added(petl, tiny_wavlm_dir):
    """Added prompts or prefix keys never shift the frames' positions: in
    block 0 (whose frames are the plain model's) the bias between frames is
    the plain model's, whatever the added tokens."""
    plain = WavLM(tiny_wavlm_dir, pooling=None).eval()
    adapted = WavLM(tiny_wavlm_dir, pooling=None, petl=petl).eval()
    seen = {}
    for name, lobe in (("plain", plain), ("adapted", adapted)):
        lobe.layers[0].attention.position_bias.register_forward_hook(
            lambda m, i, o, name=name: seen.update({name: o})
        )
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        plain(wavs, torch.tensor([1.0, 0.6]))
        adapted(wavs, torch.tensor([1.0, 0.6]))
    frames = seen["plain"].shape[2]
    torch.testing.assert_close(seen["adapted"][:, :, -frames:, -frames:], seen["plain"], rtol=1e-5, atol=1e-5)


def test_wav2vec2_pooling_ignores_padding(tiny_w2v2_dir):
    lobe = Wav2Vec2(tiny_w2v2_dir).eval()
    clip = torch.randn(5000)
    alone = torch.zeros(1, 5000)
    alone[0] = clip
    padded = torch.randn(2, 8000)  # garbage after the clip must not matter
    padded[0, :5000] = clip
    with torch.no_grad():
        expected = lobe(alone)
        ours = lobe(padded, torch.tensor([5000 / 8000, 1.0]))
    torch.testing.assert_close(ours[0:1], expected, rtol=1e-4, atol=1e-5)


def test_cls_pooling(tiny_ast_dir, tiny_w2v2_dir):
    tokens = AST(tiny_ast_dir, max_frames=64, pooling=None).eval()
    cls = AST(tiny_ast_dir, max_frames=64, pooling="cls").eval()
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(cls(wavs), tokens(wavs)[:, 0])
    with pytest.raises(ValueError, match="no CLS token"):
        Wav2Vec2(tiny_w2v2_dir, pooling="cls")
    with pytest.raises(ValueError, match="pooling must be one of"):
        AST(tiny_ast_dir, max_frames=64, pooling="max")


# ------------------------------------------------------------------- loading
def test_offline_reload_of_save_pretrained_folder(tiny_ast_dir, tiny_w2v2_dir):
    hf = ASTModel.from_pretrained(tiny_ast_dir)
    lobe = AST(tiny_ast_dir, max_frames=64)
    # transformers 5.24 names it layers.1.mlp.fc2; 5.0 (and 4.x) encoder.layer.1.output.dense
    (fc2,) = [
        p for n, p in hf.named_parameters()
        if n in ("layers.1.mlp.fc2.weight", "encoder.layer.1.output.dense.weight")
    ]
    torch.testing.assert_close(lobe.layers[1].mlp.fc2.linear.weight, fc2)
    torch.testing.assert_close(lobe.pos_embed, hf.embeddings.position_embeddings)
    random = AST(tiny_ast_dir, max_frames=64, pretrained=False)
    assert random.config.hidden_size == 32
    assert not torch.equal(random.layers[1].mlp.fc2.linear.weight, fc2)
    w2v2 = Wav2Vec2(tiny_w2v2_dir)
    hf_w2v2 = Wav2Vec2Model.from_pretrained(tiny_w2v2_dir)
    torch.testing.assert_close(
        w2v2.layers[0].attention.value.linear.weight,
        hf_w2v2.encoder.layers[0].attention.v_proj.weight,
    )


def test_default_checkpoints_build_offline_without_weights():
    ast = AST(pretrained=False, max_frames=100)
    assert (ast.hidden_size, ast.num_layers, ast.config.num_mel_bins) == (768, 12, 128)
    assert ast.pos_embed.shape == (1, 2 + 12 * 9, 768)
    w2v2 = Wav2Vec2(pretrained=False)
    assert (w2v2.hidden_size, w2v2.num_layers, w2v2.pre_norm) == (768, 12, False)
    for lobe_class in (HuBERT, WavLM):
        lobe = lobe_class(pretrained=False)
        assert (lobe.hidden_size, lobe.num_layers, lobe.pre_norm, lobe.normalize_waveform) == (768, 12, False, False)
    assert lobe.relative_positions.embedding.weight.shape == (320, 12)  # WavLM's buckets x heads
    whisper = WhisperEncoder(pretrained=False)
    assert (whisper.hidden_size, whisper.num_layers, whisper.config.num_mel_bins) == (512, 6, 80)
    small = load_config(WhisperConfig, "openai/whisper-small")
    assert (small.d_model, small.encoder_layers, small.encoder_attention_heads) == (768, 12, 12)


def test_loading_errors_name_the_folder(tmp_path, tiny_ast_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AST(str(empty), pretrained=False)
    config_only = tmp_path / "config_only"
    tiny_ast_config().save_pretrained(config_only)
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        AST(str(config_only), pretrained=True)
    assert AST(str(config_only), pretrained=False, max_frames=64).num_layers == 2
    with pytest.raises(ValueError, match="shorter than one AST patch"):
        AST(tiny_ast_dir, max_frames=8)
    with pytest.raises(ValueError, match="config object has no weights"):
        AST(tiny_ast_config(), pretrained=True)


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_folder_of_the_other_backbone_is_refused_at_load_time(tiny_ast_dir, tiny_w2v2_dir, pretrained):
    """An AST yaml pointed at a Wav2Vec2 folder used to train a random AST;
    the reverse died later with a non-finite loss."""
    with pytest.raises(ValueError) as err:
        AST(tiny_w2v2_dir, pretrained=pretrained, max_frames=64)
    message = str(err.value)
    assert tiny_w2v2_dir in message and "Wav2Vec2Model" in message and "AST" in message and "ASTModel" in message
    with pytest.raises(ValueError) as err:
        Wav2Vec2(tiny_ast_dir, pretrained=pretrained)
    message = str(err.value)
    assert tiny_ast_dir in message and "'ASTModel'" not in message and "ASTModel" in message
    assert "Wav2Vec2 (speechbrain_petl.backbones.Wav2Vec2)" in message


def test_a_folder_of_another_speech_encoder_is_refused(tiny_hubert_dir, tiny_wavlm_dir, tiny_whisper_dir):
    """HuBERT and WavLM share Wav2Vec2's layout but not its weights: each
    lobe takes only its own model type and names the lobe that fits."""
    for lobe_class, folder, holds, fits in [
        (WavLM, tiny_hubert_dir, "HubertModel", "HuBERT (speechbrain_petl.backbones.HuBERT)"),
        (HuBERT, tiny_wavlm_dir, "WavLMModel", "WavLM (speechbrain_petl.backbones.WavLM)"),
        (WhisperEncoder, tiny_wavlm_dir, "WavLMModel", "WavLM"),
        (Wav2Vec2, tiny_whisper_dir, "WhisperModel", "WhisperEncoder (speechbrain_petl.backbones.WhisperEncoder)"),
    ]:
        with pytest.raises(ValueError) as err:
            lobe_class(folder)
        message = str(err.value)
        assert folder in message and holds in message and fits in message


def test_a_missing_or_unexpected_backbone_weight_is_an_error(tmp_path, tiny_ast_dir):
    from safetensors.torch import load_file, save_file

    weights = load_file(f"{tiny_ast_dir}/model.safetensors")
    for name, change in {
        "missing": lambda w: w.pop("layernorm.weight"),
        "unexpected": lambda w: w.update({"encoder.layer.9.extra.weight": torch.zeros(2)}),
    }.items():
        folder = tmp_path / name
        ASTModel(tiny_ast_config()).save_pretrained(folder)
        changed = dict(weights)
        change(changed)
        save_file(changed, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=rf"{folder}.*{name} 1: .*pretrained: True"):
            AST(str(folder), pretrained=True, max_frames=64)
    # a task head next to the backbone (as in the hub's AST checkpoint) is not a backbone weight
    folder = tmp_path / "with_head"
    ASTModel(tiny_ast_config()).save_pretrained(folder)
    save_file({**weights, "classifier.dense.weight": torch.zeros(3, 32)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    assert AST(str(folder), pretrained=True, max_frames=64).num_layers == 2


def test_offline_hub_id_fails_fast_naming_the_flags(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(OSError) as err:
        AST("MIT/ast-finetuned-audioset-10-10-0.4593", pretrained=True, max_frames=64)
    assert time.monotonic() - start < 10
    assert "--backbone_source=<local folder>" in str(err.value) and "--pretrained=False" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        Wav2Vec2("someone/not-cached", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AST(str(tmp_path / "no" / "such" / "folder"), pretrained=True)


# ------------------------------------------------------- positional embeddings
def test_position_embeddings_are_cropped_or_interpolated_not_zeroed(tiny_ast_dir):
    hf = ASTModel.from_pretrained(tiny_ast_dir)  # 64 frames -> 4 time patches
    source = hf.embeddings.position_embeddings.detach()
    grid = source[0, 2:].reshape(8, 4, 32)  # 128 mel / stride 16 = 8 freq patches
    shorter = AST(tiny_ast_dir, max_frames=32)  # 2 time patches: centre crop
    torch.testing.assert_close(shorter.pos_embed[0, :2], source[0, :2])
    torch.testing.assert_close(shorter.pos_embed[0, 2:].reshape(8, 2, 32), grid[:, 1:3])
    longer = AST(tiny_ast_dir, max_frames=128)  # 8 time patches: interpolated
    stretched = longer.pos_embed[0, 2:].reshape(8, 8, 32)
    assert stretched.abs().mean() > 0.01
    expected = torch.nn.functional.interpolate(
        grid.permute(2, 0, 1).unsqueeze(0), size=(8, 8), mode="bilinear"
    )[0].permute(1, 2, 0)
    torch.testing.assert_close(stretched, expected)
    with torch.no_grad():
        assert longer(torch.randn(1, 20000)).shape == (1, 32)


def test_position_embedding_adaptation_rejects_other_mel_bins():
    with pytest.raises(ValueError, match="num_mel_bins"):
        adapt_position_embeddings(torch.zeros(1, 2 + 12 * 5, 4), (12, 5), (6, 5))


# ----------------------------------------------------------------- freezing
@pytest.mark.parametrize("kind", ["ast", "w2v2", "hubert", "wavlm", "whisper"])
def test_frozen_backbone_has_no_trainable_parameter_and_stays_in_eval(kind, tiny_lobe):
    lobe = tiny_lobe(kind, pooling=None)
    if kind == "whisper":
        assert lobe.config.dropout > 0 and lobe.config.attention_dropout > 0
    elif kind != "ast":
        assert lobe.config.hidden_dropout > 0 and lobe.config.layerdrop > 0
    assert not any(p.requires_grad for p in lobe.parameters())
    lobe.train()
    assert not any(m.training for m in lobe.modules() if m is not lobe and m is not lobe.petl)
    wavs = torch.randn(2, 8000)
    torch.testing.assert_close(lobe(wavs), lobe(wavs))  # no dropout / LayerDrop


def test_save_tiny_helpers_randomise_position_embeddings(tmp_path):
    folder = save_tiny_ast(tmp_path / "ast", seed=3)
    assert ASTModel.from_pretrained(folder).embeddings.position_embeddings.abs().mean() > 0.01


def test_save_pretrained_round_trip_keeps_fine_tuned_weights(tmp_path, tiny_ast_dir):
    from speechbrain_petl.methods import FullFineTuning, LoRA

    lobe = AST(tiny_ast_dir, max_frames=32, petl=FullFineTuning()).eval()
    with torch.no_grad():
        lobe.layers[1].mlp.fc1.linear.weight.add_(0.5)
        lobe.pos_embed.mul_(2.0)
    lobe.save_pretrained(tmp_path / "tuned")
    reloaded = AST(str(tmp_path / "tuned"), max_frames=32).eval()
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(wavs), lobe(wavs))
    with pytest.raises(FileExistsError, match="already holds a model"):
        lobe.save_pretrained(tmp_path / "tuned")
    with pytest.raises(RuntimeError, match="would be lost"):
        AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2)).save_pretrained(tmp_path / "lora")


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "whisper"])
def test_save_pretrained_round_trip_of_the_speech_encoders(kind, tmp_path, tiny_lobe):
    lobe = tiny_lobe(kind, petl=FullFineTuning()).eval()
    with torch.no_grad():
        lobe.layers[1].mlp.fc1.linear.weight.add_(0.5)
    lobe.save_pretrained(tmp_path / "tuned")
    reloaded = type(lobe)(str(tmp_path / "tuned")).eval()
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(wavs, torch.tensor([1.0, 0.7])), lobe(wavs, torch.tensor([1.0, 0.7])))


def test_sincos_positions_only_for_random_weights(tiny_ast_dir):
    lobe = AST(tiny_ast_config(), pretrained=False, max_frames=64, init_positions="sincos")
    assert lobe.pos_embed[0, 2:].abs().mean() > 0.1
    assert torch.equal(lobe.pos_embed[0, :2], torch.zeros(2, 32))
    with pytest.raises(ValueError, match="only applies to pretrained=False"):
        AST(tiny_ast_dir, max_frames=64, init_positions="sincos")


def test_wav2vec2_refuses_an_augmentation_that_changes_the_length(tiny_w2v2_dir):
    """The padding mask comes from the lengths before augmentation: an
    augmentation that changes the waveforms' length is refused, naming it
    and both shapes; one that keeps the shape is applied."""

    class SpeedUp(torch.nn.Module):
        """Drops every tenth sample."""

        def forward(self, wavs):
            """Shorter waveforms."""
            keep = torch.arange(wavs.shape[1]) % 10 != 0
            return wavs[:, keep]

    lobe = Wav2Vec2(tiny_w2v2_dir, pooling="mean").eval()
    wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    with torch.no_grad(), pytest.raises(ValueError, match=r"'SpeedUp' changed the waveforms' shape from \(2, 8000\) to \(2, 7200\)"):
        lobe(wavs, lens, augment=SpeedUp())
    with torch.no_grad():
        loud = lobe(wavs, lens, augment=lambda w: 3 * w)
        plain = lobe(wavs, lens)
        silent = lobe(wavs, lens, augment=torch.zeros_like)
    torch.testing.assert_close(loud, plain, rtol=1e-4, atol=1e-4)  # scale-invariant: normalised waveforms
    assert not torch.allclose(silent, plain, atol=1e-3)  # the augmentation was applied
