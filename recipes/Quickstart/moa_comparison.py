#!/usr/bin/env python3
"""Mixtures of adapters against one adapter of the same size, on the quickstart's target task, over seeds.

    python moa_comparison.py hparams/quickstart.yaml --seeds=1986,1987,1988 --markdown=moa_accuracy.md

Uses the quickstart's data and its pre-trained small AST (written, or
reused when ``python quickstart.py`` ran with the same settings, under the
quickstart's ``output_folder``), then trains on the frozen AST, once per
seed (the seed of the run: initialisation and shuffling; the data and the
backbone stay those of the quickstart's ``seed``), in pairs of equal size:

* Dense-MoA with 4 Conformer experts (r=7, k=31; ``hparams/target_dense_moa.yaml``)
  against one Conformer adapter (r=32, k=31; ``hparams/target_conformer.yaml``);
* Soft-MoA with 4 bottleneck experts (r=12, 1 slot; ``hparams/target_soft_moa.yaml``)
  against one bottleneck adapter (r=52; ``hparams/target_bottleneck.yaml``).

All four sit beside the FFN (Pfeiffer, parallel) with its LayerNorm copy
trained. Prints, and with ``--markdown``/``--json`` writes, the mean ± std
test accuracy of each over the seeds, the trainable parameters, and where,
when and how it was measured. Any quickstart key may be overridden
(``--target_epochs=12``); a reduced check::

    python moa_comparison.py hparams/quickstart.yaml --seeds=1,2 --source_clips_per_class=10 \\
        --target_clips_per_class=10 --pretrain_epochs=1 --target_epochs=1 --output_folder=/tmp/moa_check

Authors
 * speechbrain-petl contributors 2026
"""

import json
import pathlib
import statistics
import sys
import time


HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import quickstart  # noqa: E402  (this folder's: its data, pre-training and stage runner)

#: (pair, method, yaml), in the order of the report.
RUNS = [
    ("Conformer experts", "Dense-MoA (4 Conformer experts r=7)", "hparams/target_dense_moa.yaml"),
    ("Conformer experts", "One Conformer adapter (r=32)", "hparams/target_conformer.yaml"),
    ("Bottleneck experts", "Soft-MoA (4 bottleneck experts r=12, 1 slot)", "hparams/target_soft_moa.yaml"),
    ("Bottleneck experts", "One bottleneck adapter (r=52)", "hparams/target_bottleneck.yaml"),
]


def summary(rows):
    """``[(pair, method, trainable, mean, std, n)]``: accuracy (%) over seeds."""
    table = []
    for pair, method, yaml_file in RUNS:
        runs = [r for r in rows if r["yaml"] == yaml_file]
        accs = [100 * r["accuracy"] for r in runs]
        table.append((
            pair, method, runs[0]["trainable"] if runs else None,
            statistics.mean(accs) if accs else None, statistics.stdev(accs) if len(accs) > 1 else 0.0, len(accs),
        ))  # fmt: skip
    return table


def markdown(rows, facts, settings, seconds):
    """The report (provenance, settings, table)."""
    lines = [
        f"Measured {facts['date']} on {facts['cpu']} ({facts['threads']} torch threads, torch {facts['torch']}) "
        f"with `{facts['command']}`; wall time {seconds / 60:.1f} min.",
        "",
        "Quickstart target task (10 classes, chance 10 %), frozen small AST; "
        + ", ".join(f"{k} {v}" for k, v in settings.items()) + ". Mean ± std over the seeds "
        "(sample std; each run tests 200 clips when the target task has 100 clips per class).",
        "",
        "| Pair | Method | Trainable params (PETL + head) | Test accuracy (%) | Seeds |",
        "|---|---|---:|---:|---:|",
    ]
    for pair, method, trainable, mean, std, n in summary(rows):
        acc = "no run" if mean is None else f"{mean:.1f} ± {std:.1f}"
        lines.append(f"| {pair} | {method} | {trainable:,} | {acc} | {n} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = quickstart.seeds_parser(__doc__.splitlines()[0]).parse_known_args(argv)
    seeds = args.seeds

    from speechbrain_petl.perf.measure import provenance
    from speechbrain_petl.studies.params import summarize
    from speechbrain_petl.studies.results import test_accuracy

    started = time.perf_counter()
    facts = provenance("python moa_comparison.py", argv)
    hparams = quickstart.read_hparams([args.hparams, *overrides])
    out = pathlib.Path(hparams["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    precision, why = quickstart.choose_precision(hparams, out)
    print(f"Precision: {precision} ({why})")
    print("[1/3] The quickstart's synthetic tasks")
    source, target = quickstart.generate_data(hparams)
    print("[2/3] Its pre-trained small AST")
    pretrain, _ = quickstart.run_stage(
        hparams["pretrain_hparams"], out / "pretrain", f"--data_folder={source}",
        "--number_of_epochs={}".format(hparams["pretrain_epochs"]), "--seed={}".format(hparams["seed"]),
        precision=precision,
    )  # fmt: skip
    backbone_folder = out / "pretrained_ast"
    if not (backbone_folder / "config.json").exists():
        pretrain.backbone.save_pretrained(backbone_folder)
    print(f"[3/3] {len(RUNS)} methods x {len(seeds)} seeds on the target task")
    rows = []
    for seed in seeds:
        for pair, method, yaml_file in RUNS:
            folder = out / "moa_comparison" / pathlib.Path(yaml_file).stem / f"seed{seed}"
            brain, seconds = quickstart.run_stage(
                yaml_file, folder, f"--data_folder={target}", f"--backbone_source={backbone_folder}",
                "--number_of_epochs={}".format(hparams["target_epochs"]), f"--seed={seed}",
                precision=precision,
            )  # fmt: skip
            counts = summarize(dict(brain.modules))
            accuracy, n_test = test_accuracy(folder)
            rows.append({
                "pair": pair, "method": method, "yaml": yaml_file, "seed": seed, "accuracy": accuracy,
                "n_test": n_test, "trainable": counts["petl"] + counts["head"], "seconds": seconds,
            })  # fmt: skip
            print(f"      seed {seed}: {method}: {100 * accuracy:.1f}% ({n_test} clips)")
    settings = {key: hparams[key] for key in quickstart.SETTINGS}
    settings["precision"] = precision
    settings["seeds"] = seeds
    text = markdown(rows, facts, settings, time.perf_counter() - started)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"provenance": facts, "settings": settings, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
