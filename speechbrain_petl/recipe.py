"""What every classification recipe's ``train.py`` shares.

A recipe's ``train.py`` reads::

    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_<dataset>, kwargs=preparation_kwargs(hparams, "fold"))
    return train_and_test(hparams, run_opts)
"""

import dataclasses
import logging
import os
import shutil

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.brain import ClassificationBrain
from speechbrain_petl.data.pipelines import classification_datasets
from speechbrain_petl.export import run_card, write_inference_folder
from speechbrain_petl.params import summarize
from speechbrain_petl.run_record import mark_finished, write_record

logger = logging.getLogger(__name__)


def setup_experiment(argv, script):
    """SpeechBrain's prologue, as every recipe's ``train.py`` begins.

    Parses ``hparams.yaml --key=value`` arguments, joins
    the DDP process group when launched by ``torchrun`` (on a machine without
    CUDA: with the gloo backend on CPU unless ``--distributed_backend`` or
    ``--device`` say otherwise, see :func:`cpu_distributed_defaults`), loads the yaml and
    creates the experiment folder (resolved hyperparams.yaml,
    log.txt, env.log, and copies of ``script`` and of this module).

    Returns
    -------
    (dict, dict)
        The hyper-parameters and SpeechBrain's run options.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = cpu_distributed_defaults(run_opts)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless under torchrun
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if sb.utils.distributed.if_main_process():
        shutil.copy(os.path.realpath(script), hparams["output_folder"])
    return hparams, run_opts


def cpu_distributed_defaults(run_opts):
    """Under ``torchrun`` without CUDA, SpeechBrain's defaults (the nccl
    backend, one GPU per process) fail with "Not enough GPUs available!";
    there the gloo backend and the CPU are chosen instead, unless given on
    the command line. Returns the (new) run options.

    Example
    -------
    >>> opts = sb.parse_arguments(["x.yaml"])[1]
    >>> cpu_distributed_defaults(opts) is opts  # not under torchrun: unchanged
    True
    """
    under_torchrun = os.environ.get("LOCAL_RANK") is not None and os.environ.get("RANK") is not None
    if not under_torchrun or torch.cuda.is_available():
        return run_opts
    given = run_opts.overridden_args
    chosen = {}
    if "distributed_backend" not in given:
        chosen["distributed_backend"] = "gloo"
    if "device" not in given:
        chosen["device"] = "cpu"
    logger.info("torchrun without CUDA: using %s", chosen)
    return dataclasses.replace(run_opts, **chosen)


def preparation_kwargs(hparams, *dataset_keys):
    """The keyword arguments every ``prepare_<dataset>`` takes from the yaml
    (folders, few-shot options, ``skip_prep``, ``max_bad_fraction``), plus the dataset's own
    ``dataset_keys`` (e.g. ``"fold"``, ``"protocol"``).

    Example
    -------
    >>> hp = {"data_folder": "d", "save_folder": "s", "few_shot": None,
    ...       "few_shot_sampling": "first", "few_shot_seed": 1, "skip_prep": False,
    ...       "max_bad_fraction": 0.01, "fold": 2}
    >>> sorted(preparation_kwargs(hp, "fold"))[:3]
    ['data_folder', 'few_shot', 'few_shot_sampling']
    >>> preparation_kwargs(hp, "fold")["max_bad_fraction"]
    0.01
    """
    kwargs = {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["save_folder"],
        "few_shot": hparams["few_shot"],
        "few_shot_sampling": hparams["few_shot_sampling"],
        "few_shot_seed": hparams["few_shot_seed"],
        "skip_prep": hparams["skip_prep"],
        "max_bad_fraction": hparams["max_bad_fraction"],
    }
    for key in dataset_keys:
        kwargs[key] = hparams[key]
    return kwargs


def train_and_test(hparams, run_opts):
    """Builds the datasets from the prepared manifests, trains (resuming from
    the latest checkpoint if any), tests the best checkpoint by validation
    accuracy, and writes it as ``<output_folder>/inference`` (see
    :mod:`speechbrain_petl.export`). The run's ``params.json`` records its
    dataset, method and parameter counts, and ``finished: true`` once all
    this is done (see :mod:`speechbrain_petl.run_record`). Returns the Brain."""
    datasets = classification_datasets(hparams)
    brain = ClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if sb.utils.distributed.if_main_process():  # what the run is; finished once tested (see run_record)
        record = dict(summarize(dict(hparams["modules"])), finished=False)
        record.update(dataset=hparams.get("dataset"), method=hparams.get("method"))
        write_record(hparams["output_folder"], record)
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )
    brain.evaluate(
        datasets["test"],
        max_key="acc",
        test_loader_kwargs=hparams["test_dataloader_options"],
    )
    if sb.utils.distributed.if_main_process():
        write_inference(brain, hparams)
        mark_finished(hparams["output_folder"])
    return brain


def write_inference(brain, hparams):
    """Writes the tested model (the best checkpoint, loaded by ``evaluate``)
    as ``<output_folder>/inference``, replacing the one an earlier run of
    the same experiment wrote. A randomly initialised backbone
    (``pretrained: False``) exists nowhere else: then nothing is written,
    and the log says why."""
    dest = os.path.join(hparams["output_folder"], "inference")
    if not brain.backbone.pretrained:
        logger.warning(
            f"No inference folder at {dest}: the backbone has random weights (pretrained: False) "
            "that no inference folder could load. Train from a save_pretrained folder to get one."
        )
        return None
    folder = write_inference_folder(
        dest,
        brain.backbone,
        hparams["classifier"],
        hparams["label_encoder"],
        hparams.get("sample_rate", 16000),
        card=run_card(hparams["output_folder"], hparams),
        replace=True,
        max_audio_samples=hparams.get("max_audio_samples"),
    )
    size = sum(p.stat().st_size for p in folder.iterdir())
    logger.info(f"Inference folder: {folder} ({size / 1e6:.2f} MB)")
    return folder
