"""The Audio Spectrogram Transformer (AST) as a frozen SpeechBrain lobe."""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ASTConfig, ASTModel
from transformers.activations import ACT2FN

from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.blocks import PreNormBlock
from speechbrain_petl.backbones.features import AUDIOSET_MEAN, AUDIOSET_STD, Fbank
from speechbrain_petl.sites import NormSite

DEFAULT_AST = "MIT/ast-finetuned-audioset-10-10-0.4593"


class AST(Backbone):
    """Frozen AST: raw 16 kHz waveforms in, pooled embeddings out.

    Computes AST's Kaldi fbank on the batch's device, pads/crops it to
    ``max_frames``, patchifies it and runs the transformer blocks with named
    sites for PETL methods. When ``max_frames`` differs from the checkpoint's
    ``max_length``, the positional embeddings are adapted along time the way
    the original AST does: centre-cropped when shorter, bilinearly
    interpolated when longer.

    No padding mask is used: as in AST, a clip shorter than ``max_frames`` is
    zero-padded in the fbank domain and every patch is attended to.

    Arguments
    ---------
    source : str or transformers.ASTConfig
        Hugging Face hub id, folder written by ``save_pretrained``, or (with
        ``pretrained=False``) a config object.
    pretrained : bool
        Load the weights of ``source``; False builds the same architecture
        with random weights (offline for the default checkpoint).
    max_frames : int
        Number of 10 ms fbank frames per clip (e.g. 100 for 1 s clips).
    pooling : str or None
        ``"mean"`` over output tokens (default), ``"cls"``, ``"cls_dist"``
        (mean of the CLS and distillation tokens, as ``ASTModel``'s
        ``pooler_output``), or None for tokens.
    petl : PETLMethod, list or dict, optional
        PETL methods to attach (a dict gives their names).
    sample_rate : int
        Sampling rate of the input waveforms.
    feature_mean, feature_std : float
        Fbank normalisation statistics (AudioSet's by default).
    init_positions : str, optional
        ``"sincos"`` starts the positional embeddings of a randomly
        initialised AST (``pretrained=False``) at fixed 2-D sine-cosine
        values instead of Hugging Face's zeros: training from scratch then
        knows where each patch is from the first step.
    recompute : str, optional
        What the backward pass recomputes (:attr:`Backbone.recompute`).
    max_samples : int, optional
        Crop clips to their first ``max_samples`` samples. ``max_frames``
        crops anyway (:attr:`input_limit`: the samples its frames cover),
        so this only matters when it is shorter.
    backbone_dtype : str
        ``"fp32"`` or ``"bf16"``: how the frozen linears of the blocks are
        stored (:meth:`Backbone.store_frozen`).
    attention_dtype : str, optional
        None or ``"fp32"``: what attention runs in
        (:attr:`Backbone.attention_dtype`).

    Example
    -------
    >>> from speechbrain_petl.backbones import tiny_config
    >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64)
    >>> ast(torch.randn(3, 8000), torch.tensor([1.0, 0.8, 0.5])).shape
    torch.Size([3, 32])
    >>> ast.max_samples  # 64 frames of 25 ms every 10 ms: later samples are never looked at
    10480
    >>> ast.site(0, "attention.query")
    LinearSite(
      (linear): Linear(in_features=32, out_features=32, bias=True)
    )
    """

    def __init__(
        self,
        source=DEFAULT_AST,
        pretrained=True,
        max_frames=1024,
        pooling="mean",
        petl=None,
        sample_rate=16000,
        feature_mean=AUDIOSET_MEAN,
        feature_std=AUDIOSET_STD,
        init_positions=None,
        recompute=None,
        max_samples=None,
        backbone_dtype="fp32",
        attention_dtype=None,
    ):
        super().__init__(pooling=pooling, recompute=recompute, max_samples=max_samples, backbone_dtype=backbone_dtype,
                         attention_dtype=attention_dtype)
        if init_positions not in (None, "sincos"):
            raise ValueError(f"init_positions must be None or 'sincos', got {init_positions!r}")
        if init_positions and pretrained:
            raise ValueError("init_positions only applies to pretrained=False: it would overwrite trained embeddings.")
        model = self._load_transformers_model(ASTModel, ASTConfig, source, pretrained)
        config = model.config
        patch = config.patch_size
        if max_frames < patch:
            raise ValueError(
                f"max_frames={max_frames} is shorter than one AST patch ({patch} frames)."
            )
        self.max_frames = max_frames
        self.hidden_size = config.hidden_size
        self.num_special_tokens = 2  # CLS and distillation tokens

        self.features = Fbank(
            max_frames=max_frames,
            num_mel_bins=config.num_mel_bins,
            sample_rate=sample_rate,
            mean=feature_mean,
            std=feature_std,
        )
        embeddings = model.embeddings
        self.patch_embed = embeddings.patch_embeddings.projection
        self.cls_token = embeddings.cls_token
        self.dist_token = embeddings.distillation_token
        if init_positions == "sincos":
            with torch.no_grad():
                embeddings.position_embeddings.copy_(
                    sincos_position_embeddings(patch_grid(config, config.max_length), config.hidden_size)
                )
        if max_frames == config.max_length:
            self.pos_embed = embeddings.position_embeddings  # shared with the HF model
        else:
            self.pos_embed = nn.Parameter(
                adapt_position_embeddings(
                    embeddings.position_embeddings.data,
                    source_grid=patch_grid(config, config.max_length),
                    target_grid=patch_grid(config, max_frames),
                )
            )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(
            [_restate_layer(layer, config) for layer in _hf_layers(model)]
        )
        self.final_norm = NormSite(model.layernorm)
        self._finish_init(petl)

    def embed(self, wavs, wav_lens=None, augment=None):
        """Waveforms (cropped to :attr:`max_samples`) -> (tokens (batch, 2 + patches, width), None)."""
        wavs, wav_lens = self.crop(wavs, wav_lens)
        feats = self.features(wavs, wav_lens)  # (batch, frames, mels)
        if augment is not None:
            feats = augment(feats)
        patches = self.patch_embed(feats.transpose(1, 2).unsqueeze(1))
        patches = patches.flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        x = torch.cat(
            [
                self.cls_token.expand(batch, -1, -1),
                self.dist_token.expand(batch, -1, -1),
                patches,
            ],
            dim=1,
        )
        return self.dropout(x + self.pos_embed), None

    @contextlib.contextmanager
    def transformers_model(self):
        """The HF model with this lobe's resized positions and ``max_length``
        swapped in while it is saved; the live model is restored after."""
        model = self.__dict__["_hf_model"]
        embeddings = model.embeddings
        if embeddings.position_embeddings is self.pos_embed:
            yield model
            return
        positions, max_length = embeddings.position_embeddings, model.config.max_length
        embeddings.position_embeddings, model.config.max_length = self.pos_embed, self.max_frames
        try:
            yield model
        finally:
            embeddings.position_embeddings, model.config.max_length = positions, max_length

    def constructor_args(self):
        """Arguments that rebuild this lobe (without its PETL methods)."""
        return {
            "source": self.source,
            "pretrained": self.pretrained,
            "max_frames": self.max_frames,
            "pooling": self.pooling,
            "sample_rate": self.features.sample_rate,
            "feature_mean": self.features.mean,
            "feature_std": self.features.std,
            "max_samples": self.max_samples_setting,
        }

    @property
    def input_limit(self):
        """Samples that ``max_frames`` fbank frames cover (the first 25 ms
        window plus a 10 ms shift per further frame): later samples only
        make frames that are dropped."""
        fbank = self.features  # kaldi frames of 25 ms every 10 ms (Fbank's frame_shift)
        return (fbank.max_frames - 1) * int(fbank.sample_rate * 0.010) + fbank.window_samples

    @property
    def min_samples(self):
        """Shortest clip accepted: one sample. Shorter clips than one fbank
        window or one patch are zero-padded, as every clip shorter than
        ``max_frames`` is (AST's own convention)."""
        return 1

    def architecture(self):
        """Shape-defining settings: the base ones plus frames, mel bins and patching."""
        return {
            **super().architecture(),
            "max_frames": self.max_frames,
            "num_mel_bins": self.config.num_mel_bins,
            "patch": [self.config.patch_size, self.config.frequency_stride, self.config.time_stride],
        }


def patch_grid(config, frames):
    """(frequency, time) number of patches for ``frames`` fbank frames."""
    freq = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    time = (frames - config.patch_size) // config.time_stride + 1
    return freq, time


def sincos_position_embeddings(grid, width):
    """Fixed 2-D sine-cosine position embeddings ``(1, 2 + F*T, width)``:
    half of the channels encode the frequency index, half the time index;
    the two special tokens get zeros.

    Example
    -------
    >>> sincos_position_embeddings((2, 3), 8).shape
    torch.Size([1, 8, 8])
    """
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 for 2-D sin-cos embeddings, got {width}")
    freq, time = grid

    def encode(positions, channels):
        """Sine-cosine codes ``(len(positions), channels)`` of integer positions."""
        rates = 1.0 / (10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels // 2)))
        angles = positions.double()[:, None] * rates[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    f_index, t_index = torch.meshgrid(torch.arange(freq), torch.arange(time), indexing="ij")
    grid_embed = torch.cat(
        [encode(f_index.flatten(), width // 2), encode(t_index.flatten(), width // 2)], dim=1
    )
    return torch.cat([torch.zeros(2, width, dtype=torch.float64), grid_embed]).float().unsqueeze(0)


def adapt_position_embeddings(pos_embed, source_grid, target_grid):
    """Resizes AST position embeddings ``(1, 2 + F*T, width)`` along time.

    The two leading (CLS, distillation) embeddings are kept. The patch grid is
    centre-cropped along time when the target is shorter (as AST does when
    fine-tuning its AudioSet model on shorter clips) and bilinearly
    interpolated when it is longer.

    Example
    -------
    >>> pos = torch.randn(1, 2 + 12 * 101, 8)
    >>> adapt_position_embeddings(pos, (12, 101), (12, 9)).shape
    torch.Size([1, 110, 8])
    """
    (f_src, t_src), (f_dst, t_dst) = source_grid, target_grid
    if (f_src, t_src) == (f_dst, t_dst):
        return pos_embed.clone()
    if f_src != f_dst:
        raise ValueError(
            f"Cannot adapt position embeddings from {f_src} to {f_dst} "
            "frequency patches: num_mel_bins must match the checkpoint."
        )
    width = pos_embed.shape[-1]
    special, grid = pos_embed[:, :2], pos_embed[:, 2:]
    grid = grid.reshape(1, f_src, t_src, width).permute(0, 3, 1, 2)
    if t_dst < t_src:
        start = t_src // 2 - t_dst // 2
        grid = grid[..., start : start + t_dst]
    else:
        grid = F.interpolate(grid, size=(f_dst, t_dst), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape(1, f_dst * t_dst, width)
    return torch.cat([special, grid], dim=1).contiguous()


def _hf_layers(model):
    # transformers >= 5 keeps blocks in model.layers; 4.x in model.encoder.layer
    if hasattr(model, "layers"):
        return model.layers
    return model.encoder.layer


def _restate_layer(layer, config):
    if hasattr(layer.attention, "q_proj"):  # transformers >= 5
        att = layer.attention
        projections = (att.q_proj, att.k_proj, att.v_proj, att.o_proj)
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
    else:  # transformers 4.x
        att = layer.attention.attention
        projections = (att.query, att.key, att.value, layer.attention.output.dense)
        fc1, fc2 = layer.intermediate.dense, layer.output.dense
    return PreNormBlock.around(
        projections, (fc1, fc2), (layer.layernorm_before, layer.layernorm_after), ACT2FN[config.hidden_act],
        config.num_attention_heads, (config.hidden_dropout_prob, config.attention_probs_dropout_prob, 0.0),
    )
