"""What every classification recipe's ``train.py`` shares.

A recipe's ``train.py`` wires its yaml to these functions, naming every
hyper-parameter it uses (SpeechBrain's yaml-vs-script check reads the script
for them)::

    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_<dataset>, kwargs={"data_folder": hparams["data_folder"], ...})
    datasets = classification_datasets({"train": hparams["train_csv"], ...}, ...)
    brain = ClassificationBrain(modules=hparams["modules"], ..., train_logger=hparams["train_logger"])
    start_record(hparams["output_folder"], hparams["modules"], hparams["dataset"], hparams["method"])
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["valid"], ...)
    brain.evaluate(datasets["test"], max_key="acc", ...)
    finish_run(brain, hparams["output_folder"], hparams["label_encoder"])

:func:`start_record` writes the run's ``params.json`` (dataset, method,
parameter counts; see :mod:`speechbrain_petl.studies.run_record`), and
:func:`finish_run` writes the tested model as ``<output_folder>/inference``
(see :mod:`speechbrain_petl.inference.folder`) and marks the record finished.
"""

import dataclasses
import logging
import os
import shutil

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.inference.folder import write_inference_folder
from speechbrain_petl.studies.runs import run_card
from speechbrain_petl.studies.params import summarize
from speechbrain_petl.studies.run_record import mark_finished, write_record

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


def start_record(output_folder, modules, dataset, method):
    """Writes the run's ``params.json`` as training starts (main process
    only): its ``dataset`` and ``method`` (the yaml's keys of those names),
    the parameter counts of ``modules``, and ``finished: false``.

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> from speechbrain_petl.studies.run_record import read_record
    >>> modules = {"backbone": AST(tiny_config("ast"), pretrained=False, max_frames=64),
    ...            "classifier": torch.nn.Linear(32, 2)}
    >>> folder = getfixture("tmp_path")
    >>> start_record(folder, modules, "ESC50", "linear")
    >>> record = read_record(folder)
    >>> record["dataset"], record["head"], record["finished"]
    ('ESC50', 66, False)
    """
    if not sb.utils.distributed.if_main_process():
        return
    record = dict(summarize(dict(modules)), finished=False)
    record.update(dataset=dataset, method=method)
    write_record(output_folder, record)


def finish_run(brain, output_folder, label_encoder, sample_rate=16000, max_audio_samples=None):
    """After the test: writes the tested model (the best checkpoint,
    loaded by ``evaluate``) as ``<output_folder>/inference`` and marks the
    run's record finished (main process only). Returns the folder, or None
    when the backbone has random weights (``pretrained: False``): such a
    backbone exists nowhere else, so no inference folder could load it;
    the log says so."""
    if not sb.utils.distributed.if_main_process():
        return None
    folder = write_inference(brain, output_folder, label_encoder, sample_rate, max_audio_samples)
    mark_finished(output_folder)
    return folder


def write_inference(brain, output_folder, label_encoder, sample_rate=16000, max_audio_samples=None):
    """Writes ``brain``'s backbone and classifier as ``<output_folder>/inference``,
    replacing the one an earlier run of the same experiment wrote (see
    :func:`finish_run`)."""
    dest = os.path.join(output_folder, "inference")
    backbone = brain.backbone
    if not backbone.pretrained:
        logger.warning(
            f"No inference folder at {dest}: the backbone has random weights (pretrained: False) "
            "that no inference folder could load. Train from a save_pretrained folder to get one."
        )
        return None
    classifier = brain.modules.classifier
    classifier = getattr(classifier, "module", classifier)  # unwrapped from DDP
    folder = write_inference_folder(
        dest,
        backbone,
        classifier,
        label_encoder,
        sample_rate,
        card=run_card(output_folder, backbone),
        replace=True,
        max_audio_samples=max_audio_samples,
    )
    size = sum(p.stat().st_size for p in folder.iterdir())
    logger.info(f"Inference folder: {folder} ({size / 1e6:.2f} MB)")
    return folder
