"""recipes/ESC50/esc50_prepare.py on a miniature ESC-50 in the real layout."""

import csv
import logging
import os

import pytest
import soundfile as sf

from mini_datasets import (
    ESC50_CATEGORIES,
    corrupt_clip,
    make_esc50,
)
from prep_utils import SPLITS, first_n_per_class, read_manifest, read_table
from recipe_utils import load_recipe_module

from speechbrain_petl.data import prepare

prep = load_recipe_module("ESC50", "esc50_prepare")
FIELDS = ["ID", "duration", "wav", "label", "target", "fold"]


def _read(save, split):
    return read_manifest(save, split, FIELDS)


def _folds(rows):
    return {int(r["fold"]) for r in rows}


@pytest.fixture(scope="module")
def esc50_ro(tmp_path_factory):
    """A miniature ESC-50 (4 classes, 2 clips per class and fold) shared by
    the tests that only read it."""
    return make_esc50(tmp_path_factory.mktemp("ro") / "ESC-50-master")


@pytest.fixture
def esc50(tmp_path):
    """A miniature ESC-50 of the test's own, which it may damage."""
    return make_esc50(tmp_path / "data" / "ESC-50-master")


def test_miniature_has_the_real_metadata_format(esc50_ro):
    lines = read_table(esc50_ro / "meta" / "esc50.csv", prep.META_COLUMNS)
    assert len(lines) == 4 * 10 == len(os.listdir(esc50_ro / "audio"))
    first = lines[0]
    assert first["filename"] == (
        f"{first['fold']}-{first['src_file']}-{first['take']}-"
        f"{first['target']}.wav"
    )
    assert {line["esc10"] for line in lines} == {"True", "False"}
    info = sf.info(esc50_ro / "audio" / first["filename"])
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        44100, 1, 5 * 44100, "PCM_16",
    )  # fmt: skip


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_rotation_protocol_folds(esc50_ro, tmp_path, fold):
    save = tmp_path / "save"
    prep.prepare_esc50(esc50_ro, save, fold=fold, protocol="rotation")
    data = {split: _read(save, split) for split in SPLITS}
    valid_fold = fold % 5 + 1
    assert _folds(data["test"]) == {fold}
    assert _folds(data["valid"]) == {valid_fold}
    assert _folds(data["train"]) == set(range(1, 6)) - {fold, valid_fold}
    assert [len(data[s]) for s in SPLITS] == [4 * 2 * 3, 4 * 2, 4 * 2]
    ids = [set(r["ID"] for r in data[s]) for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 40
    for row in (r for s in SPLITS for r in data[s]):
        name = os.path.basename(row["wav"])
        assert row["wav"] == str(esc50_ro / "audio" / name)
        assert row["ID"] == name[:-4]
        assert int(row["fold"]) == int(name.split("-")[0])
        assert int(row["target"]) == int(name[:-4].split("-")[-1])
        assert row["label"] == ESC50_CATEGORIES[int(row["target"])]
        assert float(row["duration"]) == 5.0
    # Every class is in every split.
    for split in SPLITS:
        assert {r["label"] for r in data[split]} == {
            "dog", "rooster", "pig", "cow"
        }


@pytest.mark.parametrize("fold", [1, 4])
def test_official_protocol_folds(esc50_ro, tmp_path, fold, caplog):
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_esc50(esc50_ro, save, fold=fold, protocol="official")
    train, test = _read(save, "train"), _read(save, "test")
    assert _folds(test) == {fold}
    assert _folds(train) == set(range(1, 6)) - {fold}
    assert (len(train), len(test)) == (32, 8)
    assert not {r["ID"] for r in train} & {r["ID"] for r in test}
    # No validation fold: valid.csv is test.csv, and a warning says so.
    assert (save / "valid.csv").read_bytes() == (save / "test.csv").read_bytes()
    assert "has no validation split" in caplog.text


def test_split_folds():
    assert prep.split_folds(1, "rotation") == {
        "train": [3, 4, 5], "valid": [2], "test": [1]
    }
    assert prep.split_folds(3, "official") == {
        "train": [1, 2, 4, 5], "valid": [3], "test": [3]
    }


def test_missing_audio_folder_or_clip_is_named(esc50, tmp_path):
    name = sorted(os.listdir(esc50 / "audio"))[5]
    os.remove(esc50 / "audio" / name)
    with pytest.raises(FileNotFoundError, match=f"1 clip.*missing.*{name}"):
        prep.prepare_esc50(esc50, tmp_path / "save")
    os.rename(esc50 / "audio", esc50 / "wavs")
    with pytest.raises(FileNotFoundError, match="expected audio/ at"):
        prep.prepare_esc50(esc50, tmp_path / "save")


def test_inconsistent_metadata_is_an_error(esc50, tmp_path):
    meta = esc50 / "meta" / "esc50.csv"
    lines = meta.read_text().splitlines()
    fields = lines[1].split(",")
    fields[1] = "3" if fields[1] != "3" else "2"  # fold column vs file name
    meta.write_text("\n".join([lines[0], ",".join(fields)] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        prep.prepare_esc50(esc50, tmp_path / "save")
    meta.write_text("filename,fold,target\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="lacks column"):
        prep.prepare_esc50(esc50, tmp_path / "save")


def test_interrupted_preparation_is_not_reused(esc50_ro, tmp_path,
                                               monkeypatch):
    save = tmp_path / "save"
    prep.prepare_esc50(esc50_ro, save, fold=1)
    written = []
    real_write = prepare.write_manifest

    def write_then_fail(path, rows, fieldnames):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, rows, fieldnames)

    monkeypatch.setattr(prepare, "write_manifest", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_esc50(esc50_ro, save, fold=3)
    monkeypatch.setattr(prepare, "write_manifest", real_write)
    # train.csv now holds fold-3 content: fold 1 must not be skipped.
    prep.prepare_esc50(esc50_ro, save, fold=1)
    assert _folds(_read(save, "train")) == {3, 4, 5}
    assert _folds(_read(save, "test")) == {1}


def test_all_fifty_classes(tmp_path):
    root = make_esc50(tmp_path / "esc50", classes=50, clips_per_class=5)
    prep.prepare_esc50(root, tmp_path / "save", fold=4)
    data = {split: _read(tmp_path / "save", split) for split in SPLITS}
    assert [len(data[s]) for s in SPLITS] == [150, 50, 50]
    for split in SPLITS:
        labels = {(r["label"], int(r["target"])) for r in data[split]}
        assert labels == {(c, t) for t, c in enumerate(ESC50_CATEGORIES)}


# ------------------------------------------------- few-shot training sets
def _meta_lines(root):
    with open(root / "meta" / "esc50.csv", newline="") as f:
        return list(csv.DictReader(f))




def test_few_shot_first_keeps_the_first_n_per_class_in_metadata_order(
    tmp_path, caplog
):
    # 4 clips per class and fold: 12 training clips per class, 4 valid, 4
    # test (more than few_shot, which must not touch them).
    esc50 = make_esc50(tmp_path / "data" / "ESC-50-master",
                       clips_per_class=20)
    # Reverse meta/esc50.csv (header kept): "first" must follow the file,
    # not the sorted file names. Then damage the first training clip of one
    # class: few-shot is applied after dropping unusable clips.
    meta = esc50 / "meta" / "esc50.csv"
    header, *lines = meta.read_text().splitlines()
    meta.write_text("\n".join([header] + lines[::-1]) + "\n")
    lines = _meta_lines(esc50)
    train_folds = {3, 4, 5}  # fold 1, rotation
    bad = next(line["filename"] for line in lines
               if int(line["fold"]) in train_folds
               and line["category"] == "pig")
    corrupt_clip(esc50 / "audio" / bad, "garbage")

    full, few = tmp_path / "full", tmp_path / "few"
    prep.prepare_esc50(esc50, full, fold=1, max_bad_fraction=0.02)
    caplog.set_level(logging.INFO)
    prep.prepare_esc50(esc50, few, fold=1, max_bad_fraction=0.02, few_shot=2)
    train = _read(few, "train")
    expected = first_n_per_class(lines, 2, train_folds, "filename", "category", skip={bad})
    assert [r["ID"] for r in train] == expected
    assert len(expected) == 8 and bad[:-4] not in expected
    assert sorted(expected) != expected  # the order is the file's
    # The kept rows are those of the full preparation, unchanged.
    assert train == [r for r in _read(full, "train") if r["ID"] in expected]
    assert "few_shot=2 (first sampling): kept 8 of 47 training clips" \
        in caplog.text
    for split in ("valid", "test"):
        assert (few / f"{split}.csv").read_bytes() == (
            full / f"{split}.csv"
        ).read_bytes()
