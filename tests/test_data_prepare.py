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
import speechbrain_petl.data as P


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


def test_filter_bad_clips_shows_a_progress_bar(tmp_path, capsys):
    rows = _clips(tmp_path / "clips", 3)
    P.filter_bad_clips(rows, tmp_path)
    err = capsys.readouterr().err
    assert "Checking clips" in err and "3/3" in err


def test_too_many_bad_clips_names_the_yaml_key_to_raise(tmp_path):
    rows = _clips(tmp_path / "clips", 10)
    corrupt_clip(rows[0]["wav"], "garbage")
    with pytest.raises(RuntimeError, match=r"--max_bad_fraction=0\.1\b"):
        P.filter_bad_clips(rows, tmp_path, max_bad_fraction=0.05)


def _toy_preparation(data, save, **kwargs):
    def read_clips(rows):
        return [(row, ["train", "valid", "test"]) for row in rows]

    return P.prepare_split_manifests(
        data, save, {"dataset": "toy"}, lambda d: _clips(data, 4), read_clips,
        ["ID", "duration", "wav", "label"], "Toy", max_bad_fraction=0.5, **kwargs,
    )


def test_a_clip_changed_after_preparation_is_checked_again(tmp_path):
    data, save = tmp_path / "data", tmp_path / "save"
    assert _toy_preparation(data, save) is not None
    (data / "c001.wav").write_bytes(b"RIFF not audio any more")  # other size
    # _clips rewrites the clips in check_layout: keep them as they are now
    stats = P.clip_stats([str(data / f"c{i:03d}.wav") for i in range(4)])
    written = P.prepare_split_manifests(
        data, save, {"dataset": "toy"}, lambda d: None,
        lambda _: [({"ID": f"c{i:03d}", "wav": str(data / f"c{i:03d}.wav"), "label": "x"},
                    ["train", "valid", "test"]) for i in range(4)],
        ["ID", "duration", "wav", "label"], "Toy", max_bad_fraction=0.5,
    )
    assert written is not None and [r["ID"] for r in written["train"]] == ["c000", "c002", "c003"]
    assert "c001.wav" in (save / P.BAD_CLIPS_LOG).read_text()
    assert P.clip_stats(list(stats)) == stats


def test_only_the_modification_time_changed_is_noticed(tmp_path, caplog):
    data, save = tmp_path / "data", tmp_path / "save"
    rows = _clips(data, 2)
    settings = {"dataset": "toy"}

    def prepare():
        return P.prepare_split_manifests(
            data, save, settings, lambda d: None, lambda _: [(r, ["train", "valid", "test"]) for r in rows],
            ["ID", "duration", "wav", "label"], "Toy",
        )

    assert prepare() is not None
    assert prepare() is None  # nothing changed: skipped
    stat = os.stat(rows[1]["wav"])
    os.utime(rows[1]["wav"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO):
        assert prepare() is not None
    assert "changed on disk" in caplog.text and "c001.wav" in caplog.text


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

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        P.write_manifest(path, [{"ID": "new"}], ["ID"])
    assert path.read_text() == "ID\nold\n"
    assert os.listdir(tmp_path) == ["m.csv"]


# -------------------------------------------------------- few-shot subsets
def _labelled(labels):
    return [{"ID": f"r{i:02d}", "label": c} for i, c in enumerate(labels)]


def _ids(rows):
    return [r["ID"] for r in rows]


def test_few_shot_first_keeps_the_first_n_of_each_class_in_order():
    rows = _labelled("abacbbcaacbc")  # a: 0 2 7 8; b: 1 4 5 10; c: 3 6 9 11
    before = [dict(r) for r in rows]
    kept = P.select_few_shot(rows, 2)
    assert _ids(kept) == ["r00", "r01", "r02", "r03", "r04", "r06"]
    assert _ids(P.select_few_shot(rows, 3)) == [
        "r00", "r01", "r02", "r03", "r04", "r05", "r06", "r07", "r09"
    ]
    assert _ids(P.select_few_shot(rows, 1)) == ["r00", "r01", "r03"]
    assert all(any(k is r for r in rows) for k in kept)  # the same rows
    assert rows == before  # the input is not modified
    # Another class key.
    other = [{"ID": r["ID"], "word": r["label"]} for r in rows]
    assert _ids(P.select_few_shot(other, 1, label_key="word")) == [
        "r00", "r01", "r03"
    ]
    with pytest.raises(ValueError, match="'r00' has no 'label'"):
        P.select_few_shot(other, 1)


def test_few_shot_none_keeps_every_row():
    rows = _labelled("aab")
    kept = P.select_few_shot(rows, None, "random", seed=5)
    assert kept == rows and kept is not rows


def test_few_shot_random_is_seeded_per_class_and_keeps_the_order():
    rows = _labelled("ab" * 10)  # 10 rows per class
    picks = {s: _ids(P.select_few_shot(rows, 3, "random", seed=s))
             for s in range(6)}
    for seed, ids in picks.items():
        assert ids == _ids(P.select_few_shot(rows, 3, "random", seed=seed))
        assert ids == sorted(ids)  # original order
        kept = [r for r in rows if r["ID"] in ids]
        assert sorted(r["label"] for r in kept) == ["a"] * 3 + ["b"] * 3
    # C(10, 3)^2 = 14,400 possible picks: six seeds do not all agree, and
    # not all of them are the first three of each class.
    assert len({tuple(ids) for ids in picks.values()}) > 1
    first = _ids(P.select_few_shot(rows, 3, "first"))
    assert any(ids != first for ids in picks.values())
    assert picks[0] != picks[1]
    # A class's draw does not depend on the other classes' rows.
    only = {c: [{"ID": f"r{2 * i + k:02d}", "label": c} for i in range(10)]
            for k, c in enumerate("ab")}
    for seed, ids in picks.items():
        for c in "ab":
            alone = _ids(P.select_few_shot(only[c], 3, "random", seed=seed))
            assert [i for i in ids if i in alone] == alone


def test_few_shot_class_with_too_few_rows_keeps_all_with_a_warning(caplog):
    rows = _labelled("aaaabbcaaa")  # a: 7, b: 2, c: 1
    for sampling in ("first", "random"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=P.__name__):
            kept = P.select_few_shot(rows, 3, sampling, seed=1)
        assert [r["label"] for r in kept].count("a") == 3
        assert {r["ID"] for r in kept} >= {"r04", "r05", "r06"}
        assert len(kept) == 6
        assert "2 class(es) have fewer than 3" in caplog.text
        assert "'b' (2), 'c' (1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert len(P.select_few_shot(rows, 1)) == 3
        assert len(P.select_few_shot(rows, 2)) == 5  # c has 1 < 2
    assert "'c' (1)" in caplog.text and "'b'" not in caplog.text


@pytest.mark.parametrize(
    "shots, sampling, seed, match",
    [
        (0, "first", 0, "few_shot must be None .* or an integer >= 1"),
        (-2, "first", 0, "got -2"),
        (1.5, "first", 0, "got 1.5"),
        (2.0, "first", 0, "got 2.0"),
        (True, "first", 0, "got True"),
        ("4", "first", 0, "got '4'"),
        (2, "last", 0, r"few_shot_sampling must be one of \('first', "
                       r"'random'\), got 'last'"),
        (2, None, 0, "few_shot_sampling must be one of"),
        (None, "Random", 0, "few_shot_sampling must be one of"),
        (2, "random", "0", "few_shot_seed must be an integer, got '0'"),
        (2, "random", None, "few_shot_seed must be an integer"),
        (2, "random", 1.0, "few_shot_seed must be an integer"),
    ],
)  # fmt: skip
def test_few_shot_bad_arguments_are_clear_errors(shots, sampling, seed,
                                                 match):
    rows = _labelled("aabb")
    with pytest.raises(ValueError, match=match):
        P.select_few_shot(rows, shots, sampling, seed)
    with pytest.raises(ValueError, match=match):
        P.few_shot_settings(shots, sampling, seed)


def test_few_shot_settings_record_only_what_changes_the_manifest():
    assert P.few_shot_settings(None) == P.few_shot_settings(None, "random", 7)
    assert P.few_shot_settings(None) == {
        "few_shot": None, "few_shot_sampling": None, "few_shot_seed": None
    }
    assert P.few_shot_settings(4, "first", 1) == P.few_shot_settings(4)
    assert P.few_shot_settings(4, "random", 1) != P.few_shot_settings(
        4, "random", 2
    )
    assert P.few_shot_settings(4, "random", 1) == {
        "few_shot": 4, "few_shot_sampling": "random", "few_shot_seed": 1
    }
    assert P.few_shot_settings(np.int64(4))["few_shot"] == 4
    json.dumps(P.few_shot_settings(np.int64(4), "random", np.int64(3)))
