"""``python -m speechbrain_petl.export``: a finished run as an inference
folder, a merged transformers model, or a PEFT adapter.

Usage::

    python -m speechbrain_petl.export OUTPUT_FOLDER [DEST] [--backbone_source=ID_OR_FOLDER]
    python -m speechbrain_petl.export --merged OUTPUT_FOLDER DEST [--backbone_source=ID_OR_FOLDER]
    python -m speechbrain_petl.export --peft OUTPUT_FOLDER DEST [--backbone_source=ID_OR_FOLDER]

Without a flag it reads a finished recipe run (its ``hyperparams.yaml`` and
best checkpoint by validation accuracy) and writes the inference folder
(:mod:`speechbrain_petl.inference.folder`) to ``DEST``, by default
``OUTPUT_FOLDER/inference`` (every recipe run also writes it when it
finishes). ``--backbone_source`` says where the run's frozen weights are now
(a run whose backbone moved): the run is loaded from there, as
``load_run(..., overrides={"backbone_source": ...})`` does, and that is the
source the inference folder records; the fingerprint checks they are the
weights the run was trained on.

``--merged`` writes the run (LoRA, BitFit, linear probing or full
fine-tuning merged into the weights) as a plain transformers
``ASTForAudioClassification`` / ``Wav2Vec2ForSequenceClassification`` folder
(:mod:`speechbrain_petl.export.merged`; ``--backbone_source`` then only says
where the run loads from); ``--peft`` writes a LoRA run as a
PEFT adapter (:mod:`speechbrain_petl.export.peft`; ``--backbone_source`` is
then also its ``base_model_name_or_path``). Both refuse, naming what differs, a
run that transformers' model cannot compute exactly.

Every expected failure (no run folder, no checkpoint, a damaged file, the
backbone not found or not the run's, a run an export cannot represent, a
destination that exists) ends the command with one line on stderr and exit
status 2, as argparse's usage errors do.
"""

import argparse
import pathlib

from speechbrain_petl.backbones.trained_state import FingerprintMismatch
from speechbrain_petl.data.files import DamagedFileError
from speechbrain_petl.export.merged import NotRepresentable, write_merged_model
from speechbrain_petl.export.peft import write_peft_adapter
from speechbrain_petl.inference.folder import write_inference_folder
from speechbrain_petl.studies.runs import load_run, run_card


def export_run(output_folder, dest=None, backbone_source=None, overrides=None):
    """Writes the inference folder of a finished run (best checkpoint by
    validation accuracy); ``dest`` defaults to ``<output_folder>/inference``.
    ``backbone_source`` is the source the folder records; ``overrides``
    (``{"backbone_source": ...}``, see :func:`~speechbrain_petl.studies.runs.load_run`)
    where the run is loaded from. The command passes the same source to both."""
    run = load_run(output_folder, overrides=overrides)
    dest = pathlib.Path(output_folder) / "inference" if dest is None else pathlib.Path(dest)
    return write_inference_folder(
        dest,
        run["backbone"],
        run["head"],
        run["label_encoder"],
        run["sample_rate"],
        backbone_source,
        run_card(output_folder, run["backbone"]),
        max_audio_samples=run["hparams"].get("max_audio_samples"),
    )


def parser():
    """The command line of ``python -m speechbrain_petl.export``.

    Example
    -------
    >>> parser().parse_args(["--peft", "run", "adapter"]).format
    'peft'
    """
    command = argparse.ArgumentParser(
        prog="python -m speechbrain_petl.export",
        description="Writes a finished recipe run as an inference folder (default), "
        "a merged transformers model (--merged) or a PEFT LoRA adapter (--peft).",
    )
    command.add_argument("output_folder", help="the recipe run's output folder")
    command.add_argument(
        "dest", nargs="?", default=None,
        help="new folder to write (default: OUTPUT_FOLDER/inference; required with --merged and --peft)",
    )
    formats = command.add_mutually_exclusive_group()
    formats.add_argument(
        "--merged", dest="format", action="store_const", const="merged",
        help="a transformers classification model with the methods merged into its weights",
    )
    formats.add_argument(
        "--peft", dest="format", action="store_const", const="peft", help="a PEFT LoRA adapter"
    )
    command.add_argument(
        "--backbone_source", default=None,
        help="hub id or folder of the run's backbone weights, e.g. where they moved: the run is loaded "
        "from there, and it is the source recorded in the inference folder (the base of a PEFT adapter)",
    )
    return command


#: What the command reports in one line: a user's input or files, not a bug.
#: (OSError: no run folder, no checkpoint, backbone not found, destination
#: exists; ValueError: a bad value the package names, e.g. a backbone_source
#: holding another model.)
EXPECTED_ERRORS = (OSError, ValueError, DamagedFileError, FingerprintMismatch, NotRepresentable)


def one_line(err):
    """The message of ``err`` on one line.

    Example
    -------
    >>> one_line(RuntimeError("x was trained on another backbone:\\n  weights differ\\nUse its weights."))
    'x was trained on another backbone: weights differ; Use its weights.'
    """
    parts = [part.strip() for part in str(err).splitlines() if part.strip()] or [type(err).__name__]
    text = parts[0]
    for part in parts[1:]:
        text += (" " if text.endswith((":", ";", ",")) else "; ") + part
    return text


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.export`` (see the module doc).

    Example
    -------
    >>> main([str(getfixture("tmp_path") / "no_run")])
    Traceback (most recent call last):
    SystemExit: 2
    """
    command = parser()
    args = command.parse_args(argv)
    if args.format and args.dest is None:
        command.error(f"--{args.format} needs DEST, the folder to write.")
    overrides = None if args.backbone_source is None else {"backbone_source": args.backbone_source}
    try:
        if args.format is None:
            dest = export_run(args.output_folder, args.dest, args.backbone_source, overrides)
        else:
            run = load_run(args.output_folder, overrides=overrides)
            if args.format == "merged":
                dest = write_merged_model(
                    args.dest, run["backbone"], run["head"], run["label_encoder"], run["sample_rate"]
                )
            else:
                dest = write_peft_adapter(
                    args.dest, run["backbone"], run["head"], run["label_encoder"], args.backbone_source,
                    run["sample_rate"],
                )
    except EXPECTED_ERRORS as err:
        what = f"{args.output_folder}: not exported. " if isinstance(err, NotRepresentable) else ""
        command.exit(2, f"{command.prog}: error: {what}{one_line(err)}\n")
    total = sum(p.stat().st_size for p in dest.iterdir())
    print(f"Wrote {dest} ({total / 1e6:.2f} MB)")
    return dest
