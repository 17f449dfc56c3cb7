"""What every recipe's ``*_prepare.py`` promises, checked on the miniature of
each dataset: skip_prep, layout errors, bad clips, the settings-aware skip,
nothing written inside data_folder, fold and protocol checks, 16 kHz mono
clips and the few-shot options. The dataset-specific behaviour is tested in
tests/test_prepare_<dataset>.py."""

import collections
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass

import pytest
import soundfile as sf

from mini_datasets import (
    CORRUPTIONS,
    ESC50_CATEGORIES,
    FSC_DEFAULT_INTENTS,
    GSC_WORDS,
    IEMOCAP_CLASSES,
    US8K_CLASSES,
    corrupt_clip,
    fsc_intent,
    make_esc50,
    make_fluent_speech_commands,
    make_iemocap,
    make_speech_commands,
    make_urbansound8k,
    snapshot,
)
from prep_utils import SPLITS, manifest_bytes, read_manifest
from recipe_utils import load_recipe_module
from speechbrain_petl.data import load_audio


@dataclass(frozen=True)
class Preparer:
    """A recipe's preparation script and the miniature it is tested on.

    The numbers are those of a preparation with the default settings.
    """

    name: str
    prepare: object  # prepare_<dataset>(data_folder, save_folder, ...)
    make: object  # make(root): writes the miniature at root, returns root
    release: str  # the name of the extracted release's folder
    fields: tuple  # the manifests' columns
    sizes: tuple  # clips in train, valid and test
    total: int  # clips checked for damage
    labels: tuple  # the classes, each with sizes[0] / len(labels) clips
    durations: tuple  # (shortest, longest) clip, in seconds
    subfolder: str  # a folder of the release, a wrong data_folder
    # The error of a wrong data_folder, "{folder}" standing for it (None:
    # checked by the dataset's own tests).
    layout_error: str
    # Dataset settings changed in turn from the defaults: (settings, log line).
    changes: tuple = ()
    folds: int = None  # the number of folds, for a fold argument
    protocols: tuple = ()  # the values of a protocol argument
    forms: tuple = ("release",)  # data_folder forms: release, its parent
    few_shot: int = 2  # clips per class of the random few-shot draws


def _load(recipe, module, function):
    return getattr(load_recipe_module(recipe, module), function)


PREPARERS = (
    Preparer(
        name="esc50",
        prepare=_load("ESC50", "esc50_prepare", "prepare_esc50"),
        make=make_esc50,
        release="ESC-50-master",
        fields=("ID", "duration", "wav", "label", "target", "fold"),
        sizes=(24, 8, 8),
        total=40,
        labels=ESC50_CATEGORIES[:4],
        durations=(5.0, 5.0),
        subfolder="audio",
        layout_error=(
            "ESC-50: expected meta/esc50.csv at {folder}/meta/esc50.csv (not "
            "found); is data_folder the root of the ESC-50 release "
            "(containing audio/ and meta/)?"
        ),
        changes=(
            ({"fold": 2}, "'fold' changed: 1 -> 2"),
            ({"protocol": "official"},
             "'protocol' changed: 'rotation' -> 'official'"),
        ),
        folds=5,
        protocols=("rotation", "official"),
        few_shot=3,
    ),
    Preparer(
        name="fsc",
        prepare=_load("fluent-speech-commands",
                      "fluent_speech_commands_prepare",
                      "prepare_fluent_speech_commands"),
        make=make_fluent_speech_commands,
        release="fluent_speech_commands_dataset",
        fields=("ID", "duration", "wav", "label", "speaker",
                "transcription"),
        sizes=(24, 8, 8),
        total=40,
        labels=tuple(fsc_intent(*slots) for slots in FSC_DEFAULT_INTENTS),
        durations=(1.0, 2.5),
        subfolder="data",
        layout_error=(
            "Fluent Speech Commands: expected data/train_data.csv at "
            "{folder}/data/train_data.csv (not found); is data_folder the "
            "extracted fluent_speech_commands_dataset folder (containing "
            "data/train_data.csv, data/valid_data.csv, data/test_data.csv "
            "and wavs/speakers/)?"
        ),
    ),
    Preparer(
        name="iemocap",
        prepare=_load("IEMOCAP", "iemocap_prepare", "prepare_iemocap"),
        make=make_iemocap,
        release="IEMOCAP_full_release",
        fields=("ID", "duration", "wav", "label", "session", "gender",
                "dialog"),
        sizes=(64, 8, 8),
        total=80,  # the utterances of the 4 classes
        labels=IEMOCAP_CLASSES,
        durations=(0.8, 2.0),
        subfolder="Session1",
        layout_error=None,  # the release folder or its parent
        changes=(({"fold": 2}, "'fold' changed: 1 -> 2"),),
        folds=10,
        forms=("release", "parent"),
        few_shot=4,
    ),
    Preparer(
        name="gsc",
        prepare=_load("Google-speech-commands", "speech_commands_prepare",
                      "prepare_speech_commands"),
        # 4 training clips per word, for the few-shot draws.
        make=lambda root: make_speech_commands(
            root, clips_per_word=6, valid_per_word=1, test_per_word=1
        ),
        release="speech_commands_v0.02",
        fields=("ID", "duration", "wav", "label", "speaker"),
        sizes=(140, 35, 35),
        total=210,
        labels=GSC_WORDS,
        durations=(0.5, 1.0),
        subfolder="yes",
        layout_error=(
            "Speech Commands v0.02: expected validation_list.txt at "
            "{folder}/validation_list.txt (not found); is data_folder the "
            "root of the extracted speech_commands_v0.02 archive (one folder "
            "per word, _background_noise_/, validation_list.txt and "
            "testing_list.txt)?"
        ),
        few_shot=1,
    ),
    Preparer(
        name="us8k",
        prepare=_load("UrbanSound8k", "urbansound8k_prepare",
                      "prepare_urbansound8k"),
        make=make_urbansound8k,
        release="UrbanSound8K",
        fields=("ID", "duration", "wav", "label", "classID", "fold"),
        sizes=(36, 4, 4),  # fold 10, paper protocol: valid.csv is test.csv
        total=40,
        labels=US8K_CLASSES[:4],
        durations=(0.3, 4.0),
        subfolder="audio",
        layout_error=(
            "UrbanSound8K: expected metadata/UrbanSound8K.csv at "
            "{folder}/metadata/UrbanSound8K.csv (not found); is data_folder "
            "the extracted UrbanSound8K folder (containing "
            "audio/fold1..fold10/ and metadata/UrbanSound8K.csv)?"
        ),
        changes=(
            ({"fold": 4}, "'fold' changed: 10 -> 4"),
            ({"protocol": "validation"},
             "'protocol' changed: 'paper' -> 'validation'"),
        ),
        folds=10,
        protocols=("paper", "validation"),
    ),
)
# How a bad clip's damage is reported in bad_clips.log.
REASONS = {
    "garbage": "cannot be decoded: .+",
    "zero_bytes": "cannot be decoded: .+",
    "empty": "empty",
    "nan": "non-finite samples.*",
}


def _id(value):
    """The test id of a Preparer (other values: pytest's own)."""
    return value.name if isinstance(value, Preparer) else None


def _each(preparers=PREPARERS):
    return pytest.mark.parametrize("p", preparers, ids=_id)


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """``miniature(p)``: the miniature of ``p``, made once and shared by the
    tests that only read it."""
    made = {}

    def get(p):
        if p.name not in made:
            made[p.name] = p.make(tmp_path_factory.mktemp(p.name) / p.release)
        return made[p.name]

    return get


def _read(p, save, split):
    return read_manifest(save, split, p.fields)


def _stamps(save):
    return {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS}


def _prepare_clean(p, data, save):
    """Prepares ``data`` into ``save``: ``{split: rows}``, of the expected
    sizes."""
    p.prepare(data, save)
    rows = {split: _read(p, save, split) for split in SPLITS}
    assert tuple(len(rows[s]) for s in SPLITS) == p.sizes
    return rows


def _clips(rows):
    """The clips of ``{split: rows}``, each once, in manifest order."""
    wavs = [r["wav"] for s in SPLITS for r in rows[s]]
    return list(dict.fromkeys(wavs))


def _train_counts(p, save):
    """``{label: training clips}`` of ``save``, checked against the table."""
    counts = collections.Counter(r["label"] for r in _read(p, save, "train"))
    assert counts == {label: p.sizes[0] // len(p.labels) for label in p.labels}
    return counts


# ------------------------------------------------------------ layout errors
@_each()
def test_skip_prep_does_nothing(p, tmp_path):
    p.prepare(tmp_path / "nowhere", tmp_path / "save", skip_prep=True)
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("where", ["empty", "parent", "subfolder"])
@_each([p for p in PREPARERS if p.layout_error])
def test_wrong_data_folder_names_the_expected_file(p, where, miniature,
                                                   tmp_path):
    release = miniature(p)
    data_folder = {
        "empty": tmp_path / "empty",
        "parent": release.parent,
        "subfolder": release / p.subfolder,
    }[where]
    data_folder.mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        p.prepare(data_folder, tmp_path / "save")
    assert str(err.value) == p.layout_error.format(folder=data_folder)
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize(
    "p, fold",
    [(p, fold) for p in PREPARERS if p.folds
     for fold in (0, p.folds + 1, -1, "1", 1.0, True, None)],
    ids=_id,
)
def test_invalid_fold_is_a_clear_error(p, fold, miniature, tmp_path):
    with pytest.raises(ValueError) as err:
        p.prepare(miniature(p), tmp_path / "save", fold=fold)
    assert f"fold must be an integer from 1 to {p.folds}, got {fold!r}" in \
        str(err.value)
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize(
    "p, protocol",
    [(p, protocol) for p in PREPARERS if p.protocols
     for protocol in ("5-fold", "rotation", "official", "paper",
                      "validation", None)
     if protocol not in p.protocols],
    ids=_id,
)
def test_invalid_protocol_is_a_clear_error(p, protocol, miniature, tmp_path):
    with pytest.raises(ValueError) as err:
        p.prepare(miniature(p), tmp_path / "save", protocol=protocol)
    assert f"protocol must be one of {p.protocols}, got {protocol!r}" in \
        str(err.value)
    assert not (tmp_path / "save").exists()


# ---------------------------------------------------------------- the clips
@_each()
def test_clips_load_at_16k_mono(p, miniature, tmp_path):
    rows = _prepare_clean(p, miniature(p), tmp_path / "save")
    shortest, longest = p.durations
    for row in rows["valid"] + rows["test"]:
        info = sf.info(row["wav"])
        duration = float(row["duration"])
        assert duration == pytest.approx(info.frames / info.samplerate,
                                         abs=1e-9)
        assert shortest <= duration <= longest
        wav = load_audio(row["wav"])
        assert wav.ndim == 1 and wav.dtype.is_floating_point
        assert len(wav) == math.ceil(info.frames * 16000 / info.samplerate)


@_each()
def test_bad_clips_are_reported_and_excluded(p, tmp_path, caplog):
    data = p.make(tmp_path / "data" / p.release)
    clean = _prepare_clean(p, data, tmp_path / "clean")
    # A damaged clip in every split (a second in train), one of each kind;
    # where valid.csv is a copy of test.csv, two test clips.
    bad = {}
    for split, kind in zip(("train", "valid", "test", "train"), CORRUPTIONS):
        wav = next(r["wav"] for r in clean[split] if r["wav"] not in bad)
        bad[wav] = kind
        corrupt_clip(wav, kind)
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        p.prepare(data, save, max_bad_fraction=0.1)
    report = (save / "bad_clips.log").read_text().splitlines()
    assert report[0].startswith(
        f"4 of {p.total} clips ({400 / p.total:.2f}%) are unusable"
    )
    reasons = dict(line.split("\t") for line in report[1:])
    assert sorted(reasons) == sorted(bad)
    for wav, kind in bad.items():
        assert re.fullmatch(REASONS[kind], reasons[wav]), (kind, reasons[wav])
    assert f"4 of {p.total} clips" in caplog.text
    # The other rows are those of the clean preparation, unchanged.
    for split in SPLITS:
        assert _read(p, save, split) == [
            r for r in clean[split] if r["wav"] not in bad
        ]


@_each()
def test_too_many_bad_clips_is_an_error(p, tmp_path):
    data = p.make(tmp_path / "data" / p.release)
    clips = _clips(_prepare_clean(p, data, tmp_path / "clean"))
    assert len(clips) == p.total
    bad = clips[:p.total // 100 + 1]  # just over the default 1%
    for wav in bad:
        corrupt_clip(wav, "zero_bytes")
    save = tmp_path / "save"
    counted = f"{len(bad)} of {p.total} clips ({100 * len(bad) / p.total:.2f}%)"
    with pytest.raises(RuntimeError, match=re.escape(counted)):
        p.prepare(data, save)  # default max_bad_fraction 0.01
    report = (save / "bad_clips.log").read_text()
    assert report.startswith(counted)
    assert all(f"{wav}\tcannot be decoded" in report for wav in bad)
    assert not any((save / f"{s}.csv").exists() for s in SPLITS)
    assert not (save / "preparation_settings.json").exists()


@pytest.mark.parametrize(
    "p, form", [(p, form) for p in PREPARERS for form in p.forms], ids=_id
)
def test_nothing_is_written_inside_data_folder(p, form, tmp_path):
    release = p.make(tmp_path / "data" / p.release)
    data = release if form == "release" else release.parent
    clips = _clips(_prepare_clean(p, data, tmp_path / "clean"))
    corrupt_clip(clips[3], "nan")  # a bad clips report is written too
    before = snapshot(data)
    p.prepare(data, tmp_path / "a", max_bad_fraction=0.1)
    p.prepare(data, tmp_path / "a", max_bad_fraction=0.1)
    changed = {k: v for change, _ in p.changes for k, v in change.items()}
    p.prepare(data, tmp_path / "b", max_bad_fraction=0.2, **changed)
    assert (tmp_path / "a" / "bad_clips.log").is_file()
    assert snapshot(data) == before
    for inside in (data / "prepared", release / p.subfolder / "prepared"):
        with pytest.raises(ValueError, match="inside data_folder"):
            p.prepare(data, inside)
    assert snapshot(data) == before


# -------------------------------------------------- settings-aware skipping
@_each()
def test_unchanged_settings_skip_and_changed_settings_redo(p, miniature,
                                                          tmp_path, caplog):
    data = miniature(p)
    save = tmp_path / "save"
    p.prepare(data, save)
    stamps = _stamps(save)
    caplog.set_level(logging.INFO)
    p.prepare(data, save)
    assert "skipping preparation" in caplog.text
    assert _stamps(save) == stamps

    # Each change prepares again, as a first preparation would.
    copy = shutil.copytree(data, tmp_path / "copy" / p.release)
    steps = list(p.changes) + [
        ({"max_bad_fraction": 0.5}, "'max_bad_fraction' changed: 0.01 -> 0.5"),
        ({"data_folder": copy},
         f"'data_folder' changed: {str(data)!r} -> {str(copy)!r}"),
    ]
    settings = {"data_folder": data}
    for i, (change, log) in enumerate(steps):
        settings.update(change)
        caplog.clear()
        p.prepare(save_folder=save, **settings)
        assert log in caplog.text and "skipping" not in caplog.text
        fresh = tmp_path / f"fresh{i}"
        p.prepare(save_folder=fresh, **settings)
        assert manifest_bytes(save) == manifest_bytes(fresh)
    assert all(r["wav"].startswith(str(copy))
               for s in SPLITS for r in _read(p, save, s))

    # A deleted manifest: prepared again.
    for split in SPLITS:
        os.remove(save / f"{split}.csv")
        caplog.clear()
        p.prepare(save_folder=save, **settings)
        assert "skipping" not in caplog.text
        assert manifest_bytes(save) == manifest_bytes(fresh)


# ------------------------------------------------- few-shot training sets
@pytest.mark.parametrize(
    "p, protocol",
    [(p, protocol) for p in PREPARERS for protocol in p.protocols or [None]],
    ids=_id,
)
def test_few_shot_random_is_seeded_and_leaves_valid_and_test(
    p, protocol, miniature, tmp_path
):
    data, n = miniature(p), p.few_shot
    settings = {"protocol": protocol} if protocol else {}
    full = tmp_path / "full"
    p.prepare(data, full, **settings)
    full_train = _read(p, full, "train")
    counts = collections.Counter(r["label"] for r in full_train)
    assert set(counts) == set(p.labels) and min(counts.values()) > n
    p.prepare(data, tmp_path / "first", few_shot=n, **settings)
    first = _read(p, tmp_path / "first", "train")
    picks = {}
    for seed in range(4):
        save = tmp_path / f"seed{seed}"
        p.prepare(data, save, few_shot=n, few_shot_sampling="random",
                  few_shot_seed=seed, **settings)
        train = _read(p, save, "train")
        assert train == [r for r in full_train if r in train]  # in order
        assert collections.Counter(r["label"] for r in train) == {
            label: n for label in p.labels
        }
        for split in ("valid", "test"):
            assert (save / f"{split}.csv").read_bytes() == (
                full / f"{split}.csv"
            ).read_bytes()
        picks[seed] = tuple(r["ID"] for r in train)
    again = tmp_path / "again"
    p.prepare(data, again, few_shot=n, few_shot_sampling="random",
              few_shot_seed=1, **settings)
    assert (again / "train.csv").read_bytes() == (
        tmp_path / "seed1" / "train.csv"
    ).read_bytes()
    # More clips per class than drawn: the seeds disagree, and none draws
    # the first n of each class (the draw is deterministic).
    assert len(set(picks.values())) > 1
    assert all(ids != tuple(r["ID"] for r in first) for ids in picks.values())


@_each()
def test_few_shot_settings_change_prepares_again(p, miniature, tmp_path,
                                                 caplog):
    data = miniature(p)
    save = tmp_path / "save"
    p.prepare(data, save)
    full = manifest_bytes(save)
    counts = _train_counts(p, save)
    caplog.set_level(logging.INFO)

    def run(expect, **few_shot):
        caplog.clear()
        p.prepare(data, save, **few_shot)
        assert expect in caplog.text
        if expect != "skipping preparation":
            assert "skipping" not in caplog.text
        return manifest_bytes(save)

    def kept(n):
        return sum(min(n, count) for count in counts.values())

    two = run("'few_shot' changed: None -> 2", few_shot=2)
    assert (f"few_shot=2 (first sampling): kept {kept(2)} of "
            f"{sum(counts.values())} training clips") in caplog.text
    assert len(_read(p, save, "train")) == kept(2)
    assert (two["valid"], two["test"]) == (full["valid"], full["test"])
    stamps = _stamps(save)
    run("skipping preparation", few_shot=2)
    # The seed does not matter to sampling="first": no need to redo.
    run("skipping preparation", few_shot=2, few_shot_seed=7)
    assert _stamps(save) == stamps
    three = run("'few_shot' changed: 2 -> 3", few_shot=3)
    assert len(_read(p, save, "train")) == kept(3)
    random0 = run("'few_shot_sampling' changed: 'first' -> 'random'",
                  few_shot=3, few_shot_sampling="random")
    run("skipping preparation", few_shot=3, few_shot_sampling="random")
    random5 = run("'few_shot_seed' changed: 0 -> 5", few_shot=3,
                  few_shot_sampling="random", few_shot_seed=5)
    assert random0["train"] != random5["train"]
    assert random0["valid"] == random5["valid"] == full["valid"]
    assert random0["test"] == random5["test"] == full["test"]
    assert run("'few_shot_sampling' changed: 'random' -> 'first'",
               few_shot=3) == three
    back = run("'few_shot' changed: 3 -> None")
    assert back == full
    settings = json.loads((save / "preparation_settings.json").read_text())
    assert (settings["few_shot"], settings["few_shot_sampling"],
            settings["few_shot_seed"]) == (None, None, None)


@_each()
def test_few_shot_larger_than_a_class_keeps_it_with_a_warning(
    p, miniature, tmp_path, caplog
):
    data = miniature(p)
    p.prepare(data, tmp_path / "full")
    counts = _train_counts(p, tmp_path / "full")
    n = max(counts.values()) + 1
    with caplog.at_level(logging.WARNING):
        p.prepare(data, tmp_path / "few", few_shot=n)
    # Every class is short: all kept, each class named with its count.
    assert manifest_bytes(tmp_path / "few") == manifest_bytes(tmp_path / "full")
    assert f"{len(counts)} class(es) have fewer than {n} training clips" in \
        caplog.text
    for label, count in counts.items():
        assert f"{label!r} ({count})" in caplog.text


# Bad few-shot options (the last one is the bad one), and their errors.
BAD_FEW_SHOT_OPTIONS = [
    *({"few_shot": shots} for shots in (0, -1, -3, 2.5, 1.0, True, "3")),
    *({"few_shot": 2, "few_shot_sampling": sampling}
      for sampling in ("last", "", "stratified", "First", "balanced")),
    {"few_shot": 2, "few_shot_seed": None},
    {"few_shot": 2, "few_shot_seed": 2.5},
    {"few_shot": 1, "few_shot_sampling": "random", "few_shot_seed": "1"},
]
FEW_SHOT_ERRORS = {
    "few_shot": "few_shot must be None",
    "few_shot_sampling": "few_shot_sampling must be one of",
    "few_shot_seed": "few_shot_seed must be an integer",
}


@pytest.mark.parametrize(
    "options", BAD_FEW_SHOT_OPTIONS,
    ids=lambda options: ",".join(f"{k}={v!r}" for k, v in options.items()),
)
@_each()
def test_bad_few_shot_options_are_clear_errors(p, options, miniature,
                                               tmp_path):
    name, bad = list(options.items())[-1]
    with pytest.raises(ValueError, match=FEW_SHOT_ERRORS[name]) as err:
        p.prepare(miniature(p), tmp_path / "save", **options)
    assert str(err.value).endswith(f", got {bad!r}")
    assert not (tmp_path / "save").exists()
