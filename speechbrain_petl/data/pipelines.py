"""Datasets of the classification recipes, built from prepared manifests.

Every recipe's preparation writes ``train.csv``, ``valid.csv`` and
``test.csv`` (columns ``ID, duration, wav, label`` plus extras); this module
turns them into SpeechBrain ``DynamicItemDataset`` objects yielding ``id``,
``sig`` (16 kHz mono waveform) and ``label_encoded``. A manifest or a
``label_encoder.txt`` that cannot be read (emptied, cut short) is a
:class:`~speechbrain_petl.data.files.DamagedFileError` naming it.
"""

import os

import speechbrain as sb

from speechbrain_petl.data.audio import AudioFileError, load_audio
from speechbrain_petl.data.files import load_label_encoder, read_manifest

#: What to do when a prepared clip can no longer be read.
PREPARED_CLIP_CHANGED = (
    "If it was fine when the dataset was prepared, it changed since: prepare again "
    "(skip_prep: False), which re-checks changed clips"
)


def default_num_workers(cap=4):
    """DataLoader workers for this machine: the CPUs this process may use
    (its affinity, what DataLoader's own warning counts), at most ``cap``.
    The recipes' ``num_workers`` default; override with ``--num_workers=N``.

    Example
    -------
    >>> 1 <= default_num_workers() <= 4
    True
    >>> default_num_workers(cap=1)
    1
    """
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus))


def read_labels(csv_path):
    """The set of labels in a manifest's ``label`` column (the manifest is
    checked whole, see :func:`~speechbrain_petl.data.files.read_manifest`).

    Example
    -------
    >>> path = getfixture("tmp_path") / "train.csv"
    >>> _ = path.write_text("ID,duration,wav,label\\na,1.0,/a.wav,dog\\nb,1.0,/b.wav,rain\\n")
    >>> sorted(read_labels(path))
    ['dog', 'rain']
    >>> _ = path.write_text("ID,duration,wav,label\\na,1.0,/a.wav,dog\\nb,1.0,/b.w")
    >>> read_labels(path)
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...train.csv: does not end with a line break: cut short...
    """
    return {row["label"] for row in read_manifest(csv_path, ["ID", "wav", "label"])}


def classification_datasets(
    csv_files, label_encoder, label_encoder_file, n_classes=None, sample_rate=16000, max_audio_samples=None
):
    """Train/valid/test datasets and a fitted label encoder.

    Arguments
    ---------
    csv_files : dict
        ``{"train": path, "valid": path, "test": path}``: prepared manifests.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Fitted here: the sorted training labels map to 0..K-1.
    label_encoder_file : str
        Where the encoder is saved (and reloaded, never rebuilt, on resume).
    n_classes : int, optional
        The head's width; more training labels than this is an error.
    sample_rate : int
        The rate clips are loaded at (resampled if needed).
    max_audio_samples : int, optional
        Longer clips are cropped to this many samples.

    Returns
    -------
    dict
        ``{"train": ..., "valid": ..., "test": ...}``: datasets yielding
        ``id``, ``sig`` and ``label_encoded``.
    """
    missing = {"train", "valid", "test"} - set(csv_files)
    if missing:
        raise KeyError(f"csv_files needs train, valid and test manifests; missing: {sorted(missing)}")
    paths = {split: csv_files[split] for split in ("train", "valid", "test")}
    encoder, max_samples = label_encoder, max_audio_samples

    train_labels = read_labels(paths["train"])
    if os.path.exists(label_encoder_file) and sb.utils.distributed.if_main_process():
        # SpeechBrain's load_or_create would quietly write a damaged one again
        load_label_encoder(label_encoder_file)
    encoder.load_or_create(path=label_encoder_file, from_iterables=[sorted(train_labels)])
    encoder.expect_len(len(encoder))
    if n_classes is not None and len(encoder) > n_classes:
        raise ValueError(
            f"{paths['train']} has {len(encoder)} labels but n_classes is {n_classes}."
        )
    for split in ("valid", "test"):
        unknown = read_labels(paths[split]) - set(encoder.lab2ind)
        if unknown:
            raise ValueError(
                f"{paths[split]} has labels never seen in training: {sorted(unknown)[:10]}"
            )

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Loads a clip at the recipe's rate, cropped to ``max_audio_samples``."""
        try:
            sig = load_audio(wav, sample_rate)
        except AudioFileError as err:
            raise AudioFileError(f"{err}. {PREPARED_CLIP_CHANGED}", err.path, err.reason) from None
        return sig if max_samples is None else sig[:max_samples]

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label_encoded")
    def label_pipeline(label):
        """Encodes a label as a tensor index."""
        return encoder.encode_label_torch(label)

    return {
        split: sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=path,
            dynamic_items=[audio_pipeline, label_pipeline],
            output_keys=["id", "sig", "label_encoded"],
        )
        for split, path in paths.items()
    }
