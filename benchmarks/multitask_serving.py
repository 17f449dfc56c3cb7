#!/usr/bin/env python3
"""Many tasks on one backbone against one model per task: memory and speed.

Builds an AST-base backbone with random weights (written with
``save_pretrained`` into a temporary folder: no hub needed), then one
inference folder per Speech Commands recipe yaml (the recipe's own PETL
method and head, with randomised trained tensors). For N = 1, 2, 4, 8
tasks it reports, measured in one run:

* resident tensor bytes: one :class:`MultiTaskClassifier` holding the N
  tasks, against N ``AudioClassifier`` models (each with its own backbone);
* the median time to classify a mixed batch (``--clips_per_task`` clips
  of each task) in one ``classify_batch`` call, against classifying each
  task's clips with its own model, one task after the other.

To run (about 5 minutes on 2 CPU cores)::

    python benchmarks/multitask_serving.py --tasks=1,2,4,8 --clips_per_task=2

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from transformers import ASTConfig, ASTModel

from speechbrain_petl.inference import write_inference_folder
from speechbrain_petl.inference import AudioClassifier, label_encoder
from speechbrain_petl.perf.measure import provenance, provenance_line
from speechbrain_petl.inference.multitask import MultiTaskClassifier, resident_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]
HPARAMS = REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams"
#: The tasks, in the order they are added (N = 1 is LoRA alone).
YAMLS = ["lora", "conformer", "bottleneck", "bitfit", "linear", "prompt_deep", "prefix", "conformer_houlsby"]


def make_task_folders(root, backbone_folder, names, seed=0):
    """One inference folder per recipe yaml, with randomised trained tensors."""
    folders = {}
    for index, name in enumerate(names):
        with open(HPARAMS / f"{name}_gsc.yaml") as fin:
            hparams = load_hyperpyyaml(
                fin,
                {
                    "backbone_source": str(backbone_folder),
                    "pretrained": True,
                    "data_folder": str(root),
                    "output_folder": str(root / "runs" / name),
                },
            )
        backbone, head = hparams["backbone"], hparams["classifier"]
        generator = torch.Generator().manual_seed(seed + index)
        with torch.no_grad():
            for param in list(backbone.petl.parameters()) + list(head.parameters()):
                param.add_(0.02 * torch.randn(param.shape, generator=generator))
        labels = [f"word{i}" for i in range(hparams["n_classes"])]
        folders[name] = write_inference_folder(root / name, backbone, head, label_encoder(labels))
        del hparams, backbone, head
    return folders


def median_seconds(function, repeats):
    """Median wall time of ``function()`` over ``repeats`` calls, after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(folders, names, clips_per_task, repeats, samples, savedir):
    """Bytes and times for the tasks ``names``: one shared model against one model each."""
    server = MultiTaskClassifier.from_folders({name: folders[name] for name in names})
    singles = {
        name: AudioClassifier.from_hparams(source=str(folders[name]), savedir=str(savedir / name))
        for name in names
    }
    generator = torch.Generator().manual_seed(0)
    tasks = [name for name in names for _ in range(clips_per_task)]
    wavs = torch.randn(len(tasks), samples, generator=generator)

    def mixed():
        server.classify_batch(wavs, tasks=tasks)

    def one_after_another():
        for i, name in enumerate(names):
            singles[name].classify_batch(wavs[i * clips_per_task : (i + 1) * clips_per_task])

    row = {
        "tasks": len(names),
        "shared_bytes": resident_bytes(server),
        "separate_bytes": sum(resident_bytes(single.mods) for single in singles.values()),
        "mixed_s": median_seconds(mixed, repeats),
        "separate_s": median_seconds(one_after_another, repeats),
        "clips": len(tasks),
    }
    del server, singles
    return row


def markdown(rows):
    """The results as a markdown table."""
    lines = [
        "| tasks | one backbone (MB) | one model per task (MB) | memory ratio | mixed batch (s) "
        "| one task after another (s) | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tasks']} | {r['shared_bytes'] / 1e6:.0f} | {r['separate_bytes'] / 1e6:.0f} | "
            f"{r['shared_bytes'] / r['separate_bytes']:.2f} | {r['mixed_s']:.3f} | {r['separate_s']:.3f} | "
            f"{r['mixed_s'] / r['separate_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv):
    """Runs the comparison and prints the table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="1,2,4,8", help="numbers of tasks, comma separated (at most 8)")
    parser.add_argument("--clips_per_task", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length (Speech Commands: 1 s)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--markdown", help="also write the table (with where, when and how it was measured) here")
    args = parser.parse_args(argv)
    facts = provenance("python benchmarks/multitask_serving.py", argv)
    counts = [int(n) for n in args.tasks.split(",")]
    if not counts or max(counts) > len(YAMLS) or min(counts) < 1:
        parser.error(f"--tasks takes numbers from 1 to {len(YAMLS)}")
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        ASTModel(ASTConfig(max_length=100)).save_pretrained(root / "ast_base")
        folders = make_task_folders(root, root / "ast_base", YAMLS[: max(counts)])
        rows = [
            measure(folders, YAMLS[:n], args.clips_per_task, args.repeats, int(16000 * args.seconds), root / "single")
            for n in counts
        ]
    text = "\n".join([
        provenance_line(facts),
        f"AST-base (random weights), {args.seconds:g} s clips, {args.clips_per_task} clips per task, "
        f"median of {args.repeats}; tasks added in the order {', '.join(YAMLS[: max(counts)])}.",
        "",
        markdown(rows),
        "",
    ])
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"provenance": facts, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
