"""Data preparation for Google Speech Commands v0.02 (35-word task).

Expected layout of ``data_folder`` (the extracted
``speech_commands_v0.02.tar.gz``)::

    backward/0165e0e8_nohash_0.wav ...   one folder per word (35 words)
    _background_noise_/*.wav             long noise recordings (not used here)
    validation_list.txt                  e.g. "right/bb05582b_nohash_3.wav"
    testing_list.txt

The validation and test splits are the official list files; every other word
clip is in the training split. Clips are 16 kHz mono, at most 1 s long.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, speaker`` (the speaker is the part of the
file name before ``_nohash_``). With ``few_shot=N``, ``train.csv`` keeps N
clips per word, by default the first N training clips of the word's folder
in file-name order.

Example
-------
>>> from speech_commands_prepare import prepare_speech_commands
>>> prepare_speech_commands(
...     "/data/speech_commands_v0.02", "results/speech_commands/save",
...     few_shot=32,  # 32 training clips per word
... )  # doctest: +SKIP
"""

import logging
import os

from speechbrain_petl.data import (
    prepare_split_manifests, require_file, require_folder,
)

logger = logging.getLogger(__name__)

# Bump whenever the manifests' content or format changes, so that outputs of
# an older version of this script are never reused.
PREP_VERSION = 1

WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five",
    "follow", "forward", "four", "go", "happy", "house", "learn", "left",
    "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila",
    "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes",
    "zero",
)  # fmt: skip
BACKGROUND_NOISE = "_background_noise_"
VALID_LIST = "validation_list.txt"
TEST_LIST = "testing_list.txt"
FIELDNAMES = ("ID", "duration", "wav", "label", "speaker")
DATASET = "Speech Commands v0.02"
LAYOUT_HINT = (
    "is data_folder the root of the extracted speech_commands_v0.02 archive "
    "(one folder per word, _background_noise_/, validation_list.txt and "
    "testing_list.txt)?"
)


def prepare_speech_commands(
    data_folder, save_folder, max_bad_fraction=0.01, skip_prep=False,
    few_shot=None, few_shot_sampling="first", few_shot_seed=0,
):
    """Writes the train/valid/test manifests of Speech Commands v0.02.

    Every word clip is decoded once (the steps, and the skip when nothing
    changed: :mod:`speechbrain_petl.data.prepare`).

    Arguments
    ---------
    data_folder : str
        Root of the extracted dataset (see the module's docstring).
    save_folder : str
        Where the manifests are written (never inside ``data_folder``).
    max_bad_fraction, skip_prep, few_shot, few_shot_sampling, few_shot_seed
        As for every preparation: see :mod:`speechbrain_petl.data.prepare`.
        Few-shot sets keep ``few_shot`` clips per word; the ``"first"`` ones
        are the word folder's first training clips by file name.

    Raises
    ------
    FileNotFoundError
        A list file, a word folder or a listed clip is missing.
    ValueError
        A list entry is malformed or in both lists, or a file name has no
        ``_nohash_`` part.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing Speech Commands")
        return
    prepare_split_manifests(
        data_folder, save_folder,
        {"dataset": "speech_commands_v0.02", "version": PREP_VERSION},
        _check_layout, _read_clips, FIELDNAMES, DATASET,
        max_bad_fraction=max_bad_fraction, few_shot=few_shot,
        few_shot_sampling=few_shot_sampling, few_shot_seed=few_shot_seed,
        empty_split_hint=LAYOUT_HINT,
    )


def _check_layout(data_folder):
    """``(data_folder, validation list, testing list)``; both lists must
    exist."""
    valid_list = require_file(
        os.path.join(data_folder, VALID_LIST), DATASET, data_folder,
        LAYOUT_HINT,
    )
    test_list = require_file(
        os.path.join(data_folder, TEST_LIST), DATASET, data_folder,
        LAYOUT_HINT,
    )
    return data_folder, valid_list, test_list


def _read_clips(layout):
    """``(row, split)`` of every word clip, word by word in file-name
    order."""
    data_folder, valid_list, test_list = layout
    for word in WORDS:
        require_folder(
            os.path.join(data_folder, word), DATASET, data_folder,
            f"every one of the 35 words of v0.02 needs its folder; "
            f"{LAYOUT_HINT}",
        )
    _warn_about_unknown_folders(data_folder)

    valid = _read_list(valid_list, data_folder)
    test = _read_list(test_list, data_folder)
    both = sorted(valid & test)
    if both:
        raise ValueError(
            f"{DATASET}: {len(both)} clip(s) are listed in both "
            f"{valid_list} and {test_list}, e.g. {both[0]}"
        )

    clips = []
    for word in WORDS:
        for rel in _word_clips(data_folder, word):
            split = (
                "valid" if rel in valid else "test" if rel in test else "train"
            )
            clips.append((_row(data_folder, rel), split))
    logger.info(
        "%s: %d word clips (%d valid, %d test listed); %s/ is not used",
        DATASET,
        len(clips),
        len(valid),
        len(test),
        BACKGROUND_NOISE,
    )
    return clips


def _warn_about_unknown_folders(data_folder):
    known = set(WORDS) | {BACKGROUND_NOISE}
    unknown = sorted(
        name
        for name in os.listdir(data_folder)
        if os.path.isdir(os.path.join(data_folder, name))
        and name not in known
    )
    if unknown:
        logger.warning(
            "%s: ignoring folder(s) that are not among the 35 words: %s",
            DATASET,
            ", ".join(unknown),
        )


def _read_list(list_path, data_folder):
    """The set of ``word/file.wav`` entries of a list file, each checked."""
    entries = set()
    with open(list_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            entry = line.strip().replace("\\", "/")
            if not entry:
                continue
            word, _, name = entry.partition("/")
            if word not in WORDS or not name or "/" in name:
                raise ValueError(
                    f"{DATASET}: {list_path} line {number}: {entry!r} is not "
                    "of the form <word>/<file>.wav with one of the 35 words"
                )
            if not os.path.isfile(os.path.join(data_folder, word, name)):
                raise FileNotFoundError(
                    f"{DATASET}: {list_path} line {number} lists {entry}, but "
                    f"{os.path.join(data_folder, word, name)} does not exist; "
                    "is the extracted dataset complete?"
                )
            entries.add(entry)
    return entries


def _word_clips(data_folder, word):
    """Sorted ``word/file.wav`` paths of one word folder."""
    folder = os.path.join(data_folder, word)
    clips, others = [], []
    for name in sorted(os.listdir(folder)):
        # Hidden files (e.g. macOS "._x.wav" resource forks) are not clips.
        if name.lower().endswith(".wav") and not name.startswith("."):
            clips.append(f"{word}/{name}")
        else:
            others.append(name)
    if others:
        logger.warning(
            "%s: ignoring %d file(s) that are not clips in %s: %s",
            DATASET,
            len(others),
            folder,
            ", ".join(others[:5]),
        )
    return clips


def _row(data_folder, rel):
    word, name = rel.split("/")
    stem = os.path.splitext(name)[0]
    speaker, sep, _ = stem.partition("_nohash_")
    if not sep or not speaker:
        raise ValueError(
            f"{DATASET}: {os.path.join(data_folder, word, name)} is not named "
            "<speaker>_nohash_<n>.wav"
        )
    return {
        "ID": f"{word}_{stem}",
        "wav": os.path.join(data_folder, word, name),
        "label": word,
        "speaker": speaker,
    }
