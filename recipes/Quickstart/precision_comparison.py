#!/usr/bin/env python3
"""The whole quickstart in fp32 and in bf16, over several seeds: does its
story hold in bf16, and what does bf16 save?

    python precision_comparison.py hparams/quickstart.yaml --seeds=1986,1987,1988 \\
        --precisions=fp32,bf16 --markdown=quickstart_precision.md --json=quickstart_precision.json

Each (seed, precision) is a complete run of ``quickstart.py`` (data,
pre-training, the five target runs, the new clip) in a folder of its own,
``<root>/<precision>/<seed>`` (``--root``, default
``results/precision_comparison``); a finished run found there with the
same settings is not run again: its recorded figures are reported. The precisions of one seed run one after the
other, seed after seed, so that a drifting machine affects them alike. Other
options are the quickstart's (``--target_epochs=6`` ...).

The report gives, per method and precision, the target accuracy (mean ± std
over the seeds) and the training time of its stage; per seed, the margins
the quickstart's story rests on (Conformer adapter minus the bottleneck
adapter of the same size, and minus full fine-tuning, in points); and each
run's wall time with the ratio of each precision to the first. bf16 is
emulated where the CPU lacks native bf16 (``avx512_bf16`` or ``amx_bf16``),
so its times mean something only where the provenance line names one.

Authors
 * speechbrain-petl contributors 2026
"""

import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import quickstart  # noqa: E402  (this folder's: its runs, settings and precision choice)


def mean_std(values):
    """``"mean ± std"`` (sample std; 0 for one value) of percentages.

    Example
    -------
    >>> mean_std([70.5, 66.0, 68.5])
    '68.3 ± 2.3'
    """
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def margins(results):
    """The story's margins of one run, in accuracy points: the Conformer
    adapter minus the same-size bottleneck adapter, and minus full fine-tuning.

    Example
    -------
    >>> rows = [{"method": "Bottleneck adapter", "accuracy": 0.24},
    ...         {"method": "Conformer adapter", "accuracy": 0.705},
    ...         {"method": "Full fine-tuning", "accuracy": 0.735}]
    >>> [round(m, 1) for m in margins({"rows": rows})]
    [46.5, -3.0]
    """
    accuracy = {row["method"]: 100 * row["accuracy"] for row in results["rows"]}
    conformer = accuracy["Conformer adapter"]
    return conformer - accuracy["Bottleneck adapter"], conformer - accuracy["Full fine-tuning"]


def markdown(runs, precisions, seeds, facts, machine):
    """The report: provenance, accuracy and stage times per method, the
    story's margins per seed, and wall time per run."""
    first = precisions[0]
    methods = [row["method"] for row in runs[(seeds[0], first)]["rows"]]
    lines = [
        f"Measured {facts['date']} on {facts['cpu']} ({facts['threads']} torch threads, torch {facts['torch']}; "
        f"{machine}) with `{facts['command']}`.",
        "",
        f"Each cell: the quickstart's target task (10 classes, chance 10 %, 200 test clips per run), mean ± std "
        f"over seeds {', '.join(map(str, seeds))}; stage times are each stage's training wall time (s, mean).",
        "",
        "| Method | " + " | ".join(f"accuracy {p} (%)" for p in precisions) + " | "
        + " | ".join(f"stage s {p}" for p in precisions) + " |",
        "|---|" + "---:|" * (2 * len(precisions)),
    ]
    for method in methods:
        cells = []
        for precision in precisions:
            cells.append(mean_std([100 * row["accuracy"] for seed in seeds
                                   for row in runs[(seed, precision)]["rows"] if row["method"] == method]))
        for precision in precisions:
            cells.append(f"{statistics.mean(row['seconds'] for seed in seeds for row in runs[(seed, precision)]['rows'] if row['method'] == method):.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The story's margins per run, in accuracy points (Conformer adapter minus the same-size bottleneck "
        "adapter; Conformer adapter minus full fine-tuning), and each run's wall time:",
        "",
        "| Seed | Precision | Conformer − bottleneck | Conformer − full FT | Wall time (s) | × " + first + " |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for seed in seeds:
        for precision in precisions:
            results = runs[(seed, precision)]
            over_bottleneck, over_full = margins(results)
            ratio = results["wall_seconds"] / runs[(seed, first)]["wall_seconds"]
            lines.append(f"| {seed} | {precision} | {over_bottleneck:+.1f} | {over_full:+.1f} | "
                         f"{results['wall_seconds']:.1f} | {ratio:.2f} |")
    for precision in precisions:
        walls = [runs[(seed, precision)]["wall_seconds"] for seed in seeds]
        over_b, over_f = zip(*(margins(runs[(seed, precision)]) for seed in seeds))
        lines.append(f"| all | {precision} | {mean_std(over_b)} | {mean_std(over_f)} | {statistics.mean(walls):.1f} | "
                     f"{statistics.mean(walls) / statistics.mean(runs[(s, first)]['wall_seconds'] for s in seeds):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Entry point; returns ``{(seed, precision): results.json of the run}``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = quickstart.seeds_parser(__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--root", default="results/precision_comparison", help="where the runs go")
    args, overrides = parser.parse_known_args(argv)
    seeds = args.seeds
    precisions = [p for p in args.precisions.split(",") if p]
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions or not seeds:
        parser.error(f"--precisions takes fp32 and/or bf16 (got {args.precisions!r}) and --seeds at least one seed")
    if any(o.startswith(("--precision=", "--seed=", "--output_folder=")) for o in overrides):
        parser.error("--seed, --precision and --output_folder are set per run: use --seeds, --precisions and --root")

    from speechbrain_petl.backbones.precision import cpu_flags
    from speechbrain_petl.perf.measure import provenance

    facts = provenance("python precision_comparison.py", argv)
    flags = [flag for flag, present in cpu_flags().items() if present]
    machine = "CPU flags: " + (", ".join(flags) if flags else "none of avx512_bf16, amx_bf16, avx512_vnni")
    runs = {}
    for seed in seeds:
        for precision in precisions:
            folder = pathlib.Path(args.root) / precision / str(seed)
            run_argv = [args.hparams, f"--output_folder={folder}", f"--seed={seed}", f"--precision={precision}", *overrides]
            hparams = quickstart.read_hparams(run_argv)
            wanted = {key: hparams[key] for key in quickstart.SETTINGS}
            done = folder / "results.json"
            if done.exists() and json.loads(done.read_text())["settings"] == wanted:
                print(f"=== seed {seed}, {precision}: finished in {folder}, its recorded figures reused")
            else:
                print(f"=== seed {seed}, {precision}: {folder}")
                quickstart.main(run_argv)
            runs[(seed, precision)] = json.loads(done.read_text())
    text = markdown(runs, precisions, seeds, facts, machine)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        listing = [{"seed": seed, "precision": precision, "results": results} for (seed, precision), results in runs.items()]
        pathlib.Path(args.json).write_text(json.dumps({"provenance": facts, "machine": machine, "runs": listing}, indent=2) + "\n")
    return runs


if __name__ == "__main__":
    main()
