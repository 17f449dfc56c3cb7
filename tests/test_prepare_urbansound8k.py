"""recipes/UrbanSound8k/urbansound8k_prepare.py on a miniature UrbanSound8K
in the real layout, with the real dataset's variety of WAV formats."""

import csv
import itertools
import logging
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from mini_datasets import (
    CORRUPTIONS,
    US8K_CLASSES,
    US8K_FORMATS,
    corrupt_clip,
    make_urbansound8k,
    us8k_frequency,
)
from prep_utils import SPLITS, first_n_per_class, read_manifest, read_table
from recipe_utils import load_recipe_module
from speechbrain_petl.data import load_audio

prep = load_recipe_module("UrbanSound8k", "urbansound8k_prepare")
FIELDS = ["ID", "duration", "wav", "label", "classID", "fold"]
ALL_FOLDS = set(range(1, 11))


def _read(save, split):
    return read_manifest(save, split, FIELDS)


def _folds(rows):
    return {int(r["fold"]) for r in rows}


def _meta(root):
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        return list(csv.DictReader(f))


def _clip(root, line):
    return root / "audio" / f"fold{line['fold']}" / line["slice_file_name"]


@pytest.fixture(scope="module")
def us8k_ro(tmp_path_factory):
    """A miniature UrbanSound8K (4 classes, one clip per class and fold)
    shared by the tests that only read it."""
    return make_urbansound8k(tmp_path_factory.mktemp("ro") / "UrbanSound8K")


@pytest.fixture
def us8k(tmp_path):
    """A miniature UrbanSound8K of the test's own, which it may damage."""
    return make_urbansound8k(tmp_path / "data" / "UrbanSound8K")


def test_miniature_has_the_real_layout_and_format_variety(us8k_ro):
    lines = read_table(us8k_ro / "metadata" / "UrbanSound8K.csv", prep.META_COLUMNS)
    assert len(lines) == 40
    assert [line["slice_file_name"] for line in lines] == sorted(
        line["slice_file_name"] for line in lines
    )
    assert {(line["class"], int(line["fold"])) for line in lines} == {
        (c, k) for c in US8K_CLASSES[:4] for k in ALL_FOLDS
    }
    formats, short = set(), set()
    for line in lines:
        fs_id, class_id = line["slice_file_name"].split("-")[:2]
        assert (fs_id, class_id) == (line["fsID"], line["classID"])
        assert US8K_CLASSES[int(class_id)] == line["class"]
        info = sf.info(_clip(us8k_ro, line))
        variant = (info.samplerate, info.subtype, info.channels, info.format)
        formats.add(variant)
        assert info.frames <= 4 * info.samplerate
        if info.frames < 4 * info.samplerate:
            short.add(variant)
    # Every format of the real dataset, each both at 4 s and shorter.
    assert formats == short == set(US8K_FORMATS)
    assert {rate for rate, *_ in formats} >= {8000, 22050, 44100, 48000,
                                              96000}
    assert {sub for _, sub, *_ in formats} >= {"PCM_U8", "PCM_16", "PCM_24",
                                               "FLOAT"}
    assert {ch for _, _, ch, _ in formats} == {1, 2}
    assert (us8k_ro / "audio" / "fold1" / ".DS_Store").is_file()


def _format(path):
    info = sf.info(path)
    return (info.samplerate, info.subtype, info.channels, info.format)


def _peak_frequency(wav, rate):
    spectrum = np.abs(np.fft.rfft(wav.numpy() * np.hanning(len(wav))))
    return np.fft.rfftfreq(len(wav), 1 / rate)[int(np.argmax(spectrum))]


@pytest.mark.parametrize("variant", US8K_FORMATS,
                         ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}ch-{v[3]}")
def test_every_format_variant_loads_at_16k_mono(us8k_ro, tmp_path, variant):
    save = tmp_path / "save"
    prep.prepare_urbansound8k(us8k_ro, save, fold=1, protocol="paper")
    rows = [r for s in ("train", "test") for r in _read(save, s)]
    assert len(rows) == 40
    checked = 0
    for row in rows:
        if _format(row["wav"]) != variant:
            continue
        info = sf.info(row["wav"])
        assert float(row["duration"]) == pytest.approx(
            info.frames / info.samplerate, abs=1e-9
        )
        wav = load_audio(row["wav"])
        assert wav.ndim == 1 and wav.dtype.is_floating_point
        assert len(wav) == math.ceil(info.frames * 16000 / info.samplerate)
        assert bool(wav.isfinite().all()) and 0.05 < float(wav.abs().max()) < 1
        # The class's tone survives decoding, down-mixing and resampling.
        resolution = 16000 / len(wav)
        assert abs(
            _peak_frequency(wav, 16000) - us8k_frequency(int(row["classID"]))
        ) <= 2 * resolution
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("fold", [1, 4, 10])
def test_paper_protocol_folds(us8k_ro, tmp_path, fold, caplog):
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_urbansound8k(us8k_ro, save, fold=fold, protocol="paper")
    train, test = _read(save, "train"), _read(save, "test")
    assert _folds(test) == {fold}
    assert _folds(train) == ALL_FOLDS - {fold}
    assert (len(train), len(test)) == (36, 4)
    assert not {r["ID"] for r in train} & {r["ID"] for r in test}
    # No validation fold: valid.csv is test.csv, and a warning says so.
    assert (save / "valid.csv").read_bytes() == (save / "test.csv").read_bytes()
    assert (
        "no validation split: valid.csv is a copy of test.csv" in caplog.text
    )


@pytest.mark.parametrize("fold", [1, 5, 9, 10])
def test_validation_protocol_folds(us8k_ro, tmp_path, fold, caplog):
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_urbansound8k(us8k_ro, save, fold=fold,
                                  protocol="validation")
    assert "no validation split" not in caplog.text
    data = {split: _read(save, split) for split in SPLITS}
    valid_fold = fold % 10 + 1
    assert _folds(data["test"]) == {fold}
    assert _folds(data["valid"]) == {valid_fold}
    assert _folds(data["train"]) == ALL_FOLDS - {fold, valid_fold}
    assert [len(data[s]) for s in SPLITS] == [32, 4, 4]
    ids = [{r["ID"] for r in data[s]} for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 40
    meta = {line["slice_file_name"]: line for line in _meta(us8k_ro)}
    for row in (r for s in SPLITS for r in data[s]):
        line = meta[row["ID"] + ".wav"]
        assert row["wav"] == str(_clip(us8k_ro, line))
        assert row["label"] == line["class"]
        assert row["classID"] == line["classID"]
        assert row["fold"] == line["fold"]
    for split in SPLITS:
        assert {r["label"] for r in data[split]} == set(US8K_CLASSES[:4])


def test_defaults_are_fold_10_paper_protocol(us8k_ro, tmp_path):
    prep.prepare_urbansound8k(us8k_ro, tmp_path / "save")
    assert _folds(_read(tmp_path / "save", "test")) == {10}
    assert _folds(_read(tmp_path / "save", "valid")) == {10}
    assert _folds(_read(tmp_path / "save", "train")) == set(range(1, 10))


def test_split_folds():
    for fold in range(1, 11):
        paper = prep.split_folds(fold, "paper")
        assert paper == {
            "train": sorted(ALL_FOLDS - {fold}), "valid": [fold],
            "test": [fold],
        }
        valid = prep.split_folds(fold, "validation")
        assert valid["test"] == [fold]
        assert valid["valid"] == [1 if fold == 10 else fold + 1]
        assert set(valid["train"]) == ALL_FOLDS - {fold, valid["valid"][0]}
        assert len(valid["train"]) == 8


def test_missing_fold_folder_or_clip_is_named(us8k, tmp_path):
    line = _meta(us8k)[7]
    os.remove(_clip(us8k, line))
    name = line["slice_file_name"]
    with pytest.raises(FileNotFoundError,
                       match=f"1 clip.*missing.*fold{line['fold']}/{name}"):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")
    shutil.rmtree(us8k / "audio" / "fold6")
    with pytest.raises(FileNotFoundError, match="expected audio/fold6/ at"):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")
    assert not (tmp_path / "save").exists()


def test_clip_in_the_wrong_fold_folder_is_missing(us8k, tmp_path):
    line = _meta(us8k)[0]
    other = 1 if line["fold"] != "1" else 2
    os.rename(_clip(us8k, line),
              us8k / "audio" / f"fold{other}" / line["slice_file_name"])
    with pytest.raises(FileNotFoundError, match="1 clip"):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")


def _rewrite_meta(root, change):
    lines = _meta(root)
    change(lines)
    path = root / "metadata" / "UrbanSound8K.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(prep.META_COLUMNS),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("classID", "7", "line 3 .*classID 7"),
        ("class", "siren", "line 3 .*'siren' here but"),
        ("fold", "11", "line 3 .*out of range"),
        ("fold", "x", "line 3 .*must be integers"),
    ],
)
def test_inconsistent_metadata_is_an_error(us8k, tmp_path, column, value,
                                           message):
    lines = _meta(us8k)
    # Line 3 of the file must clash with an earlier line of the same class.
    first_class = lines[0]["classID"]
    index = next(i for i, line in enumerate(lines)
                 if i > 0 and line["classID"] == first_class)

    def change(lines):
        lines.insert(1, lines.pop(index))
        lines[1][column] = value

    _rewrite_meta(us8k, change)
    with pytest.raises(ValueError, match=message):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")


def test_metadata_without_a_column_is_an_error(us8k, tmp_path):
    (us8k / "metadata" / "UrbanSound8K.csv").write_text(
        "slice_file_name,fsID,fold,class\n100-3-0-0.wav,100,1,dog_bark\n"
    )
    with pytest.raises(ValueError, match=r"lacks column\(s\).*classID"):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")


def test_a_damaged_clip_of_any_format_is_reported(us8k, tmp_path):
    # One damaged clip of each format variant (8-bit, 24-bit stereo,
    # float...), the kinds of damage in turn.
    lines = _meta(us8k)
    bad = {}
    for variant, kind in zip(US8K_FORMATS, itertools.cycle(CORRUPTIONS)):
        path = next(str(_clip(us8k, line)) for line in lines
                    if _format(_clip(us8k, line)) == variant)
        bad[path] = kind
    for path, kind in bad.items():
        corrupt_clip(path, kind)
    save = tmp_path / "save"
    prep.prepare_urbansound8k(us8k, save, max_bad_fraction=0.25)
    report = (save / "bad_clips.log").read_text().splitlines()
    assert report[0].startswith("10 of 40 clips (25.00%) are unusable")
    reasons = dict(line.split("\t") for line in report[1:])
    assert sorted(reasons) == sorted(bad)
    for path, kind in bad.items():
        expected = {
            "garbage": "cannot be decoded: ",
            "zero_bytes": "cannot be decoded: ",
            "empty": "empty",
            "nan": "non-finite samples",
        }[kind]
        assert reasons[path].startswith(expected)
    kept = {r["wav"] for s in ("train", "test") for r in _read(save, s)}
    assert len(kept) == 30 and not kept & set(bad)


def test_unlisted_clips_are_ignored_with_a_warning(us8k, tmp_path, caplog):
    shutil.copy(_clip(us8k, _meta(us8k)[0]),
                us8k / "audio" / "fold2" / "999999-3-0-0.wav")
    with caplog.at_level(logging.WARNING):
        prep.prepare_urbansound8k(us8k, tmp_path / "save")
    assert "ignoring 1 file(s)" in caplog.text
    assert "fold2/999999-3-0-0.wav" in caplog.text
    assert ".DS_Store" not in caplog.text
    rows = [r for s in ("train", "test") for r in _read(tmp_path / "save", s)]
    assert len(rows) == 40 and "999999-3-0-0" not in {r["ID"] for r in rows}


def test_all_ten_classes(tmp_path):
    root = make_urbansound8k(tmp_path / "us8k", classes=10, seed=3)
    prep.prepare_urbansound8k(root, tmp_path / "save", fold=7,
                              protocol="validation")
    data = {split: _read(tmp_path / "save", split) for split in SPLITS}
    assert [len(data[s]) for s in SPLITS] == [80, 10, 10]
    for split in SPLITS:
        labels = {(r["label"], int(r["classID"])) for r in data[split]}
        assert labels == {(c, i) for i, c in enumerate(US8K_CLASSES)}


# ------------------------------------------------- few-shot training sets


def test_few_shot_first_keeps_the_first_n_per_class_in_metadata_order(
    tmp_path, caplog
):
    # 3 clips per class and fold: valid/test (fold 10) hold more than
    # few_shot clips per class, and must be left alone.
    us8k = make_urbansound8k(tmp_path / "data" / "UrbanSound8K",
                             clips_per_class=30)
    # Reversed metadata: "first" follows the file, not sorted file names;
    # a damaged first training clip is replaced by the class's next one.
    _rewrite_meta(us8k, lambda lines: lines.reverse())
    lines = _meta(us8k)
    bad = next(line for line in lines
               if line["fold"] != "10" and line["classID"] == "1")
    corrupt_clip(_clip(us8k, bad), "nan")
    full, few = tmp_path / "full", tmp_path / "few"
    prep.prepare_urbansound8k(us8k, full, max_bad_fraction=0.02)
    caplog.set_level(logging.INFO)
    prep.prepare_urbansound8k(us8k, few, max_bad_fraction=0.02, few_shot=2)
    train = _read(few, "train")
    expected = first_n_per_class(lines, 2, set(range(1, 10)), "slice_file_name", "class",
                                 skip={bad["slice_file_name"]})
    assert [r["ID"] for r in train] == expected and len(expected) == 8
    assert sorted(expected) != expected
    assert train == [r for r in _read(full, "train") if r["ID"] in expected]
    assert "kept 8 of 107 training clips" in caplog.text
    for split in ("valid", "test"):
        assert (few / f"{split}.csv").read_bytes() == (
            full / f"{split}.csv"
        ).read_bytes()
