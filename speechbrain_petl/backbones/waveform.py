"""What the CNN-fronted speech encoders share (Wav2Vec2, HuBERT, WavLM).

The three checkpoints have one layout: a convolutional feature encoder on
raw 16 kHz waveforms, a feature projection, a convolutional positional
embedding and a stack of post-LN (base) or pre-LN ("stable layer norm",
large) transformer blocks. :class:`WaveformEncoder` re-states that layout
once; a lobe only names its transformers classes (and, for WavLM, adds its
attention bias through :meth:`WaveformEncoder._attention_bias`).
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.blocks import PostNormBlock, PreNormBlock
from speechbrain_petl.backbones.features import relative_to_absolute
from speechbrain_petl.sites import NormSite, masked_fill_padding


class WaveformEncoder(Backbone):
    """Base of the frozen waveform lobes: raw 16 kHz waveforms in, pooled
    embeddings out (see :class:`speechbrain_petl.backbones.Wav2Vec2` for
    the behaviour every subclass shares).

    Subclasses set ``model_class`` and ``config_class`` (transformers'
    classes) and may override :meth:`_attention_bias`.

    Arguments
    ---------
    source : str or transformers.PretrainedConfig
        Hub id, ``save_pretrained`` folder, or (pretrained=False) a config.
    pretrained : bool
        Load the weights of ``source``; False builds random weights.
    pooling : str or None
        ``"mean"`` over real output frames (default) or None for tokens.
    petl : PETLMethod, list or dict, optional
        PETL methods to attach.
    normalize_waveform : bool
        Zero-mean, unit-variance per utterance over its real samples (what
        the checkpoint's ``Wav2Vec2FeatureExtractor`` does when its
        ``do_normalize`` is true).
    recompute : str, optional
        What the backward pass recomputes (:attr:`Backbone.recompute`).
    max_samples : int, optional
        Crop clips to their first ``max_samples`` samples (None: clips of
        any length are used whole; see :attr:`Backbone.max_samples`).
    backbone_dtype : str
        ``"fp32"`` or ``"bf16"``: how the frozen linears of the blocks are
        stored (:meth:`Backbone.store_frozen`).
    attention_dtype : str, optional
        None or ``"fp32"``: what attention runs in
        (:attr:`Backbone.attention_dtype`).
    """

    model_class = None
    config_class = None
    always_frozen = ("feature_encoder",)

    def __init__(self, source, pretrained=True, pooling="mean", petl=None, normalize_waveform=True,
                 recompute=None, max_samples=None, backbone_dtype="fp32",
                 attention_dtype=None):
        super().__init__(pooling=pooling, recompute=recompute, max_samples=max_samples, backbone_dtype=backbone_dtype,
                         attention_dtype=attention_dtype)
        model = self._load_transformers_model(self.model_class, self.config_class, source, pretrained)
        config = model.config
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
            [
                restate_layer(layer, config, block, self._attention_bias(index, layer))
                for index, layer in enumerate(model.encoder.layers)
            ]
        )
        if self.pre_norm:
            self.input_norm = None
            self.final_norm = NormSite(model.encoder.layer_norm)
        else:
            self.input_norm = model.encoder.layer_norm
            self.final_norm = None
        self._finish_init(petl)

    def _attention_bias(self, index, hf_layer):
        """The additive attention bias of block ``index`` (see
        :class:`~speechbrain_petl.backbones.blocks.SelfAttention`); None: plain attention."""
        return None

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
            "max_samples": self.max_samples_setting,
        }

    @property
    def min_samples(self):
        """Shortest clip the CNN turns into one frame (its receptive field:
        400 samples, 25 ms, for the base checkpoints); shorter clips are refused."""
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
        """Waveforms (cropped to :attr:`max_samples`) -> (frames (batch, time,
        width), mask (batch, time) or None).

        ``augment`` must keep the waveforms' shape: the padding mask comes
        from the clips' lengths, which a length-changing augmentation (speed
        perturbation, cropping) would make wrong; such an augmentation is
        refused with a ValueError (apply it in the data pipeline instead).
        """
        wavs, wav_lens = self.crop(wavs, wav_lens)
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])
        if augment is not None:
            wavs = check_same_shape(wavs, augment(wavs), augment, type(self).__name__)
        if self.normalize_waveform:
            wavs = normalize(wavs, lengths)
        with torch.no_grad():
            feats = self._encode_waveforms(wavs, lengths).transpose(1, 2)
        mask = None
        if lengths is not None:
            frames = self.output_lengths(lengths).clamp(min=1)
            mask = torch.arange(feats.shape[1], device=feats.device) < frames[:, None]
        x = self.feature_projection(feats)
        if isinstance(x, tuple):  # Wav2Vec2 and WavLM also return the normalised features
            x = x[0]
        x = masked_fill_padding(x, mask)
        x = x + self.pos_conv(x)
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.dropout(x), mask

    def _encode_waveforms(self, wavs, lengths):
        """CNN features ``(batch, channels, frames)``.

        A GroupNorm feature encoder (the base checkpoints) normalises each
        channel over time, so padding would change the features of real
        frames: a padded clip then goes through the CNN alone, on its true length.
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


def check_same_shape(wavs, augmented, augment, lobe="Wav2Vec2"):
    """``augmented`` if it has the shape of ``wavs``, else a ValueError
    naming the lobe, the augmentation and both shapes.

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
            f"{lobe}: the augmentation {name!r} changed the waveforms' shape from {tuple(wavs.shape)} "
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


def restate_layer(layer, config, block, position_bias=None):
    """One transformers encoder layer (Wav2Vec2, HuBERT or WavLM naming) as
    a block with named sites, sharing its weights."""
    att, ff = layer.attention, layer.feed_forward
    return block.around(
        (att.q_proj, att.k_proj, att.v_proj, att.out_proj), (ff.intermediate_dense, ff.output_dense),
        (layer.layer_norm, layer.final_layer_norm), ACT2FN[config.hidden_act], config.num_attention_heads,
        (config.hidden_dropout, config.attention_dropout, config.activation_dropout), position_bias,
    )
