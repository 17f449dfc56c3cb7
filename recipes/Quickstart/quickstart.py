#!/usr/bin/env python3
"""The quickstart: the paper's whole story in miniature, offline, on a CPU.

Synthetic data -> "pre-trained" small AST -> frozen AST + PETL methods on a
task that needs local temporal structure -> a table like the paper's Table 1
(markdown + bar chart) -> one new clip classified through the inference
interface. Every training stage is a run of this folder's ``train.py``, a
link to the ESC-50 recipe's (as ``esc50_prepare.py`` is): the ESC-50
preparation, Brain, checkpoints and logs of a real recipe, on synthetic data
written in ESC-50's layout, configured by ``hparams/``.

It trains in bf16 where the CPU multiplies bf16 natively and in fp32
elsewhere (``precision: auto``; ``--precision=fp32`` or ``bf16`` to choose).

To run (about 3 minutes on 2 CPU cores):

    python quickstart.py hparams/quickstart.yaml

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import csv
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import sys
import time

import numpy as np
import soundfile as sf
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

import synthetic_data

from speechbrain_petl.backbones.precision import training_precision
from speechbrain_petl.inference import AudioClassifier
from speechbrain_petl.perf.measure import cpu_name, provenance
from speechbrain_petl.studies.params import summarize
from speechbrain_petl.studies.results import test_accuracy, training_curves

HERE = pathlib.Path(__file__).resolve().parent
#: The keys of hparams/quickstart.yaml that size the run (recorded in results.json).
SETTINGS = ("seed", "source_clips_per_class", "target_clips_per_class", "pretrain_epochs", "target_epochs", "precision")


def _load_stage_recipe():
    """This folder's ``train.py`` (by path: another ``train`` module may be
    imported already), with the folder on ``sys.path`` for its own imports."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location("quickstart_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage_recipe = _load_stage_recipe()


def generate_data(hparams):
    """Writes (or reuses, when made with the same settings) both tasks."""
    root = pathlib.Path(hparams["output_folder"]) / "data"
    settings = {
        "seed": hparams["seed"],
        "source_clips_per_class": hparams["source_clips_per_class"],
        "target_clips_per_class": hparams["target_clips_per_class"],
        "version": 1,
    }
    settings_file = root / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) == settings:
        return root / "source", root / "target"
    if root.exists():  # made by an earlier quickstart with other settings
        shutil.rmtree(root)
    root.mkdir(parents=True)
    synthetic_data.make_source_task(root / "source", hparams["source_clips_per_class"], hparams["seed"])
    synthetic_data.make_target_task(root / "target", hparams["target_clips_per_class"], hparams["seed"])
    settings_file.write_text(json.dumps(settings))
    return root / "source", root / "target"


def choose_precision(hparams, output_folder):
    """The precision every stage trains and evaluates in (``precision`` of
    hparams/quickstart.yaml: ``auto`` picks bf16 where the CPU multiplies
    bf16 natively, fp32 elsewhere), and why. It is recorded in
    ``output_folder/precision.json``: a folder whose stages were trained in
    another precision is refused rather than resumed and reported as this one.
    """
    precision, why = training_precision(hparams["precision"])
    record = pathlib.Path(output_folder) / "precision.json"
    if record.exists():
        earlier = json.loads(record.read_text())["precision"]
        if earlier != precision:
            raise ValueError(
                f"{output_folder} holds stages trained in {earlier}; this run would train in {precision} "
                f"({why}). Pass --precision={earlier} to reuse them, or another --output_folder."
            )
    else:
        record.write_text(json.dumps({"precision": precision, "why": why}) + "\n")
    return precision, why


def precision_overrides(yaml_file, precision):
    """A stage's command-line options for ``precision``: SpeechBrain's
    ``--precision`` and ``--eval_precision`` (autocast over the step and
    the evaluation), and, where the stage's backbone is frozen (its yaml
    has a ``backbone_dtype`` key), the lobe's ``--backbone_dtype`` (the
    frozen matrices stored in bf16).

    Example
    -------
    >>> precision_overrides("hparams/target_lora.yaml", "bf16")
    ['--precision=bf16', '--eval_precision=bf16', '--backbone_dtype=bf16']
    >>> precision_overrides("hparams/target_full.yaml", "bf16")
    ['--precision=bf16', '--eval_precision=bf16']
    >>> precision_overrides("hparams/target_full.yaml", "fp32")
    []
    """
    if precision == "fp32":
        return []
    options = [f"--precision={precision}", f"--eval_precision={precision}"]
    if re.search(r"^backbone_dtype:", (HERE / yaml_file).read_text(), re.MULTILINE):
        options.append(f"--backbone_dtype={precision}")
    return options


def run_stage(yaml_file, output_folder, *overrides, precision="fp32"):
    """One stage (this recipe's train.py) in ``precision``; returns (brain,
    training wall time in s).

    The wall time of a run that trained is stored next to its outputs, so a
    rerun that only resumes and re-tests reports the original figure.
    """
    timing = pathlib.Path(output_folder) / "timing.json"
    start = time.perf_counter()
    brain = stage_recipe.main(
        [str(HERE / yaml_file), f"--output_folder={output_folder}", *overrides,
         *precision_overrides(yaml_file, precision)]
    )
    elapsed = time.perf_counter() - start
    if not timing.exists():
        timing.write_text(json.dumps({"seconds": elapsed}))
    return brain, json.loads(timing.read_text())["seconds"]


def results_table(rows):
    """The paper-style table of the target runs (markdown).

    Example
    -------
    >>> row = {"method": "LoRA", "trainable": 26506, "percent": 1.42, "accuracy": 0.375,
    ...        "n_test": 200, "seconds": 23.4}
    >>> print(results_table([row]).splitlines()[-1])
    | LoRA | 26,506 | 1.42% | 37.5% | 200 | 23 |
    """
    lines = [
        "| Method | Trainable params | % of all params | Target accuracy | Test clips | Training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['trainable']:,} | {row['percent']:.2f}% | "
            f"{100 * row['accuracy']:.1f}% | {row['n_test']} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def measured_markdown(results):
    """What ``results.json`` says, as the markdown ``results.md`` holds (and
    this recipe's README quotes): where, when and how it ran, the source
    task, the table, the new clip and the sizes."""
    env, settings, source = results["environment"], results["settings"], results["source_task"]
    minutes, seconds = divmod(round(results["wall_seconds"]), 60)
    precision = results["precision"]
    return "\n".join([
        f"`{results['command']}` on {results['date']}: {env['cpu']}, {env['torch_threads']} torch threads; "
        f"Python {env['python']}, torch {env['torch']}, torchaudio {env['torchaudio']}, "
        f"transformers {env['transformers']}, speechbrain {env['speechbrain']}. "
        f"Precision {precision['used']} ({precision['why']}). "
        f"Wall time {minutes} min {seconds:02d} s (seed {settings['seed']}, {settings['pretrain_epochs']} "
        f"pre-training and {settings['target_epochs']} target epochs, {settings['source_clips_per_class']} "
        f"source and {settings['target_clips_per_class']} target clips per class).",
        "",
        f"Source task (20 classes): training loss {source['train_loss_first']:.2f} -> "
        f"{source['train_loss_last']:.2f} over {source['epochs']} epochs, "
        f"test accuracy {100 * source['test_accuracy']:.1f}%.",
        "",
        "Target task (10 classes, chance 10%):",
        "",
        results_table(results["rows"]),
        "",
        f"A new `{results['new_clip']['class']}` clip, classified by the Conformer-adapter task loaded "
        f"from its inference folder: `{results['new_clip']['predicted']}`. That folder holds "
        f"{results['inference_folder_bytes'] / 1e6:.2f} MB; the frozen backbone it names, "
        f"{results['backbone_bytes'] / 1e6:.2f} MB.",
        "",
    ])


def write_chart(rows, output_folder):
    """Writes results.png: the target accuracy of each method."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [row["method"] for row in rows]
    bars = ax.bar(names, [100 * row["accuracy"] for row in rows], color="tab:blue")
    for bar, row in zip(bars, rows):
        ax.annotate(
            f"{row['trainable']:,} params",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=7,
        )
    ax.set_ylabel("target test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Frozen small AST + PETL on the ordered-syllable task")
    plt.setp(ax.get_xticklabels(), rotation=15, fontsize=8)
    fig.tight_layout()
    fig.savefig(pathlib.Path(output_folder) / "results.png", dpi=120)
    plt.close(fig)


def classify_new_clip(inference_folder, output_folder, seed):
    """Generates an unseen target clip and classifies it with a fresh
    interface loaded from an inference folder (SpeechBrain's
    ``from_hparams``); returns (true label, predicted label)."""
    rng = np.random.default_rng(seed + 12345)
    label = int(rng.integers(len(synthetic_data.TARGET_CLASSES)))
    wave = synthetic_data.place(synthetic_data.target_sound(label, rng), rng)
    path = pathlib.Path(output_folder) / "new_clip.wav"
    sf.write(path, wave.astype(np.float32), synthetic_data.SAMPLE_RATE)
    classifier = AudioClassifier.from_hparams(
        source=str(inference_folder), savedir=str(pathlib.Path(output_folder) / "pretrained_models")
    )
    _, _, _, predicted = classifier.classify_file(path)
    return synthetic_data.TARGET_CLASSES[label], predicted[0]


def folder_size(folder):
    """Total bytes of the files in ``folder``."""
    return sum(path.stat().st_size for path in pathlib.Path(folder).iterdir() if path.is_file())


def environment():
    """The machine and library versions behind the numbers."""
    import torch
    import torchaudio
    import transformers

    return {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "speechbrain": sb.__version__,
    }


def seeds_parser(description):
    """The command line of the scripts that rerun the quickstart over seeds
    (``moa_comparison.py``, ``precision_comparison.py``): the yaml,
    ``--seeds`` (a list of ints), ``--markdown`` and ``--json``; options it
    does not know are the quickstart's (``parse_known_args``).

    Example
    -------
    >>> args, rest = seeds_parser("demo").parse_known_args(["hparams/quickstart.yaml", "--seeds=1,2", "--target_epochs=6"])
    >>> args.seeds, rest
    ([1, 2], ['--target_epochs=6'])
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("hparams", help="hparams/quickstart.yaml")
    parser.add_argument("--seeds", default=[1986, 1987, 1988], type=lambda text: [int(s) for s in text.split(",") if s],
                        help="comma-separated seeds (default: 1986,1987,1988)")
    parser.add_argument("--markdown", help="also write the report here")
    parser.add_argument("--json", help="also write every run's figures here")
    return parser


def read_hparams(argv):
    """hparams/quickstart.yaml with the command line's overrides; SpeechBrain's
    own ``--precision=fp32|bf16`` sets the ``precision`` key."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if "precision" in run_opts["overridden_args"]:
        hparams["precision"] = run_opts["precision"]
    return hparams


def main(argv):
    """Runs every stage as ``hparams/quickstart.yaml`` (plus overrides) says."""
    started = time.perf_counter()
    facts = provenance("python quickstart.py", argv)
    hparams = read_hparams(argv)
    out = pathlib.Path(hparams["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    seed = "--seed={}".format(hparams["seed"])
    precision, why = choose_precision(hparams, out)
    print(f"Precision: {precision} ({why})")

    print("[1/4] Writing the synthetic source and target tasks")
    source, target = generate_data(hparams)

    print("[2/4] Pre-training a small AST on the source task")
    pretrain, _ = run_stage(
        hparams["pretrain_hparams"],
        out / "pretrain",
        f"--data_folder={source}",
        "--number_of_epochs={}".format(hparams["pretrain_epochs"]),
        seed,
        precision=precision,
    )
    backbone_folder = out / "pretrained_ast"
    if not (backbone_folder / "config.json").exists():
        pretrain.backbone.save_pretrained(backbone_folder)
    losses = training_curves(out / "pretrain" / "train_log.txt")["train loss"]
    source_acc, _ = test_accuracy(out / "pretrain")
    print(f"      source task: train loss {losses[0]:.2f} -> {losses[-1]:.2f}, test accuracy {100 * source_acc:.1f}%")

    print("[3/4] Frozen AST + PETL methods on the target task")
    rows = []
    for method, yaml_file in hparams["target_runs"].items():
        run_folder = out / "target" / pathlib.Path(yaml_file).stem
        brain, seconds = run_stage(
            yaml_file,
            run_folder,
            f"--data_folder={target}",
            f"--backbone_source={backbone_folder}",
            "--number_of_epochs={}".format(hparams["target_epochs"]),
            seed,
            precision=precision,
        )
        counts = summarize(dict(brain.modules))
        accuracy, n_test = test_accuracy(run_folder)
        trainable = counts["petl"] + counts["head"]
        rows.append(
            {
                "method": method,
                "trainable": trainable,
                "percent": 100 * trainable / counts["total"],
                "accuracy": accuracy,
                "n_test": n_test,
                "seconds": seconds,
                "folder": str(run_folder),
            }
        )

    print("[4/4] Results (chance: 10%)")
    print(results_table(rows))
    write_chart(rows, out)
    # Every recipe run ends by writing its tested model as <run>/inference:
    # the trained tensors only, loadable by SpeechBrain's from_hparams.
    conformer = next(r for r in rows if r["method"] == "Conformer adapter")
    inference = pathlib.Path(conformer["folder"]) / "inference"
    truth, predicted = classify_new_clip(inference, out, hparams["seed"])
    print(
        f"Conformer-adapter task exported to {inference} ({folder_size(inference) / 1e6:.2f} MB; "
        f"the frozen backbone {out / 'pretrained_ast'} is {folder_size(out / 'pretrained_ast') / 1e6:.2f} MB)"
    )
    print(f"A new '{truth}' clip, classified through it: '{predicted}'")
    results = {
        "command": facts["command"],
        "date": facts["date"],
        "environment": environment(),
        "settings": {key: hparams[key] for key in SETTINGS},
        "precision": {"used": precision, "why": why},
        "wall_seconds": time.perf_counter() - started,
        "source_task": {
            "train_loss_first": losses[0], "train_loss_last": losses[-1], "epochs": len(losses),
            "test_accuracy": source_acc,
        },
        "rows": rows,
        "new_clip": {"class": truth, "predicted": predicted},
        "inference_folder_bytes": folder_size(inference),
        "backbone_bytes": folder_size(out / "pretrained_ast"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(measured_markdown(results))
    print(f"Table: {out / 'results.md'}  chart: {out / 'results.png'}  all figures: {out / 'results.json'}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
