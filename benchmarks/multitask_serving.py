#!/usr/bin/env python3
"""Many tasks on one backbone: memory and speed against one model per task, or a load test.

Builds an AST-base backbone with random weights (written with
``save_pretrained`` into a temporary folder: no hub needed; ``--backbone
tiny`` for a 2-block, width-32 AST), then one inference folder per Speech
Commands recipe yaml (the recipe's own PETL method and head, with
randomised trained tensors).

**Table mode** (the default). For N = 1, 2, 4, 8 tasks it reports,
measured in one run:

* resident tensor bytes: one :class:`MultiTaskClassifier` holding the N
  tasks, against N ``AudioClassifier`` models (each with its own backbone);
* the median time to classify a mixed batch (``--clips_per_task`` clips
  of each task) in one ``classify_batch`` call, against classifying each
  task's clips with its own model, one task after the other.

To run (about 5 minutes on 2 CPU cores)::

    python benchmarks/multitask_serving.py --tasks=1,2,4,8 --clips_per_task=2

**Load mode** (``--threads N``). One :class:`MultiTaskClassifier` holds
``--load_tasks`` tasks. A fixed pool of ``--pool`` requests (batches of 1
to ``--max_batch`` clips of random tasks and lengths) is first classified
single-threaded: those are the reference answers (classified twice, to
show they repeat). Then N client threads send requests drawn from the
pool for ``--duration`` seconds, and every answer is compared with the
reference: a clip is wrong when its label differs or a log-probability
differs by more than ``--atol``. It reports clips/s, p50/p99 latency per
request, wrong clips, errors (exceptions) and the process's RSS: before
any client thread, after a ``--warmup`` of the same load (checked, not
counted) and at the end; the growth is from after the warm-up to the end
(the steady state). Goals, stated with what was measured and never
asserted: no wrong result, no error (every clip is a good one), RSS
growth at most 5 %::

    python benchmarks/multitask_serving.py --threads 4 --duration 60

**Hot path mode** (``--hot_path``). For the tiny AST and AST-base, in one
run, interleaved: the per-call overhead at batch 1 (a
:class:`MultiTaskClassifier` call for a linear-probing task against the
plain backbone: the recipe's fbank and transformers' ``ASTModel``), and a
mixed batch of one clip of each of 8 LoRA tasks against 8 clips of one
LoRA task. Goals, stated and never asserted: overhead at most 10 %, mixed
batch at most 1.10x::

    python benchmarks/multitask_serving.py --hot_path --rounds 30 --tiny_rounds 300

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import collections
import json
import math
import os
import pathlib
import random
import statistics
import sys
import tempfile
import threading
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from transformers import ASTConfig, ASTModel

from speechbrain_petl.backbones import tiny_config
from speechbrain_petl.inference import write_inference_folder
from speechbrain_petl.inference import AudioClassifier, label_encoder
from speechbrain_petl.perf.measure import peak_rss_bytes, provenance, provenance_line
from speechbrain_petl.inference.multitask import MultiTaskClassifier, resident_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]
HPARAMS = REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams"
#: The tasks, in the order they are added (N = 1 is LoRA alone).
YAMLS = ["lora", "conformer", "bottleneck", "bitfit", "linear", "prompt_deep", "prefix", "conformer_houlsby"]
#: The load mode's goals (stated in its output, never asserted).
MAX_RSS_GROWTH = 0.05
#: ``--backbone`` choices: what each is, and its transformers config (100 frames, as the recipes).
BACKBONES = {
    "base": ("AST-base", lambda: ASTConfig(max_length=100)),
    "tiny": ("tiny AST (2 blocks, width 32)", lambda: tiny_config("ast", max_length=100)),
}


def make_task_folders(root, backbone_folder, names, seed=0, recipes=None):
    """One inference folder per task name, with randomised trained tensors:
    the recipe yaml ``recipes[name]`` (default: the yaml named ``name``)."""
    folders = {}
    for index, name in enumerate(names):
        recipe = (recipes or {}).get(name, name)
        with open(HPARAMS / f"{recipe}_gsc.yaml") as fin:
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


def table_markdown(rows):
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


# -------------------------------------------------------------- hot path mode
#: The hot path mode's goals (stated in its output, never asserted).
MAX_MIXED_RATIO = 1.10
MAX_OVERHEAD = 0.10
#: Hot path mode: N LoRA tasks for the mixed batch.
MIXED_TASKS = 8


def interleaved_medians(functions, rounds):
    """``{name: median seconds}``: each round calls every function once, in
    turn, so that a drift of the machine's speed touches all of them alike
    (after two warm-up rounds)."""
    times = {name: [] for name in functions}
    for round_index in range(rounds + 2):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def hot_path(root, backbone, rounds, samples):
    """The hot path measures of one backbone (see ``--hot_path``)."""
    backbone_folder = root / backbone / "ast"
    ASTModel(BACKBONES[backbone][1]()).save_pretrained(backbone_folder)
    lora = [f"lora{i}" for i in range(MIXED_TASKS)]
    folders = make_task_folders(root / backbone, backbone_folder, lora + ["linear"],
                                recipes={name: "lora" for name in lora})
    server = MultiTaskClassifier.from_folders(folders)
    single = AudioClassifier.from_hparams(source=str(folders["lora0"]), savedir=str(root / backbone / "single"))
    plain = ASTModel.from_pretrained(backbone_folder).eval()
    features = server.lobes[0].features  # the recipe's fbank: what any user of the backbone computes
    generator = torch.Generator().manual_seed(0)
    one = 0.1 * torch.randn(1, samples, generator=generator)
    batch = 0.1 * torch.randn(MIXED_TASKS, samples, generator=generator)
    times = interleaved_medians(
        {
            "plain_1": lambda: plain(features(one)),
            "linear_1": lambda: server.classify_batch(one, tasks=["linear"]),
            "lora_1": lambda: server.classify_batch(one, tasks=["lora0"]),
            "single_1": lambda: single.classify_batch(one),
            "mixed_8": lambda: server.classify_batch(batch, tasks=lora),
            "one_task_8": lambda: server.classify_batch(batch, tasks=["lora0"] * MIXED_TASKS),
            "single_8": lambda: single.classify_batch(batch),
        },
        rounds,
    )
    return {"backbone": backbone, "rounds": rounds, **{f"{name}_s": value for name, value in times.items()}}


def hot_path_markdown(rows):
    """The hot path tables and goals as markdown lines (without provenance)."""
    ms = lambda seconds: f"{1000 * seconds:.2f}"  # noqa: E731
    lines = [
        "Batch of 1 clip. *Plain backbone*: the recipe's fbank, then transformers' `ASTModel` (no PETL code). "
        "*Overhead*: a `MultiTaskClassifier` call for a linear-probing task (its only computation beyond the "
        "plain backbone is its head, a width x classes product) against the plain backbone: clip checks, "
        "routing, sites, pooling, head, labels.",
        "",
        "| backbone | plain backbone (ms) | MultiTask, linear probe (ms) | overhead | MultiTask, LoRA (ms) "
        "| vs plain | AudioClassifier, LoRA (ms) | vs plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain = r["plain_1_s"]
        lines.append(
            f"| {BACKBONES[r['backbone']][0]} | {ms(plain)} | {ms(r['linear_1_s'])} | "
            f"{100 * (r['linear_1_s'] / plain - 1):+.1f} % | {ms(r['lora_1_s'])} | {r['lora_1_s'] / plain:.3f} | "
            f"{ms(r['single_1_s'])} | {r['single_1_s'] / plain:.3f} |"
        )
    lines += [
        "",
        f"Batch of {MIXED_TASKS} clips: one clip of each of {MIXED_TASKS} LoRA tasks in one call (*mixed*), "
        f"against {MIXED_TASKS} clips of one LoRA task, on the same `MultiTaskClassifier` and on that task's "
        "own `AudioClassifier`.",
        "",
        f"| backbone | mixed, {MIXED_TASKS} tasks (ms) | one task, MultiTask (ms) | ratio | one task, "
        "AudioClassifier (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {BACKBONES[r['backbone']][0]} | {ms(r['mixed_8_s'])} | {ms(r['one_task_8_s'])} | "
            f"{r['mixed_8_s'] / r['one_task_8_s']:.3f} | {ms(r['single_8_s'])} | {r['mixed_8_s'] / r['single_8_s']:.3f} |"
        )
    lines += ["", "Goals (measured, not asserted):", ""]
    for r in rows:
        name = BACKBONES[r["backbone"]][0]
        overhead = r["linear_1_s"] / r["plain_1_s"] - 1
        mixed = r["mixed_8_s"] / r["one_task_8_s"]
        lines += [
            f"* {name}, per-call overhead at batch 1 at most {100 * MAX_OVERHEAD:g} % of the plain backbone: "
            f"{100 * overhead:+.1f} % ({'met' if overhead <= MAX_OVERHEAD else 'NOT met'})",
            f"* {name}, mixed batch of {MIXED_TASKS} LoRA tasks at most {MAX_MIXED_RATIO:.2f}x one task's batch: "
            f"{mixed:.3f}x ({'met' if mixed <= MAX_MIXED_RATIO else 'NOT met'})",
        ]
    return lines


# ------------------------------------------------------------------ load mode
def current_rss_bytes():
    """This process's resident set size now (``/proc/self/statm``), else its peak."""
    try:
        with open("/proc/self/statm") as fin:
            return int(fin.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def make_requests(names, count, max_batch, samples, seed=0):
    """``count`` requests ``(wavs, wav_lens, tasks)``: 1 to ``max_batch``
    clips each, of random tasks among ``names`` and random lengths (a
    quarter to all of ``samples``; the longest clip of a batch sets its width)."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(count):
        batch = rng.randint(1, max_batch)
        tasks = [rng.choice(names) for _ in range(batch)]
        lengths = [rng.randint(max(1, samples // 4), samples) for _ in range(batch)]
        wavs = torch.zeros(batch, max(lengths))
        for i, length in enumerate(lengths):
            wavs[i, :length] = 0.1 * torch.randn(length, generator=generator)
        requests.append((wavs, torch.tensor(lengths, dtype=torch.float32) / max(lengths), tasks))
    return requests


def answer(server, request):
    """``(log-probabilities per clip, labels)`` of one request."""
    wavs, wav_lens, tasks = request
    log_probs, _, _, labels = server.classify_batch(wavs, wav_lens, tasks=tasks)
    return [lp.detach().clone() for lp in log_probs], list(labels)


def clip_differences(result, reference):
    """Per clip, the largest absolute log-probability difference from the
    reference (``inf`` where the label or the shape differs)."""
    (log_probs, labels), (ref_log_probs, ref_labels) = result, reference
    if len(log_probs) != len(ref_log_probs) or len(labels) != len(ref_labels):
        return [math.inf] * len(ref_labels)
    differences = []
    for lp, ref, label, ref_label in zip(log_probs, ref_log_probs, labels, ref_labels):
        if label != ref_label or lp.shape != ref.shape:
            differences.append(math.inf)
        else:
            differences.append(float((lp - ref).abs().max()) if lp.numel() else 0.0)
    return differences


def percentile(values, q):
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty.

    Example
    -------
    >>> percentile([4.0, 1.0, 3.0, 2.0], 50), percentile([4.0, 1.0, 3.0, 2.0], 99)
    (2.0, 4.0)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


#: What a classify call raises when calls interfere (crossed routes show up
#: as index and shape errors) or refuse a request: counted as errors.
CALL_ERRORS = (RuntimeError, IndexError, KeyError, ValueError, TypeError)


def _client(server, requests, references, clock, atol, seed, records, start):
    """One client thread: requests drawn from the pool until ``clock["deadline"]``
    (set when all threads start), each answer checked against its reference;
    appends a record per request."""
    rng = random.Random(seed)
    start.wait()
    deadline = clock["deadline"]
    while time.perf_counter() < deadline:
        index = rng.randrange(len(requests))
        clips = len(requests[index][2])
        began = time.perf_counter()
        try:
            result = answer(server, requests[index])
        except CALL_ERRORS as err:  # counted and named; anything else stops the benchmark
            records.append({"latency": time.perf_counter() - began, "clips": clips, "wrong": 0,
                            "error": f"{type(err).__name__}: {err}"[:300], "difference": 0.0})
            continue
        latency = time.perf_counter() - began
        differences = clip_differences(result, references[index])
        records.append({"latency": latency, "clips": clips, "wrong": sum(d > atol for d in differences),
                        "error": None, "difference": max(differences)})


def run_clients(server, requests, references, threads, duration, atol, seed):
    """``threads`` client threads for ``duration`` seconds; returns their
    records (one per request), the elapsed seconds and the threads still
    running 60 s after the deadline."""
    records = [[] for _ in range(threads)]
    start, clock = threading.Barrier(threads + 1), {}
    workers = [
        threading.Thread(target=_client, args=(server, requests, references, clock, atol, seed + 1 + i,
                                               records[i], start), daemon=True)
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    deadline = clock["deadline"] = began + duration
    start.wait()
    for worker in workers:  # a request still running at the deadline may finish; a stuck one is counted
        worker.join(timeout=max(0.0, deadline - time.perf_counter()) + 60)
    elapsed = time.perf_counter() - began
    stuck = sum(worker.is_alive() for worker in workers)
    return [record for own in records for record in list(own)], elapsed, stuck


def load_test(server, requests, threads, duration, atol, seed=0, warmup=0.0):
    """Runs the load test on ``server`` (see the module docstring); returns its report as a dict."""
    references = [answer(server, request) for request in requests]
    repeated = [max(clip_differences(answer(server, r), ref)) for r, ref in zip(requests, references)]
    rss_before = current_rss_bytes()
    warm = []
    if warmup > 0:  # the same load, not counted: per-thread allocator pools and caches fill up here
        warm, _, _ = run_clients(server, requests, references, threads, warmup, atol, seed + 1000)
    rss_start = current_rss_bytes()
    done, elapsed, stuck = run_clients(server, requests, references, threads, duration, atol, seed)
    rss_end = current_rss_bytes()
    failed = [record for record in done if record["error"]]
    answered = [record for record in done if not record["error"]]
    latencies = [record["latency"] for record in done]
    errors = collections.Counter(record["error"] for record in failed)
    clips_answered = sum(record["clips"] for record in answered)
    differences = [record["difference"] for record in answered if record["wrong"] == 0]
    return {
        "threads": threads,
        "duration_s": duration,
        "elapsed_s": elapsed,
        "pool": len(requests),
        "atol": atol,
        "repeat_mismatches": sum(d > atol for d in repeated),
        "repeat_max_difference": max(repeated, default=0.0),
        "requests": len(done),
        "requests_correct": sum(1 for record in answered if record["wrong"] == 0),
        "requests_wrong": sum(1 for record in answered if record["wrong"]),
        "requests_failed": len(failed),
        "clips": sum(record["clips"] for record in done),
        "clips_correct": clips_answered - sum(record["wrong"] for record in answered),
        "clips_wrong": sum(record["wrong"] for record in answered),
        "clips_failed": sum(record["clips"] for record in failed),
        "errors": len(failed),
        "error_messages": dict(errors.most_common(5)),
        "max_difference_of_correct": max(differences, default=0.0),
        "stuck_threads": stuck,
        "clips_per_s": clips_answered / elapsed if elapsed > 0 else 0.0,
        "requests_per_s": len(answered) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": None if not latencies else 1000 * percentile(latencies, 50),
        "p99_ms": None if not latencies else 1000 * percentile(latencies, 99),
        "max_ms": None if not latencies else 1000 * max(latencies),
        "rss_before_threads_bytes": rss_before,
        "warmup_s": warmup,
        "warmup_requests": len(warm),
        "warmup_clips_wrong": sum(record["wrong"] for record in warm),
        "warmup_errors": sum(1 for record in warm if record["error"]),
        "rss_start_bytes": rss_start,
        "rss_end_bytes": rss_end,
        "rss_growth": (rss_end - rss_start) / rss_start,
    }


def goals(report):
    """The load mode's goals: ``[(goal, what was measured, met)]``."""
    return [
        ("no wrong result", f"{report['clips_wrong']} wrong clips in {report['requests_wrong']} requests "
         f"({report['warmup_clips_wrong']} in the warm-up)",
         report["clips_wrong"] == 0 and report["warmup_clips_wrong"] == 0),
        ("no error on good clips", f"{report['errors']} errors ({report['warmup_errors']} in the warm-up)",
         report["errors"] == 0 and report["warmup_errors"] == 0),
        (f"RSS growth at most {100 * MAX_RSS_GROWTH:g} %", f"{100 * report['rss_growth']:+.1f} %",
         report["rss_growth"] <= MAX_RSS_GROWTH),
    ]


def load_markdown(report):
    """The load test's report as markdown lines (without provenance)."""
    ms = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
    lines = [
        "| threads | elapsed (s) | requests | clips | clips/s | p50 (ms) | p99 (ms) | max (ms) "
        "| wrong clips | errors | RSS start (MB) | RSS end (MB) | RSS growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {report['threads']} | {report['elapsed_s']:.1f} | {report['requests']} | {report['clips']} | "
        f"{report['clips_per_s']:.1f} | {ms(report['p50_ms'])} | {ms(report['p99_ms'])} | {ms(report['max_ms'])} | "
        f"{report['clips_wrong']} | {report['errors']} | {report['rss_start_bytes'] / 1e6:.0f} | "
        f"{report['rss_end_bytes'] / 1e6:.0f} | {100 * report['rss_growth']:+.1f} % |",
        "",
        f"Requests: {report['requests_correct']} correct, {report['requests_wrong']} with a wrong clip, "
        f"{report['requests_failed']} failed; clips: {report['clips_correct']} correct, {report['clips_wrong']} wrong, "
        f"{report['clips_failed']} in failed requests. Largest |log-probability difference| of a correct clip: "
        f"{report['max_difference_of_correct']:.2g}. Single-threaded repeat of the references: "
        f"{report['repeat_mismatches']} of {report['pool']} requests differ (largest difference "
        f"{report['repeat_max_difference']:.2g}). Threads still running after the deadline + 60 s: "
        f"{report['stuck_threads']}.",
        "",
        f"RSS: {report['rss_before_threads_bytes'] / 1e6:.0f} MB before any client thread; then a warm-up of "
        f"{report['warmup_s']:g} s under the same load ({report['warmup_requests']} requests, checked like the "
        "others, not counted above); *RSS start* is read after it, *RSS end* after the measured run, so the "
        "growth is that of the steady state.",
        "",
        "Goals (measured, not asserted):",
        "",
    ]
    lines += [f"* {goal}: {measured} ({'met' if met else 'NOT met'})" for goal, measured, met in goals(report)]
    if report["error_messages"]:
        lines += ["", "Most frequent errors:", ""]
        lines += [f"* {count} x `{message}`" for message, count in report["error_messages"].items()]
    return lines


# ----------------------------------------------------------------------- main
def parse_args(argv):
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="1,2,4,8", help="table mode: numbers of tasks, comma separated (at most 8)")
    parser.add_argument("--clips_per_task", type=int, default=2, help="table mode: clips of each task per batch")
    parser.add_argument("--repeats", type=int, default=3, help="table mode: timed calls (median)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="clip length (Speech Commands: 1 s); load mode: the longest clip")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="base", help="AST-base or a tiny AST")
    parser.add_argument("--threads", type=int, help="load mode: this many client threads")
    parser.add_argument("--hot_path", action="store_true",
                        help="hot path mode: per-call overhead at batch 1 and a mixed batch of 8 LoRA tasks")
    parser.add_argument("--backbones", default="tiny,base",
                        help="hot path mode: the backbones measured, comma separated")
    parser.add_argument("--rounds", type=int, default=30, help="hot path mode: timed rounds (median), AST-base")
    parser.add_argument("--tiny_rounds", type=int, default=300,
                        help="hot path mode: timed rounds for the tiny AST (a call takes about a millisecond)")
    parser.add_argument("--duration", type=float, default=60.0, help="load mode: seconds the clients send requests")
    parser.add_argument("--load_tasks", type=int, default=len(YAMLS), help="load mode: tasks loaded (at most 8)")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="load mode: seconds of the same load before RSS start is read (not counted)")
    parser.add_argument("--pool", type=int, default=64, help="load mode: distinct requests")
    parser.add_argument("--max_batch", type=int, default=8, help="load mode: most clips in a request")
    parser.add_argument("--atol", type=float, default=1e-5,
                        help="load mode: largest log-probability difference from the reference of a correct clip")
    parser.add_argument("--seed", type=int, default=0, help="load mode: seed of the pool and the clients' draws")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="also write the report (with where, when and how it was measured) here")
    args = parser.parse_args(argv)
    if args.hot_path:
        if args.threads is not None:
            parser.error("--hot_path and --threads are two modes: give one")
        args.backbone_list = args.backbones.split(",")
        unknown = sorted(set(args.backbone_list) - set(BACKBONES))
        if unknown or args.rounds < 1 or args.tiny_rounds < 1:
            parser.error(f"--backbones takes names among {sorted(BACKBONES)} (got {unknown}); "
                         "--rounds and --tiny_rounds at least 1")
        args.counts = []
        return args
    args.counts = [int(n) for n in args.tasks.split(",")] if args.threads is None else []
    if args.threads is None and (not args.counts or max(args.counts) > len(YAMLS) or min(args.counts) < 1):
        parser.error(f"--tasks takes numbers from 1 to {len(YAMLS)}")
    if args.threads is not None:
        for name, value, low, high in [("--threads", args.threads, 1, None), ("--load_tasks", args.load_tasks, 1, len(YAMLS)),
                                       ("--pool", args.pool, 1, None), ("--max_batch", args.max_batch, 1, None)]:
            if value < low or (high is not None and value > high):
                parser.error(f"{name} takes a number from {low}{f' to {high}' if high else ' up'}, got {value}")
        if not args.duration > 0 or not args.atol >= 0 or not args.seconds > 0 or not args.warmup >= 0:
            parser.error("--duration and --seconds must be positive, --atol and --warmup at least 0")
    return args


def task_folders(root, config, names):
    """A backbone of ``config`` saved under ``root`` and the task folders ``names`` on it."""
    ASTModel(config()).save_pretrained(root / "ast")
    return make_task_folders(root, root / "ast", names)


@torch.no_grad()  # restored on return: callers in the same process keep their grad mode
def main(argv):
    """Runs the table mode (or, with ``--threads``, the load test; with
    ``--hot_path``, the hot path measures), prints the report and returns its
    rows (the load report's dict)."""
    args = parse_args(argv)
    facts = provenance("python benchmarks/multitask_serving.py", argv)
    backbone_name, config = BACKBONES[args.backbone]
    names = YAMLS[: args.load_tasks] if args.threads is not None else YAMLS[: max(args.counts, default=0)]
    samples = int(16000 * args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        if args.hot_path:
            key = "hot_path"
            rounds = {name: args.tiny_rounds if name == "tiny" else args.rounds for name in args.backbone_list}
            results = [hot_path(root, name, rounds[name], samples) for name in args.backbone_list]
            medians = ", ".join(f"{BACKBONES[name][0]}: {count}" for name, count in rounds.items())
            body = [f"Median of interleaved rounds ({medians}); random weights, {args.seconds:g} s clips.",
                    "", *hot_path_markdown(results)]
        elif args.threads is None:
            key = "rows"
            folders = task_folders(root, config, names)
            results = [
                measure(folders, YAMLS[:n], args.clips_per_task, args.repeats, samples, root / "single")
                for n in args.counts
            ]
            body = [
                f"{backbone_name} (random weights), {args.seconds:g} s clips, {args.clips_per_task} clips per task, "
                f"median of {args.repeats}; tasks added in the order {', '.join(names)}.",
                "",
                table_markdown(results),
            ]
        else:
            key = "load"
            server = MultiTaskClassifier.from_folders(task_folders(root, config, names))
            requests = make_requests(names, args.pool, args.max_batch, samples, args.seed)
            results = load_test(server, requests, args.threads, args.duration, args.atol, args.seed, args.warmup)
            results["tasks"] = names
            body = [
                f"Load test: {args.threads} client threads for {args.duration:g} s on one MultiTaskClassifier "
                f"({backbone_name}, random weights) holding {len(names)} tasks ({', '.join(names)}); "
                f"{args.pool} distinct requests of 1 to {args.max_batch} clips (random tasks, 0.25 to "
                f"{args.seconds:g} s), each answer compared with the single-threaded one "
                f"(a clip is wrong when its label differs or a log-probability differs by more than {args.atol:g}).",
                "",
                *load_markdown(results),
            ]
    text = "\n".join([provenance_line(facts), *body, ""])
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"provenance": facts, key: results}, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
