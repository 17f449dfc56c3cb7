"""Data helpers shared by the recipes: audio loading and clip checks
(:mod:`speechbrain_petl.data.audio`) and the building blocks of the dataset
preparation scripts (:mod:`speechbrain_petl.data.prepare`)."""

from speechbrain_petl.data.audio import AudioFileError, ClipReport, inspect_clip, load_audio
from speechbrain_petl.data.prepare import (
    BAD_CLIPS_LOG,
    CLIPS_RECORD,
    SETTINGS_FILE,
    clip_stats,
    assign_folds,
    fold_splits,
    check_save_folder,
    filter_bad_clips,
    invalidate_preparation,
    mark_prepared,
    prepare_split_manifests,
    preparation_is_current,
    require_file,
    require_folder,
    write_manifest,
)

__all__ = [
    "AudioFileError",
    "BAD_CLIPS_LOG",
    "CLIPS_RECORD",
    "SETTINGS_FILE",
    "ClipReport",
    "clip_stats",
    "assign_folds",
    "fold_splits",
    "check_save_folder",
    "filter_bad_clips",
    "inspect_clip",
    "invalidate_preparation",
    "load_audio",
    "mark_prepared",
    "prepare_split_manifests",
    "preparation_is_current",
    "require_file",
    "require_folder",
    "write_manifest",
]
