"""Audio loading and clip checks, based on soundfile (libsndfile).

:func:`load_audio` is what the training data pipelines call for every clip:
it decodes any WAV subtype, down-mixes to mono and resamples at load time, so
a dataset never needs resampled copies on disk. :func:`inspect_clip` is what
the preparation scripts call once per clip to find clips that cannot be used.
:func:`read_clip` is what the inference interfaces call for a user's file:
the same loading, with errors that name the file.

``torchaudio.load`` is deliberately not used (it needs an optional decoding
backend); torchaudio only provides the resampler.
"""

import dataclasses
import logging
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

logger = logging.getLogger(__name__)

# What soundfile raises for a file it cannot open or decode: LibsndfileError
# and SoundFileRuntimeError both derive from it.
DECODE_ERRORS = (sf.SoundFileError,)


class AudioFileError(RuntimeError):
    """A clip that cannot be read; the message names the file. Unlike
    soundfile's own errors it survives the trip from a DataLoader worker to
    the main process with its message intact.

    Arguments
    ---------
    message : str
        The whole message (PyTorch rebuilds a worker's exception from it alone).
    path : str, optional
        The file.
    reason : str, optional
        What libsndfile said.
    """

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path, self.reason = path, reason


def load_audio(path, sample_rate=16000):
    """Loads a clip as a mono float32 waveform at ``sample_rate``.

    Any format/subtype libsndfile decodes (WAV PCM 8/16/24/32-bit, float,
    FLAC, ...) is read as floats in [-1, 1]; several channels are averaged;
    the result is resampled with ``torchaudio.functional.resample`` when the
    file's rate differs from ``sample_rate``.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.
    sample_rate : int or None
        Rate of the returned waveform; ``None`` keeps the file's own rate.

    Returns
    -------
    torch.Tensor
        Shape ``(samples,)``, dtype float32.

    Raises
    ------
    AudioFileError
        If the file is missing or cannot be decoded; the message names it
        (and says that the manifests may be stale).

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> path = getfixture("tmp_path") / "stereo_8k.wav"
    >>> sf.write(path, np.full((8000, 2), 0.25), 8000, subtype="PCM_16")
    >>> wav = load_audio(path)
    >>> wav.shape, wav.dtype
    (torch.Size([16000]), torch.float32)
    >>> round(float(wav[8000]), 3)
    0.25
    >>> _ = (path.parent / "broken.wav").write_bytes(b"RIFF....")
    >>> load_audio(path.parent / "broken.wav")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_petl.data.audio.AudioFileError: cannot read audio file .../broken.wav: ...
    """
    try:
        data, file_rate = sf.read(
            os.fspath(path), dtype="float32", always_2d=True
        )
    except DECODE_ERRORS as err:
        path = os.fspath(path)
        raise AudioFileError(f"cannot read audio file {path}: {err}", path, str(err)) from None
    # (frames, channels) -> (frames,)
    if data.shape[1] == 1:
        mono = data[:, 0]
    else:
        mono = data.mean(axis=1, dtype=np.float32)
    wav = torch.from_numpy(np.ascontiguousarray(mono))
    if sample_rate is not None and file_rate != sample_rate:
        wav = AF.resample(wav, orig_freq=file_rate, new_freq=sample_rate)
    return wav


def read_clip(path, sample_rate):
    """One audio file as a mono waveform at ``sample_rate`` (any rate, mono
    or stereo, any format libsndfile reads), with errors that name the file.

    Example
    -------
    >>> read_clip("missing.wav", 16000)
    Traceback (most recent call last):
    FileNotFoundError: No audio file at missing.wav
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No audio file at {path}")
    try:
        return load_audio(path, sample_rate)
    except AudioFileError as err:
        raise ValueError(f"{path} is not an audio file libsndfile can decode ({err.reason})") from None


@dataclasses.dataclass(frozen=True)
class ClipReport:
    """Outcome of :func:`inspect_clip`.

    Arguments
    ---------
    ok : bool
        Whether the clip can be used.
    reason : str
        Why it cannot ("" when ``ok``).
    duration : float
        Seconds of audio actually decoded (0.0 when unknown).
    sample_rate : int
        The file's sampling rate (0 when unknown).
    channels : int
        The file's number of channels (0 when unknown).
    """

    ok: bool
    reason: str = ""
    duration: float = 0.0
    sample_rate: int = 0
    channels: int = 0


def inspect_clip(path):
    """Decodes a whole clip and says whether it is usable.

    A clip is unusable when it is missing, cannot be decoded, holds no
    samples, or holds NaN/Inf samples. The duration is the number of frames
    actually decoded divided by the rate (a truncated file reports what it
    really holds, not what its header claims).

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.

    Returns
    -------
    ClipReport

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "ok.wav", np.zeros(8000), 16000, subtype="PCM_16")
    >>> inspect_clip(tmp / "ok.wav")
    ClipReport(ok=True, reason='', duration=0.5, sample_rate=16000, channels=1)
    >>> _ = (tmp / "bad.wav").write_bytes(b"not audio at all")
    >>> report = inspect_clip(tmp / "bad.wav")
    >>> report.ok, report.reason.startswith("cannot be decoded:")
    (False, True)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return ClipReport(ok=False, reason="missing file")
    try:
        with sf.SoundFile(path) as f:
            sample_rate, channels = f.samplerate, f.channels
            data = f.read(dtype="float32", always_2d=True)
    except DECODE_ERRORS as err:
        return ClipReport(ok=False, reason=f"cannot be decoded: {err}")
    duration = data.shape[0] / sample_rate
    if data.shape[0] == 0:
        return ClipReport(False, "empty", duration, sample_rate, channels)
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        return ClipReport(
            False,
            f"non-finite samples ({bad} NaN/Inf values)",
            duration,
            sample_rate,
            channels,
        )
    return ClipReport(True, "", duration, sample_rate, channels)
