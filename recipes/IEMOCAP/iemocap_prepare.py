"""Data preparation for IEMOCAP (4-class speech emotion recognition).

``data_folder`` is either the ``IEMOCAP_full_release`` folder or the folder
holding it. The release's layout (only these parts are used)::

    Session1/dialog/EmoEvaluation/Ses01F_impro01.txt ...   one per dialog
    Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav ...
    ...
    Session5/...

Each EmoEvaluation file gives one line per utterance (turn), e.g.::

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]

(start and end in s, utterance, majority label, valence/activation/
dominance), each followed by the annotators' lines (``C-E2:``, ``A-F1:``,
...); those, the header and the blank lines are ignored, as are the
``Categorical/``, ``Attribute/`` and ``Self-evaluation/`` subfolders and
hidden files. The utterance's speaker is the letter starting its last part
(``F000`` -> F, ``M012`` -> M), whoever leads the dialog (``Ses01F``).

Labels, as usual for 4-class IEMOCAP: ``neu``, ``hap``, ``sad``, ``ang`` are
kept, ``exc`` (excited) is merged into ``hap``; all others (``xxx`` no
agreement, ``fru``, ``sur``, ``fea``, ``dis``, ``oth``) are dropped. On the
full release this keeps 5,531 of the 10,039 utterances (1,708 neu, 1,636 hap
of which 1,041 exc, 1,084 sad, 1,103 ang).

Folds, leave-one-session-out and speaker-independent as in the PETL paper:
10 folds, fold ``k`` holds out session ``s = (k + 1) // 2`` (folds 1, 2 ->
Session1, 3, 4 -> Session2, ...). Odd ``k``: valid = the held-out session's
female utterances, test = its male ones; even ``k``: the reverse. Train = the
4 other sessions.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, session, gender, dialog`` (``ID`` is the
utterance name, ``label`` one of the 4 classes, ``session`` 1-5, ``gender``
F or M). With ``few_shot=N``, ``train.csv`` keeps N utterances per class, by
default the first N in session, EmoEvaluation file (sorted by name) and line
order.

Example
-------
>>> from iemocap_prepare import prepare_iemocap
>>> prepare_iemocap("/data/IEMOCAP_full_release", "results/iemocap/save",
...                 fold=1)  # doctest: +SKIP
"""

import collections
import logging
import numbers
import os
import re

from speechbrain_petl.data import prepare_split_manifests, require_folder

logger = logging.getLogger(__name__)

# Bump whenever the manifests' content or format changes, so that outputs of
# an older version of this script are never reused.
PREP_VERSION = 1

SESSIONS = (1, 2, 3, 4, 5)
FOLDS = tuple(range(1, 11))
RELEASE = "IEMOCAP_full_release"
# EmoEvaluation label -> class; every other label is dropped.
LABEL_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad",
             "ang": "ang"}
CLASSES = ("neu", "hap", "sad", "ang")
FIELDNAMES = ("ID", "duration", "wav", "label", "session", "gender", "dialog")
DATASET = "IEMOCAP"
LAYOUT_HINT = (
    f"data_folder must be the {RELEASE} folder (holding Session1/ to "
    f"Session5/) or its parent (holding {RELEASE}/)"
)
# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]"
LABEL_LINE = re.compile(
    r"^\[\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*\]\s+(\S+)\s+(\S+)"
)


def fold_split(fold):
    """The held-out session of ``fold`` and the gender of its valid and test
    utterances.

    Arguments
    ---------
    fold : int
        1 to 10.

    Returns
    -------
    dict
        ``{"session": s, "valid": gender, "test": gender}``; train is every
        utterance of the other sessions.

    Example
    -------
    >>> fold_split(1)
    {'session': 1, 'valid': 'F', 'test': 'M'}
    >>> fold_split(4)
    {'session': 2, 'valid': 'M', 'test': 'F'}
    >>> fold_split(10)
    {'session': 5, 'valid': 'M', 'test': 'F'}
    """
    if (
        not isinstance(fold, numbers.Integral)
        or isinstance(fold, bool)
        or fold not in FOLDS
    ):
        raise ValueError(
            f"{DATASET}: fold must be an integer from 1 to 10, got {fold!r}"
        )
    valid, test = ("F", "M") if fold % 2 == 1 else ("M", "F")
    return {"session": (fold + 1) // 2, "valid": valid, "test": test}


def split_of(session, gender, fold):
    """The split (``"train"``, ``"valid"`` or ``"test"``) of an utterance.

    Example
    -------
    >>> [split_of(1, g, 1) for g in "FM"], [split_of(1, g, 2) for g in "FM"]
    (['valid', 'test'], ['test', 'valid'])
    >>> split_of(2, "F", 1)
    'train'
    """
    held_out = fold_split(fold)
    if session != held_out["session"]:
        return "train"
    return "valid" if gender == held_out["valid"] else "test"


def find_release(data_folder):
    """The ``IEMOCAP_full_release`` folder: ``data_folder`` itself or its
    child of that name.

    Raises
    ------
    FileNotFoundError
        Naming the expected ``Session1/dialog/EmoEvaluation/``.

    Example
    -------
    >>> parent = getfixture("tmp_path")
    >>> release = parent / "IEMOCAP_full_release"
    >>> (release / "Session1" / "dialog" / "EmoEvaluation").mkdir(parents=True)
    >>> find_release(parent) == find_release(release) == str(release)
    True
    """
    data_folder = os.path.abspath(os.fspath(data_folder))
    marker = os.path.join("Session1", "dialog", "EmoEvaluation")
    for root in (data_folder, os.path.join(data_folder, RELEASE)):
        if os.path.isdir(os.path.join(root, marker)):
            return root
    require_folder(
        os.path.join(data_folder, marker), DATASET, data_folder,
        f"nor is there {RELEASE}/{marker.replace(os.sep, '/')}/ in it; "
        f"{LAYOUT_HINT}",
    )
    raise AssertionError("unreachable")  # pragma: no cover


def parse_emo_evaluation(path):
    """The ``(utterance, label, start, end)`` of each label line of an
    EmoEvaluation file; every other line is ignored.

    Example
    -------
    >>> path = getfixture("tmp_path") / "Ses01F_impro01.txt"
    >>> _ = path.write_text(
    ...     "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\\n\\n"
    ...     "[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, "
    ...     "2.5000]\\nC-E2:\\tNeutral;\\t()\\nA-F1:\\tval 3; act 2; dom  1;\\t()"
    ...     "\\n\\n[10.0100 - 11.3925]\\tSes01F_impro01_M000\\txxx\\t[2.5000, "
    ...     "2.5000, 2.5000]\\n"
    ... )
    >>> parse_emo_evaluation(path)
    [('Ses01F_impro01_F000', 'neu', 6.2901, 8.2357), ('Ses01F_impro01_M000', 'xxx', 10.01, 11.3925)]
    """
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line.startswith("["):
                continue  # header, annotator lines, blank lines
            match = LABEL_LINE.match(line)
            if not match:
                raise ValueError(
                    f"{DATASET}: {path} line {number} looks like a label "
                    f"line but is not '[<start> - <end>]<TAB><utterance>"
                    f"<TAB><label><TAB>[<V>, <A>, <D>]': {line!r}"
                )
            start, end, utterance, label = match.groups()
            entries.append((utterance, label, float(start), float(end)))
    return entries


def prepare_iemocap(
    data_folder, save_folder, fold=1, max_bad_fraction=0.01, skip_prep=False,
    few_shot=None, few_shot_sampling="first", few_shot_seed=0,
):
    """Writes the train/valid/test manifests of 4-class IEMOCAP for one fold.

    Every kept utterance is decoded once (the steps, and the skip when
    nothing changed: :mod:`speechbrain_petl.data.prepare`). On the full
    release the three manifests hold 5,531 utterances together.

    Arguments
    ---------
    data_folder : str
        ``IEMOCAP_full_release`` or its parent (see the module's docstring).
    save_folder : str
        Where the manifests are written (never inside ``data_folder``).
    fold : int
        1 to 10: held-out session ``(fold + 1) // 2``; odd folds validate on
        its female and test on its male utterances, even folds the reverse.
    max_bad_fraction, skip_prep, few_shot, few_shot_sampling, few_shot_seed
        As for every preparation: see :mod:`speechbrain_petl.data.prepare`.
        ``few_shot`` utterances per class; ``"first"`` takes them in
        session, EmoEvaluation file (sorted by name) and line order.

    Raises
    ------
    ValueError
        Bad ``fold``, malformed label line or utterance name, an utterance
        labelled twice.
    FileNotFoundError
        No ``Session<k>/dialog/EmoEvaluation/`` or ``Session<k>/sentences/
        wav/``, or a kept utterance's wav is missing.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing IEMOCAP")
        return
    held_out = fold_split(fold)

    def read_clips(release):
        """One manifest row per kept utterance of the release."""
        return [
            (row, split_of(row["session"], row["gender"], fold))
            for row in _labelled_utterances(release)
        ]

    others = [s for s in SESSIONS if s != held_out["session"]]
    prepare_split_manifests(
        data_folder, save_folder,
        {"dataset": "iemocap", "fold": int(fold), "version": PREP_VERSION},
        _check_layout, read_clips, FIELDNAMES, DATASET,
        max_bad_fraction=max_bad_fraction, few_shot=few_shot,
        few_shot_sampling=few_shot_sampling, few_shot_seed=few_shot_seed,
        split_notes={
            "train": f"fold {fold}: sessions {others}",
            "valid": f"fold {fold}: Session{held_out['session']} "
                     f"{held_out['valid']}",
            "test": f"fold {fold}: Session{held_out['session']} "
                    f"{held_out['test']}",
        },
        summarize=_class_counts,
    )


def _check_layout(data_folder):
    """The release folder, whose sessions must each hold
    ``dialog/EmoEvaluation/`` and ``sentences/wav/``."""
    release = find_release(data_folder)
    for session in SESSIONS:
        for rel in (("dialog", "EmoEvaluation"), ("sentences", "wav")):
            require_folder(
                os.path.join(release, f"Session{session}", *rel), DATASET,
                release, f"is the {RELEASE} folder complete?",
            )
    return release


def _class_counts(rows):
    counts = collections.Counter(r["label"] for r in rows)
    return ", ".join(f"{c} {counts[c]}" for c in CLASSES)


def _labelled_utterances(release):
    """Manifest rows (without duration) of the utterances with a kept
    label, in session, file and line order."""
    rows, where_of, missing = [], {}, []
    raw_counts = collections.Counter()
    for session in SESSIONS:
        emo_dir = os.path.join(
            release, f"Session{session}", "dialog", "EmoEvaluation"
        )
        wav_dir = os.path.join(release, f"Session{session}", "sentences",
                               "wav")
        names = sorted(
            n for n in os.listdir(emo_dir)
            # Hidden files (e.g. macOS "._x.txt" forks) are not label files;
            # subfolders (Categorical/, Attribute/, ...) are not used.
            if n.endswith(".txt") and not n.startswith(".")
            and os.path.isfile(os.path.join(emo_dir, n))
        )
        if not names:
            raise FileNotFoundError(
                f"{DATASET}: no label file (*.txt) in {emo_dir}; is the "
                f"{RELEASE} folder complete?"
            )
        for name in names:
            path = os.path.join(emo_dir, name)
            for utterance, label, _, _ in parse_emo_evaluation(path):
                where = f"{path} ({utterance})"
                gender, dialog = _parse_utterance(utterance, session, where)
                if utterance in where_of:
                    raise ValueError(
                        f"{DATASET}: {utterance} is labelled in "
                        f"{where_of[utterance]} and again in {path}"
                    )
                where_of[utterance] = path
                raw_counts[label] += 1
                if label not in LABEL_MAP:
                    continue
                wav = os.path.join(wav_dir, dialog, f"{utterance}.wav")
                if not os.path.isfile(wav):
                    missing.append(f"{wav} (labelled in {path})")
                rows.append(
                    {
                        "ID": utterance,
                        "wav": wav,
                        "label": LABEL_MAP[label],
                        "session": session,
                        "gender": gender,
                        "dialog": dialog,
                    }
                )
    if missing:
        raise FileNotFoundError(
            f"{DATASET}: the wav of {len(missing)} labelled utterance(s) is "
            f"missing, e.g. {'; '.join(missing[:3])}; is the {RELEASE} "
            "folder complete?"
        )
    dropped = {k: v for k, v in raw_counts.items() if k not in LABEL_MAP}
    logger.info(
        "%s: %d labelled utterances; kept %d (%s); dropped %d (%s)",
        DATASET,
        sum(raw_counts.values()),
        len(rows),
        ", ".join(f"{k} {raw_counts[k]}" for k in LABEL_MAP),
        sum(dropped.values()),
        ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())),
    )
    return rows


def _parse_utterance(utterance, session, where):
    """``(gender, dialog)`` of an utterance name such as
    ``Ses01F_impro01_F000`` (-> ``("F", "Ses01F_impro01")``)."""
    dialog, sep, last = utterance.rpartition("_")
    if (
        not sep
        or not dialog
        or not utterance.startswith(f"Ses0{session}")
        or last[:1] not in ("F", "M")
    ):
        raise ValueError(
            f"{DATASET}: {where}: the utterance name is not of the form "
            f"Ses0{session}<F|M>_<dialog>_<F|M><number> (Session{session})"
        )
    return last[0], dialog
