"""HuBERT as a frozen SpeechBrain lobe (Wav2Vec2's layout, HuBERT's weights)."""

import torch  # noqa: F401  (used by the example)
from transformers import HubertConfig, HubertModel

from speechbrain_petl.backbones.waveform import WaveformEncoder

DEFAULT_HUBERT = "facebook/hubert-base-ls960"


class HuBERT(WaveformEncoder):
    """Frozen HuBERT: raw 16 kHz waveforms in, pooled embeddings out.

    Structurally Wav2Vec2 (CNN feature encoder, convolutional positions,
    post-LN base / pre-LN large blocks), so it shares
    :class:`~speechbrain_petl.backbones.waveform.WaveformEncoder` with the
    Wav2Vec2 lobe: same sites, same padding masks, same frozen CNN.

    Arguments
    ---------
    source : str or transformers.HubertConfig
        As :class:`~speechbrain_petl.backbones.waveform.WaveformEncoder`
        (so are ``pretrained``, ``pooling``, ``petl``, ``recompute``, ``max_samples``, ``backbone_dtype`` and ``attention_dtype``).
    normalize_waveform : bool
        Per-utterance zero mean, unit variance. Off by default:
        ``hubert-base-ls960`` was pre-trained on raw waveforms (fairseq's
        ``normalize: false``); the large checkpoints want it on.

    Example
    -------
    >>> from speechbrain_petl.backbones import tiny_config
    >>> hubert = HuBERT(tiny_config("hubert"), pretrained=False)
    >>> hubert(torch.randn(2, 4000), torch.tensor([1.0, 0.6])).shape
    torch.Size([2, 32])
    """

    model_class = HubertModel
    config_class = HubertConfig

    def __init__(self, source=DEFAULT_HUBERT, pretrained=True, pooling="mean", petl=None, normalize_waveform=False,
                 recompute=None, max_samples=None, backbone_dtype="fp32",
                 attention_dtype=None):
        super().__init__(source, pretrained, pooling, petl, normalize_waveform, recompute, max_samples, backbone_dtype,
                         attention_dtype)
