"""recipes/ESC50/esc50_prepare.py on a miniature ESC-50 in the real layout."""

import csv
import json
import logging
import os

import pytest
import soundfile as sf

from mini_datasets import (
    ESC50_CATEGORIES,
    corrupt_clip,
    make_esc50,
    snapshot,
)
from prep_utils import SPLITS, manifest_bytes, read_manifest
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
    with open(esc50_ro / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(prep.META_COLUMNS)
        lines = list(reader)
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


@pytest.mark.parametrize("fold", [0, 6, -1, "1", 1.0, True, None])
def test_invalid_fold_is_a_clear_error(esc50_ro, tmp_path, fold):
    with pytest.raises(ValueError, match="fold must be an integer from 1 to 5"):
        prep.prepare_esc50(esc50_ro, tmp_path / "save", fold=fold)
    assert not (tmp_path / "save").exists()


def test_invalid_protocol_is_a_clear_error(esc50_ro, tmp_path):
    with pytest.raises(ValueError, match="protocol must be one of"):
        prep.prepare_esc50(esc50_ro, tmp_path / "save", protocol="5-fold")


@pytest.mark.parametrize("where", ["empty", "parent", "audio"])
def test_wrong_data_folder_names_the_expected_file(esc50, tmp_path, where):
    data_folder = {
        "empty": tmp_path / "empty",
        "parent": esc50.parent,
        "audio": esc50 / "audio",
    }[where]
    data_folder.mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_esc50(data_folder, tmp_path / "save")
    assert str(err.value) == (
        f"ESC-50: expected meta/esc50.csv at "
        f"{data_folder / 'meta' / 'esc50.csv'} (not found); is data_folder "
        "the root of the ESC-50 release (containing audio/ and meta/)?"
    )
    assert not (tmp_path / "save").exists()


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


def test_bad_clips_are_reported_and_excluded(esc50, tmp_path, caplog):
    names = sorted(os.listdir(esc50 / "audio"))
    bad = {names[0]: "garbage", names[17]: "nan"}
    for name, kind in bad.items():
        corrupt_clip(esc50 / "audio" / name, kind)
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_esc50(esc50, save, max_bad_fraction=0.05)
    report = (save / "bad_clips.log").read_text().splitlines()
    assert report[0].startswith("2 of 40 clips (5.00%) are unusable")
    reasons = dict(line.split("\t") for line in report[1:])
    assert sorted(reasons) == [str(esc50 / "audio" / n) for n in sorted(bad)]
    assert "2 of 40 clips" in caplog.text
    kept = [r["ID"] + ".wav" for s in SPLITS for r in _read(save, s)]
    assert len(kept) == 38 and not set(kept) & set(bad)


def test_too_many_bad_clips_is_an_error(esc50, tmp_path):
    corrupt_clip(esc50 / "audio" / sorted(os.listdir(esc50 / "audio"))[3],
                 "empty")
    with pytest.raises(RuntimeError, match=r"1 of 40 clips \(2.50%\)"):
        prep.prepare_esc50(esc50, tmp_path / "save")  # default max 0.01
    assert "empty" in (tmp_path / "save" / "bad_clips.log").read_text()
    assert not (tmp_path / "save" / "train.csv").exists()


def test_unchanged_settings_skip_and_changed_fold_redoes(
    esc50_ro, tmp_path, caplog
):
    save = tmp_path / "save"
    prep.prepare_esc50(esc50_ro, save, fold=1)
    first = {s: (save / f"{s}.csv").read_text() for s in SPLITS}
    stamps = {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS}
    caplog.set_level(logging.INFO)
    prep.prepare_esc50(esc50_ro, save, fold=1)
    assert "skipping preparation" in caplog.text
    assert {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS} == stamps

    caplog.clear()
    prep.prepare_esc50(esc50_ro, save, fold=2)
    assert "'fold' changed: 1 -> 2" in caplog.text
    assert _folds(_read(save, "test")) == {2}
    assert all((save / f"{s}.csv").read_text() != first[s] for s in SPLITS)

    caplog.clear()
    prep.prepare_esc50(esc50_ro, save, fold=2, protocol="official")
    assert "'protocol' changed: 'rotation' -> 'official'" in caplog.text
    assert _folds(_read(save, "train")) == {1, 3, 4, 5}


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


def test_nothing_is_written_inside_data_folder(esc50_ro, tmp_path):
    before = snapshot(esc50_ro)
    prep.prepare_esc50(esc50_ro, tmp_path / "a", fold=5)
    prep.prepare_esc50(esc50_ro, tmp_path / "a", fold=5)
    prep.prepare_esc50(esc50_ro, tmp_path / "a", fold=2, protocol="official")
    with pytest.raises(ValueError, match="inside data_folder"):
        prep.prepare_esc50(esc50_ro, esc50_ro / "meta" / "prepared")
    assert snapshot(esc50_ro) == before


def test_all_fifty_classes(tmp_path):
    root = make_esc50(tmp_path / "esc50", classes=50, clips_per_class=5)
    prep.prepare_esc50(root, tmp_path / "save", fold=4)
    data = {split: _read(tmp_path / "save", split) for split in SPLITS}
    assert [len(data[s]) for s in SPLITS] == [150, 50, 50]
    for split in SPLITS:
        labels = {(r["label"], int(r["target"])) for r in data[split]}
        assert labels == {(c, t) for t, c in enumerate(ESC50_CATEGORIES)}


def test_skip_prep_does_nothing(tmp_path):
    prep.prepare_esc50(tmp_path / "nowhere", tmp_path / "save",
                       skip_prep=True)
    assert not (tmp_path / "save").exists()


# ------------------------------------------------- few-shot training sets
def _meta_lines(root):
    with open(root / "meta" / "esc50.csv", newline="") as f:
        return list(csv.DictReader(f))


def _first_n(lines, n, folds, skip=()):
    """IDs of the first ``n`` lines of each category among ``folds``, in
    the order of ``lines``, skipping the file names in ``skip``."""
    counts, ids = {}, []
    for line in lines:
        name, category = line["filename"], line["category"]
        if int(line["fold"]) in folds and name not in skip:
            if counts.get(category, 0) < n:
                counts[category] = counts.get(category, 0) + 1
                ids.append(name[:-4])
    return ids


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
    expected = _first_n(lines, 2, train_folds, skip={bad})
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


@pytest.mark.parametrize("protocol", ["rotation", "official"])
def test_few_shot_random_is_seeded_and_leaves_valid_and_test(
    esc50_ro, tmp_path, protocol
):
    full = tmp_path / "full"
    prep.prepare_esc50(esc50_ro, full, fold=2, protocol=protocol)
    full_train = _read(full, "train")
    picks = {}
    for seed in range(4):
        save = tmp_path / f"seed{seed}"
        prep.prepare_esc50(esc50_ro, save, fold=2, protocol=protocol,
                           few_shot=3, few_shot_sampling="random",
                           few_shot_seed=seed)
        train = _read(save, "train")
        assert train == [r for r in full_train if r in train]  # in order
        assert sorted(r["label"] for r in train) == sorted(
            ["dog", "rooster", "pig", "cow"] * 3
        )
        for split in ("valid", "test"):
            assert (save / f"{split}.csv").read_bytes() == (
                full / f"{split}.csv"
            ).read_bytes()
        picks[seed] = tuple(r["ID"] for r in train)
    again = tmp_path / "again"
    prep.prepare_esc50(esc50_ro, again, fold=2, protocol=protocol,
                       few_shot=3, few_shot_sampling="random",
                       few_shot_seed=1)
    assert (again / "train.csv").read_bytes() == (
        tmp_path / "seed1" / "train.csv"
    ).read_bytes()
    # 6 (rotation) or 8 (official) clips per class, 3 drawn: 4 seeds agree
    # on all 4 classes with a negligible chance; the draw is deterministic.
    assert len(set(picks.values())) > 1
    first = _first_n(_meta_lines(esc50_ro), 3,
                     set(prep.split_folds(2, protocol)["train"]))
    assert any(list(ids) != first for ids in picks.values())


def test_few_shot_settings_change_prepares_again(esc50_ro, tmp_path, caplog):
    save = tmp_path / "save"
    prep.prepare_esc50(esc50_ro, save, fold=1)
    full = manifest_bytes(save)
    caplog.set_level(logging.INFO)

    def run(expect, **few_shot):
        caplog.clear()
        prep.prepare_esc50(esc50_ro, save, fold=1, **few_shot)
        assert expect in caplog.text
        return manifest_bytes(save)

    two = run("'few_shot' changed: None -> 2", few_shot=2)
    assert len(_read(save, "train")) == 8
    assert (two["valid"], two["test"]) == (full["valid"], full["test"])
    stamps = {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS}
    run("skipping preparation", few_shot=2)
    # The seed does not matter to sampling="first": no need to redo.
    run("skipping preparation", few_shot=2, few_shot_seed=7)
    assert {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS} == \
        stamps
    run("'few_shot' changed: 2 -> 3", few_shot=3)
    assert len(_read(save, "train")) == 12
    random0 = run("'few_shot_sampling' changed: 'first' -> 'random'",
                  few_shot=3, few_shot_sampling="random")
    run("skipping preparation", few_shot=3, few_shot_sampling="random")
    random5 = run("'few_shot_seed' changed: 0 -> 5", few_shot=3,
                  few_shot_sampling="random", few_shot_seed=5)
    assert random0["train"] != random5["train"]
    assert random0["valid"] == random5["valid"] == full["valid"]
    back = run("'few_shot' changed: 3 -> None")
    assert back == full
    settings = json.loads((save / "preparation_settings.json").read_text())
    assert (settings["few_shot"], settings["few_shot_sampling"],
            settings["few_shot_seed"]) == (None, None, None)


def test_few_shot_larger_than_a_class_keeps_it_with_a_warning(
    esc50_ro, tmp_path, caplog
):
    prep.prepare_esc50(esc50_ro, tmp_path / "full", fold=1)
    with caplog.at_level(logging.WARNING):
        prep.prepare_esc50(esc50_ro, tmp_path / "few", fold=1, few_shot=7)
    # 6 training clips per class (2 per fold): all kept, each class named.
    few, full = tmp_path / "few", tmp_path / "full"
    assert manifest_bytes(few) == manifest_bytes(full)
    assert "4 class(es) have fewer than 7 training clips" in caplog.text
    for category in ("dog", "rooster", "pig", "cow"):
        assert f"'{category}' (6)" in caplog.text


@pytest.mark.parametrize(
    "options, match",
    [
        ({"few_shot": 0}, "few_shot must be None"),
        ({"few_shot": 2.5}, "few_shot must be None"),
        ({"few_shot": 2, "few_shot_sampling": "last"}, "few_shot_sampling"),
        ({"few_shot": 2, "few_shot_seed": None}, "few_shot_seed"),
    ],
)
def test_bad_few_shot_options_are_clear_errors(esc50_ro, tmp_path, options,
                                               match):
    with pytest.raises(ValueError, match=match):
        prep.prepare_esc50(esc50_ro, tmp_path / "save", **options)
    assert not (tmp_path / "save").exists()
