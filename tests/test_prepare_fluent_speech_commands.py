"""recipes/fluent-speech-commands/PETL/fluent_speech_commands_prepare.py on a
miniature Fluent Speech Commands in the real layout."""

import csv
import logging
import os
import shutil

import pytest
import soundfile as sf

from mini_datasets import (
    FSC_CSV_COLUMNS,
    FSC_DEFAULT_INTENTS,
    FSC_INTENTS,
    corrupt_clip,
    fsc_intent,
    make_fluent_speech_commands,
    snapshot,
)
from prep_utils import SPLITS, manifest_bytes, read_manifest
from recipe_utils import load_recipe_module
from speechbrain_petl.data import load_audio

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


def test_clips_load_at_16k_mono(fsc_ro, tmp_path):
    prep.prepare_fluent_speech_commands(fsc_ro, tmp_path / "save")
    for row in _read(tmp_path / "save", "valid"):
        wav = load_audio(row["wav"])
        assert wav.ndim == 1
        assert len(wav) == sf.info(row["wav"]).frames
        assert len(wav) == round(float(row["duration"]) * 16000)
        assert 1.0 <= float(row["duration"]) <= 2.5


@pytest.mark.parametrize("where", ["empty", "parent", "data"])
def test_wrong_data_folder_names_the_expected_file(fsc_ro, tmp_path, where):
    data_folder = {
        "empty": tmp_path / "empty",
        "parent": fsc_ro.parent,
        "data": fsc_ro / "data",
    }[where]
    data_folder.mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_fluent_speech_commands(data_folder, tmp_path / "save")
    assert str(err.value) == (
        "Fluent Speech Commands: expected data/train_data.csv at "
        f"{data_folder / 'data' / 'train_data.csv'} (not found); is "
        "data_folder the extracted fluent_speech_commands_dataset folder "
        "(containing data/train_data.csv, data/valid_data.csv, "
        "data/test_data.csv and wavs/speakers/)?"
    )
    assert not (tmp_path / "save").exists()


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


def test_bad_clips_are_reported_and_excluded(fsc, tmp_path, caplog):
    bad = {
        _source(fsc, "train")[0]["path"]: "garbage",
        _source(fsc, "valid")[1]["path"]: "empty",
        _source(fsc, "test")[2]["path"]: "nan",
    }
    for rel, kind in bad.items():
        corrupt_clip(fsc / rel, kind)
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING):
        prep.prepare_fluent_speech_commands(fsc, save, max_bad_fraction=0.1)
    report = (save / "bad_clips.log").read_text().splitlines()
    assert report[0].startswith("3 of 40 clips (7.50%) are unusable")
    reasons = dict(line.split("\t") for line in report[1:])
    assert sorted(reasons) == sorted(str(fsc / rel) for rel in bad)
    assert reasons[str(fsc / list(bad)[0])].startswith("cannot be decoded")
    assert reasons[str(fsc / list(bad)[1])] == "empty"
    assert reasons[str(fsc / list(bad)[2])].startswith("non-finite samples")
    assert "3 of 40 clips" in caplog.text
    assert [len(_read(save, s)) for s in SPLITS] == [23, 7, 7]
    kept = {r["wav"] for s in SPLITS for r in _read(save, s)}
    assert not kept & set(reasons)


def test_too_many_bad_clips_is_an_error(fsc, tmp_path):
    corrupt_clip(fsc / _source(fsc, "test")[0]["path"], "zero_bytes")
    save = tmp_path / "save"
    with pytest.raises(RuntimeError, match=r"1 of 40 clips \(2.50%\)"):
        prep.prepare_fluent_speech_commands(fsc, save)  # default max 0.01
    assert "1 of 40" in (save / "bad_clips.log").read_text()
    assert not any((save / f"{s}.csv").exists() for s in SPLITS)
    assert not (save / "preparation_settings.json").exists()


def test_unchanged_settings_skip_and_changed_settings_redo(
    fsc, tmp_path, caplog
):
    save = tmp_path / "save"
    prep.prepare_fluent_speech_commands(fsc, save)
    stamps = {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS}
    caplog.set_level(logging.INFO)
    prep.prepare_fluent_speech_commands(fsc, save)
    assert "skipping preparation" in caplog.text
    assert {s: os.stat(save / f"{s}.csv").st_mtime_ns for s in SPLITS} == stamps

    copy = shutil.copytree(fsc, tmp_path / "copy")
    caplog.clear()
    prep.prepare_fluent_speech_commands(copy, save)
    assert "'data_folder' changed" in caplog.text
    assert all(r["wav"].startswith(str(copy)) for r in _read(save, "train"))

    caplog.clear()
    prep.prepare_fluent_speech_commands(copy, save, max_bad_fraction=0.5)
    assert "'max_bad_fraction' changed: 0.01 -> 0.5" in caplog.text
    assert "skipping" not in caplog.text

    os.remove(save / "train.csv")
    prep.prepare_fluent_speech_commands(copy, save, max_bad_fraction=0.5)
    assert len(_read(save, "train")) == 24


def test_nothing_is_written_inside_data_folder(fsc, tmp_path):
    corrupt_clip(fsc / _source(fsc, "train")[5]["path"], "nan")
    before = snapshot(fsc)
    prep.prepare_fluent_speech_commands(fsc, tmp_path / "a",
                                        max_bad_fraction=0.1)
    prep.prepare_fluent_speech_commands(fsc, tmp_path / "a",
                                        max_bad_fraction=0.1)
    prep.prepare_fluent_speech_commands(fsc, tmp_path / "b",
                                        max_bad_fraction=0.2)
    with pytest.raises(ValueError, match="inside data_folder"):
        prep.prepare_fluent_speech_commands(fsc, fsc / "data" / "prepared")
    assert snapshot(fsc) == before


def test_skip_prep_does_nothing(tmp_path):
    prep.prepare_fluent_speech_commands(tmp_path / "nowhere",
                                        tmp_path / "save", skip_prep=True)
    assert not (tmp_path / "save").exists()


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


def test_few_shot_random_settings_and_short_intents(fsc_ro, tmp_path,
                                                    caplog):
    save = tmp_path / "save"
    prep.prepare_fluent_speech_commands(fsc_ro, save)
    full = manifest_bytes(save)
    full_train = _read(save, "train")  # 6 clips per intent
    caplog.set_level(logging.INFO)
    picks = {}
    for seed in (3, 4, 5, 3):
        caplog.clear()
        prep.prepare_fluent_speech_commands(
            fsc_ro, save, few_shot=2, few_shot_sampling="random",
            few_shot_seed=seed,
        )
        train = _read(save, "train")
        assert train == [r for r in full_train if r in train]
        assert len(train) == 8 and len({r["label"] for r in train}) == 4
        assert (save / "valid.csv").read_bytes() == full["valid"]
        assert (save / "test.csv").read_bytes() == full["test"]
        if seed in picks:
            assert [r["ID"] for r in train] == picks[seed]
        picks[seed] = [r["ID"] for r in train]
    assert len({tuple(p) for p in picks.values()}) > 1
    caplog.clear()
    prep.prepare_fluent_speech_commands(fsc_ro, save, few_shot=2,
                                        few_shot_sampling="random",
                                        few_shot_seed=3)
    assert "skipping preparation" in caplog.text

    caplog.clear()
    prep.prepare_fluent_speech_commands(fsc_ro, save, few_shot=10)
    assert "'few_shot' changed: 2 -> 10" in caplog.text
    assert "4 class(es) have fewer than 10 training clips" in caplog.text
    assert "'change language_Chinese_none' (6)" in caplog.text
    assert manifest_bytes(save) == full


@pytest.mark.parametrize(
    "options, match",
    [
        ({"few_shot": -3}, "few_shot must be None"),
        ({"few_shot": 1.0}, "few_shot must be None"),
        ({"few_shot": 1, "few_shot_sampling": ""},
         "few_shot_sampling must be one of"),
    ],
)  # fmt: skip
def test_bad_few_shot_options_are_clear_errors(fsc_ro, tmp_path, options,
                                               match):
    with pytest.raises(ValueError, match=match):
        prep.prepare_fluent_speech_commands(fsc_ro, tmp_path / "save",
                                            **options)
    assert not (tmp_path / "save").exists()
