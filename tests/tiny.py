"""Tiny Hugging Face backbones written with save_pretrained, for offline tests.

Every weight is randomised (Hugging Face initialises AST's positional
embeddings and special tokens at zero, which would hide bugs)."""

import torch
from transformers import (
    ASTConfig,
    ASTModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperModel,
)


#: The encoder size shared by every tiny backbone but Whisper: 2 layers,
#: width 32.
_TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)


def tiny_ast_config(**overrides):
    """A 2-layer, width-32 AST on 128 mel bins and 64 frames."""
    options = dict(
        _TINY_ENCODER, max_length=64, frequency_stride=16, time_stride=16
    )
    options.update(overrides)
    return ASTConfig(**options)


def _waveform_options(overrides):
    """The tiny waveform encoders' options (a 3-layer CNN of stride 80, i.e.
    200 frames per second) updated with ``overrides``."""
    options = dict(
        _TINY_ENCODER,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 4, 4),
        num_feat_extract_layers=3,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    options.update(overrides)
    return options


def tiny_w2v2_config(**overrides):
    """A 2-layer, width-32 Wav2Vec2 with a 3-layer CNN (stride 80, i.e. 200
    frames per second: short sequences even for 8 s clips)."""
    return Wav2Vec2Config(**_waveform_options(overrides))


def tiny_hubert_config(**overrides):
    """The tiny Wav2Vec2's shape, as a HuBERT."""
    return HubertConfig(**_waveform_options(overrides))


def tiny_wavlm_config(**overrides):
    """The tiny Wav2Vec2's shape, as a WavLM, with few position buckets
    (16, exact up to 4 frames, logarithmic up to 20) so that the tests'
    sequences reach the logarithmic and the clamped buckets."""
    return WavLMConfig(**_waveform_options({"num_buckets": 16, "max_bucket_distance": 20, **overrides}))


def tiny_whisper_config(**overrides):
    """A 2-layer, width-32 Whisper (1-layer decoder, 16-token vocabulary) on
    80 mel bins with 1,500 positions: whisper's own input size, so that the
    full 30 s window can be compared with transformers."""
    options = dict(
        d_model=32,
        encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
        vocab_size=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        begin_suppress_tokens=None,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
    )  # fmt: skip
    options.update(overrides)
    return WhisperConfig(**options)


def randomize_(model, seed=0):
    """Fills every parameter with random values (LayerNorm weights near 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            if name.endswith("weight") and param.dim() == 1:
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise)
    return model


def _save_randomized(model_class, config, folder, seed, overrides):
    """Writes ``model_class(config(**overrides))``, randomised with ``seed``,
    to ``folder``; returns the folder as a str."""
    randomize_(model_class(config(**overrides)), seed).save_pretrained(folder)
    return str(folder)


def save_tiny_ast(folder, seed=0, **overrides):
    """Writes a randomised tiny ASTModel to ``folder``; returns the folder."""
    return _save_randomized(ASTModel, tiny_ast_config, folder, seed, overrides)


def save_tiny_w2v2(folder, seed=0, **overrides):
    """Writes a randomised tiny Wav2Vec2Model to ``folder``; returns the folder."""
    return _save_randomized(Wav2Vec2Model, tiny_w2v2_config, folder, seed, overrides)


#: Model class and tiny config of each waveform backbone kind.
TINY = {
    "w2v2": (Wav2Vec2Model, tiny_w2v2_config),
    "hubert": (HubertModel, tiny_hubert_config),
    "wavlm": (WavLMModel, tiny_wavlm_config),
    "whisper": (WhisperModel, tiny_whisper_config),
}


def save_tiny(kind, folder, seed=0, **overrides):
    """Writes a randomised tiny model of ``kind`` (a key of ``TINY``) to ``folder``."""
    model_class, config = TINY[kind]
    return _save_randomized(model_class, config, folder, seed, overrides)
