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
        Hub id, ``save_pretrained`` folder, or (pretrained=False) a config.
    pretrained : bool
        Load the weights of ``source``; False builds random weights.
    pooling : str or None
        ``"mean"`` over real output frames (default) or None for tokens.
    petl : PETLMethod, list or dict, optional
        PETL methods to attach.
    normalize_waveform : bool
        Zero-mean, unit-variance per utterance over its real samples, as
        Wav2Vec2FeatureExtractor does for the base-960h checkpoint.
    recompute : str, optional
        None, ``"ffn"`` or ``"blocks"``: activations recomputed in the
        backward pass instead of kept (see ``Backbone.recompute``).

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
    ...     conv_kernel=(10, 3), conv_stride=(5, 2), num_feat_extract_layers=2,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    >>> w2v2 = Wav2Vec2(source=config, pretrained=False)
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
    ):
        super().__init__(source, pretrained, pooling, petl, normalize_waveform, recompute)


__all__ = ["Wav2Vec2", "DEFAULT_WAV2VEC2", "check_same_shape", "normalize"]
