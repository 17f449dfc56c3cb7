"""Whisper's encoder as a frozen SpeechBrain lobe, with its log-mel front end."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig, WhisperModel
from transformers.activations import ACT2FN
from transformers.audio_utils import mel_filter_bank

from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.blocks import PreNormBlock
from speechbrain_petl.backbones.features import relative_to_absolute
from speechbrain_petl.sites import NormSite

DEFAULT_WHISPER = "openai/whisper-base"


class WhisperEncoder(Backbone):
    """Frozen Whisper encoder: raw 16 kHz waveforms in, pooled embeddings out.

    Computes ``WhisperFeatureExtractor``'s log-mel spectrogram on the
    batch's device (:class:`WhisperLogMel`), then the two convolutions, the
    sinusoidal positions and the pre-LN blocks of ``WhisperModel``'s encoder
    (the decoder is loaded with the checkpoint but never run). Clips longer
    than 30 s are truncated, as the feature extractor does (:attr:`input_limit`).

    Whisper was trained on 30 s windows (3,000 frames, 1,500 positions).
    ``crop_positions`` chooses how shorter clips are handled:

    * ``True`` (default, common practice for classification): the batch is
      encoded at the length of its longest clip, the positional embeddings
      are cropped to that many tokens, and padding is masked in attention
      and pooling. Every clip gets what it would get alone, and a 10 s
      batch costs a third of a 30 s one; but the frozen encoder never saw
      an input without the trailing silence it was trained with, so for a
      clip shorter than 30 s the outputs differ from transformers' forward
      on the 30 s padded input (equal for a 30 s clip). PETL methods
      adapt to that shift.
    * ``False``: every batch is zero-padded to 30 s and all 1,500 tokens
      are attended to and pooled, exactly transformers' forward.

    Arguments
    ---------
    source : str or transformers.WhisperConfig
        Hub id, ``save_pretrained`` folder of a ``WhisperModel`` (or
        ``WhisperForConditionalGeneration``), or (pretrained=False) a config.
    pretrained, pooling, petl, recompute, max_samples, backbone_dtype, attention_dtype
        As for :class:`~speechbrain_petl.backbones.waveform.WaveformEncoder`
        (``pooling: "mean"`` averages the real output tokens; the 30 s
        window crops anyway, so ``max_samples`` only matters when shorter).
    crop_positions : bool
        See above.

    Example
    -------
    >>> from speechbrain_petl.backbones import tiny_config
    >>> whisper = WhisperEncoder(tiny_config("whisper"), pretrained=False)
    >>> whisper(torch.randn(2, 8000), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 32])
    """

    #: Whisper's sinusoidal positions are fixed, never trained (not even by FullFineTuning).
    always_frozen = ("pos_embed",)

    def __init__(self, source=DEFAULT_WHISPER, pretrained=True, pooling="mean", petl=None, crop_positions=True,
                 recompute=None, max_samples=None, backbone_dtype="fp32",
                 attention_dtype=None):
        super().__init__(pooling=pooling, recompute=recompute, max_samples=max_samples, backbone_dtype=backbone_dtype,
                         attention_dtype=attention_dtype)
        model = self._load_transformers_model(WhisperModel, WhisperConfig, source, pretrained)
        config = model.config
        encoder = model.encoder
        self.hidden_size = config.d_model
        self.num_special_tokens = 0
        self.crop_positions = crop_positions
        self.features = WhisperLogMel(
            num_mel_bins=config.num_mel_bins, max_frames=2 * config.max_source_positions
        )
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.pos_embed = encoder.embed_positions
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([_restate_layer(layer, config) for layer in encoder.layers])
        self.final_norm = NormSite(encoder.layer_norm)
        self._finish_init(petl)

    def embed(self, wavs, wav_lens=None, augment=None):
        """Waveforms (cropped to :attr:`max_samples`) -> (tokens (batch, time,
        width), mask (batch, time) or None).

        ``augment``, when given, transforms the log-mel features
        ``(batch, frames, mels)`` and must keep their shape.
        """
        wavs, wav_lens = self.crop(wavs, wav_lens)
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])
        feats, frames = self.features(wavs, lengths, full=not self.crop_positions)
        if augment is not None:
            frames_first = feats.transpose(1, 2)
            augmented = augment(frames_first)
            if augmented.shape != frames_first.shape:
                raise ValueError(
                    f"WhisperEncoder: the augmentation changed the log-mel shape (batch, frames, mels) from "
                    f"{tuple(frames_first.shape)} to {tuple(augmented.shape)}; the padding mask comes from the "
                    "clips' lengths, so only shape-keeping augmentations are accepted."
                )
            feats = augmented.transpose(1, 2)
        mask = None
        if self.crop_positions and frames is not None:
            real = torch.arange(feats.shape[2], device=feats.device) < frames[:, None]
            feats = feats * real[:, None]  # as the convolution's zero padding of a clip alone
            x = F.gelu(self.conv1(feats)) * real[:, None]
            mask = real[:, ::2]  # conv2: stride 2, so ceil(frames / 2) tokens per clip
        else:
            x = F.gelu(self.conv1(feats))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.pos_embed.weight[: x.shape[1]]
        return self.dropout(x), mask

    def constructor_args(self):
        """Arguments that rebuild this lobe (without its PETL methods)."""
        return {
            "source": self.source,
            "pretrained": self.pretrained,
            "pooling": self.pooling,
            "crop_positions": self.crop_positions,
            "max_samples": self.max_samples_setting,
        }

    @property
    def input_limit(self):
        """Samples of Whisper's window (30 s): the log-mel stops there."""
        return self.features.max_frames * self.features.hop_length

    @property
    def min_samples(self):
        """Shortest clip accepted: one 10 ms hop (one log-mel frame)."""
        return self.features.hop_length

    def architecture(self):
        """Shape-defining settings: the base ones plus mel bins and the position handling."""
        return {
            **super().architecture(),
            "num_mel_bins": self.config.num_mel_bins,
            "crop_positions": self.crop_positions,
        }


class WhisperLogMel(nn.Module):
    """``WhisperFeatureExtractor``'s log-mel spectrogram, batched, in torch.

    Hann-windowed 400-point STFT every 160 samples, power spectrum, Slaney
    mel filters, ``log10``, floor at 8 below the clip's maximum,
    ``(x + 4) / 4``. Each clip is zero-padded after its end, as the feature
    extractor pads every clip to 30 s: the batch's padding never reaches a
    clip's frames.

    Arguments
    ---------
    num_mel_bins : int
        Mel bins (80; 128 for large-v3).
    max_frames : int
        Frames of a full window (3,000: 30 s).
    sample_rate, n_fft, hop_length : int
        The extractor's settings.

    Example
    -------
    >>> logmel = WhisperLogMel()
    >>> feats, frames = logmel(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> feats.shape, frames.tolist()
    (torch.Size([2, 80, 100]), [100, 50])
    """

    def __init__(self, num_mel_bins=80, max_frames=3000, sample_rate=16000, n_fft=400, hop_length=160):
        super().__init__()
        self.n_fft, self.hop_length, self.max_frames = n_fft, hop_length, max_frames
        filters = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=num_mel_bins,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("mel_filters", torch.from_numpy(filters).float().T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @torch.no_grad()
    def forward(self, wavs, lengths=None, full=False):
        """``(features (batch, mels, frames), real frames per clip or None)``.

        ``lengths`` are sample counts (None: every clip fills the batch).
        ``full`` pads every clip to ``max_frames`` (Whisper's 30 s); else the
        features stop at the longest clip's frames.
        """
        if wavs.dim() != 2:
            raise ValueError(f"WhisperLogMel expects (batch, samples) waveforms, got {tuple(wavs.shape)}")
        max_samples = self.max_frames * self.hop_length
        wavs = wavs[:, :max_samples].float()
        if lengths is not None:
            lengths = lengths.clamp(max=max_samples)
            wavs = wavs * (torch.arange(wavs.shape[1], device=wavs.device) < lengths[:, None])
        frames_out = self.max_frames if full else max(1, wavs.shape[1] // self.hop_length)
        # Enough zeros that every frame touching a sample is computed (for the
        # maximum), never past the 30 s window whose end the extractor reflects.
        padded = max_samples if full else min(wavs.shape[1] + self.n_fft, max_samples)
        signal = F.pad(wavs, (0, padded - wavs.shape[1]))
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            stft = torch.stft(signal, self.n_fft, self.hop_length, window=self.window, return_complex=True)
            power = stft[..., :-1].abs() ** 2
            log_spec = (self.mel_filters @ power).clamp(min=1e-10).log10()
            peak = log_spec.amax(dim=(1, 2), keepdim=True)
            log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        log_spec = log_spec[..., :frames_out]
        frames = None
        if lengths is not None:
            frames = torch.div(lengths, self.hop_length, rounding_mode="floor").clamp(min=1)
        return log_spec, frames


def _restate_layer(layer, config):
    att = layer.self_attn
    return PreNormBlock.around(
        (att.q_proj, att.k_proj, att.v_proj, att.out_proj), (layer.fc1, layer.fc2),
        (layer.self_attn_layer_norm, layer.final_layer_norm), ACT2FN[config.activation_function],
        config.encoder_attention_heads, (config.dropout, config.attention_dropout, config.activation_dropout),
    )
