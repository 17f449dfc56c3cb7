"""Tables and figures of the paper from finished runs, nothing typed by hand.

Usage::

    python -m speechbrain_petl.studies.report results/study [more roots ...] --output=report

Reads every run folder written by :mod:`speechbrain_petl.studies.study` (a
``run.json`` beside the recipe's outputs) and writes to ``--output``:

* ``tables.md``: the layouts of Tables 1 (AST), 2 (few-shot) and 3
  (Wav2Vec2): per cell, mean ± std of the test accuracy over folds and seeds,
  the number of runs behind it (finished / found), and the paper's number;
  empty cells say that no run was found; a cell whose runs differ from the
  recipe's defaults (backbone, ``pretrained``, epochs, few-shot, ``--debug``)
  is marked ⚠n, and footnote n says how: such numbers are not comparable
  to the paper's;
* ``figure2.png`` (accuracy against PETL parameters, budget sweeps),
  ``figure3.png`` (accuracy against the Conformer kernel size) and
  ``figure_moa.png`` (accuracy against the number of experts of Soft-MoA and
  Dense-MoA, one line per method and number of slots: the follow-up
  paper's ablation), when such sweeps were run;
* ``curves/<yaml>/<point>/<run>.png``: accuracy and loss per epoch of each run.

Accuracies are recomputed from each run's ``test_predictions.csv``; the
run's dataset, method, parameter counts and whether it finished come from
the ``params.json`` every recipe run writes (see
:mod:`speechbrain_petl.studies.run_record`), never from folder or file names; a
run folder that records no dataset and method is left out with a note (see
:func:`run_kind`).
"""

import argparse
import json
import os
import re
import statistics

from speechbrain_petl.studies.paper import TABLE1, TABLE2, TABLE3, paper_accuracy
from speechbrain_petl.studies.results import is_finished, test_accuracy, training_curves
from speechbrain_petl.studies.run_record import read_record

BUDGET_KEYS = ("adapter_bottleneck", "lora_rank", "prompt_length", "prefix_length")
#: Settings whose change makes a run incomparable to the paper.
COMPARABILITY_KEYS = ("backbone_source", "pretrained", "number_of_epochs", "few_shot")
#: Run options (SpeechBrain flags) with the same effect.
COMPARABILITY_FLAGS = {"debug": "--debug (a few batches and epochs only)"}


def yaml_defaults(hparams, keys=COMPARABILITY_KEYS):
    """The top-level values of ``keys`` as written in a recipe yaml (text).

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.yaml"
    >>> _ = path.write_text("number_of_epochs: 50\\npretrained: True  # comment\\n")
    >>> yaml_defaults(path)
    {'pretrained': 'True', 'number_of_epochs': '50'}
    """
    with open(hparams) as fin:
        text = fin.read()
    values = {}
    for key in keys:
        match = re.search(rf"^{key}:[ \t]*([^#\n]*)", text, re.MULTILINE)
        if match:
            values[key] = match.group(1).strip()
    return values


def deviations(run, overrides, ignore=()):
    """How a run's settings differ from its recipe's defaults (strings)."""
    defaults = yaml_defaults(run["hparams"]) if os.path.isfile(run["hparams"]) else {}
    found = []
    for key in COMPARABILITY_KEYS:
        if key in ignore or key not in overrides or key in run["sweep"]:
            continue
        if str(overrides[key]) != defaults.get(key):
            found.append(f"{key}={overrides[key]} (recipe: {defaults.get(key, 'unset')})")
    for flag, text in COMPARABILITY_FLAGS.items():
        if any(arg == f"--{flag}" or arg.startswith(f"--{flag}=") and arg != f"--{flag}=False"
               for arg in run["overrides"]):
            found.append(text)
    return found


def load_runs(roots, notes=None):
    """One record per run folder (``run.json``) found under ``roots``.

    A run's dataset and method are those its ``params.json`` recorded (or,
    for a run that has not written it yet, those its ``run.json`` planned);
    see :func:`run_kind`. A run that recorded neither is left out, and
    ``notes`` (a list, extended here; default: printed) says why.
    """
    runs = []
    said = [] if notes is None else notes
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if "run.json" not in files:
                continue
            with open(os.path.join(folder, "run.json")) as fin:
                run = json.load(fin)
            record = read_record(folder)
            dataset, method, note = run_kind(run, record, folder)
            if note:
                said.append(note)
            if dataset is None:
                continue
            overrides = dict(
                arg[2:].split("=", 1) for arg in run["overrides"] if arg.startswith("--") and "=" in arg
            )
            finished = is_finished(folder)
            run["deviations"] = deviations(run, overrides, ignore=("few_shot",))
            run.update(
                folder=folder,
                dataset=dataset,
                method=method,
                few_shot=int(overrides["few_shot"]) if overrides.get("few_shot", "null") != "null" else None,
                finished=finished,
                accuracy=test_accuracy(folder)[0] if finished else None,
                params=record,
            )
            runs.append(run)
    if notes is None:
        for note in said:
            print(note)
    return runs


def run_kind(run, record, folder):
    """(dataset, method, note) of a run: from its ``params.json`` record,
    else from its ``run.json``; (None, None, note) when neither records them.

    Example
    -------
    >>> run_kind({"yaml": "x"}, {"dataset": "ESC50", "method": "lora"}, "f")
    ('ESC50', 'lora', None)
    >>> run_kind({"yaml": "my_run"}, None, "f")[2]
    'Skipped f: neither its params.json nor its run.json records a dataset and a method (yaml my_run)'
    """
    for source in (record or {}, run):
        if source.get("dataset") and source.get("method"):
            return source["dataset"], source["method"], None
    return None, None, (
        f"Skipped {folder}: neither its params.json nor its run.json records a dataset and a method "
        f"(yaml {run['yaml']})"
    )


def cell(runs):
    """Mean, std (percent), finished and found counts of a group of runs."""
    accs = [100 * r["accuracy"] for r in runs if r["finished"]]
    mean = statistics.mean(accs) if accs else None
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return mean, std, len(accs), len(runs)


def format_cell(runs, paper, notes=None):
    """A table cell; with ``notes`` (a list of footnotes, extended here), a
    cell whose runs differ from the recipe defaults is marked ⚠n."""
    mean, std, done, found = cell(runs)
    ref = "—" if paper is None else f"{paper:.2f}"
    if found == 0:
        return f"no run / {ref}"
    if done == 0:
        text = f"unfinished (0/{found}) / {ref}"
    else:
        text = f"{mean:.2f} ± {std:.2f} ({done}/{found}) / {ref}"
    differing = [r for r in runs if r.get("deviations")]
    if notes is None or not differing:
        return text
    how = sorted({d for r in differing for d in r["deviations"]})
    note = (
        f"{len(differing)} of {found} run(s) differ from the recipe defaults: {'; '.join(how)}; "
        "not comparable to the paper's number."
    )
    if note not in notes:
        notes.append(note)
    return f"{text} ⚠{notes.index(note) + 1}"


def _select(runs, **conditions):
    return [r for r in runs if all(r[k] == v for k, v in conditions.items())]


def _table(title, methods, columns, paper):
    """Markdown table: one row per method; ``columns`` are (name, select,
    key) with ``select(method)`` the runs of a cell and ``paper(method, key)``
    the published number."""
    lines = [
        f"### {title}",
        "",
        "Cells: ours mean ± std (finished/found runs) / paper. PETL params: from each run's params.json.",
        "",
        "| Method | PETL params (ours) | " + " | ".join(name for name, _, _ in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    notes = []
    for method in methods:
        cells = [format_cell(select(method), paper(method, key), notes) for _, select, key in columns]
        found = sorted(
            {r["params"]["petl"] for _, select, _ in columns for r in select(method)
             if (r["params"] or {}).get("petl") is not None}
        )
        params = " / ".join(f"{n:,}" for n in found) or "—"
        lines.append(f"| {method} | {params} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"⚠{n}: {note}" for n, note in enumerate(notes, 1)]
    return "\n".join(lines)


def tables(runs):
    """The markdown of Tables 1, 2 and 3."""
    plain = [r for r in runs if not r["sweep"] and r["few_shot"] is None]

    def by_dataset(dataset):
        """Selects the finished runs of ``dataset`` (all shots) per method."""
        return lambda m: _select(plain, method=m, dataset=dataset)

    def by_shots(dataset, shots):
        """Selects the runs of ``dataset`` with ``shots`` examples per class."""
        return lambda m: _select(runs, method=m, dataset=dataset, few_shot=shots)

    table1 = [(d, by_dataset(d), d) for d in ("ESC50", "UrbanSound8k", "Google-speech-commands", "fluent-speech-commands")]
    table2 = [(f"{d} {n}-shot", by_shots(d, n), (d, n)) for d, n in TABLE2["conformer"]]
    table3 = [(d, by_dataset(d), d) for d in ("Google-speech-commands", "fluent-speech-commands", "IEMOCAP")]
    return "\n\n".join(
        [
            _table("Table 1: AST", list(TABLE1), table1, paper_accuracy),
            _table("Table 2: few-shot (Pfeiffer)", list(TABLE2), table2, lambda m, k: TABLE2[m].get(k)),
            _table("Table 3: Wav2Vec2", list(TABLE3), table3, lambda m, d: TABLE3[m].get(d)),
        ]
    ) + "\n"


def integer_axis(axis, values=None):
    """Integer ticks on a matplotlib axis: at ``values`` (the swept points),
    on a log scale when they span a decade or more; else any integers.
    ``axis`` is ``ax.xaxis`` or ``ax.yaxis``."""
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter

    if not values:
        axis.set_major_locator(MaxNLocator(integer=True))
        return
    values = sorted(set(values))
    if min(values) > 0 and max(values) / min(values) >= 10:
        (axis.axes.set_xscale if axis is axis.axes.xaxis else axis.axes.set_yscale)("log")
        axis.set_minor_locator(NullLocator())
    if len(values) <= 12:
        axis.set_major_locator(FixedLocator(values))
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def run_setting(run, key):
    """The value (yaml text) of top-level ``key`` a run trained with: its
    ``--key=`` override, else its yaml's default; None when neither has it.

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.yaml"
    >>> _ = path.write_text("slots: 1\\n")
    >>> run_setting({"hparams": str(path), "overrides": ["--slots=2"]}, "slots")
    '2'
    >>> run_setting({"hparams": str(path), "overrides": []}, "slots")
    '1'
    """
    for arg in reversed(run.get("overrides", [])):
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    if os.path.isfile(run.get("hparams", "")):
        return yaml_defaults(run["hparams"], (key,)).get(key)
    return None


def moa_label(run):
    """A line of the experts figure: dataset, method and slots per expert
    (Soft-MoA; Dense-MoA has none)."""
    slots = run_setting(run, "slots")
    return f"{run['dataset']} {run['method']}" + (f", {slots} slot{'s' if slots != '1' else ''}" if slots else "")


def sweep_figure(runs, keys, x_of, xlabel, label_of=None):
    """Accuracy against ``x_of(run)`` for the finished sweeps over ``keys``
    (a run whose ``x_of`` is None is left out), one line per
    ``label_of(run)`` (default: dataset, method and few-shot size); None
    when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for run in runs:
        if not run["finished"] or not set(run["sweep"]) & set(keys):
            continue
        x = x_of(run)
        if x is None:  # e.g. no parameter count recorded
            continue
        if label_of is not None:
            label = label_of(run)
        else:
            label = f"{run['dataset']} {run['method']}" + (f" {run['few_shot']}-shot" if run["few_shot"] else "")
        groups.setdefault(label, {}).setdefault(x, []).append(100 * run["accuracy"])
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(groups.items()):
        xs = sorted(points)
        ax.plot(xs, [statistics.mean(points[x]) for x in xs], marker="o", label=label)
    integer_axis(ax.xaxis, [x for points in groups.values() for x in points])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _save(fig, path, dpi):
    import matplotlib.pyplot as plt

    if fig is None:
        return False
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def curves_figure(run):
    """Accuracy and loss per epoch of one run (integer epoch ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = training_curves(os.path.join(run["folder"], "train_log.txt"))
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(8, 3))
    for split in ("train", "valid"):
        acc.plot(curves["epoch"], curves[f"{split} acc"], marker=".", label=split)
        loss.plot(curves["epoch"], curves[f"{split} loss"], marker=".", label=split)
    acc.set_title("accuracy")
    loss.set_title("loss")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        integer_axis(ax.xaxis)
        ax.legend()
    fig.suptitle(os.path.relpath(run["folder"]), fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.studies.report``."""
    parser = argparse.ArgumentParser(description="Tables and figures from finished study runs.")
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    runs = load_runs(args.roots)
    if not runs:
        raise FileNotFoundError(
            f"No run.json of a reportable run under {args.roots}: expected folders written by "
            "speechbrain_petl.studies.study (skipped runs, if any, are listed above)"
        )
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "tables.md"), "w") as fout:
        fout.write(tables(runs))
    made = {
        "figure2.png": _save(
            sweep_figure(runs, BUDGET_KEYS, lambda r: (r["params"] or {}).get("petl"), "PETL parameters"),
            os.path.join(args.output, "figure2.png"), dpi=120,
        ),
        "figure3.png": _save(
            sweep_figure(runs, ("kernel_size",), lambda r: int(r["sweep"]["kernel_size"]), "Conformer kernel size"),
            os.path.join(args.output, "figure3.png"), dpi=120,
        ),
        "figure_moa.png": _save(
            sweep_figure(runs, ("experts",), lambda r: int(r["sweep"]["experts"]), "number of experts", moa_label),
            os.path.join(args.output, "figure_moa.png"), dpi=120,
        ),
    }
    for run in runs:
        if os.path.isfile(os.path.join(run["folder"], "train_log.txt")):
            rel = os.path.relpath(run["folder"], os.path.commonpath([run["folder"]] + args.roots))
            path = os.path.join(args.output, "curves", rel + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save(curves_figure(run), path, dpi=100)
    finished = sum(r["finished"] for r in runs)
    print(f"{len(runs)} runs found, {finished} finished; wrote {os.path.join(args.output, 'tables.md')}"
          + "".join(f", {name}" for name, ok in made.items() if ok))
    return runs


if __name__ == "__main__":
    main()
