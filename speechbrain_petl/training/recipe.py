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

:func:`setup_experiment` refuses, before anything is written, an output
folder holding a run trained with other settings or on other backbone weights
(see :mod:`speechbrain_petl.studies.run_record`), unless
``--continue_with_new_settings`` is given and the trained state fits the new
model. :func:`start_record` writes the run's ``params.json`` (dataset, method,
parameter counts), and :func:`finish_run` writes the tested model as
``<output_folder>/inference`` (see :mod:`speechbrain_petl.inference.folder`)
and marks the record finished.
"""

import dataclasses
import logging
import os
import shutil

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.backbones import Backbone
from speechbrain_petl.inference.folder import write_inference_folder
from speechbrain_petl.studies.runs import run_card
from speechbrain_petl.studies.params import summarize
from speechbrain_petl.studies.run_record import (
    CONTINUE_FLAG,
    RESTORED_OVER_NEW_SETTINGS,
    RunSettingsError,
    check_run_folder,
    command_settings,
    holds_run,
    mark_finished,
    read_record,
    record_new_settings,
    record_run_options,
    write_record,
)
from speechbrain_petl.training.checkpoints import LOAD_ERRORS, CheckpointError, damaged_files

logger = logging.getLogger(__name__)


def setup_experiment(argv, script):
    """SpeechBrain's prologue, as every recipe's ``train.py`` begins.

    Parses ``hparams.yaml --key=value`` arguments, joins
    the DDP process group when launched by ``torchrun`` (on a machine without
    CUDA: with the gloo backend on CPU unless ``--distributed_backend`` or
    ``--device`` say otherwise, see :func:`cpu_distributed_defaults`), loads the yaml and
    creates the experiment folder (resolved hyperparams.yaml,
    log.txt, env.log, and copies of ``script`` and of this module).

    Before anything is written, every process checks the output folder: a
    run trained there with other settings is refused, naming them
    (:func:`~speechbrain_petl.studies.run_record.check_run_folder`), and so
    is a model its latest checkpoint does not fit, such as other backbone
    weights (:func:`check_checkpoint_fits`). ``--continue_with_new_settings``
    (taken out of ``argv`` before SpeechBrain reads it) lets a run go on with
    changed settings; the change is recorded
    (:func:`~speechbrain_petl.studies.run_record.record_new_settings`).

    Arguments
    ---------
    argv : list of str
        ``hparams.yaml`` and ``--key=value`` arguments.
    script : str
        The recipe's ``train.py`` (``__file__``), copied into the folder.

    Returns
    -------
    (dict, dict)
        The hyper-parameters and SpeechBrain's run options.
    """
    argv, continue_with_new_settings = split_continue_flag(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = cpu_distributed_defaults(run_opts)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless under torchrun
    settings = command_settings(hparams_file, overrides, run_opts.as_dict())
    trained = holds_run(settings)
    changes = check_run_folder(settings, continue_with_new_settings)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if trained:
        check_checkpoint_fits(hparams.get("checkpointer"), settings.output_folder)
    sb.utils.distributed.ddp_barrier()  # every process has checked before the main one writes
    main = sb.utils.distributed.if_main_process()
    if main and changes:
        kept = record_new_settings(settings.output_folder, changes, settings.run_options)
        logger.warning(
            "Going on with new settings (%s; recorded in params.json%s):\n  %s\nNote: %s.",
            CONTINUE_FLAG, f", previous hyperparams.yaml kept as {kept}" if kept else "", "\n  ".join(changes),
            RESTORED_OVER_NEW_SETTINGS,
        )
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if main:
        shutil.copy(os.path.realpath(script), hparams["output_folder"])
        if not trained:  # the options this run trains with from its start
            record_run_options(settings.output_folder, settings.run_options)
    return hparams, run_opts


def split_continue_flag(argv):
    """``argv`` without ``--continue_with_new_settings`` (no yaml key: it
    must not reach SpeechBrain's overrides), and whether it was given.

    Example
    -------
    >>> split_continue_flag(["x.yaml", "--lr=0.5", "--continue_with_new_settings"])
    (['x.yaml', '--lr=0.5'], True)
    >>> split_continue_flag(["x.yaml"])
    (['x.yaml'], False)
    """
    for arg in argv:
        if arg.startswith(CONTINUE_FLAG + "="):
            raise ValueError(f"{CONTINUE_FLAG} takes no value, got {arg!r}")
    kept = [arg for arg in argv if arg != CONTINUE_FLAG]
    return kept, len(kept) < len(argv)


def check_checkpoint_fits(checkpointer, output_folder):
    """Refuses (:class:`~speechbrain_petl.studies.run_record.RunSettingsError`),
    before anything is written, a model that the latest intact checkpoint
    of ``checkpointer`` would not load onto: a backbone with other frozen
    weights (its fingerprint; the same weights in another folder pass) or
    other tensor names or shapes. Reads only.

    Example
    -------
    >>> from speechbrain_petl.training.checkpoints import Checkpointer
    >>> folder = getfixture("tmp_path")
    >>> Checkpointer(folder / "save", {"head": torch.nn.Linear(4, 2)}).save_checkpoint()  # doctest: +ELLIPSIS
    Checkpoint(...)
    >>> check_checkpoint_fits(Checkpointer(folder / "save", {"head": torch.nn.Linear(4, 2)}), folder)
    >>> check_checkpoint_fits(Checkpointer(folder / "save", {"head": torch.nn.Linear(4, 3)}), folder)
    Traceback (most recent call last):
    ...
    speechbrain_petl.studies.run_record.RunSettingsError: ... head.weight: (2, 4) saved, (3, 4) in this ...
    """
    if checkpointer is None:
        return
    checkpoint = next((c for c in checkpointer.find_checkpoints() if not damaged_files(c)), None)
    if checkpoint is None:
        return  # nothing intact to resume from: the recovery says so
    problems = []
    for name, module in checkpointer.recoverables.items():
        path = checkpoint.paramfiles.get(name)
        if path is None or not isinstance(module, torch.nn.Module):
            continue
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as err:
            raise CheckpointError(
                f"Cannot read {path} of checkpoint {checkpoint.path} ({err}); nothing was written: move that "
                "checkpoint folder away to resume from the previous one"
            ) from None
        if isinstance(module, Backbone):
            try:
                module.check_fingerprint(saved.get("fingerprint") if isinstance(saved, dict) else None, str(path))
            except RuntimeError as err:  # the fingerprint check's own refusal
                problems.append(str(err))
                continue
            saved, expected = saved.get("state"), module.trainable_state_dict()
        else:
            expected = module.state_dict()
        problems += state_mismatches(name, saved, expected)
    if problems:
        raise RunSettingsError(
            f"{output_folder} holds a run whose checkpoint {checkpoint.path} does not fit this command's "
            "model:\n  " + "\n  ".join(problems)
            + "\nNothing was written. Point --backbone_source at the weights the run was trained on (a copy "
            "of them in another folder is fine) and keep its model settings, or give another --output_folder "
            f"for a new run ({CONTINUE_FLAG} cannot carry a trained state onto another model)."
        )


def state_mismatches(name, saved, expected):
    """Why the state dict ``saved`` would not load into a module whose
    state dict is ``expected``: one line per missing, unexpected or
    reshaped tensor (empty when it would).

    Example
    -------
    >>> state_mismatches("head", {"w": torch.zeros(2)}, {"w": torch.zeros(3), "b": torch.zeros(1)})
    ["head: missing ['b']", "head.w: (2,) saved, (3,) in this command's model"]
    """
    if not isinstance(saved, dict):
        return [f"{name}: holds a {type(saved).__name__}, not a state dict"]
    lines = []
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing:
        lines.append(f"{name}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if unexpected:
        lines.append(f"{name}: unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key in sorted(set(saved) & set(expected)):
        old, new = saved[key], expected[key]
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.shape != new.shape:
            lines.append(f"{name}.{key}: {tuple(old.shape)} saved, {tuple(new.shape)} in this command's model")
    return lines


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
    the parameter counts of ``modules``, and ``finished: false``; the
    ``run_options`` and ``settings_changes`` recorded by
    :func:`setup_experiment` are kept.

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
    previous = read_record(output_folder) or {}
    record = dict(summarize(dict(modules)), finished=False)
    record.update(dataset=dataset, method=method)
    record.update({key: previous[key] for key in ("run_options", "settings_changes") if key in previous})
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
