"""Run a recipe over folds, seeds and sweep points, resumably, in one command.

Usage::

    python -m speechbrain_petl.studies.study recipes/ESC50/PETL/hparams/conformer_esc50.yaml \\
        --output_root=results/study --folds=1,2,3,4,5 --seeds=1986,1987 \\
        [--sweep=kernel_size:1,3,7,15,31] [--launcher="torchrun --nproc_per_node=4"] \\
        --data_folder=/path/to/ESC-50-master [--any_yaml_key=value ...]

Each run is the recipe's own ``train.py`` in its own output folder
``<output_root>/<yaml>/<sweep point>/fold<k>_seed<s>`` (with a ``run.json``
describing it, including the yaml's ``dataset`` and ``method``). A finished
run (its ``params.json`` says so, see :mod:`speechbrain_petl.studies.run_record`) is
skipped; an interrupted one is
started again with the same command and resumes from its SpeechBrain
checkpoints. Before any run starts, every planned folder that holds a run
trained with other settings (the yaml's values with the overrides, compared
as a recipe's ``train.py`` compares them, see
:func:`speechbrain_petl.studies.run_record.changed_settings`: ``--lr=0.005``
where the yaml says 0.005 changes nothing) is refused, naming the settings
that differ: choose another ``--output_root``, or give
``--continue_with_new_settings`` to go on training those runs (finished ones
included) with the new settings, recorded in their ``params.json``.
Runs are sequential; each may itself be distributed by giving
a ``--launcher`` (``torchrun``; there is no home-made launcher). At the end
the mean and standard deviation of the test accuracy over folds and seeds
is printed for every sweep point.
"""

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys

import speechbrain as sb

from speechbrain_petl.studies.report import yaml_defaults
from speechbrain_petl.studies.results import is_finished, test_accuracy
from speechbrain_petl.studies.run_record import CONTINUE_FLAG, changed_settings, command_settings


def parse_list(text, cast=int):
    """``"1,2,3"`` or ``"1-5"`` -> list; empty -> [None].

    Example
    -------
    >>> parse_list("1-3"), parse_list("1986,7"), parse_list("")
    ([1, 2, 3], [1986, 7], [None])
    """
    if not text:
        return [None]
    values = []
    for part in text.split(","):
        if cast is int and "-" in part.strip()[1:]:
            low, high = part.split("-")
            values.extend(range(int(low), int(high) + 1))
        else:
            values.append(cast(part))
    return values


def parse_sweep(text):
    """``"key:v1,v2"`` -> (key, [v1, v2]) with values kept as yaml text."""
    if not text:
        return None, [None]
    if ":" not in text:
        raise ValueError(f"--sweep must look like key:value1,value2,... got {text!r}")
    key, values = text.split(":", 1)
    return key, parse_list(values, cast=str)


def overrides_dict(args):
    """``["--key=value", "--flag"]`` -> ``{"key": "value", "flag": True}``."""
    result = {}
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        result[key] = value if "=" in arg else True
    return dict(sorted(result.items()))


def plan_runs(hparams, output_root, folds, seeds, sweep_key, sweep_values, overrides):
    """Every run of the study: a list of dicts (see ``run.json``)."""
    stem = os.path.splitext(os.path.basename(hparams))[0]
    declared = yaml_defaults(hparams, ("dataset", "method"))
    runs = []
    for value, fold, seed in itertools.product(sweep_values, folds, seeds):
        point = "default" if value is None else f"{sweep_key}-{value}"  # no "=": SpeechBrain splits overrides on it
        parts = [f"fold{fold}"] if fold is not None else []
        parts += [f"seed{seed}"] if seed is not None else []
        name = "_".join(parts) or "run"
        args = list(overrides)
        if fold is not None:
            args.append(f"--fold={fold}")
        if seed is not None:
            args.append(f"--seed={seed}")
        if value is not None:
            args.append(f"--{sweep_key}={value}")
        given = overrides_dict(args)
        runs.append(
            {
                "hparams": os.path.abspath(hparams),
                "yaml": stem,
                # what the run is, as its yaml declares (its params.json will record the same)
                "dataset": str(given.get("dataset", declared.get("dataset", ""))).strip("'\"") or None,
                "method": str(given.get("method", declared.get("method", ""))).strip("'\"") or None,
                "sweep": {} if value is None else {sweep_key: value},
                "fold": fold,
                "seed": seed,
                "overrides": args,
                "output_folder": os.path.abspath(os.path.join(output_root, stem, point, name)),
            }
        )
    return runs


def run_settings(run):
    """The settings the recipe's ``train.py`` would run ``run`` (a dict of
    :func:`plan_runs`) with (see
    :func:`speechbrain_petl.studies.run_record.command_settings`)."""
    argv = [run["hparams"], f"--output_folder={run['output_folder']}", *run["overrides"]]
    hparams_file, run_options, overrides = sb.parse_arguments(argv)
    return command_settings(hparams_file, overrides, run_options.as_dict())


def check_settings(runs, continue_with_new_settings=False):
    """The planned runs whose folder holds a run trained with other
    settings: ``{output_folder: [changes]}``. Raises a ValueError naming
    each folder and its changes, unless ``continue_with_new_settings``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "x.yaml").write_text("output_folder: !PLACEHOLDER\\nlr: 0.005\\n")
    >>> runs = plan_runs(str(folder / "x.yaml"), str(folder / "study"), [None], [None], None, [None], ["--lr=0.5"])
    >>> check_settings(runs)  # nothing trained there yet
    {}
    """
    changed = {}
    for run in runs:
        changes = changed_settings(run_settings(run))
        if changes:
            changed[run["output_folder"]] = changes
    if changed and not continue_with_new_settings:
        raise ValueError(
            "These run folders hold runs trained with other settings; their results would be "
            "reported as this study's:\n  "
            + "\n  ".join(f"{folder}:\n    " + "\n    ".join(changes) for folder, changes in changed.items())
            + "\nNothing was run. Use another --output_root for the new settings, or add "
            f"{CONTINUE_FLAG} to go on training these runs with them (recorded in their params.json)."
        )
    return changed


def launch(run, launcher, script, extra=()):
    """Runs (or resumes) one training, with the arguments ``extra`` added
    to its command; returns its exit status. The run's ``run.json`` is
    written before a first start, and after a successful one otherwise (a
    refused or failed start leaves the folder as it was)."""
    os.makedirs(run["output_folder"], exist_ok=True)
    first = not os.path.isfile(os.path.join(run["output_folder"], "run.json"))
    if first:
        write_plan(run)
    cmd = [*launcher, script, run["hparams"], f"--output_folder={run['output_folder']}", *run["overrides"], *extra]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    status = subprocess.call(cmd, cwd=os.path.dirname(script))
    if status == 0 and not first:
        write_plan(run)
    return status


def write_plan(run):
    """Writes ``run`` (a dict of :func:`plan_runs`) as its folder's ``run.json``."""
    with open(os.path.join(run["output_folder"], "run.json"), "w") as fout:
        json.dump(run, fout, indent=2)


def summarize_runs(runs):
    """{sweep point: (mean, std, finished, planned)} of test accuracies."""
    groups = {}
    for run in runs:
        point = json.dumps(run["sweep"], sort_keys=True)
        groups.setdefault(point, {"accuracies": [], "planned": 0})
        groups[point]["planned"] += 1
        if is_finished(run["output_folder"]):
            groups[point]["accuracies"].append(test_accuracy(run["output_folder"])[0])
    summary = {}
    for point, group in groups.items():
        accs = group["accuracies"]
        mean = statistics.mean(accs) if accs else None
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0 if accs else None
        summary[point] = (mean, std, len(accs), group["planned"])
    return summary


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.studies.study``."""
    parser = argparse.ArgumentParser(
        description="Run a recipe yaml over folds, seeds and a sweep (resumable).",
        epilog="Other --key=value arguments are passed to every run as yaml overrides.",
    )
    parser.add_argument("hparams", help="the recipe yaml (recipes/<Dataset>/hparams/<x>.yaml)")
    parser.add_argument("--output_root", required=True)
    parser.add_argument("--folds", default="", help="e.g. 1-5 or 1,3 (datasets with folds)")
    parser.add_argument("--seeds", default="", help="e.g. 1986,1987")
    parser.add_argument("--sweep", default="", help="key:v1,v2,... (a top-level yaml key)")
    parser.add_argument("--launcher", default=shlex.quote(sys.executable), help='e.g. "torchrun --nproc_per_node=4"')
    parser.add_argument("--script", default=None, help="default: train.py next to the hparams folder")
    parser.add_argument(
        CONTINUE_FLAG, action="store_true",
        help="go on training runs whose folder holds a run with other settings, finished ones included "
        "(recorded in their params.json); without it such folders are refused",
    )
    args, overrides = parser.parse_known_args(argv)

    script = args.script or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.hparams))), "train.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(f"{script} not found: expected the recipe's train.py (or pass --script)")
    sweep_key, sweep_values = parse_sweep(args.sweep)
    runs = plan_runs(
        args.hparams, args.output_root, parse_list(args.folds), parse_list(args.seeds), sweep_key, sweep_values, overrides
    )
    changed = check_settings(runs, args.continue_with_new_settings)
    failed = []
    for index, run in enumerate(runs, 1):
        if is_finished(run["output_folder"]) and run["output_folder"] not in changed:
            print(f"[{index}/{len(runs)}] finished already: {run['output_folder']}")
            continue
        print(f"[{index}/{len(runs)}] {run['output_folder']}")
        extra = [CONTINUE_FLAG] if run["output_folder"] in changed else []
        if launch(run, shlex.split(args.launcher), script, extra) != 0:
            failed.append(run["output_folder"])
    for point, (mean, std, done, planned) in summarize_runs(runs).items():
        label = ", ".join(f"{k}={v}" for k, v in json.loads(point).items()) or "default"
        if mean is None:
            print(f"{label}: no finished run (0/{planned})")
        else:
            print(f"{label}: test accuracy {100 * mean:.2f} ± {100 * std:.2f} % over {done}/{planned} runs")
    if failed:
        print("Failed runs (rerun the same command to resume them):\n  " + "\n  ".join(failed))
        sys.exit(1)
    return runs


if __name__ == "__main__":
    main()
