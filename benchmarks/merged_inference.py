#!/usr/bin/env python3
"""Inference time of a merged LoRA export against the plain transformers model.

Builds AST-base with random weights (``save_pretrained`` into a temporary
folder), attaches LoRA (the GSC recipe's rank 6 on queries and values) with
AST's own pooling (``cls_dist``) and a LayerNorm + linear head, writes it with
``python -m speechbrain_petl.export --merged``'s function, reloads it as
``ASTForAudioClassification``, and times it against a plain
``ASTForAudioClassification`` of the same configuration: same inputs,
alternating calls, median of ``--repeats``. A merged export is the plain
architecture, so the ratio should be 1 within the machine's noise.

To run (about 2 minutes on 2 CPU cores)::

    python benchmarks/merged_inference.py --batch_size=8 --frames=100

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import torch
from transformers import ASTConfig, ASTForAudioClassification, ASTModel

from speechbrain_petl.backbones import AST
from speechbrain_petl.export.merged import write_merged_model
from speechbrain_petl.inference import label_encoder
from speechbrain_petl.methods import LoRA
from speechbrain_petl.perf.measure import provenance, provenance_line


@torch.no_grad()  # restored on return: callers in the same process keep their grad mode
def main(argv):
    """Prints the median times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--classes", type=int, default=35)
    parser.add_argument("--markdown", help="also write the result (with where, when and how it was measured) here")
    args = parser.parse_args(argv)
    facts = provenance("python benchmarks/merged_inference.py", argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        config = ASTConfig(max_length=args.frames)
        ASTModel(config).save_pretrained(root / "base")
        lobe = AST(str(root / "base"), max_frames=args.frames, pooling="cls_dist", petl=LoRA(rank=6, alpha=0.75))
        for param in lobe.petl.parameters():
            param.data.normal_(0, 0.02)
        head = torch.nn.Sequential(
            torch.nn.LayerNorm(lobe.hidden_size, eps=config.layer_norm_eps), torch.nn.Linear(lobe.hidden_size, args.classes)
        )
        labels = label_encoder([f"word{i}" for i in range(args.classes)])
        write_merged_model(root / "merged", lobe, head, labels)
        merged = ASTForAudioClassification.from_pretrained(root / "merged").eval()
        plain = ASTForAudioClassification(merged.config).eval()
    inputs = torch.randn(args.batch_size, args.frames, config.num_mel_bins)
    merged(inputs), plain(inputs)  # warm-up
    times = {"merged": [], "plain": []}
    for _ in range(args.repeats):
        for name, model in (("merged", merged), ("plain", plain)):
            start = time.perf_counter()
            model(inputs)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    text = "\n".join([
        provenance_line(facts),
        "",
        "| model | batch | frames | median of | ms per batch | ratio to plain |",
        "|---|---|---|---|---|---|",
        f"| merged LoRA export | {args.batch_size} | {args.frames} | {args.repeats} | "
        f"{medians['merged'] * 1000:.1f} | {medians['merged'] / medians['plain']:.3f} |",
        f"| plain ASTForAudioClassification | {args.batch_size} | {args.frames} | {args.repeats} | "
        f"{medians['plain'] * 1000:.1f} | 1.000 |",
        "",
    ])
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    return medians


if __name__ == "__main__":
    main(sys.argv[1:])
