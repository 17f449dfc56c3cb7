"""speechbrain_petl.data.prepare: the building blocks of the preparation
scripts (layout errors, settings-aware skip, bad clips, manifests)."""

import csv
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from mini_datasets import corrupt_clip
from speechbrain_petl.data import prepare as P


def _clips(folder, n, rate=16000):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"c{i:03d}.wav"
        sf.write(path, np.full(rate // 4 + i, 0.1), rate, subtype="PCM_16")
        rows.append({"ID": f"c{i:03d}", "wav": str(path), "label": "x"})
    return rows


# ------------------------------------------------------------ layout errors
def test_require_file_names_the_expected_file_and_the_layout(tmp_path):
    hint = "is data_folder the root of the X release (containing meta/)?"
    with pytest.raises(FileNotFoundError) as err:
        P.require_file(tmp_path / "meta" / "x.csv", "X", tmp_path, hint)
    expected = (
        f"X: expected meta/x.csv at {tmp_path / 'meta' / 'x.csv'} "
        f"(not found); {hint}"
    )
    assert str(err.value) == expected
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "x.csv").write_text("a\n")
    assert P.require_file(tmp_path / "meta" / "x.csv", "X") == str(
        tmp_path / "meta" / "x.csv"
    )


def test_require_file_and_folder_tell_file_from_folder(tmp_path):
    (tmp_path / "audio").write_text("not a folder")
    with pytest.raises(FileNotFoundError, match="exists but is not a folder"):
        P.require_folder(tmp_path / "audio", "X", tmp_path)
    with pytest.raises(FileNotFoundError, match="exists but is not a file"):
        P.require_file(tmp_path, "X")


def test_check_save_folder_refuses_the_data_folder_and_its_subfolders(
    tmp_path,
):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    P.check_save_folder(data, tmp_path / "save")
    P.check_save_folder(data, tmp_path / "data_save")  # a sibling, not inside
    for inside in (data, data / "sub", data / "new" / "save"):
        with pytest.raises(ValueError, match="inside data_folder"):
            P.check_save_folder(data, inside)
    # Also through a symbolic link.
    os.symlink(data, tmp_path / "link")
    with pytest.raises(ValueError, match="inside data_folder"):
        P.check_save_folder(data, tmp_path / "link" / "save")


# ------------------------------------------------------ settings-aware skip
def test_preparation_is_current_needs_same_settings_and_all_outputs(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=P.__name__)
    settings = {"data_folder": "/d", "fold": 1, "folds": (1, 2), "v": 1}
    outputs = ["train.csv", "test.csv"]
    for name in outputs:
        (tmp_path / name).write_text("ID\n")
    assert not P.preparation_is_current(tmp_path, settings, outputs)
    assert "No record of a previous preparation" in caplog.text

    P.mark_prepared(tmp_path, settings)
    stored = json.loads((tmp_path / P.SETTINGS_FILE).read_text())
    assert stored == {"data_folder": "/d", "fold": 1, "folds": [1, 2], "v": 1}
    caplog.clear()
    assert P.preparation_is_current(tmp_path, dict(settings), outputs)
    assert "skipping" in caplog.text

    caplog.clear()
    assert not P.preparation_is_current(tmp_path, {**settings, "fold": 2},
                                        outputs)
    assert "'fold' changed: 1 -> 2" in caplog.text
    assert "data_folder" not in caplog.text  # only what changed is named
    caplog.clear()
    assert not P.preparation_is_current(tmp_path, {**settings, "new": 0},
                                        outputs)
    assert "'new' changed" in caplog.text

    os.remove(tmp_path / "test.csv")
    caplog.clear()
    assert not P.preparation_is_current(tmp_path, settings, outputs)
    assert "test.csv" in caplog.text and "missing" in caplog.text


def test_invalidated_or_unreadable_record_means_not_current(tmp_path):
    (tmp_path / "out.csv").write_text("ID\n")
    P.mark_prepared(tmp_path, {"a": 1})
    assert P.preparation_is_current(tmp_path, {"a": 1}, ["out.csv"])
    P.invalidate_preparation(tmp_path)
    assert not P.preparation_is_current(tmp_path, {"a": 1}, ["out.csv"])
    P.invalidate_preparation(tmp_path)  # no record: nothing to do
    (tmp_path / P.SETTINGS_FILE).write_text("{not json")
    assert not P.preparation_is_current(tmp_path, {"a": 1}, ["out.csv"])


# -------------------------------------------------------------- bad clips
def test_filter_bad_clips_reports_and_drops_bad_clips(tmp_path, caplog):
    rows = _clips(tmp_path / "audio", 10)
    corrupt_clip(rows[2]["wav"], "garbage")
    corrupt_clip(rows[5]["wav"], "nan")
    save = tmp_path / "save"
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        good = P.filter_bad_clips(rows, save, max_bad_fraction=0.2)
    assert [r["ID"] for r in good] == [
        f"c{i:03d}" for i in range(10) if i not in (2, 5)
    ]
    # Copies with the decoded duration; the input rows are untouched.
    assert good[0]["duration"] == 4000 / 16000
    assert good[-1]["duration"] == 4009 / 16000
    assert "duration" not in rows[0]
    report = (save / P.BAD_CLIPS_LOG).read_text().splitlines()
    assert report[0].startswith("2 of 10 clips (20.00%) are unusable")
    assert report[1].startswith(rows[2]["wav"] + "\tcannot be decoded: ")
    assert report[2].startswith(rows[5]["wav"] + "\tnon-finite samples")
    assert len(report) == 3
    assert "2 of 10 clips" in caplog.text and P.BAD_CLIPS_LOG in caplog.text


def test_filter_bad_clips_raises_above_max_bad_fraction(tmp_path):
    rows = _clips(tmp_path / "audio", 10)
    corrupt_clip(rows[0]["wav"], "empty")
    corrupt_clip(rows[9]["wav"], "zero_bytes")
    with pytest.raises(RuntimeError) as err:
        P.filter_bad_clips(rows, tmp_path, max_bad_fraction=0.1)
    message = str(err.value)
    assert "2 of 10 clips (20.00%)" in message
    assert "max_bad_fraction=0.1" in message
    assert str(tmp_path / P.BAD_CLIPS_LOG) in message
    assert "c000.wav: empty" in message
    # The report is written before giving up.
    assert "c009.wav" in (tmp_path / P.BAD_CLIPS_LOG).read_text()
    with pytest.raises(ValueError, match="max_bad_fraction"):
        P.filter_bad_clips(rows, tmp_path, max_bad_fraction=1.5)


def test_filter_bad_clips_removes_a_stale_report(tmp_path):
    rows = _clips(tmp_path / "audio", 3)
    (tmp_path / P.BAD_CLIPS_LOG).write_text("1 of 3 clips ...\n")
    good = P.filter_bad_clips(rows, tmp_path)
    assert len(good) == 3
    assert not (tmp_path / P.BAD_CLIPS_LOG).exists()


# -------------------------------------------------------------- manifests
def test_write_manifest_writes_a_speechbrain_csv(tmp_path):
    from speechbrain.dataio.dataio import load_data_csv

    rows = [
        {"ID": "b", "duration": 0.5, "wav": "/d/b.wav", "label": "dog, big",
         "target": 0},
        {"ID": "a", "duration": 5.0, "wav": "/d/a.wav", "label": "cat",
         "target": 5},
    ]  # fmt: skip
    path = tmp_path / "sub" / "train.csv"
    P.write_manifest(path, rows, ["ID", "duration", "wav", "label", "target"])
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [
            {k: str(v) for k, v in row.items()} for row in rows
        ]
    data = load_data_csv(str(path))
    assert data["b"] == {"duration": 0.5, "wav": "/d/b.wav",
                         "label": "dog, big", "target": "0"}
    # Only the manifest is left in the folder (no temporary file).
    assert sorted(os.listdir(path.parent)) == ["train.csv"]


def test_write_manifest_rejects_bad_rows_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.csv"
    good = [{"ID": "a", "wav": "/a.wav"}]
    P.write_manifest(path, good, ["ID", "wav"])
    before = path.read_text()
    bad_calls = [
        ([{"ID": "a", "wav": "/a.wav"}], ["wav", "ID"], "first column"),
        ([{"ID": "a", "wav": "/a.wav"}] * 2, ["ID", "wav"], "duplicate ID"),
        ([{"ID": "a", "wav": "a.wav"}], ["ID", "wav"], "absolute path"),
        ([{"ID": "a"}], ["ID", "wav"], r"missing columns \['wav'\]"),
        ([{"ID": "a", "wav": "/a.wav", "x": 1}], ["ID", "wav"],
         r"unexpected columns \['x'\]"),
    ]  # fmt: skip
    for rows, fields, match in bad_calls:
        with pytest.raises(ValueError, match=match):
            P.write_manifest(path, rows, fields)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["m.csv"]


def test_write_manifest_failure_leaves_old_file_and_no_temporary(
    tmp_path, monkeypatch
):
    path = tmp_path / "m.csv"
    P.write_manifest(path, [{"ID": "old"}], ["ID"])

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(P.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        P.write_manifest(path, [{"ID": "new"}], ["ID"])
    assert path.read_text() == "ID\nold\n"
    assert os.listdir(tmp_path) == ["m.csv"]
