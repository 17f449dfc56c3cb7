"""recipes/Google-speech-commands/PETL/speech_commands_prepare.py on a miniature Speech
Commands v0.02 in the real layout."""

import logging
import os

import pytest
import soundfile as sf

from mini_datasets import GSC_WORDS, corrupt_clip, make_speech_commands
from prep_utils import SPLITS, read_manifest
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
