"""recipes/IEMOCAP/iemocap_prepare.py on a miniature IEMOCAP release in the
real layout."""

import collections
import logging
import os
import shutil

import pytest
import soundfile as sf

from mini_datasets import (
    IEMOCAP_CLASS_OF,
    IEMOCAP_CLASSES,
    IEMOCAP_DIALOGS,
    corrupt_clip,
    iemocap_label,
    make_iemocap,
)
from prep_utils import SPLITS, read_manifest
from recipe_utils import load_recipe_module

prep = load_recipe_module("IEMOCAP", "iemocap_prepare")
FIELDS = ["ID", "duration", "wav", "label", "session", "gender", "dialog"]
RELEASE = "IEMOCAP_full_release"


def _read(save, split):
    return read_manifest(save, split, FIELDS)


def _truth(dialogs=2, turns=10):
    """{utterance: (session, gender, dialog, EmoEvaluation label)} of the
    default miniature, from the writer's naming and labelling rules."""
    truth = {}
    for session in range(1, 6):
        count = {"F": 0, "M": 0}
        for suffix in IEMOCAP_DIALOGS[:dialogs]:
            dialog = f"Ses0{session}{suffix}"
            for turn in range(turns):
                gender = "FM"[turn % 2]
                utterance = f"{dialog}_{gender}{turn // 2:03d}"
                truth[utterance] = (
                    session, gender, dialog,
                    iemocap_label(session, gender, count[gender]),
                )
                count[gender] += 1
    return truth


def _wav(release, utterance):
    session = int(utterance[4])
    dialog = utterance.rsplit("_", 1)[0]
    return (release / f"Session{session}" / "sentences" / "wav" / dialog
            / f"{utterance}.wav")


def _emo_file(release, dialog):
    session = int(dialog[4])
    return (release / f"Session{session}" / "dialog" / "EmoEvaluation"
            / f"{dialog}.txt")


@pytest.fixture(scope="module")
def iemocap_ro(tmp_path_factory):
    """A miniature IEMOCAP_full_release (5 sessions, 2 dialogs of 10 turns
    each) shared by the tests that only read it."""
    return make_iemocap(tmp_path_factory.mktemp("ro") / RELEASE)


@pytest.fixture
def iemocap(tmp_path):
    """A miniature IEMOCAP_full_release of the test's own, which it may
    damage."""
    return make_iemocap(tmp_path / "data" / RELEASE)


def test_miniature_has_the_real_layout(iemocap_ro):
    truth = _truth()
    assert len(truth) == 100
    labels = collections.Counter(label for *_, label in truth.values())
    assert labels["exc"] == 10 and labels["hap"] == 10
    assert {"xxx", "fru"} <= set(labels)
    assert sum(labels[k] for k in IEMOCAP_CLASS_OF) == 80
    for utterance in truth:
        info = sf.info(_wav(iemocap_ro, utterance))
        assert (info.samplerate, info.channels, info.subtype) == (
            16000, 1, "PCM_16"
        )
    emo = iemocap_ro / "Session1" / "dialog" / "EmoEvaluation"
    text = (emo / "Ses01F_impro01.txt").read_text()
    lines = text.splitlines()
    assert lines[:2] == [
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""
    ]
    assert lines[2].split("\t")[1:3] == ["Ses01F_impro01_F000",
                                         truth["Ses01F_impro01_F000"][3]]
    assert lines[3].startswith("C-E2:\t") and lines[7].startswith("A-F1:\t")
    assert lines[8] == "" and lines[9].startswith("[")
    assert (emo / "Categorical" / "Ses01F_impro01_e2_cat.txt").is_file()
    fork = (iemocap_ro / "Session2" / "dialog" / "EmoEvaluation"
            / "._Ses02F_impro01.txt")
    assert fork.read_bytes().startswith(b"\x00\x05\x16\x07")


@pytest.mark.parametrize("fold", range(1, 11))
def test_folds_hold_out_one_session_split_by_gender(iemocap_ro, tmp_path,
                                                     fold):
    save = tmp_path / "save"
    prep.prepare_iemocap(iemocap_ro, save, fold=fold)
    data = {split: _read(save, split) for split in SPLITS}
    session = (fold + 1) // 2
    valid_gender = "F" if fold % 2 else "M"
    test_gender = "M" if fold % 2 else "F"
    truth = _truth()
    kept = {u: t for u, t in truth.items() if t[3] in IEMOCAP_CLASS_OF}
    expected = {
        "train": {u for u, t in kept.items() if t[0] != session},
        "valid": {u for u, t in kept.items()
                  if t[0] == session and t[1] == valid_gender},
        "test": {u for u, t in kept.items()
                 if t[0] == session and t[1] == test_gender},
    }
    for split in SPLITS:
        assert {r["ID"] for r in data[split]} == expected[split], split
        # 2 utterances of each class per speaker and session.
        counts = collections.Counter(r["label"] for r in data[split])
        per_class = 16 if split == "train" else 2
        assert counts == {c: per_class for c in IEMOCAP_CLASSES}, split
    assert [len(data[s]) for s in SPLITS] == [64, 8, 8]
    for row in (r for s in SPLITS for r in data[s]):
        t_session, gender, dialog, label = truth[row["ID"]]
        assert row["label"] == IEMOCAP_CLASS_OF[label]  # exc -> hap
        assert (int(row["session"]), row["gender"], row["dialog"]) == (
            t_session, gender, dialog
        )
        # The speaker is the letter of the last part, not the dialog's lead.
        assert row["gender"] == row["ID"].rsplit("_", 1)[1][0]
        assert row["wav"] == str(_wav(iemocap_ro, row["ID"]))
        assert float(row["duration"]) == sf.info(row["wav"]).duration
    assert {r["gender"] for r in data["train"]} == {"F", "M"}
    assert {r["dialog"][5] for r in data["valid"]} == {"F", "M"}


def test_label_mapping_and_dropped_labels(iemocap_ro, tmp_path):
    prep.prepare_iemocap(iemocap_ro, tmp_path / "save", fold=1)
    rows = {r["ID"]: r for s in SPLITS for r in _read(tmp_path / "save", s)}
    truth = _truth()
    exc = [u for u, t in truth.items() if t[3] == "exc"]
    hap = [u for u, t in truth.items() if t[3] == "hap"]
    dropped = [u for u, t in truth.items() if t[3] not in IEMOCAP_CLASS_OF]
    assert len(exc) == len(hap) == 10 and len(dropped) == 20
    assert all(rows[u]["label"] == "hap" for u in exc + hap)
    assert not set(dropped) & set(rows)
    assert {r["label"] for r in rows.values()} == set(IEMOCAP_CLASSES)
    assert len(rows) == 80


def test_fold_split_and_split_of():
    for fold in range(1, 11):
        held_out = prep.fold_split(fold)
        assert held_out["session"] == (fold + 1) // 2
        assert {held_out["valid"], held_out["test"]} == {"F", "M"}
        assert held_out["valid"] == ("F" if fold % 2 == 1 else "M")
    assert [prep.fold_split(k)["session"] for k in range(1, 11)] == [
        1, 1, 2, 2, 3, 3, 4, 4, 5, 5
    ]
    assert prep.split_of(3, "F", 5) == "valid"
    assert prep.split_of(3, "M", 5) == "test"
    assert prep.split_of(3, "F", 6) == "test"
    assert prep.split_of(4, "M", 5) == "train"


def test_release_folder_or_its_parent(iemocap_ro, tmp_path, caplog):
    prep.prepare_iemocap(iemocap_ro, tmp_path / "a", fold=7)
    prep.prepare_iemocap(iemocap_ro.parent, tmp_path / "b", fold=7)
    prep.prepare_iemocap(str(iemocap_ro.parent) + os.sep, tmp_path / "c",
                         fold=7)
    for split in SPLITS:
        text = (tmp_path / "a" / f"{split}.csv").read_text()
        assert text == (tmp_path / "b" / f"{split}.csv").read_text()
        assert text == (tmp_path / "c" / f"{split}.csv").read_text()
        assert str(iemocap_ro / "Session") in text
    # The given folder is a setting: the other form prepares again.
    caplog.set_level(logging.INFO)
    prep.prepare_iemocap(iemocap_ro.parent, tmp_path / "a", fold=7)
    assert "'data_folder' changed" in caplog.text


@pytest.mark.parametrize("where", ["empty", "renamed_release", "session"])
def test_wrong_data_folder_names_the_expected_folder(iemocap_ro, tmp_path,
                                                     where):
    data_folder = {
        "empty": tmp_path / "empty",
        "renamed_release": tmp_path / "parent",
        "session": iemocap_ro / "Session1",
    }[where]
    data_folder.mkdir(exist_ok=True)
    if where == "renamed_release":
        (data_folder / "IEMOCAP" / "Session1" / "dialog" / "EmoEvaluation"
         ).mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_iemocap(data_folder, tmp_path / "save")
    assert str(err.value) == (
        "IEMOCAP: expected Session1/dialog/EmoEvaluation/ at "
        f"{data_folder / 'Session1' / 'dialog' / 'EmoEvaluation'} (not "
        "found); nor is there IEMOCAP_full_release/Session1/dialog/"
        "EmoEvaluation/ in it; data_folder must be the IEMOCAP_full_release "
        "folder (holding Session1/ to Session5/) or its parent (holding "
        "IEMOCAP_full_release/)"
    )
    assert not (tmp_path / "save").exists()


def test_missing_session_is_named(iemocap, tmp_path):
    shutil.rmtree(iemocap / "Session4" / "sentences")
    with pytest.raises(FileNotFoundError,
                       match="expected Session4/sentences/wav/ at "):
        prep.prepare_iemocap(iemocap.parent, tmp_path / "save")
    shutil.rmtree(iemocap / "Session3")
    with pytest.raises(FileNotFoundError,
                       match="expected Session3/dialog/EmoEvaluation/ at "):
        prep.prepare_iemocap(iemocap, tmp_path / "save")


def test_missing_wav_of_a_kept_utterance_is_named(iemocap, tmp_path):
    truth = _truth()
    dropped = next(u for u, t in truth.items()
                   if t[3] not in IEMOCAP_CLASS_OF)
    os.remove(_wav(iemocap, dropped))  # not used: no error
    prep.prepare_iemocap(iemocap, tmp_path / "save")
    exc = next(u for u, t in truth.items() if t[0] == 4 and t[3] == "exc")
    os.remove(_wav(iemocap, exc))
    with pytest.raises(FileNotFoundError) as err:
        prep.prepare_iemocap(iemocap, tmp_path / "save2")
    message = str(err.value)
    assert "the wav of 1 labelled utterance(s) is missing" in message
    assert str(_wav(iemocap, exc)) in message
    assert str(_emo_file(iemocap, exc.rsplit("_", 1)[0])) in message


def test_damaged_wav_of_a_dropped_utterance_is_never_decoded(iemocap,
                                                             tmp_path):
    dropped = next(u for u, t in _truth().items()
                   if t[3] not in IEMOCAP_CLASS_OF)
    corrupt_clip(_wav(iemocap, dropped), "garbage")
    save = tmp_path / "save"
    prep.prepare_iemocap(iemocap, save)  # default max_bad_fraction 0.01
    assert not (save / "bad_clips.log").exists()
    ids = {r["ID"] for s in SPLITS for r in _read(save, s)}
    assert len(ids) == 80 and dropped not in ids


def test_unusual_lines_and_files_are_ignored(iemocap, tmp_path):
    prep.prepare_iemocap(iemocap, tmp_path / "before", fold=5)
    path = _emo_file(iemocap, "Ses03F_impro01")
    lines = path.read_text().splitlines()
    label_line = lines[2]
    assert label_line.split("\t")[1] == "Ses03F_impro01_F000"
    # CRLF line ends, padded blank lines, comments, annotator lines with
    # brackets, and text around the label line.
    lines[0] += " % comment"
    lines[2] = " " + label_line + "\t(comment)"
    lines.insert(3, "C-E1:\t[Excited];\t([00:01] [laughs])")
    lines.insert(1, "   ")
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n\r\n")
    # Label-like files that are not label files: a subfolder's file, a hidden
    # file, a file that is not .txt. Each would relabel Ses03F_impro01_F000.
    emo = path.parent
    parts = label_line.split("\t")
    parts[2] = "sad" if parts[2] != "sad" else "ang"
    contradicting = "\t".join(parts)
    (emo / "Categorical" / "Ses03F_impro01.txt").write_text(
        contradicting + "\n"
    )
    (emo / "._Ses03F_impro01.txt").write_text(contradicting + "\n")
    (emo / "notes.doc").write_text(contradicting + "\n")
    prep.prepare_iemocap(iemocap, tmp_path / "after", fold=5)
    for split in SPLITS:
        assert (
            (tmp_path / "before" / f"{split}.csv").read_text()
            == (tmp_path / "after" / f"{split}.csv").read_text()
        )


def test_parse_emo_evaluation(iemocap_ro):
    entries = prep.parse_emo_evaluation(
        _emo_file(iemocap_ro, "Ses02M_script01_1")
    )
    truth = _truth()
    expected = [u for u in truth if u.startswith("Ses02M_script01_1_")]
    assert [e[0] for e in entries] == expected  # time order: F, M, F, ...
    assert [e[1] for e in entries] == [truth[u][3] for u in expected]
    for utterance, _, start, end in entries:
        assert end - start == pytest.approx(
            sf.info(_wav(iemocap_ro, utterance)).duration, abs=1e-4
        )


def test_malformed_label_line_is_an_error(iemocap, tmp_path):
    path = _emo_file(iemocap, "Ses05M_script01_1")
    lines = path.read_text().splitlines()
    lines[9] = "[12.5 -]\tSes05M_script01_1_M000\tneu"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="Ses05M_script01_1.txt line 10 looks "
                       "like a label line"):
        prep.prepare_iemocap(iemocap, tmp_path / "save")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("Ses01F_impro01_F001", "Ses02F_impro01_F001",
         "not of the form Ses01"),
        ("Ses01F_impro01_F001", "Ses01F_impro01_X001",
         "not of the form Ses01"),
        ("Ses01F_impro01_F001", "Ses01M_script01_1_F000",
         "Ses01M_script01_1_F000 is labelled in .*Ses01F_impro01.txt and "
         "again in .*Ses01M_script01_1.txt"),
    ],
)
def test_bad_or_repeated_utterance_name_is_an_error(iemocap, tmp_path, old,
                                                    new, message):
    path = _emo_file(iemocap, "Ses01F_impro01")
    path.write_text(path.read_text().replace(f"\t{old}\t", f"\t{new}\t"))
    with pytest.raises(ValueError, match=message):
        prep.prepare_iemocap(iemocap, tmp_path / "save")


# ------------------------------------------------- few-shot training sets
def _first_n(n, held_out_session, skip=(), dialogs=2, by_name=True):
    """IDs of the first ``n`` training utterances of each class in session,
    dialog file name and line (turn) order, skipping those in ``skip``
    (``by_name=False``: in the order the dialogs were written instead)."""
    counts, ids = collections.Counter(), []
    # _truth() is in session, IEMOCAP_DIALOGS and turn order; the files are
    # read in name order (a stable sort keeps the turns in order).
    ordered = list(_truth(dialogs).items())
    if by_name:
        ordered.sort(key=lambda item: (item[1][0], item[1][2]))
    for utterance, (session, _, _, label) in ordered:
        if (session == held_out_session or utterance in skip
                or label not in IEMOCAP_CLASS_OF):
            continue
        if counts[IEMOCAP_CLASS_OF[label]] < n:
            counts[IEMOCAP_CLASS_OF[label]] += 1
            ids.append(utterance)
    return ids


def test_few_shot_first_keeps_the_first_n_per_class_in_file_order(
    tmp_path, caplog
):
    # 4 dialogs per session, whose file names do not sort as they are
    # written (Ses0kF_script02_2 before Ses0kM_impro04): 4 utterances of
    # each class per speaker and session, so valid and test hold more than
    # few_shot of each class, and must be left alone.
    iemocap = make_iemocap(tmp_path / "data" / RELEASE,
                           dialogs_per_session=4)
    # The first hap-class utterance of Session2 (fold 1 trains on sessions
    # 2-5) is damaged: the class's next one replaces it.
    truth = _truth(dialogs=4)
    bad = next(u for u in _first_n(1, 1, dialogs=4)
               if IEMOCAP_CLASS_OF[truth[u][3]] == "hap")
    corrupt_clip(_wav(iemocap, bad), "nan")
    full, few = tmp_path / "full", tmp_path / "few"
    prep.prepare_iemocap(iemocap, full, fold=1, max_bad_fraction=0.05)
    caplog.set_level(logging.INFO)
    prep.prepare_iemocap(iemocap, few, fold=1, max_bad_fraction=0.05,
                         few_shot=3)
    train = _read(few, "train")
    expected = _first_n(3, 1, skip={bad}, dialogs=4)
    assert [r["ID"] for r in train] == expected and len(expected) == 12
    assert bad not in expected and sorted(expected) != expected
    assert expected != _first_n(3, 1, skip={bad}, dialogs=4, by_name=False)
    assert collections.Counter(r["label"] for r in train) == {
        c: 3 for c in IEMOCAP_CLASSES
    }
    assert train == [r for r in _read(full, "train") if r["ID"] in expected]
    assert "few_shot=3 (first sampling): kept 12 of 127 training clips" in caplog.text
    for split in ("valid", "test"):
        assert (few / f"{split}.csv").read_bytes() == (
            full / f"{split}.csv"
        ).read_bytes()
