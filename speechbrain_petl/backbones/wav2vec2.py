"""Wav2Vec2 as a frozen SpeechBrain lobe."""

import torch  # noqa: F401  (used by the example)
from transformers import Wav2Vec2Config, Wav2Vec2Model

from speechbrain_petl.backbones.waveform import WaveformEncoder, check_same_shape, normalize

DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base-960h"


class Wav2Vec2(WaveformEncoder):
    """Frozen Wav2Vec2: raw 16 kHz waveforms in, pooled embeddings out.

    The CNN feature encoder is always frozen and runs without autograd
    (nothing trainable lies below it). Padding masks are derived from
    SpeechBrain relative lengths and honoured by attention, pooling and the
    PETL methods. Hugging Face's built-in SpecAugment masking and LayerDrop
    are never applied: augmentation is the recipe's business.

    Both layouts are supported: post-LN (``wav2vec2-base``) and pre-LN
    (``do_stable_layer_norm``, e.g. ``wav2vec2-large-lv60``). In a post-LN
    model the last block's ``ffn_norm`` produces the output tokens and plays
    the role of the final LayerNorm (see :meth:`final_norm_site`).

    Arguments
    ---------
    source : str or transformers.Wav2Vec2Config
        As :class:`~speechbrain_petl.backbones.waveform.WaveformEncoder`
        (so are ``pretrained``, ``pooling``, ``petl``, ``recompute``, ``max_samples``, ``backbone_dtype`` and ``attention_dtype``).
    normalize_waveform : bool
        Zero-mean, unit-variance per utterance over its real samples, as
        Wav2Vec2FeatureExtractor does for the base-960h checkpoint.

    Example
    -------
    >>> from speechbrain_petl.backbones import tiny_config
    >>> w2v2 = Wav2Vec2(tiny_config("wav2vec2"), pretrained=False)
    >>> w2v2(torch.randn(2, 4000), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 32])
    """

    model_class = Wav2Vec2Model
    config_class = Wav2Vec2Config

    def __init__(
        self,
        source=DEFAULT_WAV2VEC2,
        pretrained=True,
        pooling="mean",
        petl=None,
        normalize_waveform=True,
        recompute=None,
        max_samples=None,
        backbone_dtype="fp32",
        attention_dtype=None,
    ):
        super().__init__(source, pretrained, pooling, petl, normalize_waveform, recompute, max_samples, backbone_dtype,
                         attention_dtype)


__all__ = ["Wav2Vec2", "DEFAULT_WAV2VEC2", "check_same_shape", "normalize"]
