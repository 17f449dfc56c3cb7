"""Serving trained tasks: the inference folder, one task per classifier, or many tasks on one backbone.

* :mod:`~speechbrain_petl.inference.folder`: what an inference folder holds,
  how it is written and how it is read;
* :class:`AudioClassifier`: one folder through SpeechBrain's
  ``from_hparams``;
* :class:`MultiTaskClassifier`: several folders on one resident backbone,
  each clip of a batch routed to its own task.

The names below are the package's public inference API. Inference folders
name ``speechbrain_petl.inference.label_encoder``, ``.PassThrough`` and
``.load_head_state`` in their yaml, and ``custom_interface.py`` imports
``speechbrain_petl.inference.AudioClassifier``: these paths stay valid.
"""

from speechbrain_petl.inference.classifier import AudioClassifier
from speechbrain_petl.inference.folder import (
    INFERENCE_FILES,
    InferenceFolder,
    PassThrough,
    head_outputs,
    label_encoder,
    load_head_state,
    output_labels,
    write_inference_folder,
)
from speechbrain_petl.inference.multitask import MultiTaskClassifier, Task, resident_bytes

__all__ = [
    "AudioClassifier",
    "INFERENCE_FILES",
    "InferenceFolder",
    "MultiTaskClassifier",
    "PassThrough",
    "Task",
    "head_outputs",
    "label_encoder",
    "load_head_state",
    "output_labels",
    "resident_bytes",
    "write_inference_folder",
]
