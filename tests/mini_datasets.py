"""Miniature copies of the datasets, in their real layouts, for offline tests
(and demos): Google Speech Commands v0.02 and ESC-50.

The file names, folders and metadata files follow the real releases; the
audio is generated (a tone whose pitch depends on the class, plus a little
noise), so that a model can actually learn the classes. Every function is
deterministic given its ``seed``.

Also: :func:`corrupt_clip` (damages a clip in one of several ways) and
:func:`snapshot` (a listing of a folder, to check that nothing was written
in it).
"""

import os
import pathlib

import numpy as np
import soundfile as sf

# The 35 words of Speech Commands v0.02, in alphabetical order.
GSC_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five",
    "follow", "forward", "four", "go", "happy", "house", "learn", "left",
    "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
    "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes",
    "zero",
)  # fmt: skip
GSC_RATE = 16000

# ESC-50's categories; the index is the ``target`` column.
ESC50_CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep",
    "crow", "rain", "sea_waves", "crackling_fire", "crickets",
    "chirping_birds", "water_drops", "wind", "pouring_water", "toilet_flush",
    "thunderstorm", "crying_baby", "sneezing", "clapping", "breathing",
    "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing",
    "door_wood_creaks", "can_opening", "washing_machine", "vacuum_cleaner",
    "clock_alarm", "clock_tick", "glass_breaking", "helicopter", "chainsaw",
    "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw",
)  # fmt: skip
# The 10 categories of the ESC-10 subset (``esc10`` column True).
ESC10_CATEGORIES = frozenset(
    {"dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby",
     "sneezing", "clock_tick", "helicopter", "chainsaw"}
)  # fmt: skip
ESC50_RATE = 44100
ESC50_SECONDS = 5
ESC50_META_COLUMNS = (
    "filename", "fold", "target", "category", "esc10", "src_file", "take"
)  # fmt: skip


def _tone(rng, frequency, samples, rate, sound_samples=None):
    """A tone at ``frequency`` with random phase, a short fade in/out and a
    little noise, occupying the first ``sound_samples`` of ``samples`` (the
    rest is digital silence), as int16 PCM."""
    sound_samples = samples if sound_samples is None else sound_samples
    t = np.arange(sound_samples) / rate
    wave = np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    wave += 0.5 * np.sin(2 * np.pi * 2 * frequency * t)
    fade = min(sound_samples // 2, int(0.01 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    wave = rng.uniform(0.2, 0.5) * wave / 1.5
    wave += 0.01 * rng.standard_normal(sound_samples)
    out = np.zeros(samples)
    out[:sound_samples] = wave
    return np.round(np.clip(out, -1, 1) * 32767).astype(np.int16)


def gsc_frequency(word):
    """Pitch (Hz) of the generated clips of ``word``: 150 Hz * 2^(k/8)."""
    return 150.0 * 2 ** (GSC_WORDS.index(word) / 8)


def esc50_frequency(target):
    """Pitch (Hz) of the generated clips of class ``target``."""
    return 200.0 * 2 ** (target / 10)


def make_speech_commands(
    root,
    words=None,
    clips_per_word=3,
    seed=0,
    valid_per_word=None,
    test_per_word=None,
):
    """Writes a miniature Speech Commands v0.02 under ``root``.

    Layout as in the real archive: one folder per word holding
    ``<speaker>_nohash_<n>.wav`` (16 kHz mono PCM_16, 0.5 to 1 s),
    ``_background_noise_/`` (a noise recording and its README.md),
    ``validation_list.txt`` and ``testing_list.txt`` (``word/file.wav`` per
    line, sorted), plus ``LICENSE`` and ``README.md``.

    Speaker ``j`` says every word once. The speakers are split as in the real
    dataset (a speaker's clips are all in one split): per word, the first
    ``clips_per_word - valid_per_word - test_per_word`` clips are training
    clips (in no list), then come the validation then the test clips.

    Arguments
    ---------
    root : str or os.PathLike
        Created if needed.
    words : list of str, optional
        Subset of the 35 words (default: all of them).
    clips_per_word : int
        Clips per word (= number of speakers), at least 3 by default.
    seed : int
        Seed of the generated audio and speaker ids.
    valid_per_word, test_per_word : int, optional
        Clips per word in the validation/test lists (default:
        ``max(1, round(0.1 * clips_per_word))`` each).

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    words = list(GSC_WORDS if words is None else words)
    unknown = [w for w in words if w not in GSC_WORDS]
    if unknown:
        raise ValueError(f"not Speech Commands v0.02 words: {unknown}")
    default = max(1, round(0.1 * clips_per_word))
    n_valid = default if valid_per_word is None else valid_per_word
    n_test = default if test_per_word is None else test_per_word
    n_train = clips_per_word - n_valid - n_test
    if n_train < 1:
        raise ValueError(
            f"clips_per_word={clips_per_word} leaves no training clip "
            f"({n_valid} valid, {n_test} test)"
        )
    rng = np.random.default_rng(seed)
    speakers = []
    while len(speakers) < clips_per_word:
        speaker = "".join(rng.choice(list("0123456789abcdef"), 8))
        if speaker not in speakers:
            speakers.append(speaker)

    root.mkdir(parents=True, exist_ok=True)
    valid, test = [], []
    for word in words:
        (root / word).mkdir(exist_ok=True)
        for j, speaker in enumerate(speakers):
            name = f"{speaker}_nohash_{j % 2}.wav"
            full = rng.random() < 0.7
            samples = GSC_RATE if full else int(rng.integers(8000, GSC_RATE))
            audio = _tone(rng, gsc_frequency(word), samples, GSC_RATE)
            sf.write(root / word / name, audio, GSC_RATE, subtype="PCM_16")
            if n_train <= j < n_train + n_valid:
                valid.append(f"{word}/{name}")
            elif j >= n_train + n_valid:
                test.append(f"{word}/{name}")

    noise = root / "_background_noise_"
    noise.mkdir(exist_ok=True)
    white = 0.1 * rng.standard_normal(2 * GSC_RATE)
    sf.write(noise / "white_noise.wav", white, GSC_RATE, subtype="PCM_16")
    (noise / "README.md").write_text("Background noise recordings.\n")
    (root / "validation_list.txt").write_text(
        "".join(f"{e}\n" for e in sorted(valid))
    )
    (root / "testing_list.txt").write_text(
        "".join(f"{e}\n" for e in sorted(test))
    )
    (root / "LICENSE").write_text("CC BY 4.0 (miniature test copy)\n")
    (root / "README.md").write_text("Speech Commands v0.02 (miniature).\n")
    return root


def make_esc50(root, classes=None, clips_per_class=10, seed=0):
    """Writes a miniature ESC-50 release under ``root``.

    Layout as in the real release: ``audio/<fold>-<src_file>-<take>-<target>
    .wav`` (44.1 kHz mono PCM_16, exactly 5 s: a sound of 1 to 5 s then
    digital silence, as ESC-50 pads its clips), ``meta/esc50.csv`` (header
    ``filename,fold,target,category,esc10,src_file,take``, sorted by file
    name) and ``README.md``. Every class has ``clips_per_class / 5`` clips in
    each of the 5 folds; consecutive clips share a source file (takes A, B)
    within a fold, as in the real dataset.

    Arguments
    ---------
    root : str or os.PathLike
        Created if needed.
    classes : int or list of str, optional
        The first ``classes`` categories (by target), or a list of category
        names; default 4 (dog, rooster, pig, cow). 50 gives the full set.
    clips_per_class : int
        A multiple of 5 (the real dataset has 40).
    seed : int
        Seed of the generated audio and source ids.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    if classes is None:
        classes = 4
    if isinstance(classes, int):
        categories = list(ESC50_CATEGORIES[:classes])
    else:
        categories = list(classes)
        unknown = [c for c in categories if c not in ESC50_CATEGORIES]
        if unknown:
            raise ValueError(f"not ESC-50 categories: {unknown}")
    if clips_per_class < 5 or clips_per_class % 5:
        raise ValueError(
            f"clips_per_class must be a positive multiple of 5 (one share per "
            f"fold), got {clips_per_class}"
        )
    per_fold = clips_per_class // 5
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    samples = ESC50_RATE * ESC50_SECONDS
    used_sources, meta = set(), []
    for category in categories:
        target = ESC50_CATEGORIES.index(category)
        for fold in range(1, 6):
            for i in range(per_fold):
                if i % 2 == 0:
                    source = int(rng.integers(1000, 300000))
                    while source in used_sources:
                        source = int(rng.integers(1000, 300000))
                    used_sources.add(source)
                take = "AB"[i % 2]
                name = f"{fold}-{source}-{take}-{target}.wav"
                sound = int(rng.uniform(1, ESC50_SECONDS) * ESC50_RATE)
                audio = _tone(
                    rng, esc50_frequency(target), samples, ESC50_RATE, sound
                )
                sf.write(root / "audio" / name, audio, ESC50_RATE,
                         subtype="PCM_16")
                meta.append(
                    (name, fold, target, category,
                     category in ESC10_CATEGORIES, source, take)
                )  # fmt: skip
    lines = [",".join(ESC50_META_COLUMNS)]
    for name, fold, target, category, esc10, source, take in sorted(meta):
        lines.append(f"{name},{fold},{target},{category},{esc10},{source},{take}")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    (root / "README.md").write_text("ESC-50 (miniature test copy).\n")
    return root


CORRUPTIONS = ("garbage", "zero_bytes", "empty", "nan")


def corrupt_clip(path, kind="garbage"):
    """Damages the audio file ``path`` in place.

    Arguments
    ---------
    path : str or os.PathLike
        An existing clip (its sampling rate is kept where it matters).
    kind : str
        ``"garbage"``: random bytes, not audio; ``"zero_bytes"``: an empty
        file; ``"empty"``: a valid WAV header with no samples; ``"nan"``: a
        float WAV of the same length whose samples include NaN.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = pathlib.Path(path)
    info = sf.info(os.fspath(path))
    if kind == "garbage":
        rng = np.random.default_rng(len(path.name))
        path.write_bytes(b"JUNK" + rng.bytes(2000))
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "empty":
        sf.write(path, np.zeros(0, np.int16), info.samplerate, subtype="PCM_16")
    elif kind == "nan":
        data = np.full(max(info.frames, 10), 0.1, np.float32)
        data[::7] = np.nan
        sf.write(path, data, info.samplerate, subtype="FLOAT")
    else:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    return path


def snapshot(folder):
    """Sorted ``(relative path, size, mtime_ns)`` of everything under
    ``folder`` (folders included), to check that nothing was written in it."""
    folder = pathlib.Path(folder)
    entries = []
    for path in folder.rglob("*"):
        stat = path.stat()
        size = stat.st_size if path.is_file() else -1
        entries.append((path.relative_to(folder).as_posix(), size,
                        stat.st_mtime_ns))
    return sorted(entries)
