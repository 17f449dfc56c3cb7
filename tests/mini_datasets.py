"""Miniature copies of the datasets, in their real layouts, for offline tests
(and demos): Google Speech Commands v0.02, ESC-50, UrbanSound8K, Fluent Speech
Commands and IEMOCAP.

The file names, folders and metadata files follow the real releases; the
audio is generated (a tone whose pitch depends on the class, plus a little
noise), so that a model can actually learn the classes. Every function is
deterministic given its ``seed``.

Also: :func:`corrupt_clip` (damages a clip in one of several ways) and
:func:`snapshot` (a listing of a folder, to check that nothing was written
in it).
"""

import csv
import os
import pathlib

import numpy as np
import soundfile as sf

# The 35 words of Speech Commands v0.02 (Warden, 2018), in alphabetical order:
# the 20 core commands, the 10 auxiliary words and the 5 words that v0.02
# added. Stated here from the dataset's paper, on purpose not imported from
# the recipe: test_prepare_speech_commands checks the recipe's own list
# (speech_commands_prepare.WORDS) against this one.
_GSC_CORE = ("yes no up down left right on off stop go "
             "zero one two three four five six seven eight nine")
_GSC_AUXILIARY = "bed bird cat dog happy house marvin sheila tree wow"
_GSC_ADDED_IN_V2 = "backward forward follow learn visual"
GSC_WORDS = tuple(
    sorted(f"{_GSC_CORE} {_GSC_AUXILIARY} {_GSC_ADDED_IN_V2}".split())
)
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


def _require_known(items, known, what):
    """Raises ``ValueError("not <what>: [...]")`` listing the ``items`` that
    are not in ``known``."""
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(f"not {what}: {unknown}")


def _classes_and_clips_per_fold(classes, clips_per_class, known, folds, what):
    """The class names and the clips per class and fold of a dataset whose
    classes are ``known`` and that is split into ``folds`` folds (ESC-50,
    UrbanSound8K).

    ``classes`` is None (the first 4), an int (the first ``classes``) or a
    list of names of ``known`` (``what`` names them in the error);
    ``clips_per_class`` must be a positive multiple of ``folds``.
    """
    if classes is None:
        classes = 4
    if isinstance(classes, int):
        names = list(known[:classes])
    else:
        names = list(classes)
        _require_known(names, known, what)
    if clips_per_class < folds or clips_per_class % folds:
        raise ValueError(
            f"clips_per_class must be a positive multiple of {folds} (one "
            f"share per fold), got {clips_per_class}"
        )
    return names, clips_per_class // folds


def _new_source(rng, low, high, used):
    """A random id in ``[low, high)`` that is not in ``used`` (and is added
    to it): the source (Freesound) id of a new recording."""
    source = int(rng.integers(low, high))
    while source in used:
        source = int(rng.integers(low, high))
    used.add(source)
    return source


def make_speech_commands(
    root,
    words=None,
    clips_per_word=3,
    seed=0,
    valid_per_word=None,
    test_per_word=None,
    seconds=1.0,
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
    seconds : float
        Longest clip (the real clips are at most 1 s); shorter values make
        small samples to commit.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    words = list(GSC_WORDS if words is None else words)
    _require_known(words, GSC_WORDS, "Speech Commands v0.02 words")
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
            longest = int(seconds * GSC_RATE)
            samples = longest if full else int(rng.integers(longest // 2, longest))
            audio = _tone(rng, gsc_frequency(word), samples, GSC_RATE)
            sf.write(root / word / name, audio, GSC_RATE, subtype="PCM_16")
            if n_train <= j < n_train + n_valid:
                valid.append(f"{word}/{name}")
            elif j >= n_train + n_valid:
                test.append(f"{word}/{name}")

    noise = root / "_background_noise_"
    noise.mkdir(exist_ok=True)
    white = 0.1 * rng.standard_normal(int(2 * seconds * GSC_RATE))
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


def make_esc50(root, classes=None, clips_per_class=10, seed=0, seconds=ESC50_SECONDS):
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
    seconds : float
        Length of every clip (the real ones: 5 s); the sound fills 1/5 to all of it.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    categories, per_fold = _classes_and_clips_per_fold(
        classes, clips_per_class, ESC50_CATEGORIES, 5, "ESC-50 categories"
    )
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    samples = int(ESC50_RATE * seconds)
    used_sources, meta = set(), []
    for category in categories:
        target = ESC50_CATEGORIES.index(category)
        for fold in range(1, 6):
            for i in range(per_fold):
                if i % 2 == 0:
                    source = _new_source(rng, 1000, 300000, used_sources)
                take = "AB"[i % 2]
                name = f"{fold}-{source}-{take}-{target}.wav"
                sound = int(rng.uniform(seconds / ESC50_SECONDS, seconds) * ESC50_RATE)
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


# ---------------------------------------------------------------------------
# UrbanSound8K
# ---------------------------------------------------------------------------

# UrbanSound8K's classes; the index is the ``classID`` column.
US8K_CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark",
    "drilling", "engine_idling", "gun_shot", "jackhammer", "siren",
    "street_music",
)  # fmt: skip
US8K_META_COLUMNS = (
    "slice_file_name", "fsID", "start", "end", "salience", "fold", "classID",
    "class",
)  # fmt: skip
US8K_SECONDS = 4
# (sample rate, subtype, channels, container) of the generated clips, cycled
# over the clips: the variety of the real dataset's Freesound sources.
US8K_FORMATS = (
    (44100, "PCM_16", 2, "WAV"),
    (48000, "PCM_24", 2, "WAVEX"),
    (8000, "PCM_U8", 1, "WAV"),
    (22050, "PCM_16", 1, "WAV"),
    (96000, "PCM_24", 1, "WAV"),
    (44100, "FLOAT", 2, "WAV"),
    (11025, "PCM_U8", 2, "WAV"),
    (48000, "FLOAT", 1, "WAV"),
    (16000, "PCM_16", 1, "WAV"),
    (32000, "PCM_32", 2, "WAVEX"),
)


def us8k_frequency(class_id):
    """Pitch (Hz) of the generated clips of class ``class_id`` (below 2 kHz
    with its harmonic, so that it survives an 8 kHz sampling rate)."""
    return 220.0 * 2 ** (class_id / 5)


def _write_clip(path, mono, rate, subtype, channels, container, rng):
    """Writes the float waveform ``mono`` (in [-1, 1]); a second channel is a
    quieter copy with its own noise."""
    if channels == 2:
        other = 0.8 * mono + 0.005 * rng.standard_normal(len(mono))
        data = np.stack([mono, other], axis=1)
    else:
        data = mono
    sf.write(path, data, rate, subtype=subtype, format=container)


def make_urbansound8k(root, classes=None, clips_per_class=10, seed=0, seconds=US8K_SECONDS):
    """Writes a miniature UrbanSound8K under ``root`` (the extracted
    ``UrbanSound8K`` folder).

    Layout as in the real release: ``audio/fold<k>/<fsID>-<classID>-
    <occurrence>-<slice>.wav``, ``metadata/UrbanSound8K.csv`` (header
    ``slice_file_name,fsID,start,end,salience,fold,classID,class``, sorted by
    file name), ``UrbanSound8K_README.txt``, ``FREESOUNDCREDITS.txt`` and
    macOS ``.DS_Store`` files in ``audio/`` and ``audio/fold1/``. Every
    class has ``clips_per_class / 10`` clips in each of the 10 folds;
    consecutive clips of a fold share a Freesound id (slices of one
    recording), as in the real dataset.

    The clips cycle through :data:`US8K_FORMATS` (8 to 96 kHz; 8-bit
    unsigned, 16-, 24- and 32-bit PCM and 32-bit float; mono and stereo; WAV
    and WAVE_FORMAT_EXTENSIBLE headers), and one clip in three is shorter
    than 4 s (0.3 to 3.9 s), the others exactly 4 s. With the defaults
    (40 clips), every format occurs both at 4 s and shorter.

    Arguments
    ---------
    root : str or os.PathLike
        Created if needed.
    classes : int or list of str, optional
        The first ``classes`` classes (by classID), or a list of class names;
        default 4 (air_conditioner, car_horn, children_playing, dog_bark).
        10 gives the full set.
    clips_per_class : int
        A positive multiple of 10 (the real dataset has about 870).
    seed : int
        Seed of the generated audio and ids.
    seconds : float
        Length of the full-length clips (the real ones: 4 s); short clips scale with it.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    names, per_fold = _classes_and_clips_per_fold(
        classes, clips_per_class, US8K_CLASSES, 10, "UrbanSound8K classes"
    )
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    for fold in range(1, 11):
        (audio / f"fold{fold}").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(exist_ok=True)
    used_sources, meta, n = set(), [], 0
    for name in names:
        class_id = US8K_CLASSES.index(name)
        for fold in range(1, 11):
            for i in range(per_fold):
                if i % 2 == 0:  # a new recording: its first slice
                    source = _new_source(rng, 100, 200000, used_sources)
                    occurrence = int(rng.integers(0, 3))
                    slice_id = int(rng.integers(0, 30))
                else:  # the next slice of the same recording
                    slice_id += 1
                rate, subtype, channels, container = US8K_FORMATS[
                    n % len(US8K_FORMATS)
                ]
                if n % 3 == 2:
                    clip_seconds = float(rng.uniform(0.3, 3.9)) * seconds / US8K_SECONDS
                else:
                    clip_seconds = float(seconds)
                n += 1
                samples = int(round(clip_seconds * rate))
                tone = _tone(rng, us8k_frequency(class_id), samples, rate)
                file_name = f"{source}-{class_id}-{occurrence}-{slice_id}.wav"
                _write_clip(
                    audio / f"fold{fold}" / file_name, tone / 32768.0, rate,
                    subtype, channels, container, rng,
                )
                start = slice_id * 4.0 + float(rng.uniform(0, 0.5))
                meta.append(
                    (file_name, source, round(start, 6),
                     round(start + samples / rate, 6),
                     int(rng.integers(1, 3)), fold, class_id, name)
                )  # fmt: skip
    lines = [",".join(US8K_META_COLUMNS)]
    lines += [",".join(str(v) for v in row) for row in sorted(meta)]
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(lines) + "\n")
    for folder in (audio, audio / "fold1"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(60))
    (root / "UrbanSound8K_README.txt").write_text(
        "UrbanSound8K (miniature test copy).\n"
    )
    (root / "FREESOUNDCREDITS.txt").write_text("Generated tones.\n")
    return root


# ---------------------------------------------------------------------------
# Fluent Speech Commands
# ---------------------------------------------------------------------------

# The 31 intents (action, object, location) of Fluent Speech Commands.
FSC_INTENTS = (
    ("activate", "lamp", "none"),
    ("activate", "lights", "bedroom"),
    ("activate", "lights", "kitchen"),
    ("activate", "lights", "none"),
    ("activate", "lights", "washroom"),
    ("activate", "music", "none"),
    ("bring", "juice", "none"),
    ("bring", "newspaper", "none"),
    ("bring", "shoes", "none"),
    ("bring", "socks", "none"),
    ("change language", "Chinese", "none"),
    ("change language", "English", "none"),
    ("change language", "German", "none"),
    ("change language", "Korean", "none"),
    ("change language", "none", "none"),
    ("deactivate", "lamp", "none"),
    ("deactivate", "lights", "bedroom"),
    ("deactivate", "lights", "kitchen"),
    ("deactivate", "lights", "none"),
    ("deactivate", "lights", "washroom"),
    ("deactivate", "music", "none"),
    ("decrease", "heat", "bedroom"),
    ("decrease", "heat", "kitchen"),
    ("decrease", "heat", "none"),
    ("decrease", "heat", "washroom"),
    ("decrease", "volume", "none"),
    ("increase", "heat", "bedroom"),
    ("increase", "heat", "kitchen"),
    ("increase", "heat", "none"),
    ("increase", "heat", "washroom"),
    ("increase", "volume", "none"),
)
# The default miniature's intents (one with the two-word action).
FSC_DEFAULT_INTENTS = (
    ("activate", "lights", "kitchen"),
    ("increase", "volume", "none"),
    ("change language", "Chinese", "none"),
    ("bring", "newspaper", "none"),
)
FSC_RATE = 16000
# The csv header: the first column (a row index) has no name.
FSC_CSV_COLUMNS = (
    "", "path", "speakerId", "transcription", "action", "object", "location"
)  # fmt: skip


def fsc_intent(action, obj, location):
    """The intent label of a slot triple, ``<action>_<object>_<location>``."""
    return f"{action}_{obj}_{location}"


def fsc_frequency(intent):
    """Pitch (Hz) of the generated clips of ``intent`` (a slot triple)."""
    return 180.0 * 2 ** (FSC_INTENTS.index(tuple(intent)) / 8)


def _fsc_phrasings(action, obj, location):
    """Two wordings of an intent (one with a comma, as csv quoting must
    handle)."""
    where = "" if location == "none" else f" in the {location}"
    if action == "change language":
        if obj == "none":
            return ["Change language", "Switch the language, please"]
        return [f"Switch the language to {obj}",
                f"Set my device's language to {obj}, please"]
    if action == "bring":
        return [f"Bring me the {obj}", f"Go get the {obj}, please"]
    verb = {"activate": "on", "deactivate": "off", "increase": "up",
            "decrease": "down"}[action]
    return [f"Turn {verb} the {obj}{where}",
            f"{obj.capitalize()} {verb}{where}, please"]


def make_fluent_speech_commands(
    root, intents=None, speakers=(3, 1, 1), repeats=2, seed=0
):
    """Writes a miniature Fluent Speech Commands under ``root`` (the
    extracted ``fluent_speech_commands_dataset`` folder).

    Layout as in the real release: ``wavs/speakers/<speakerId>/<uuid>.wav``
    (16 kHz mono PCM_16, 1 to 2.5 s with silence around the sound),
    ``data/train_data.csv``, ``data/valid_data.csv``, ``data/test_data.csv``
    (header ``,path,speakerId,transcription,action,object,location``: the
    first, unnamed column is the row index 0..n-1; ``path`` is relative to
    ``root``; fields with a comma are quoted) and ``readme.md``. Speakers are
    disjoint between the splits; each says every intent ``repeats`` times
    (alternating between two wordings).

    Arguments
    ---------
    root : str or os.PathLike
        Created if needed.
    intents : int or list, optional
        The first ``intents`` of :data:`FSC_INTENTS`, or a list of
        ``(action, object, location)`` triples or intent labels such as
        ``"activate_lights_kitchen"``; default :data:`FSC_DEFAULT_INTENTS`.
    speakers : tuple of int
        Speakers of the train, valid and test splits.
    repeats : int
        Utterances of each intent per speaker.
    seed : int
        Seed of the generated audio and ids.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    if intents is None:
        triples = list(FSC_DEFAULT_INTENTS)
    elif isinstance(intents, int):
        triples = list(FSC_INTENTS[:intents])
    else:
        triples = [
            tuple(i.rsplit("_", 2)) if isinstance(i, str) else tuple(i)
            for i in intents
        ]
    _require_known(triples, FSC_INTENTS, "Fluent Speech Commands intents")
    if len(speakers) != 3 or min(speakers) < 1 or repeats < 1:
        raise ValueError(
            f"need at least one speaker per split and repeats >= 1, got "
            f"speakers={speakers}, repeats={repeats}"
        )
    rng = np.random.default_rng(seed)
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                    "0123456789")
    (root / "data").mkdir(parents=True, exist_ok=True)
    used = set()
    for split, n_speakers in zip(("train", "valid", "test"), speakers):
        lines = []
        for _ in range(n_speakers):
            speaker = "".join(rng.choice(alphabet, 16))
            folder = root / "wavs" / "speakers" / speaker
            folder.mkdir(parents=True, exist_ok=True)
            for action, obj, location in triples:
                for r in range(repeats):
                    uuid = "-".join(
                        "".join(rng.choice(list("0123456789abcdef"), k))
                        for k in (8, 4)
                    ) + "-11e9-" + "-".join(
                        "".join(rng.choice(list("0123456789abcdef"), k))
                        for k in (4, 12)
                    )
                    assert uuid not in used
                    used.add(uuid)
                    samples = int(rng.uniform(1.0, 2.5) * FSC_RATE)
                    sound = int(rng.uniform(0.5, 0.8) * samples)
                    audio = _tone(
                        rng, fsc_frequency((action, obj, location)), samples,
                        FSC_RATE, sound,
                    )
                    audio = np.roll(audio, int(rng.integers(0, samples - sound)))
                    sf.write(folder / f"{uuid}.wav", audio, FSC_RATE,
                             subtype="PCM_16")
                    lines.append(
                        [f"wavs/speakers/{speaker}/{uuid}.wav", speaker,
                         _fsc_phrasings(action, obj, location)[r % 2],
                         action, obj, location]
                    )  # fmt: skip
        with open(root / "data" / f"{split}_data.csv", "w", newline="",
                  encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(FSC_CSV_COLUMNS)
            writer.writerows([index] + line for index, line in enumerate(lines))
    (root / "readme.md").write_text("Fluent Speech Commands (miniature).\n")
    return root


# ---------------------------------------------------------------------------
# IEMOCAP
# ---------------------------------------------------------------------------

IEMOCAP_RATE = 16000
# EmoEvaluation label -> 4-class label (exc merged into hap); others dropped.
IEMOCAP_CLASS_OF = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad",
                    "ang": "ang"}
IEMOCAP_CLASSES = ("neu", "hap", "sad", "ang")
IEMOCAP_DROPPED = ("xxx", "fru", "sur", "fea", "dis", "oth")
# The labels of one speaker's successive utterances in a session, cycled
# (None: one of IEMOCAP_DROPPED). Ten utterances per speaker and session (the
# default) hold 8 kept ones: 2 of each class, one hap being an exc.
IEMOCAP_LABEL_CYCLE = ("neu", "hap", "sad", "ang", "exc", None, "neu", None,
                       "sad", "ang")
# Dialogs of a session, after its "Ses0<k>" prefix: the F or M lead actor,
# improvisations and scripts, as in the real release.
IEMOCAP_DIALOGS = ("F_impro01", "M_script01_1", "F_script02_2", "M_impro04",
                   "F_impro06", "M_script03_1")
_IEMOCAP_WORDS = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
    "ang": "Anger", "fru": "Frustration", "sur": "Surprise", "fea": "Fear",
    "dis": "Disgust", "oth": "Other", "xxx": "Frustration",
}  # fmt: skip


def iemocap_label(session, gender, index):
    """EmoEvaluation label of the ``index``-th utterance (0-based, over the
    session's dialogs in order) of speaker ``gender`` in ``session``."""
    offset = 3 * (session - 1) + (5 if gender == "M" else 0)
    label = IEMOCAP_LABEL_CYCLE[(index + offset) % len(IEMOCAP_LABEL_CYCLE)]
    if label is None:
        label = IEMOCAP_DROPPED[(session + index + offset) %
                                len(IEMOCAP_DROPPED)]
    return label


def iemocap_frequency(label):
    """Pitch (Hz) of the generated utterances of an EmoEvaluation label (one
    per 4-class label; dropped labels share another one)."""
    if label not in IEMOCAP_CLASS_OF:
        return 640.0
    return 170.0 * 2 ** (IEMOCAP_CLASSES.index(IEMOCAP_CLASS_OF[label]) / 2)


def make_iemocap(root, dialogs_per_session=2, turns_per_dialog=10, seed=0, turn_seconds=(0.8, 2.0)):
    """Writes a miniature IEMOCAP release under ``root`` (the
    ``IEMOCAP_full_release`` folder).

    Layout as in the real release, for Session1 to Session5:
    ``Session<k>/sentences/wav/<dialog>/<utterance>.wav`` (16 kHz mono
    PCM_16, 0.8 to 2 s) and ``Session<k>/dialog/EmoEvaluation/<dialog>.txt``
    with the real files' header line, one block per utterance in time order
    (``[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]``, then ``C-E2:``,
    ``C-F1:``, ``A-E3:``... annotator lines, then a blank line), plus an
    ``EmoEvaluation/Categorical/`` subfolder (``<dialog>_e2_cat.txt``),
    a macOS ``._<dialog>.txt`` fork in Session2, and ``README.txt``.

    Dialogs are ``Ses0<k>`` + :data:`IEMOCAP_DIALOGS` (e.g.
    ``Ses01F_impro01``, ``Ses01M_script01_1``); their turns alternate
    between the female and the male actor (``..._F000``, ``..._M000``,
    ``..._F001``, ...). Labels follow :func:`iemocap_label`: with the
    defaults (100 utterances), each speaker of each session has 10
    utterances, 8 with a kept label (2 per class, one hap being exc) and 2
    dropped ones (xxx, fru, sur, ...), so 80 are kept.

    Arguments
    ---------
    root : str or os.PathLike
        Created if needed.
    dialogs_per_session : int
        1 to 6.
    turns_per_dialog : int
        Utterances per dialog, alternately by the F and M actor.
    seed : int
        Seed of the generated audio.
    turn_seconds : tuple of float
        Range of the utterances' durations.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    root = pathlib.Path(root)
    if not 1 <= dialogs_per_session <= len(IEMOCAP_DIALOGS):
        raise ValueError(
            f"dialogs_per_session must be 1 to {len(IEMOCAP_DIALOGS)}, got "
            f"{dialogs_per_session}"
        )
    if turns_per_dialog < 2:
        raise ValueError("turns_per_dialog must be at least 2 (F and M)")
    rng = np.random.default_rng(seed)
    for session in range(1, 6):
        base = root / f"Session{session}"
        emo = base / "dialog" / "EmoEvaluation"
        (emo / "Categorical").mkdir(parents=True, exist_ok=True)
        counters = {"F": 0, "M": 0}
        for suffix in IEMOCAP_DIALOGS[:dialogs_per_session]:
            dialog = f"Ses0{session}{suffix}"
            wav_dir = base / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]",
                     ""]
            categorical, t = [], float(rng.uniform(1, 5))
            for turn in range(turns_per_dialog):
                gender = "FM"[turn % 2]
                number = counters[gender]
                counters[gender] += 1
                utterance = f"{dialog}_{gender}{turn // 2:03d}"
                label = iemocap_label(session, gender, number)
                samples = int(rng.uniform(*turn_seconds) * IEMOCAP_RATE)
                audio = _tone(rng, iemocap_frequency(label), samples,
                              IEMOCAP_RATE)
                sf.write(wav_dir / f"{utterance}.wav", audio, IEMOCAP_RATE,
                         subtype="PCM_16")
                end = t + samples / IEMOCAP_RATE
                vad = ", ".join(f"{v:.4f}" for v in rng.integers(2, 9, 3) / 2)
                word = _IEMOCAP_WORDS[label]
                second = "Neutral" if word != "Neutral" else "Frustration"
                lines += [
                    f"[{t:.4f} - {end:.4f}]\t{utterance}\t{label}\t[{vad}]",
                    f"C-E2:\t{word};\t()",
                    f"C-E3:\t{word}; {second};\t([laughs] mildly, sarcastic)",
                    f"C-F1:\t{word};\t()",
                    "A-E3:\tval 3; act 2; dom  2;\t()",
                    "A-F1:\tval 2; act 3; dom  3;\t(staying polite)",
                    "",
                ]
                categorical.append(f"{utterance} :{word}; ()")
                t = end + float(rng.uniform(0.2, 3.0))
            (emo / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
            (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text(
                "\n".join(categorical) + "\n"
            )
        if session == 2:
            first = f"Ses02{IEMOCAP_DIALOGS[0]}"
            (emo / f"._{first}.txt").write_bytes(
                b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02"
                b"\xff\xfe\x00\x00ATTR\x00\x00\x00\x00com.apple.quarantine"
            )
    (root / "README.txt").write_text("IEMOCAP release (miniature).\n")
    return root
