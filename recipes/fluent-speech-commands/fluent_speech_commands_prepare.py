"""Data preparation for Fluent Speech Commands (intent classification).

Expected layout of ``data_folder`` (the extracted
``fluent_speech_commands_dataset`` folder)::

    data/train_data.csv     ,path,speakerId,transcription,action,object,
    data/valid_data.csv     location   (the first, unnamed column is a row
    data/test_data.csv      index); e.g.
        0,wavs/speakers/2BqVo8kVB2Skwgyb/0a3129c0-4474-11e9-a9a5-5dbec3b8816a.wav,2BqVo8kVB2Skwgyb,Change language,change language,none,none
    wavs/speakers/<speakerId>/<uuid>.wav     16 kHz mono clips

The three splits are the official csv files (their speakers are disjoint).
The class is the utterance's intent, ``<action>_<object>_<location>`` with
the csv's values as they are, e.g. ``activate_lights_kitchen``,
``increase_volume_none`` or ``change language_Chinese_none`` (the action
``change language`` holds a space); the real dataset has 31 intents.

Writes ``train.csv``, ``valid.csv`` and ``test.csv`` to ``save_folder`` with
columns ``ID, duration, wav, label, speaker, transcription`` (``ID`` is the
clip's file name without ``.wav``, ``label`` the intent). With
``few_shot=N``, ``train.csv`` keeps N clips per intent, by default the first
N in the order of ``data/train_data.csv``.

Example
-------
>>> from fluent_speech_commands_prepare import prepare_fluent_speech_commands
>>> prepare_fluent_speech_commands(
...     "/data/fluent_speech_commands_dataset", "results/fsc/save"
... )  # doctest: +SKIP
"""

import logging
import os

from speechbrain_petl.data import (
    prepare_split_manifests, read_csv_table, require_file,
)

logger = logging.getLogger(__name__)

# Bump whenever the manifests' content or format changes, so that outputs of
# an older version of this script are never reused.
PREP_VERSION = 1

SPLITS = ("train", "valid", "test")
CSV_FILES = {split: f"data/{split}_data.csv" for split in SPLITS}
CSV_COLUMNS = ("path", "speakerId", "transcription", "action", "object",
               "location")
FIELDNAMES = ("ID", "duration", "wav", "label", "speaker", "transcription")
DATASET = "Fluent Speech Commands"
LAYOUT_HINT = (
    "is data_folder the extracted fluent_speech_commands_dataset folder "
    "(containing data/train_data.csv, data/valid_data.csv, "
    "data/test_data.csv and wavs/speakers/)?"
)


def intent_label(action, obj, location):
    """The class label of an utterance: its three slots joined by ``_``.

    Example
    -------
    >>> intent_label("activate", "lights", "kitchen")
    'activate_lights_kitchen'
    >>> intent_label("change language", "none", "none")
    'change language_none_none'
    """
    return f"{action}_{obj}_{location}"


def prepare_fluent_speech_commands(
    data_folder, save_folder, max_bad_fraction=0.01, skip_prep=False,
    few_shot=None, few_shot_sampling="first", few_shot_seed=0,
):
    """Writes the train/valid/test manifests of Fluent Speech Commands, and
    warns about intents that never occur in the training split.

    Every clip is decoded once (the steps, and the skip when nothing
    changed: :mod:`speechbrain_petl.data.prepare`).

    Arguments
    ---------
    data_folder : str
        The extracted ``fluent_speech_commands_dataset`` folder (see the
        module's docstring).
    save_folder : str
        Where the manifests are written (never inside ``data_folder``).
    max_bad_fraction, skip_prep, few_shot, few_shot_sampling, few_shot_seed
        As for every preparation: see :mod:`speechbrain_petl.data.prepare`.
        ``few_shot`` is per intent, and ``"first"`` follows
        ``data/train_data.csv``.

    Raises
    ------
    FileNotFoundError
        A csv file or a listed clip is missing.
    ValueError
        A csv file lacks a column, has an empty path/speaker/slot field, or
        a clip is listed twice.
    """
    if skip_prep:
        logger.info("skip_prep=True: not preparing Fluent Speech Commands")
        return
    written = prepare_split_manifests(
        data_folder, save_folder,
        {"dataset": "fluent_speech_commands", "version": PREP_VERSION},
        _check_layout, _read_clips, FIELDNAMES, DATASET,
        max_bad_fraction=max_bad_fraction, few_shot=few_shot,
        few_shot_sampling=few_shot_sampling, few_shot_seed=few_shot_seed,
        split_notes=CSV_FILES, summarize=_summarize,
    )
    if written is None:
        return
    # Few-shot selection keeps every intent of the training split.
    train_intents = {r["label"] for r in written["train"]}
    unseen = sorted(
        {r["label"] for rows in written.values() for r in rows}
        - train_intents
    )
    if unseen:
        logger.warning(
            "%s: intent(s) %s never occur in the training split", DATASET,
            unseen,
        )


def _check_layout(data_folder):
    """``(data_folder, {split: csv file})``; the three csv files must
    exist."""
    csv_paths = {
        split: require_file(
            os.path.join(data_folder, *rel.split("/")), DATASET, data_folder,
            LAYOUT_HINT,
        )
        for split, rel in CSV_FILES.items()
    }
    return data_folder, csv_paths


def _read_clips(layout):
    """``(row, split)`` of every clip, split by split in csv order."""
    data_folder, csv_paths = layout
    clips, missing, first_line = [], [], {}
    for split in SPLITS:
        for row, where in _read_csv(csv_paths[split], data_folder):
            if row["ID"] in first_line:
                raise ValueError(
                    f"{DATASET}: {where} lists the clip {row['ID']}.wav, "
                    f"already listed at {first_line[row['ID']]}; every clip "
                    "must be listed once"
                )
            first_line[row["ID"]] = where
            if not os.path.isfile(row["wav"]):
                missing.append(f"{where}: {row['wav']}")
            clips.append((row, split))
    if missing:
        raise FileNotFoundError(
            f"{DATASET}: {len(missing)} listed clip(s) are missing, e.g. "
            f"{'; '.join(missing[:3])}; is the extracted dataset complete?"
        )
    intents = {row["label"] for row, _ in clips}
    logger.info(
        "%s: %d clips, %d intents", DATASET, len(clips), len(intents)
    )
    return clips


def _summarize(rows):
    return (
        f"{len({r['speaker'] for r in rows})} speakers, "
        f"{len({r['label'] for r in rows})} intents"
    )


def _read_csv(csv_path, data_folder):
    """Yields ``(row, where)`` for each line of one split's csv file, where
    ``row`` is a manifest row without duration and ``where`` names the csv
    line."""
    lines = read_csv_table(
        csv_path, CSV_COLUMNS, DATASET,
        header=f",{','.join(CSV_COLUMNS)} (the first column, unnamed, is a "
        "row index)",
    )
    rel_csv = os.path.relpath(csv_path, data_folder).replace(os.sep, "/")
    for number, line in enumerate(lines, start=2):
        where = f"{rel_csv} line {number}"
        empty = [
            c
            for c in CSV_COLUMNS
            if c != "transcription" and not (line[c] or "").strip()
        ]
        if empty:
            raise ValueError(
                f"{DATASET}: {where} has empty field(s) {empty}"
            )
        rel = line["path"].strip().replace("\\", "/")
        yield (
            {
                "ID": os.path.splitext(os.path.basename(rel))[0],
                "wav": os.path.join(data_folder, *rel.split("/")),
                "label": intent_label(
                    line["action"], line["object"], line["location"]
                ),
                "speaker": line["speakerId"],
                "transcription": line["transcription"],
            },
            f"{where} ({rel})",
        )
