"""Data shared by the recipes: audio loading and clip checks, and the steps of every dataset preparation.

* :mod:`~speechbrain_petl.data.audio`: reading clips (any rate, mono), checking them;
* :mod:`~speechbrain_petl.data.files`: every file the package reads, one error path for a damaged one;
* :mod:`~speechbrain_petl.data.pipelines`: SpeechBrain datasets and their audio pipeline;
* a preparation's steps: :mod:`~speechbrain_petl.data.layout` (the dataset's
  files are where they should be), :mod:`~speechbrain_petl.data.record`
  (is the preparation current), :mod:`~speechbrain_petl.data.manifests`
  (bad clips out, CSV manifests written), :mod:`~speechbrain_petl.data.few_shot`,
  :mod:`~speechbrain_petl.data.folds`, and :mod:`~speechbrain_petl.data.prepare`
  running them in order.
"""

from speechbrain_petl.data.audio import AudioFileError, ClipReport, inspect_clip, load_audio
from speechbrain_petl.data.few_shot import FEW_SHOT_SAMPLINGS, few_shot_settings, select_few_shot
from speechbrain_petl.data.folds import assign_folds, fold_splits, protocol_fold_splits, read_fold_metadata
from speechbrain_petl.data.layout import check_save_folder, read_csv_table, require_file, require_folder
from speechbrain_petl.data.manifests import BAD_CLIPS_LOG, MANIFESTS, SPLITS, filter_bad_clips, write_manifest
from speechbrain_petl.data.prepare import prepare_fold_manifests, prepare_split_manifests
from speechbrain_petl.data.record import (
    CLIPS_RECORD,
    SETTINGS_FILE,
    clip_stats,
    invalidate_preparation,
    mark_prepared,
    preparation_is_current,
)

__all__ = [
    "AudioFileError",
    "BAD_CLIPS_LOG",
    "CLIPS_RECORD",
    "FEW_SHOT_SAMPLINGS",
    "MANIFESTS",
    "SETTINGS_FILE",
    "SPLITS",
    "ClipReport",
    "clip_stats",
    "assign_folds",
    "fold_splits",
    "protocol_fold_splits",
    "check_save_folder",
    "few_shot_settings",
    "filter_bad_clips",
    "inspect_clip",
    "invalidate_preparation",
    "load_audio",
    "mark_prepared",
    "prepare_fold_manifests",
    "prepare_split_manifests",
    "preparation_is_current",
    "read_csv_table",
    "read_fold_metadata",
    "require_file",
    "require_folder",
    "select_few_shot",
    "write_manifest",
]
