"""recipes/Google-speech-commands/PETL/speech_commands_prepare.py on a miniature Speech
Commands v0.02 in the real layout."""

import logging
import os
import shutil

import pytest
import soundfile as sf

from mini_datasets import GSC_WORDS, corrupt_clip, make_speech_commands, snapshot
from prep_utils import SPLITS, manifest_bytes, read_manifest
from recipe_utils import load_recipe_module

prep = load_recipe_module("Google-speech-commands", "speech_commands_prepare")
FIELDS = ["ID", "duration", "wav", "label", "speaker"]


def _read(save, split):
    return read_manifest(save, split, FIELDS)


def _list(root, name):
    return (root / name).read_text().split()


@pytest.fixture
def gsc(tmp_path):
    return make_speech_commands(tmp_path / "data" / "speech_commands_v0.02")


def test_word_list_matches_the_fixture():
    assert prep.WORDS == GSC_WORDS and len(set(GSC_WORDS)) == 35


def test_splits_follow_the_list_files(gsc, tmp_path):
    save = tmp_path / "save"
    prep.prepare_speech_commands(str(gsc), str(save))
    data = {split: _read(save, split) for split in SPLITS}
    # Each listed clip is where its list puts it; the rest is training data.
    listed = {
        "valid": _list(gsc, "validation_list.txt"),
        "test": _list(gsc, "testing_list.txt"),
    }
    all_clips = sorted(
        f"{w}/{n}" for w in GSC_WORDS for n in os.listdir(gsc / w)
    )
    listed["train"] = sorted(
        set(all_clips) - set(listed["valid"]) - set(listed["test"])
    )
    for split in SPLITS:
        rel = sorted(os.path.relpath(r["wav"], gsc) for r in data[split])
        assert rel == sorted(listed[split]), split
    # Default miniature: 3 clips per word, one per split.
    assert [len(data[s]) for s in SPLITS] == [35, 35, 35]
    ids = [r["ID"] for s in SPLITS for r in data[s]]
    assert len(ids) == len(set(ids)) == 105
    assert not any("_background_noise_" in r["wav"]
                   for s in SPLITS for r in data[s])
    for row in (r for s in SPLITS for r in data[s]):
        word, name = os.path.relpath(row["wav"], gsc).split(os.sep)
        assert os.path.isabs(row["wav"]) and os.path.isfile(row["wav"])
        assert row["label"] == word
        assert row["ID"] == f"{word}_{name[:-4]}"
        assert row["speaker"] == name.split("_nohash_")[0]
        assert len(row["speaker"]) == 8
        assert float(row["duration"]) == sf.info(row["wav"]).duration
        assert 0.5 <= float(row["duration"]) <= 1.0
    # Speakers never cross splits.
    speakers = [{r["speaker"] for r in data[s]} for s in SPLITS]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2]
                or speakers[1] & speakers[2])


def test_larger_miniature_split_sizes(tmp_path):
    root = make_speech_commands(
        tmp_path / "gsc", words=GSC_WORDS, clips_per_word=6,
        valid_per_word=2, test_per_word=1,
    )
    prep.prepare_speech_commands(root, tmp_path / "save")
    sizes = [len(_read(tmp_path / "save", s)) for s in SPLITS]
    assert sizes == [35 * 3, 35 * 2, 35 * 1]


@pytest.mark.parametrize("where", ["empty", "parent", "word_folder"])
def test_wrong_data_folder_names_the_expected_file(gsc, tmp_path, where):
    data_folder = {
        "empty": tmp_path / "empty",
        "parent": gsc.parent,
        "word_folder": gsc / "yes",
    }[where]
    data_folder.mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_speech_commands(data_folder, tmp_path / "save")
    message = str(err.value)
    assert f"expected validation_list.txt at {data_folder}" in message
    assert "testing_list.txt" in message  # the layout hint
    assert not (tmp_path / "save").exists()


def test_missing_word_folder_is_named(tmp_path):
    words = [w for w in GSC_WORDS if w != "learn"]
    root = make_speech_commands(tmp_path / "gsc", words=words)
    with pytest.raises(FileNotFoundError, match=r"expected learn/ at .*learn"):
        prep.prepare_speech_commands(root, tmp_path / "save")


def test_missing_listed_clip_is_named(gsc, tmp_path):
    entry = _list(gsc, "testing_list.txt")[7]
    os.remove(gsc / entry)
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_speech_commands(gsc, tmp_path / "save")
    assert "testing_list.txt line 8" in str(err.value)
    assert entry in str(err.value)


def test_malformed_or_doubly_listed_entries_are_errors(gsc, tmp_path):
    original = (gsc / "testing_list.txt").read_text()
    (gsc / "testing_list.txt").write_text(original + "unknown/x_nohash_0.wav\n")
    with pytest.raises(ValueError, match="unknown/x_nohash_0.wav"):
        prep.prepare_speech_commands(gsc, tmp_path / "save")
    first_valid = _list(gsc, "validation_list.txt")[0]
    (gsc / "testing_list.txt").write_text(original + first_valid + "\n")
    with pytest.raises(ValueError, match="listed in both"):
        prep.prepare_speech_commands(gsc, tmp_path / "save")


def test_bad_clips_are_reported_and_excluded(gsc, tmp_path, caplog):
    valid_entry = _list(gsc, "validation_list.txt")[3]
    test_entry = _list(gsc, "testing_list.txt")[4]
    listed = set(_list(gsc, "validation_list.txt") + _list(gsc, "testing_list.txt"))
    train_clip = next(
        n for n in sorted(os.listdir(gsc / "zero")) if f"zero/{n}" not in listed
    )
    bad = {
        f"zero/{train_clip}": "garbage",
        valid_entry: "empty",
        test_entry: "nan",
    }
    for rel, kind in bad.items():
        corrupt_clip(gsc / rel, kind)
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_speech_commands(gsc, save, max_bad_fraction=0.05)
    report = (save / "bad_clips.log").read_text().splitlines()
    assert report[0].startswith("3 of 105 clips (2.86%) are unusable")
    reasons = dict(line.split("\t") for line in report[1:])
    assert sorted(reasons) == sorted(str(gsc / rel) for rel in bad)
    assert reasons[str(gsc / valid_entry)] == "empty"
    assert reasons[str(gsc / test_entry)].startswith("non-finite samples")
    assert reasons[str(gsc / "zero" / train_clip)].startswith(
        "cannot be decoded: "
    )
    assert "3 of 105 clips" in caplog.text
    kept = {r["wav"] for s in SPLITS for r in _read(save, s)}
    assert len(kept) == 102 and not kept & set(reasons)
    assert [len(_read(save, s)) for s in SPLITS] == [34, 34, 34]


def test_too_many_bad_clips_is_an_error(gsc, tmp_path):
    for word in ("bed", "bird"):
        corrupt_clip(gsc / word / sorted(os.listdir(gsc / word))[0], "garbage")
    save = tmp_path / "save"
    with pytest.raises(RuntimeError, match=r"2 of 105 clips \(1.90%\)"):
        prep.prepare_speech_commands(gsc, save)  # default max 0.01
    assert "2 of 105" in (save / "bad_clips.log").read_text()
    assert not any((save / f"{s}.csv").exists() for s in SPLITS)
    assert not (save / "preparation_settings.json").exists()


def test_unchanged_settings_skip_and_changed_settings_redo(
    gsc, tmp_path, caplog
):
    save = tmp_path / "save"
    prep.prepare_speech_commands(gsc, save)
    stamps = {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS}
    caplog.set_level(logging.INFO)
    caplog.clear()
    prep.prepare_speech_commands(gsc, save)
    assert "skipping preparation" in caplog.text
    assert {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS} == stamps

    # Another data folder (a copy): prepared again, pointing at the copy.
    copy = shutil.copytree(gsc, tmp_path / "copy")
    caplog.clear()
    prep.prepare_speech_commands(copy, save)
    assert "'data_folder' changed" in caplog.text
    assert all(r["wav"].startswith(str(copy)) for r in _read(save, "train"))

    # Another max_bad_fraction: prepared again.
    caplog.clear()
    prep.prepare_speech_commands(copy, save, max_bad_fraction=0.5)
    assert "'max_bad_fraction' changed: 0.01 -> 0.5" in caplog.text
    assert "skipping" not in caplog.text

    # A deleted manifest: prepared again.
    os.remove(save / "valid.csv")
    prep.prepare_speech_commands(copy, save, max_bad_fraction=0.5)
    assert len(_read(save, "valid")) == 35


def test_nothing_is_written_inside_data_folder(gsc, tmp_path):
    corrupt_clip(gsc / _list(gsc, "testing_list.txt")[0], "nan")
    before = snapshot(gsc)
    prep.prepare_speech_commands(gsc, tmp_path / "save", max_bad_fraction=0.5)
    prep.prepare_speech_commands(gsc, tmp_path / "save", max_bad_fraction=0.5)
    prep.prepare_speech_commands(gsc, tmp_path / "save2", max_bad_fraction=0.2)
    assert snapshot(gsc) == before
    with pytest.raises(ValueError, match="inside data_folder"):
        prep.prepare_speech_commands(gsc, gsc / "save")
    assert snapshot(gsc) == before


def test_skip_prep_does_nothing(tmp_path):
    prep.prepare_speech_commands(tmp_path / "nowhere", tmp_path / "save",
                                 skip_prep=True)
    assert not (tmp_path / "save").exists()


def test_stray_files_and_folders_are_ignored_with_a_warning(gsc, tmp_path,
                                                            caplog):
    (gsc / "yes" / "._0a2b400e_nohash_0.wav").write_bytes(b"\x00\x05\x16")
    (gsc / "yes" / "notes.txt").write_text("x")
    (gsc / "extra_word").mkdir()
    with caplog.at_level(logging.WARNING):
        prep.prepare_speech_commands(gsc, tmp_path / "save")
    assert "._0a2b400e_nohash_0.wav, notes.txt" in caplog.text
    assert "extra_word" in caplog.text
    assert not (tmp_path / "save" / "bad_clips.log").exists()
    assert len(_read(tmp_path / "save", "train")) == 35


# ------------------------------------------------- few-shot training sets
def _gsc6(root):
    """Six clips per word: four training clips, one valid, one test."""
    return make_speech_commands(root, clips_per_word=6, valid_per_word=1,
                                test_per_word=1)


@pytest.fixture(scope="module")
def gsc6_ro(tmp_path_factory):
    return _gsc6(tmp_path_factory.mktemp("ro6") / "speech_commands_v0.02")


def _first_n(root, n, skip=()):
    """IDs of the first ``n`` training clips of each word, by file name."""
    listed = set(_list(root, "validation_list.txt")
                 + _list(root, "testing_list.txt"))
    ids = []
    for word in GSC_WORDS:
        names = [name for name in sorted(os.listdir(root / word))
                 if f"{word}/{name}" not in listed
                 and f"{word}/{name}" not in skip]
        ids += [f"{word}_{name[:-4]}" for name in names[:n]]
    return ids


def test_few_shot_first_keeps_the_first_n_training_clips_of_each_word(
    tmp_path, caplog
):
    # 4 training, 3 valid and 3 test clips per word: valid/test hold more
    # than few_shot clips per word, and must be left alone.
    root = make_speech_commands(
        tmp_path / "data" / "speech_commands_v0.02", clips_per_word=10,
        valid_per_word=3, test_per_word=3,
    )
    # A damaged first training clip is replaced by the word's next one.
    bad = "yes/" + _first_n(root, 1)[GSC_WORDS.index("yes")][4:] + ".wav"
    corrupt_clip(root / bad, "zero_bytes")
    full, few = tmp_path / "full", tmp_path / "few"
    prep.prepare_speech_commands(root, full)
    caplog.set_level(logging.INFO)
    prep.prepare_speech_commands(root, few, few_shot=2)
    train = _read(few, "train")
    expected = _first_n(root, 2, skip={bad})
    assert [r["ID"] for r in train] == expected and len(expected) == 70
    assert bad[4:-4] not in {r["ID"][4:] for r in train if r["label"] == "yes"}
    assert train == [r for r in _read(full, "train") if r["ID"] in expected]
    assert "kept 70 of 139 training clips" in caplog.text
    for split in ("valid", "test"):
        assert (few / f"{split}.csv").read_bytes() == (
            full / f"{split}.csv"
        ).read_bytes()


def test_few_shot_random_settings_and_short_words(gsc6_ro, tmp_path, caplog):
    save = tmp_path / "save"
    prep.prepare_speech_commands(gsc6_ro, save)
    full = manifest_bytes(save)
    full_train = _read(save, "train")
    caplog.set_level(logging.INFO)
    caplog.clear()
    prep.prepare_speech_commands(gsc6_ro, save, few_shot=1,
                                 few_shot_sampling="random")
    assert "'few_shot' changed: None -> 1" in caplog.text
    seed0 = _read(save, "train")
    assert [r["label"] for r in seed0] == list(GSC_WORDS)
    assert seed0 == [r for r in full_train if r in seed0]
    for split in ("valid", "test"):
        assert (save / f"{split}.csv").read_bytes() == full[split]
    caplog.clear()
    prep.prepare_speech_commands(gsc6_ro, tmp_path / "other", few_shot=1,
                                 few_shot_sampling="random", few_shot_seed=0)
    assert (tmp_path / "other" / "train.csv").read_bytes() == (
        save / "train.csv"
    ).read_bytes()
    caplog.clear()
    prep.prepare_speech_commands(gsc6_ro, save, few_shot=1,
                                 few_shot_sampling="random", few_shot_seed=1)
    assert "'few_shot_seed' changed: 0 -> 1" in caplog.text
    # One of 4 clips for each of 35 words: two seeds cannot plausibly agree
    # on all of them (and the draw is deterministic).
    assert _read(save, "train") != seed0

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prep.prepare_speech_commands(gsc6_ro, save, few_shot=5)
    assert "35 class(es) have fewer than 5 training clips" in caplog.text
    assert "'backward' (4)" in caplog.text and "'zero' (4)" in caplog.text
    assert manifest_bytes(save) == full


@pytest.mark.parametrize(
    "options, match",
    [
        ({"few_shot": 0}, "few_shot must be None"),
        ({"few_shot": "3"}, "few_shot must be None"),
        ({"few_shot": 1, "few_shot_sampling": "First"},
         "few_shot_sampling must be one of"),
        ({"few_shot": 1, "few_shot_sampling": "random",
          "few_shot_seed": "1"}, "few_shot_seed must be an integer"),
    ],
)  # fmt: skip
def test_bad_few_shot_options_are_clear_errors(gsc6_ro, tmp_path, options,
                                               match):
    with pytest.raises(ValueError, match=match):
        prep.prepare_speech_commands(gsc6_ro, tmp_path / "save", **options)
    assert not (tmp_path / "save").exists()
