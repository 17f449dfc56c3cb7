"""recipes/fluent-speech-commands/PETL/fluent_speech_commands_prepare.py on a
miniature Fluent Speech Commands in the real layout."""

import csv
import logging
import os

import pytest
import soundfile as sf

from mini_datasets import (
    FSC_CSV_COLUMNS,
    FSC_DEFAULT_INTENTS,
    FSC_INTENTS,
    corrupt_clip,
    fsc_intent,
    make_fluent_speech_commands,
)
from prep_utils import SPLITS, read_manifest
from recipe_utils import load_recipe_module

prep = load_recipe_module(
    "fluent-speech-commands", "fluent_speech_commands_prepare"
)
FIELDS = ["ID", "duration", "wav", "label", "speaker", "transcription"]


def _read(save, split):
    return read_manifest(save, split, FIELDS)


def _source(root, split):
    """The lines of data/<split>_data.csv, as dicts."""
    with open(root / "data" / f"{split}_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_source(root, split, lines, header=FSC_CSV_COLUMNS):
    with open(root / "data" / f"{split}_data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)


@pytest.fixture(scope="module")
def fsc_ro(tmp_path_factory):
    """A miniature FSC (4 intents; 3, 1, 1 speakers; 2 takes) shared by the
    tests that only read it."""
    return make_fluent_speech_commands(
        tmp_path_factory.mktemp("ro") / "fluent_speech_commands_dataset"
    )


@pytest.fixture
def fsc(tmp_path):
    """A miniature FSC of the test's own, which it may damage."""
    return make_fluent_speech_commands(
        tmp_path / "data" / "fluent_speech_commands_dataset"
    )


def test_miniature_has_the_real_csv_format(fsc_ro):
    for split, n in zip(SPLITS, (24, 8, 8)):
        text = (fsc_ro / "data" / f"{split}_data.csv").read_text()
        lines = text.splitlines()
        assert lines[0] == ",path,speakerId,transcription,action,object,location"
        assert len(lines) == n + 1
        rows = _source(fsc_ro, split)
        assert [r[""] for r in rows] == [str(i) for i in range(n)]
        for row in rows:
            speaker = row["speakerId"]
            assert len(speaker) == 16 and speaker.isalnum()
            assert row["path"].startswith(f"wavs/speakers/{speaker}/")
            info = sf.info(fsc_ro / row["path"])
            assert (info.samplerate, info.channels, info.subtype) == (
                16000, 1, "PCM_16"
            )
    # Transcriptions holding a comma are quoted, as pandas writes them.
    assert '"Lights on in the kitchen, please"' in (
        fsc_ro / "data" / "train_data.csv"
    ).read_text()


def test_splits_follow_the_csv_files(fsc_ro, tmp_path):
    save = tmp_path / "save"
    prep.prepare_fluent_speech_commands(str(fsc_ro), str(save))
    data = {split: _read(save, split) for split in SPLITS}
    assert [len(data[s]) for s in SPLITS] == [24, 8, 8]
    for split in SPLITS:
        source = _source(fsc_ro, split)
        assert [r["wav"] for r in data[split]] == [
            str(fsc_ro / line["path"]) for line in source
        ]
        for row, line in zip(data[split], source):
            assert row["ID"] == os.path.basename(line["path"])[:-4]
            assert row["label"] == (
                f"{line['action']}_{line['object']}_{line['location']}"
            )
            assert row["speaker"] == line["speakerId"]
            assert row["transcription"] == line["transcription"]
            assert float(row["duration"]) == sf.info(row["wav"]).duration
        assert {r["label"] for r in data[split]} == {
            fsc_intent(*t) for t in FSC_DEFAULT_INTENTS
        }
    speakers = [{r["speaker"] for r in data[s]} for s in SPLITS]
    assert [len(s) for s in speakers] == [3, 1, 1]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2]
                or speakers[1] & speakers[2])
    ids = [r["ID"] for s in SPLITS for r in data[s]]
    assert len(ids) == len(set(ids)) == 40


def test_intent_label_keeps_the_slot_values(fsc_ro, tmp_path):
    prep.prepare_fluent_speech_commands(fsc_ro, tmp_path / "save")
    labels = {r["label"] for r in _read(tmp_path / "save", "test")}
    assert labels == {
        "activate_lights_kitchen",
        "increase_volume_none",
        "change language_Chinese_none",
        "bring_newspaper_none",
    }
    transcriptions = {
        r["transcription"] for r in _read(tmp_path / "save", "train")
    }
    assert "Set my device's language to Chinese, please" in transcriptions


def test_the_unnamed_index_column_is_not_used(fsc, tmp_path):
    save = tmp_path / "save"
    prep.prepare_fluent_speech_commands(fsc, save)
    before = {s: (save / f"{s}.csv").read_text() for s in SPLITS}
    # Other index values (as left by filtering a pandas frame)...
    lines = _source(fsc, "train")
    for i, line in enumerate(lines):
        line[""] = str(1000 + 7 * i)
    _write_source(fsc, "train", lines)
    # ...or no index column at all: the same manifests.
    lines = _source(fsc, "valid")
    for line in lines:
        del line[""]
    _write_source(fsc, "valid", lines, header=FSC_CSV_COLUMNS[1:])
    prep.prepare_fluent_speech_commands(fsc, tmp_path / "save2")
    after = {s: (tmp_path / "save2" / f"{s}.csv").read_text() for s in SPLITS}
    assert after == before
    for row in _read(save, "train"):
        assert not row["ID"].isdigit() and not row["label"][0].isdigit()


def test_all_31_intents(tmp_path):
    root = make_fluent_speech_commands(
        tmp_path / "fsc", intents=31, speakers=(1, 1, 1), repeats=1, seed=5
    )
    prep.prepare_fluent_speech_commands(root, tmp_path / "save")
    expected = {fsc_intent(*t) for t in FSC_INTENTS}
    assert len(expected) == 31
    for split in SPLITS:
        rows = _read(tmp_path / "save", split)
        assert len(rows) == 31 and {r["label"] for r in rows} == expected


@pytest.mark.parametrize("split", ["valid", "test"])
def test_missing_csv_is_named(fsc, tmp_path, split):
    os.remove(fsc / "data" / f"{split}_data.csv")
    with pytest.raises(FileNotFoundError,
                       match=f"expected data/{split}_data.csv at "):
        prep.prepare_fluent_speech_commands(fsc, tmp_path / "save")
    assert not (tmp_path / "save").exists()


def test_missing_listed_clip_is_named(fsc, tmp_path):
    line = _source(fsc, "valid")[4]
    os.remove(fsc / line["path"])
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_fluent_speech_commands(fsc, tmp_path / "save")
    message = str(err.value)
    assert "1 listed clip(s) are missing" in message
    assert f"data/valid_data.csv line 6 ({line['path']})" in message
    assert str(fsc / line["path"]) in message
    assert not (tmp_path / "save").exists()


def test_clip_listed_twice_is_an_error(fsc, tmp_path):
    lines = _source(fsc, "test")
    lines.append(dict(_source(fsc, "train")[2], **{"": str(len(lines))}))
    _write_source(fsc, "test", lines)
    with pytest.raises(ValueError, match="already listed at "
                       "data/train_data.csv line 4"):
        prep.prepare_fluent_speech_commands(fsc, tmp_path / "save")


def test_malformed_csv_is_an_error(fsc, tmp_path):
    lines = _source(fsc, "train")
    _write_source(fsc, "train", [{k: v for k, v in line.items()
                                  if k != "location"} for line in lines],
                  header=[c for c in FSC_CSV_COLUMNS if c != "location"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['location'\]"):
        prep.prepare_fluent_speech_commands(fsc, tmp_path / "save")
    lines[3]["action"] = ""
    _write_source(fsc, "train", lines)
    with pytest.raises(ValueError,
                       match=r"data/train_data.csv line 5 has empty "
                       r"field\(s\) \[.action.\]"):
        prep.prepare_fluent_speech_commands(fsc, tmp_path / "save")


# ------------------------------------------------- few-shot training sets
def _first_n(lines, n, skip=()):
    """IDs of the first ``n`` lines of each intent, in the order of
    ``lines``, skipping the paths in ``skip``."""
    counts, ids = {}, []
    for line in lines:
        intent = fsc_intent(line["action"], line["object"], line["location"])
        if line["path"] not in skip and counts.get(intent, 0) < n:
            counts[intent] = counts.get(intent, 0) + 1
            ids.append(os.path.basename(line["path"])[:-4])
    return ids


def test_few_shot_first_keeps_the_first_n_per_intent_in_csv_order(
    tmp_path, caplog
):
    # 2 valid and 2 test speakers: 4 clips per intent there, more than
    # few_shot, and they must be left alone.
    fsc = make_fluent_speech_commands(
        tmp_path / "data" / "fluent_speech_commands_dataset",
        speakers=(3, 2, 2),
    )
    # Reversed train csv: "first" follows the file; a damaged first clip of
    # an intent is replaced by its next one.
    _write_source(fsc, "train", _source(fsc, "train")[::-1])
    lines = _source(fsc, "train")
    bad = next(line["path"] for line in lines
               if line["action"] == "bring")
    corrupt_clip(fsc / bad, "garbage")
    full, few = tmp_path / "full", tmp_path / "few"
    prep.prepare_fluent_speech_commands(fsc, full, max_bad_fraction=0.05)
    caplog.set_level(logging.INFO)
    prep.prepare_fluent_speech_commands(fsc, few, max_bad_fraction=0.05,
                                        few_shot=2)
    train = _read(few, "train")
    expected = _first_n(lines, 2, skip={bad})
    assert [r["ID"] for r in train] == expected and len(expected) == 8
    assert set(expected).isdisjoint(_first_n(lines[::-1], 2))  # not sorted
    assert train == [r for r in _read(full, "train") if r["ID"] in expected]
    assert "kept 8 of 23 training clips" in caplog.text
    for split in ("valid", "test"):
        assert (few / f"{split}.csv").read_bytes() == (
            full / f"{split}.csv"
        ).read_bytes()
