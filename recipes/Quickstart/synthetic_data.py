"""Synthetic audio tasks for the quickstart, written in ESC-50's layout.

* The *source* task ("pre-training", standing in for AudioSet): 20 classes
  of generic sounds (tones, harmonic stacks, chirps, modulated tones and
  noises, click trains, beeps) with random pitch, duration, position, level
  and background noise.
* The *target* task (standing in for keyword spotting): 10 classes, each an
  ordered sequence of 2 or 3 formant-synthesised "syllables" (vowels a, i,
  u). Every class has partners made of the same syllables in another order
  (ai/ia, aiu/uia/...), so local temporal structure decides the class.

Both are written as ``audio/<fold>-<src>-<take>-<target>.wav`` plus
``meta/esc50.csv``, with every class spread evenly over the 5 folds, so the
ESC-50 recipe's preparation reads them unchanged. Deterministic per seed.
"""

import csv
import os

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
FOLDS = 5

SOURCE_CLASSES = [
    "low_tone", "mid_tone", "high_tone", "harmonic_low", "harmonic_high",
    "up_chirp", "down_chirp", "am_tone", "vibrato_tone", "white_noise",
    "low_noise", "high_noise", "am_noise", "slow_clicks", "fast_clicks",
    "two_tone_chord", "beeps", "noise_bursts", "rising_harmonic", "falling_harmonic",
]

# Formant frequencies (Hz) of the three vowels (F1, F2, F3).
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240)}
TARGET_CLASSES = ["ai", "ia", "au", "ua", "iu", "ui", "aiu", "uia", "iua", "aui"]


def _envelope(n, rng, attack=0.01):
    ramp = max(1, int(attack * SAMPLE_RATE))
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[-ramp:] = np.linspace(1, 0, ramp)
    return env


def _tone(freq, n, phase=0.0):
    t = np.arange(n) / SAMPLE_RATE
    return np.sin(2 * np.pi * freq * t + phase)


def _sweep(f_start, f_end, n):
    freqs = np.linspace(f_start, f_end, n)
    return np.sin(2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE)


def _harmonics(f0_track, n_harmonics=8, tilt=1.0):
    phase = 2 * np.pi * np.cumsum(f0_track) / SAMPLE_RATE
    return sum(np.sin(k * phase) / k**tilt for k in range(1, n_harmonics + 1))


def _filtered_noise(n, rng, low, high):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)


def _clicks(rate, n, rng):
    out = np.zeros(n)
    period = int(SAMPLE_RATE / rate)
    for start in range(rng.integers(0, period), n, period):
        out[start : start + 20] += np.hanning(40)[20:][: max(0, min(20, n - start))]
    return out


def source_sound(label, n, rng):
    """One event of source class ``label``, ``n`` samples long."""
    u = rng.uniform
    kind = SOURCE_CLASSES[label]
    if kind == "low_tone":
        return _tone(u(100, 300), n)
    if kind == "mid_tone":
        return _tone(u(400, 900), n)
    if kind == "high_tone":
        return _tone(u(1200, 3000), n)
    if kind == "harmonic_low":
        return _harmonics(np.full(n, u(80, 160)))
    if kind == "harmonic_high":
        return _harmonics(np.full(n, u(300, 600)), n_harmonics=5)
    if kind == "up_chirp":
        return _sweep(u(200, 600), u(2000, 4000), n)
    if kind == "down_chirp":
        return _sweep(u(2000, 4000), u(200, 600), n)
    if kind == "am_tone":
        return _tone(u(300, 1500), n) * (0.5 + 0.5 * _tone(u(4, 12), n))
    if kind == "vibrato_tone":
        f0 = u(400, 1200) * (1 + 0.05 * _tone(u(5, 8), n))
        return np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE)
    if kind == "white_noise":
        return rng.standard_normal(n) * 0.5
    if kind == "low_noise":
        return _filtered_noise(n, rng, 50, 800) * 3
    if kind == "high_noise":
        return _filtered_noise(n, rng, 3000, 7500) * 2
    if kind == "am_noise":
        return rng.standard_normal(n) * 0.5 * (0.5 + 0.5 * _tone(u(3, 10), n))
    if kind == "slow_clicks":
        return _clicks(u(5, 15), n, rng)
    if kind == "fast_clicks":
        return _clicks(u(30, 80), n, rng)
    if kind == "two_tone_chord":
        f = u(300, 800)
        return 0.5 * (_tone(f, n) + _tone(f * u(1.2, 1.6), n))
    if kind == "beeps":
        gate = (np.arange(n) // int(SAMPLE_RATE * u(0.06, 0.12))) % 2 == 0
        return _tone(u(800, 2000), n) * gate
    if kind == "noise_bursts":
        gate = (np.arange(n) // int(SAMPLE_RATE * u(0.05, 0.1))) % 3 == 0
        return rng.standard_normal(n) * 0.5 * gate
    if kind == "rising_harmonic":
        return _harmonics(np.linspace(u(100, 200), u(300, 500), n), n_harmonics=6)
    if kind == "falling_harmonic":
        return _harmonics(np.linspace(u(300, 500), u(100, 200), n), n_harmonics=6)
    raise ValueError(f"unknown source class {label}")


def syllable(vowel, n, rng):
    """A voiced vowel: harmonics of a slightly gliding f0, shaped by formants."""
    f0 = np.linspace(rng.uniform(100, 220), rng.uniform(100, 220), n)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = [f * rng.uniform(0.92, 1.08) for f in VOWELS[vowel]]
    wave = np.zeros(n)
    for k in range(1, int(4000 / f0.max()) + 1):
        gain = sum(np.exp(-(((k * f0) - f) / 120.0) ** 2) / (i + 1) for i, f in enumerate(formants))
        wave += gain * np.sin(k * phase)
    return wave * _envelope(n, rng, attack=0.02)


def target_sound(label, rng):
    """The syllable sequence of target class ``label`` with random timing."""
    parts = []
    for vowel in TARGET_CLASSES[label]:
        parts.append(syllable(vowel, int(SAMPLE_RATE * rng.uniform(0.15, 0.25)), rng))
        parts.append(np.zeros(int(SAMPLE_RATE * rng.uniform(0.03, 0.1))))
    return np.concatenate(parts[:-1])


def place(event, rng, seconds=1.0, snr_db=(10, 35)):
    """Puts ``event`` at a random offset in a clip with background noise."""
    n = int(SAMPLE_RATE * seconds)
    event = event[:n] / (np.abs(event).max() + 1e-8)
    clip = np.zeros(n)
    start = rng.integers(0, n - len(event) + 1)
    clip[start : start + len(event)] = event * rng.uniform(0.2, 0.9)
    power = np.mean(event**2) + 1e-8
    noise = rng.standard_normal(n) * np.sqrt(power / 10 ** (rng.uniform(*snr_db) / 10)) * 0.5
    return np.clip(clip + noise, -1, 1)


def write_esc50_layout(root, clips):
    """Writes ``clips`` (a list of (target, category, waveform)) as an ESC-50
    release under ``root``; clip i of each class goes to fold i mod 5 + 1."""
    audio = os.path.join(root, "audio")
    os.makedirs(audio, exist_ok=False)
    os.makedirs(os.path.join(root, "meta"))
    rows, count = [], {}
    for target, category, wave in clips:
        index = count.get(target, 0)
        count[target] = index + 1
        fold = index % FOLDS + 1
        source = f"{target:02d}{index:05d}"
        name = f"{fold}-{source}-A-{target}.wav"
        sf.write(os.path.join(audio, name), wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        rows.append([name, fold, target, category, "False", source, "A"])
    with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(sorted(rows))
    return root


def make_source_task(root, clips_per_class, seed):
    """Writes the 20-class source task; returns ``root``."""
    rng = np.random.default_rng(seed)
    clips = []
    for index in range(clips_per_class):
        for label, name in enumerate(SOURCE_CLASSES):
            n = int(SAMPLE_RATE * rng.uniform(0.3, 1.0))
            clips.append((label, name, place(source_sound(label, n, rng) * _envelope(n, rng), rng)))
    return write_esc50_layout(root, clips)


def make_target_task(root, clips_per_class, seed):
    """Writes the 10-class ordered-syllable target task; returns ``root``."""
    rng = np.random.default_rng(seed + 1)
    clips = []
    for index in range(clips_per_class):
        for label, name in enumerate(TARGET_CLASSES):
            clips.append((label, name, place(target_sound(label, rng), rng)))
    return write_esc50_layout(root, clips)
