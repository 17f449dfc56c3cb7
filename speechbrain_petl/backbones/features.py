"""AST's input features: Kaldi-compatible log-mel filterbanks, batched.

Computed on the batch's device from raw 16 kHz waveforms and SpeechBrain
relative lengths, so that the lobe owns its whole input pipeline and a
recipe only ever hands it waveforms.
"""

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import nn

# AudioSet statistics used by AST and transformers' ASTFeatureExtractor.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def relative_to_absolute(wav_lens, max_len):
    """Converts SpeechBrain relative lengths to sample counts.

    Example
    -------
    >>> relative_to_absolute(torch.tensor([1.0, 0.5]), 10).tolist()
    [10, 5]
    """
    if wav_lens is None:
        return None
    return torch.round(wav_lens * max_len).long().clamp(1, max_len)


class Fbank(nn.Module):
    """Kaldi fbank as AST expects it: 128 mel bins, 25 ms Hanning window,
    10 ms shift, no energy, no dither; padded or cropped to ``max_frames``
    and normalised as ``(x - mean) / (2 * std)``.

    Equals transformers' ``ASTFeatureExtractor`` on an unpadded clip; each
    clip of a padded batch is processed on its own true length only.

    Arguments
    ---------
    max_frames : int
        Number of 10 ms frames every output has (zero-padded or cropped).
    num_mel_bins : int
        Mel bins.
    sample_rate : int
        Expected sampling rate of the waveforms.
    mean, std : float
        Normalisation statistics (AudioSet's by default).

    Example
    -------
    >>> fbank = Fbank(max_frames=100)
    >>> wavs = torch.randn(2, 16000)
    >>> fbank(wavs, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 100, 128])
    """

    def __init__(
        self,
        max_frames=1024,
        num_mel_bins=128,
        sample_rate=16000,
        mean=AUDIOSET_MEAN,
        std=AUDIOSET_STD,
    ):
        super().__init__()
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = max_frames
        self.num_mel_bins = num_mel_bins
        self.sample_rate = sample_rate
        self.mean = mean
        self.std = std
        self.window_samples = int(sample_rate * 0.025)

    @torch.no_grad()
    def forward(self, wavs, wav_lens=None):
        """Computes normalised features.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)`` waveforms.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` relative lengths in (0, 1].

        Returns
        -------
        torch.Tensor
            ``(batch, max_frames, num_mel_bins)``.
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"Fbank expects (batch, samples) waveforms, got {tuple(wavs.shape)}"
            )
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])
        feats = []
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            for i, wav in enumerate(wavs.float()):
                if lengths is not None:
                    wav = wav[: lengths[i]]
                feats.append(self._one(wav))
        feats = torch.stack(feats)
        return (feats - self.mean) / (2 * self.std)

    def _one(self, wav):
        if wav.shape[0] < self.window_samples:
            # Shorter than one analysis window: Kaldi would return no frame.
            wav = nn.functional.pad(wav, (0, self.window_samples - wav.shape[0]))
        fbank = kaldi.fbank(
            wav.unsqueeze(0),
            htk_compat=True,
            sample_frequency=self.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=self.num_mel_bins,
            dither=0.0,
            frame_shift=10,
        )
        frames = fbank.shape[0]
        if frames < self.max_frames:
            fbank = nn.functional.pad(fbank, (0, 0, 0, self.max_frames - frames))
        return fbank[: self.max_frames]
