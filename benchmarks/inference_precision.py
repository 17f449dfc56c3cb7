#!/usr/bin/env python3
"""Inference in fp32, bf16 and int8: agreement with fp32, latency and memory.

The same classifier is loaded once per ``--dtypes`` setting
(``AudioClassifier``'s ``backbone_dtype``: the frozen linears of the blocks
stored and multiplied in fp32, bf16 or int8; trained tensors and the head
stay fp32) and classifies the same clips one at a time. Per setting it
reports the top-1 agreement with fp32, the largest difference of a class
probability from fp32's, the median latency per clip, and the memory of
the lobe's and head's tensors (int8: the int8 weights, FBGEMM's packed copy
not counted).

Two sources of a classifier and its clips:

* ``--folder <inference folder> --clips <test.csv>``: a trained model and
  its test clips (a SpeechBrain manifest with a ``wav`` column, relative
  paths taken from the manifest's folder; e.g. a quickstart run's
  ``<run>/inference`` and ``<run>/save/test.csv``);
* otherwise self-contained: AST-base with random weights (offline), LoRA of
  the Speech Commands recipe's size with random values, a random head, and
  ``--n-clips`` random clips of ``--seconds`` seconds.

To run (self-contained, 200 clips of 1 s: about 4 minutes on 2 CPU cores)::

    python benchmarks/inference_precision.py --n-clips 200 --markdown docs/performance/precision.md

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import tempfile
import time

import torch

from speechbrain_petl.backbones import AST
from speechbrain_petl.data.audio import read_clip
from speechbrain_petl.inference import AudioClassifier, label_encoder
from speechbrain_petl.methods import LoRA
from speechbrain_petl.perf.measure import median, provenance, provenance_line, tensor_bytes

DTYPES = ("fp32", "bf16", "int8")
MB = 1e6


def read_manifest(path):
    """The clip paths of a SpeechBrain manifest's ``wav`` column (relative
    paths from the manifest's folder)."""
    with open(path, newline="") as fin:
        rows = list(csv.DictReader(fin))
    if not rows or "wav" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV manifest with a 'wav' column (e.g. a recipe's save/test.csv).")
    folder = os.path.dirname(os.path.abspath(path))
    return [row["wav"] if os.path.isabs(row["wav"]) else os.path.join(folder, row["wav"]) for row in rows]


def folder_classifier(folder, savedir):
    """``make(dtype)`` loading the inference folder with ``backbone_dtype=dtype``."""
    return lambda dtype: AudioClassifier.from_hparams(
        source=str(folder), savedir=os.path.join(savedir, dtype), backbone_dtype=dtype
    )


def random_classifier(frames, classes, seed):
    """``make(dtype)`` building AST-base (random weights) with LoRA and a head, the same values each time."""

    def make(dtype):
        """The classifier in ``dtype``."""
        torch.manual_seed(seed)
        lobe = AST(pretrained=False, max_frames=frames, petl=LoRA(rank=6, alpha=0.75))
        for param in lobe.petl.parameters():
            param.data.normal_(0, 0.02)
        head = torch.nn.Linear(lobe.hidden_size, classes)
        encoder = label_encoder([f"class{i}" for i in range(classes)])
        return AudioClassifier.from_modules(lobe.eval(), head, encoder, backbone_dtype=dtype)

    return make


def measure(classifier, clips, warmup):
    """Probabilities ``(clips, classes)`` and per-clip latencies (s) of one setting."""
    probabilities, latencies = [], []
    with torch.inference_mode():
        for wav in clips[:warmup]:
            classifier.classify_batch(wav.unsqueeze(0))
        for wav in clips:
            start = time.perf_counter()
            log_probs = classifier.classify_batch(wav.unsqueeze(0))[0]
            latencies.append(time.perf_counter() - start)
            probabilities.append(log_probs[0].exp())
    return torch.stack(probabilities), latencies


def model_bytes(classifier):
    """Bytes of the lobe's resident tensors and the head's."""
    lobe = classifier.mods.embedding_model
    return tensor_bytes([*lobe.resident_tensors(), *classifier.mods.classifier.parameters()])


def run(args, facts):
    """Measures every setting; returns the report."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as savedir:
        if args.folder:
            make = folder_classifier(args.folder, savedir)
            paths = read_manifest(args.clips)
            source = f"inference folder {args.folder}, clips of {args.clips}"
        else:
            make = random_classifier(args.frames, args.classes, args.seed)
            paths = None
            source = f"AST-base with random weights, LoRA (rank 6), {args.frames} frames, {args.classes} classes"
        rows, reference = [], None
        for dtype in args.dtypes:
            classifier = make(dtype)
            if paths is not None:
                clips = [read_clip(path, classifier.sample_rate) for path in paths]
            else:
                generator = torch.Generator().manual_seed(args.seed)
                clips = [0.1 * torch.randn(int(args.seconds * 16000), generator=generator) for _ in range(args.n_clips)]
            probabilities, latencies = measure(classifier, clips, args.warmup)
            if reference is None:
                reference = probabilities  # the first setting (fp32 by default) is the reference
            rows.append({
                "dtype": dtype,
                "clips": len(clips),
                "top1_agreement": (probabilities.argmax(1) == reference.argmax(1)).float().mean().item(),
                "max_probability_difference": (probabilities - reference).abs().max().item(),
                "ms_per_clip": 1000 * median(latencies),
                "model_bytes": model_bytes(classifier),
            })
            print(f"[precision] {dtype}: {rows[-1]['ms_per_clip']:.1f} ms/clip", file=sys.stderr, flush=True)
            del classifier
    base = rows[0]
    for row in rows:
        row["latency_ratio"] = row["ms_per_clip"] / base["ms_per_clip"]
        row["memory_ratio"] = row["model_bytes"] / base["model_bytes"]
    return {"provenance": facts, "source": source, "reference": args.dtypes[0], "rows": rows}


def markdown(report):
    """The report as markdown: where, when and how, then one table."""
    reference = report["reference"]
    lines = [
        provenance_line(report["provenance"]),
        f"{report['source']}; one clip per call, median latency after warm-up; agreement and probability "
        f"differences against {reference}.",
        "",
        f"| backbone dtype | clips | top-1 agreement with {reference} | largest probability difference "
        f"| ms/clip | × {reference} | model MB | × {reference} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['dtype']} | {row['clips']} | {100 * row['top1_agreement']:.1f}% | "
            f"{row['max_probability_difference']:.4f} | {row['ms_per_clip']:.1f} | {row['latency_ratio']:.2f} | "
            f"{row['model_bytes'] / MB:,.0f} | {row['memory_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv):
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", help="an inference folder (with --clips)")
    parser.add_argument("--clips", help="a CSV manifest with a 'wav' column (with --folder)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, the first is the reference")
    parser.add_argument("--n-clips", type=int, default=200, help="self-contained mode: random clips")
    parser.add_argument("--seconds", type=float, default=1.0, help="self-contained mode: clip length")
    parser.add_argument("--frames", type=int, default=100, help="self-contained mode: AST's max_frames")
    parser.add_argument("--classes", type=int, default=35, help="self-contained mode: head outputs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if not args.dtypes or any(d not in DTYPES for d in args.dtypes):
        parser.error(f"--dtypes takes comma-separated settings of {DTYPES}, got {','.join(args.dtypes)!r}")
    if bool(args.folder) != bool(args.clips):
        parser.error("--folder and --clips go together (an inference folder and its test manifest).")
    if args.folder and not pathlib.Path(args.folder, "hyperparams.yaml").is_file():
        parser.error(f"--folder {args.folder}: no hyperparams.yaml; expected an inference folder.")
    for name in ("n_clips", "threads", "classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None):
    """Entry point; returns the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = run(args, provenance("python benchmarks/inference_precision.py", argv))
    text = markdown(report)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
