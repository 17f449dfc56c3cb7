"""Wav2Vec2 as a frozen SpeechBrain lobe."""

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model
from transformers.activations import ACT2FN

from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.blocks import (
    FeedForward,
    PostNormBlock,
    PreNormBlock,
    SelfAttention,
)
from speechbrain_petl.backbones.loading import describe_source, load_model
from speechbrain_petl.features import relative_to_absolute
from speechbrain_petl.sites import NormSite, masked_fill_padding

DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base-960h"


class Wav2Vec2(Backbone):
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

    always_frozen = ("feature_encoder",)

    def __init__(
        self,
        source=DEFAULT_WAV2VEC2,
        pretrained=True,
        pooling="mean",
        petl=None,
        normalize_waveform=True,
    ):
        super().__init__(pooling=pooling)
        model = load_model(Wav2Vec2Model, Wav2Vec2Config, source, pretrained)
        config = model.config
        self.source = describe_source(source)
        self.pretrained = pretrained
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_special_tokens = 0
        self.normalize_waveform = normalize_waveform
        self.pre_norm = bool(config.do_stable_layer_norm)

        model.feature_extractor._freeze_parameters()
        self.feature_encoder = model.feature_extractor
        self.feature_projection = model.feature_projection
        self.pos_conv = model.encoder.pos_conv_embed
        self.dropout = nn.Dropout(config.hidden_dropout)
        block = PreNormBlock if self.pre_norm else PostNormBlock
        self.layers = nn.ModuleList(
            [_restate_layer(layer, config, block) for layer in model.encoder.layers]
        )
        if self.pre_norm:
            self.input_norm = None
            self.final_norm = NormSite(model.encoder.layer_norm)
        else:
            self.input_norm = model.encoder.layer_norm
            self.final_norm = None
        self._keep_hf_model(model)
        self._finish_init(petl)

    def final_norm_site(self):
        """The LayerNorm producing the output tokens."""
        return self.final_norm if self.pre_norm else self.layers[-1].ffn_norm

    def architecture(self):
        """Shape-defining settings: the base ones plus the LayerNorm layout."""
        return {**super().architecture(), "pre_norm": self.pre_norm}

    def constructor_args(self):
        """Arguments that rebuild this lobe (without its PETL methods)."""
        return {
            "source": self.source,
            "pretrained": self.pretrained,
            "pooling": self.pooling,
            "normalize_waveform": self.normalize_waveform,
        }

    @property
    def min_samples(self):
        """Shortest clip the CNN turns into one frame (its receptive field:
        400 samples, 25 ms, for wav2vec2-base); shorter clips are refused."""
        samples = 1
        for kernel, stride in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    def output_lengths(self, lengths):
        """Number of encoder frames for ``lengths`` input samples."""
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def embed(self, wavs, wav_lens=None, augment=None):
        """Waveforms -> (frames (batch, time, width), mask (batch, time) or None).

        ``augment`` must keep the waveforms' shape: the padding mask comes
        from the clips' lengths, which a length-changing augmentation (speed
        perturbation, cropping) would make wrong; such an augmentation is
        refused with a ValueError (apply it in the data pipeline instead).
        """
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])
        if augment is not None:
            wavs = check_same_shape(wavs, augment(wavs), augment)
        if self.normalize_waveform:
            wavs = normalize(wavs, lengths)
        with torch.no_grad():
            feats = self._encode_waveforms(wavs, lengths).transpose(1, 2)
        mask = None
        if lengths is not None:
            frames = self.output_lengths(lengths).clamp(min=1)
            mask = torch.arange(feats.shape[1], device=feats.device) < frames[:, None]
        x, _ = self.feature_projection(feats)
        x = masked_fill_padding(x, mask)
        x = x + self.pos_conv(x)
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.dropout(x), mask


    def _encode_waveforms(self, wavs, lengths):
        """CNN features ``(batch, channels, frames)``.

        A GroupNorm feature encoder (wav2vec2-base) normalises each channel
        over time, so padding would change the features of real frames: a
        padded clip then goes through the CNN alone, on its true length.
        """
        padded = lengths is not None and bool((lengths < wavs.shape[1]).any())
        if not padded or self.config.feat_extract_norm != "group":
            return self.feature_encoder(wavs)
        frames = int(self.output_lengths(torch.tensor(wavs.shape[1])))
        out = wavs.new_zeros(wavs.shape[0], self.config.conv_dim[-1], frames)
        for i, length in enumerate(lengths.tolist()):
            feats = self.feature_encoder(wavs[i : i + 1, :length])
            out[i, :, : feats.shape[2]] = feats[0]
        return out


def check_same_shape(wavs, augmented, augment):
    """``augmented`` if it has the shape of ``wavs``, else a ValueError
    naming the augmentation and both shapes.

    Example
    -------
    >>> wavs = torch.zeros(2, 100)
    >>> check_same_shape(wavs, wavs[:, :90], "crop")
    Traceback (most recent call last):
     ...
    ValueError: Wav2Vec2: the augmentation 'crop' changed the waveforms' shape from (2, 100) to (2, 90); the padding mask comes from the lengths before augmentation, so only augmentations that keep the shape are accepted (apply length-changing ones, e.g. speed perturbation, in the data pipeline)
    """
    if augmented.shape != wavs.shape:
        name = augment if isinstance(augment, str) else type(augment).__name__
        raise ValueError(
            f"Wav2Vec2: the augmentation {name!r} changed the waveforms' shape from {tuple(wavs.shape)} "
            f"to {tuple(augmented.shape)}; the padding mask comes from the lengths before augmentation, "
            "so only augmentations that keep the shape are accepted (apply length-changing ones, "
            "e.g. speed perturbation, in the data pipeline)"
        )
    return augmented


def normalize(wavs, lengths=None, eps=1e-7):
    """Per-utterance zero mean and unit variance over the real samples;
    padding stays zero.

    Example
    -------
    >>> out = normalize(torch.randn(2, 100) * 5 + 3, torch.tensor([100, 50]))
    >>> round(out[1, :50].std(unbiased=False).item(), 3), out[1, 50:].abs().sum().item()
    (1.0, 0.0)
    """
    if lengths is None:
        lengths = torch.full((wavs.shape[0],), wavs.shape[1], device=wavs.device)
    valid = (torch.arange(wavs.shape[1], device=wavs.device) < lengths[:, None]).to(wavs.dtype)
    count = valid.sum(dim=1, keepdim=True)
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + eps) * valid


def _restate_layer(layer, config, block):
    att = layer.attention
    attention = SelfAttention(
        att.q_proj,
        att.k_proj,
        att.v_proj,
        att.out_proj,
        num_heads=config.num_attention_heads,
        dropout=config.attention_dropout,
    )
    ff = layer.feed_forward
    mlp = FeedForward(
        ff.intermediate_dense,
        ff.output_dense,
        ACT2FN[config.hidden_act],
        dropout=config.activation_dropout,
    )
    return block(
        attention,
        mlp,
        mhsa_norm=layer.layer_norm,
        ffn_norm=layer.final_layer_norm,
        dropout=config.hidden_dropout,
    )
