"""speechbrain_petl.data.audio: load_audio (subtypes, down-mix, resampling)
and inspect_clip."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mini_datasets import corrupt_clip
from speechbrain_petl.data.audio import AudioFileError, ClipReport, inspect_clip, load_audio


def _sine(rate, seconds, frequency=440.0, amplitude=0.5, samples=None):
    n = int(round(rate * seconds)) if samples is None else samples
    t = np.arange(n) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t)


# Quantisation step of each subtype (WAV 8-bit is unsigned, PCM_U8).
SUBTYPE_ATOL = {
    "PCM_U8": 1 / 128,
    "PCM_16": 1 / 32768,
    "PCM_24": 1 / 2**23,
    "PCM_32": 1e-7,
    "FLOAT": 1e-7,
    "DOUBLE": 1e-7,
}


@pytest.mark.parametrize("subtype", sorted(SUBTYPE_ATOL))
def test_load_audio_decodes_every_wav_subtype(tmp_path, subtype):
    signal = _sine(16000, 0.25)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, signal, 16000, subtype=subtype)
    assert sf.info(path).subtype == subtype
    wav = load_audio(path)
    assert wav.dtype == torch.float32
    assert wav.shape == (4000,)
    # Same scale as the written floats (no normalisation, no offset for the
    # unsigned 8-bit subtype), within one quantisation step.
    np.testing.assert_allclose(wav.numpy(), signal, rtol=0,
                               atol=SUBTYPE_ATOL[subtype] + 1e-7)


@pytest.mark.parametrize("channels", [2, 4])
def test_load_audio_downmixes_by_averaging_channels(tmp_path, channels):
    frequencies = [440.0, 1000.0, 123.0, 3000.0][:channels]
    amplitudes = [0.5, -0.3, 0.2, 0.1][:channels]
    data = np.stack(
        [_sine(16000, 0.5, f, a) for f, a in zip(frequencies, amplitudes)],
        axis=1,
    )
    path = tmp_path / "multi.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.shape == (8000,)
    np.testing.assert_allclose(wav.numpy(), data.mean(axis=1), rtol=0,
                               atol=1e-6)


def test_load_audio_stereo_with_opposite_channels_cancels(tmp_path):
    left = _sine(16000, 0.1)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([left, -left], axis=1), 16000, subtype="PCM_16")
    assert float(load_audio(path).abs().max()) < 1e-4


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.5, 0.3721])
def test_load_audio_resamples_to_16k(tmp_path, rate, seconds):
    n = int(round(rate * seconds))
    path = tmp_path / f"{rate}.wav"
    sf.write(path, _sine(rate, 0, samples=n), rate, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == torch.float32
    assert wav.shape == (math.ceil(n * 16000 / rate),)
    # The same 440 Hz sine, sampled at 16 kHz (edges excluded: the resampling
    # filter sees zeros beyond them).
    expected = _sine(16000, 0, samples=wav.shape[0])
    np.testing.assert_allclose(wav.numpy()[200:-200], expected[200:-200],
                               rtol=0, atol=5e-3)


def test_load_audio_at_the_file_rate_is_the_decoded_signal(tmp_path):
    signal = _sine(44100, 0.2)
    path = tmp_path / "native.wav"
    sf.write(path, signal, 44100, subtype="PCM_24")
    decoded, _ = sf.read(path, dtype="float32")
    for sample_rate in (None, 44100):
        wav = load_audio(path, sample_rate=sample_rate)
        assert torch.equal(wav, torch.from_numpy(decoded))


def test_load_audio_to_other_rate(tmp_path):
    path = tmp_path / "up.wav"
    sf.write(path, _sine(16000, 0.5), 16000, subtype="PCM_16")
    wav = load_audio(path, sample_rate=48000)
    assert wav.shape == (24000,)
    np.testing.assert_allclose(wav.numpy()[500:-500],
                               _sine(48000, 0.5)[500:-500], atol=5e-3)


def test_load_audio_undecodable_file_raises_soundfile_error(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, _sine(16000, 0.1), 16000)
    corrupt_clip(path, "garbage")
    with pytest.raises(AudioFileError, match="clip.wav"):
        load_audio(path)


class _Clips(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return load_audio(self.paths[index])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_clip_is_named_through_a_dataloader(tmp_path, num_workers):
    """soundfile's own error loses its message when a DataLoader worker
    re-raises it (``<exception str() failed>``); ours names the file."""
    paths = []
    for name in ("fine.wav", "broken.wav"):
        sf.write(tmp_path / name, _sine(16000, 0.1), 16000)
        paths.append(str(tmp_path / name))
    corrupt_clip(paths[1], "garbage")
    loader = torch.utils.data.DataLoader(_Clips(paths), batch_size=1, num_workers=num_workers)
    with pytest.raises(AudioFileError) as err:
        list(loader)
    assert paths[1] in str(err.value) and "Format not recognised" in str(err.value)


# -------------------------------------------------------------- inspect_clip
def test_inspect_clip_reports_a_good_clip(tmp_path):
    path = tmp_path / "good.wav"
    sf.write(path, np.zeros((22050, 2)), 44100, subtype="PCM_16")
    assert inspect_clip(path) == ClipReport(
        ok=True, reason="", duration=0.5, sample_rate=44100, channels=2
    )
    assert inspect_clip(str(path)).ok


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("garbage", "cannot be decoded: "),
        ("zero_bytes", "cannot be decoded: "),
        ("empty", "empty"),
        ("nan", "non-finite samples"),
    ],
)
def test_inspect_clip_reports_bad_clips(tmp_path, kind, reason):
    path = tmp_path / "bad.wav"
    sf.write(path, _sine(16000, 0.1), 16000, subtype="PCM_16")
    assert inspect_clip(path).ok
    corrupt_clip(path, kind)
    report = inspect_clip(path)
    assert not report.ok
    assert report.reason.startswith(reason), report.reason
    if kind in ("garbage", "zero_bytes"):
        # soundfile's own message follows.
        assert "bad.wav" in report.reason
    if kind == "empty":
        assert (report.duration, report.sample_rate) == (0.0, 16000)


def test_inspect_clip_reports_infinite_samples(tmp_path):
    data = np.zeros(100, np.float32)
    data[3] = np.inf
    path = tmp_path / "inf.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    report = inspect_clip(path)
    assert not report.ok and report.reason.startswith("non-finite samples")
    assert "1 NaN/Inf" in report.reason


def test_inspect_clip_reports_a_missing_file(tmp_path):
    assert inspect_clip(tmp_path / "nowhere.wav") == ClipReport(
        ok=False, reason="missing file"
    )
    # A folder is not a clip either.
    assert not inspect_clip(tmp_path).ok
