"""WavLM as a frozen SpeechBrain lobe: Wav2Vec2's layout plus WavLM's gated
relative position bias in every attention layer."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WavLMConfig, WavLMModel

from speechbrain_petl.backbones.waveform import WaveformEncoder

DEFAULT_WAVLM = "microsoft/wavlm-base-plus"


class WavLM(WaveformEncoder):
    """Frozen WavLM: raw 16 kHz waveforms in, pooled embeddings out.

    As :class:`~speechbrain_petl.backbones.HuBERT`, plus WavLM's gated
    relative position bias: block 0 owns the bucketed relative-position
    embedding (:class:`RelativePositionBias`, kept at the lobe's top level
    as ``relative_positions``) and every block gates it per head and per
    query with its own small projection of the attention input
    (:class:`GatedPositionBias`, ``layers[i].attention.position_bias``).
    ``FullFineTuning(layers=[...])`` trains those blocks' gates; the shared
    embedding, like the positional convolution, trains only with ``layers=None``.

    **Tokens added by PETL methods have no position.** Prompts (inserted
    before the frames: WavLM has no special token) and prefix keys
    (prepended to the keys) get a zero bias, as queries and as keys;
    between two frames the bias is exactly WavLM's, computed on the frames'
    own positions. With zero-initialised or absent prompts and prefixes
    the adapted model is the frozen WavLM; the frames' relative geometry is
    never shifted by the added tokens.

    Arguments
    ---------
    source : str or transformers.WavLMConfig
        As :class:`~speechbrain_petl.backbones.waveform.WaveformEncoder`
        (so are ``pretrained``, ``pooling``, ``petl``, ``recompute``, ``max_samples``, ``backbone_dtype`` and ``attention_dtype``).
    normalize_waveform : bool
        Per-utterance zero mean, unit variance. Off by default, as
        ``wavlm-base-plus``'s feature extractor (``do_normalize: false``).

    Example
    -------
    >>> from speechbrain_petl.backbones import tiny_config
    >>> wavlm = WavLM(tiny_config("wavlm"), pretrained=False)
    >>> wavlm(torch.randn(2, 4000), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 32])
    """

    model_class = WavLMModel
    config_class = WavLMConfig

    def __init__(self, source=DEFAULT_WAVLM, pretrained=True, pooling="mean", petl=None, normalize_waveform=False,
                 recompute=None, max_samples=None, backbone_dtype="fp32",
                 attention_dtype=None):
        super().__init__(source, pretrained, pooling, petl, normalize_waveform, recompute, max_samples, backbone_dtype,
                         attention_dtype)

    def _attention_bias(self, index, hf_layer):
        """Block ``index``'s gate over the shared relative-position bias."""
        att = hf_layer.attention
        if index == 0:
            self.relative_positions = RelativePositionBias(
                att.rel_attn_embed, self.config.num_buckets, self.config.max_bucket_distance
            )
        return GatedPositionBias(att.gru_rel_pos_linear, att.gru_rel_pos_const, self.relative_positions)

    def run_layers(self, x, mask, start=0, stop=None):
        """As :meth:`Backbone.run_layers`; from block 0, ``x`` holds the
        frames only, whose number the position bias records."""
        if start == 0:
            self.relative_positions.num_frames = x.shape[1]
        return super().run_layers(x, mask, start, stop)


class RelativePositionBias(nn.Module):
    """WavLM's bucketed relative-position embedding: ``(heads, T, T)``
    biases for ``T`` frames (T5-style buckets: exact for small offsets,
    logarithmic up to ``max_distance``, separate signs).

    ``num_frames`` is the number of frames of the batch in flight (set by
    the lobe before block 0); tokens beyond it were added by PETL methods.

    Example
    -------
    >>> bias = RelativePositionBias(nn.Embedding(320, 4), 320, 800)
    >>> bias(50).shape
    torch.Size([4, 50, 50])
    """

    def __init__(self, embedding, num_buckets, max_distance):
        super().__init__()
        self.embedding = embedding
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.num_frames = None

    def buckets(self, offsets):
        """Bucket index of each relative offset (key position - query position)."""
        half = self.num_buckets // 2
        exact = half // 2
        sign = (offsets > 0).long() * half
        distance = offsets.abs()
        far = exact + (
            torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact) * (half - exact)
        ).long()
        far = far.clamp(max=half - 1)
        return sign + torch.where(distance < exact, distance, far)

    def forward(self, frames):
        """``(heads, frames, frames)`` biases."""
        positions = torch.arange(frames, device=self.embedding.weight.device)
        return self.embedding(self.buckets(positions[None, :] - positions[:, None])).permute(2, 0, 1)


class GatedPositionBias(nn.Module):
    """One block's gate on the shared relative-position bias (WavLM's
    "gated relative position bias"): from each head's slice of the
    attention input, ``a, b = sigmoid(sum-pooled linear)`` and the bias of a
    query is scaled by ``a * (b * const - 1) + 2``.

    Queries and keys added by PETL methods (before the frames) get zero.
    """

    def __init__(self, linear, const, relative):
        super().__init__()
        self.linear = linear
        self.const = const
        # The shared embedding belongs to the lobe: an unregistered reference.
        self.__dict__["relative"] = relative

    def forward(self, x, num_keys):
        """``(batch, heads, queries, num_keys)`` biases for attention input ``x``."""
        frames = self.relative.num_frames
        batch, queries, width = x.shape
        if frames is None or frames > min(queries, num_keys):
            raise RuntimeError(
                f"WavLM position bias: {frames} frames recorded for {queries} queries and {num_keys} keys; "
                "run the blocks through the lobe (encode / run_layers from block 0)."
            )
        heads = self.const.shape[1]
        per_head = x[:, queries - frames :].view(batch, frames, heads, width // heads).transpose(1, 2)
        gate_a, gate_b = torch.sigmoid(self.linear(per_head).view(batch, heads, frames, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.const - 1.0) + 2.0
        bias = gate * self.relative(frames)
        return F.pad(bias, (num_keys - frames, 0, queries - frames, 0))
