"""Tiny configurations of every backbone: random-weight lobes that build in
milliseconds, for runnable examples and for trying the API offline."""

from transformers import ASTConfig, HubertConfig, Wav2Vec2Config, WavLMConfig, WhisperConfig

#: Two blocks of width 32 with two heads, in each config's own names.
_WAVEFORM = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_feat_extract_layers=2,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
_TINY = {
    "ast": (ASTConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_length=64)),
    "wav2vec2": (Wav2Vec2Config, _WAVEFORM),
    "hubert": (HubertConfig, _WAVEFORM),
    "wavlm": (WavLMConfig, _WAVEFORM),
    "whisper": (WhisperConfig, dict(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=3, num_mel_bins=16, max_source_positions=100,
    )),
}


def tiny_config(kind, **overrides):
    """A transformers config of ``kind`` (``"ast"``, ``"wav2vec2"``,
    ``"hubert"``, ``"wavlm"`` or ``"whisper"``): two blocks of width 32
    (AST: 64 frames; the waveform models: a 2-layer CNN with stride 10),
    with ``overrides`` applied. Pass it as a lobe's ``source`` with
    ``pretrained=False``.

    Example
    -------
    >>> import torch
    >>> from speechbrain_petl.backbones import AST
    >>> ast = AST(tiny_config("ast", num_hidden_layers=1), pretrained=False, max_frames=64)
    >>> ast(torch.randn(2, 8000)).shape
    torch.Size([2, 32])
    """
    if kind not in _TINY:
        raise ValueError(f"No tiny config of {kind!r}; known: {sorted(_TINY)}")
    config_class, options = _TINY[kind]
    return config_class(**{**options, **overrides})
