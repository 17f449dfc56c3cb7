"""``python -m speechbrain_petl.export``: a finished run as an inference
folder, a merged transformers model, or a PEFT adapter.

Usage::

    python -m speechbrain_petl.export OUTPUT_FOLDER [DEST] [--backbone_source=ID_OR_FOLDER]
    python -m speechbrain_petl.export --merged OUTPUT_FOLDER DEST
    python -m speechbrain_petl.export --peft OUTPUT_FOLDER DEST [--backbone_source=ID_OR_FOLDER]

Without a flag it reads a finished recipe run (its ``hyperparams.yaml`` and
best checkpoint by validation accuracy) and writes the inference folder
(:mod:`speechbrain_petl.inference.folder`) to ``DEST``, by default
``OUTPUT_FOLDER/inference`` (every recipe run also writes it when it
finishes). ``--backbone_source`` records another source for the same
weights (e.g. the hub id of the local copy the run used); the fingerprint
still decides.

``--merged`` writes the run (LoRA, BitFit, linear probing or full
fine-tuning merged into the weights) as a plain transformers
``ASTForAudioClassification`` / ``Wav2Vec2ForSequenceClassification`` folder
(:mod:`speechbrain_petl.export.merged`); ``--peft`` writes a LoRA run as a
PEFT adapter (:mod:`speechbrain_petl.export.peft`; ``--backbone_source`` is
then its ``base_model_name_or_path``). Both refuse, naming what differs, a
run that transformers' model cannot compute exactly.
"""

import argparse
import pathlib

from speechbrain_petl.export.merged import NotRepresentable, write_merged_model
from speechbrain_petl.export.peft import write_peft_adapter
from speechbrain_petl.inference.folder import write_inference_folder
from speechbrain_petl.studies.runs import load_run, run_card


def export_run(output_folder, dest=None, backbone_source=None, overrides=None):
    """Writes the inference folder of a finished run (best checkpoint by
    validation accuracy); ``dest`` defaults to ``<output_folder>/inference``."""
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
        help="hub id or folder of the same backbone weights to record (inference folder, PEFT base)",
    )
    return command


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.export`` (see the module doc)."""
    command = parser()
    args = command.parse_args(argv)
    if args.format == "merged" and args.backbone_source is not None:
        command.error("--merged writes every weight into DEST; --backbone_source does not apply.")
    if args.format and args.dest is None:
        command.error(f"--{args.format} needs DEST, the folder to write.")
    if args.format is None:
        dest = export_run(args.output_folder, args.dest, backbone_source=args.backbone_source)
    else:
        run = load_run(args.output_folder)
        try:
            if args.format == "merged":
                dest = write_merged_model(
                    args.dest, run["backbone"], run["head"], run["label_encoder"], run["sample_rate"]
                )
            else:
                dest = write_peft_adapter(
                    args.dest, run["backbone"], run["head"], run["label_encoder"], args.backbone_source,
                    run["sample_rate"],
                )
        except NotRepresentable as err:
            raise SystemExit(f"{args.output_folder}: not exported. {err}") from None
    total = sum(p.stat().st_size for p in dest.iterdir())
    print(f"Wrote {dest} ({total / 1e6:.2f} MB)")
    return dest
