#!/usr/bin/env python3
"""``torch.compile`` on the inference paths: graph breaks per block, and recompilation across task mixes.

Builds an AST (AST-base with random weights, or ``--backbone tiny``) and
one inference folder per Speech Commands recipe yaml named (as
``benchmarks/multitask_serving.py`` does), then reports, on CPU:

* **single task** (``--single``, an ``AudioClassifier``): graph breaks of
  each block of its lobe (``torch._dynamo.explain`` on the block, with the
  input the block gets in the lobe's forward pass), grouped by block index
  with their reasons; the same for the whole lobe; and the graphs compiled
  by each of ``--calls`` calls of the compiled lobe on one batch shape;
* **many tasks** (``--tasks``, one ``MultiTaskClassifier``): graph breaks
  of each block during one mixed call (explained inside the call, so with
  that call's routes; a block runs once per routed pass and once per
  prompt or prefix task); and, for calls with different task mixes of one
  batch shape, the graphs compiled by each call, in two scopes:
  ``classify_batch`` compiled whole, and every block compiled in place
  (the per-group lobe calls). A graph compiled after the first call is a
  recompilation caused by the task mix alone; its guard failures are listed.

Graphs are counted by a backend that counts its calls (it then hands the
graph to ``--backend``) and by ``torch._dynamo.utils.counters``. Graph
breaks and recompilations are decided by dynamo's tracing, before the
backend: ``--backend eager`` (default) finds the same ones as
``inductor``, without generating code. Every compiled call's outputs are
compared with the eager ones.

    python benchmarks/compile_report.py --markdown compile.md
    python benchmarks/compile_report.py --backbone tiny --tasks lora,bitfit --mixes 2   # quick

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import collections
import contextlib
import json
import logging
import os
import pathlib
import random
import re
import sys
import tempfile

import torch
import torch._dynamo
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters
from transformers import ASTModel

from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier
from speechbrain_petl.perf.measure import provenance, provenance_line

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multitask_serving import BACKBONES, YAMLS, make_task_folders  # noqa: E402

#: Logger of dynamo's recompilation reasons (``torch._logging`` artifact ``recompiles``).
RECOMPILES_LOGGER = "torch._dynamo.guards.__recompiles"
#: What is compiled in the many-task part: ``classify_batch`` whole, or every block in place.
SCOPES = ("classify_batch", "blocks")
#: A guard failure's line in a recompilation message: ``- 3/0: <guard>  # <source>  # <file:line in function>``.
GUARD_FAILURE = re.compile(r"^- \d+/\d+: (.*)$")
#: Logger of dynamo's warning that a function hit the recompile limit.
LIMIT_LOGGER = "torch._dynamo.convert_frame"
#: The most characters of a reason kept in the report.
REASON_CHARS = 160


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and
    hands each to the backend named ``backend``."""

    def __init__(self, backend="eager"):
        self.backend = lookup_backend(backend)
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        """Counts one graph and compiles it with the wrapped backend."""
        self.graphs += 1
        return self.backend(graph_module, example_inputs)


class RecompileReasons(logging.Handler):
    """Collects dynamo's recompilation messages while active (not printed),
    and its warnings that a function hit the recompile limit (dynamo then
    runs that function eagerly: no more graphs, and no more recompilations)."""

    def __init__(self):
        super().__init__()
        self.messages = []
        self.limit_hits = []

    def emit(self, record):
        """Keeps the message."""
        message = record.getMessage()
        if record.name == RECOMPILES_LOGGER:
            self.messages.append(message)
        elif "recompile_limit" in message or "cache_size_limit" in message:
            function = re.search(r"function: (.*)", message)
            self.limit_hits.append(function.group(1).strip() if function else message.splitlines()[0])

    def __enter__(self):
        torch._logging.set_logs(recompiles=True)
        self._loggers = [logging.getLogger(RECOMPILES_LOGGER), logging.getLogger(LIMIT_LOGGER)]
        self._propagate = [logger.propagate for logger in self._loggers]
        for logger in self._loggers:
            logger.propagate = False
            logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        for logger, propagate in zip(self._loggers, self._propagate):
            logger.removeHandler(self)
            logger.propagate = propagate
        torch._logging.set_logs()
        return False

    def take_limit_hits(self):
        """The functions that hit the recompile limit since the last call."""
        hits, self.limit_hits = self.limit_hits, []
        return hits

    def take(self):
        """The guard failures logged since the last call, one line each:
        the guard, and where it was made (``file:line in function``)."""
        failures = []
        for message in self.messages:
            for line in message.splitlines():
                found = GUARD_FAILURE.match(line.strip())
                if found:
                    guard, _, rest = found.group(1).partition("#")
                    where = rest.rsplit("#", 1)[-1].strip() if "#" in rest else ""
                    where = os.path.basename(where) if where else ""
                    failures.append(f"{guard.strip()[:REASON_CHARS]}" + (f" ({where})" if where else ""))
        self.messages = []
        return failures


def reason_of(break_reason):
    """One line for a ``torch._dynamo.explain`` break reason: where (the
    innermost user frame) and the reason's first line."""
    text = str(break_reason.reason).strip().splitlines()[0][:REASON_CHARS]
    stack = break_reason.user_stack
    if stack:
        frame = stack[-1]
        return f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}: {text}"
    return text


def explained(function, *args, **kwargs):
    """``{"graphs", "breaks", "reasons": {reason: count}}`` of ``torch._dynamo.explain(function)``."""
    torch._dynamo.reset()
    result = torch._dynamo.explain(function)(*args, **kwargs)
    torch._dynamo.reset()
    return {
        "graphs": result.graph_count,
        "breaks": result.graph_break_count,
        "reasons": dict(collections.Counter(reason_of(reason) for reason in result.break_reasons)),
    }


def block_inputs(lobe, run):
    """The positional and keyword inputs of each call of each block of
    ``lobe`` while ``run()`` runs: ``[(block index, args, kwargs)]``."""
    calls = []
    hooks = [
        block.register_forward_pre_hook(
            lambda module, args, kwargs, index=index: calls.append((index, args, dict(kwargs))), with_kwargs=True
        )
        for index, block in enumerate(lobe.layers)
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@contextlib.contextmanager
def explaining_blocks(lobes, found):
    """While active, every call of a block of ``lobes`` is first explained
    with its own inputs (and within the call's routes); appends
    ``(lobe index, block index, explained)`` to ``found``."""
    busy = []

    def hook(module, args, kwargs, lobe_index, block_index):
        if busy:
            return None
        busy.append(True)
        try:
            found.append((lobe_index, block_index, explained(module, *args, **kwargs)))
        finally:
            busy.pop()
        return None

    handles = [
        block.register_forward_pre_hook(
            lambda module, args, kwargs, li=lobe_index, bi=block_index: hook(module, args, kwargs, li, bi),
            with_kwargs=True,
        )
        for lobe_index, lobe in enumerate(lobes) for block_index, block in enumerate(lobe.layers)
    ]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def per_block(entries):
    """``(block index, explained)`` entries summed per block index:
    ``[{"block", "passes", "graphs", "breaks", "reasons"}]``, in block order."""
    blocks = {}
    for index, result in entries:
        row = blocks.setdefault(index, {"block": index, "passes": 0, "graphs": 0, "breaks": 0, "reasons": {}})
        row["passes"] += 1
        row["graphs"] += result["graphs"]
        row["breaks"] += result["breaks"]
        for reason, count in result["reasons"].items():
            row["reasons"][reason] = row["reasons"].get(reason, 0) + count
    return [blocks[index] for index in sorted(blocks)]


def graphs_per_call(compiled, inputs, backend, reasons):
    """Calls ``compiled(*args, **kwargs)`` for each ``(label, args, kwargs)``
    of ``inputs``; per call, the graphs the backend was given, dynamo's
    ``unique_graphs`` counter's growth and the guard failures logged."""
    rows = []
    for label, args, kwargs in inputs:
        before, unique = backend.graphs, counters["stats"]["unique_graphs"]
        output = compiled(*args, **kwargs)
        rows.append({
            "call": label,
            "graphs": backend.graphs - before,
            "unique_graphs": counters["stats"]["unique_graphs"] - unique,
            "recompile_reasons": reasons.take(),
            "recompile_limit_hits": reasons.take_limit_hits(),
            "output": output,
        })
    return rows


def largest_difference(outputs, references):
    """Largest absolute difference between two ``classify_batch`` log-probabilities
    (a tensor, or a list of tensors); ``inf`` where labels differ."""
    (log_probs, _, _, labels), (ref_log_probs, _, _, ref_labels) = outputs, references
    if list(labels) != list(ref_labels):
        return float("inf")
    return max(float((a - b).abs().max()) for a, b in zip(log_probs, ref_log_probs))


def task_mixes(names, batch, count, seed=0):
    """Task lists of length ``batch``: each task alone, two round-robins
    (forwards and backwards), ``count`` random mixes, then the first again."""
    rng = random.Random(seed)
    mixes = [[name] * batch for name in names]
    mixes.append([names[i % len(names)] for i in range(batch)])
    mixes.append([names[(len(names) - 1 - i) % len(names)] for i in range(batch)])
    mixes += [[rng.choice(names) for _ in range(batch)] for _ in range(count)]
    return mixes + [mixes[0]]


def single_task_report(folder, savedir, wavs, wav_lens, calls, backend_name, dynamic):
    """The single-task part of the report (see the module docstring)."""
    classifier = AudioClassifier.from_hparams(source=str(folder), savedir=str(savedir))
    lobe = classifier.mods.embedding_model
    blocks = per_block(
        (index, explained(lobe.layers[index], *args, **kwargs))
        for index, args, kwargs in block_inputs(lobe, lambda: lobe(wavs, wav_lens))
    )
    whole = explained(lobe, wavs, wav_lens)
    reference = lobe(wavs, wav_lens)
    torch._dynamo.reset()
    backend = CountingBackend(backend_name)
    compiled = torch.compile(lobe, backend=backend, dynamic=dynamic)
    with RecompileReasons() as reasons:
        rows = graphs_per_call(compiled, [(i, (wavs, wav_lens), {}) for i in range(calls)], backend, reasons)
    for row in rows:
        row["max_difference_from_eager"] = float((row.pop("output") - reference).abs().max())
    torch._dynamo.reset()
    return {"blocks": blocks, "whole_lobe": whole, "calls": rows}


def multitask_report(folders, names, wavs, wav_lens, mix_count, backend_name, dynamic, seed, scopes=SCOPES):
    """The many-task part of the report (see the module docstring)."""
    mixes = task_mixes(names, wavs.shape[0], mix_count, seed)
    server = MultiTaskClassifier.from_folders({name: folders[name] for name in names})
    lobes = list(server.lobes)
    probe = mixes[len(names)]  # the first round-robin: every task in one call
    found = []
    with explaining_blocks(lobes, found):
        server.classify_batch(wavs, wav_lens, tasks=probe)
    blocks = per_block((block, result) for _, block, result in found)
    references = [server.classify_batch(wavs, wav_lens, tasks=mix) for mix in mixes]
    compiled_scopes = {}
    for scope in scopes:
        torch._dynamo.reset()
        server = MultiTaskClassifier.from_folders({name: folders[name] for name in names})
        backend = CountingBackend(backend_name)
        if scope == "classify_batch":
            compiled = torch.compile(server.classify_batch, backend=backend, dynamic=dynamic)
        else:
            for lobe in server.lobes:
                for block in lobe.layers:
                    block.compile(backend=backend, dynamic=dynamic)
            compiled = server.classify_batch
        inputs = [(" ".join(mix), (wavs, wav_lens), {"tasks": mix}) for mix in mixes]
        with RecompileReasons() as reasons:
            rows = graphs_per_call(compiled, inputs, backend, reasons)
        for row, reference in zip(rows, references):
            row["max_difference_from_eager"] = largest_difference(row.pop("output"), reference)
        compiled_scopes[scope] = {
            "calls": rows,
            "first_call_graphs": rows[0]["graphs"],
            "later_graphs": sum(row["graphs"] for row in rows[1:]),
            "recompiles_after_first_call": sum(1 for row in rows[1:] if row["graphs"]),
            "recompile_limit_hits": sum(len(row["recompile_limit_hits"]) for row in rows),
        }
        del server, compiled
    torch._dynamo.reset()
    return {"probe_mix": probe, "lobes": len(lobes), "blocks": blocks, "scopes": compiled_scopes}


def reasons_cell(reasons):
    """A table cell listing reasons with their counts (``-`` for none)."""
    if not reasons:
        return "-"
    return "<br>".join(f"{count} x {reason}".replace("|", "\\|") for reason, count in reasons.items())


def blocks_table(blocks):
    """Markdown lines of the per-block table."""
    lines = ["| block | passes | graphs | graph breaks | reasons |", "|---|---|---|---|---|"]
    lines += [
        f"| {row['block']} | {row['passes']} | {row['graphs']} | {row['breaks']} | {reasons_cell(row['reasons'])} |"
        for row in blocks
    ]
    return lines


def calls_table(rows):
    """Markdown lines of a per-call table of compiles."""
    lines = ["| call | graphs compiled | dynamo unique graphs | max difference from eager | guard failures "
             "| recompile limit hit by |", "|---|---|---|---|---|---|"]
    for row in rows:
        failures = "<br>".join(reason.replace("|", "\\|") for reason in row["recompile_reasons"][:4]) or "-"
        more = len(row["recompile_reasons"]) - 4
        failures += f"<br>(+{more} more)" if more > 0 else ""
        lines.append(f"| {row['call']} | {row['graphs']} | {row['unique_graphs']} | "
                     f"{row['max_difference_from_eager']:.2g} | {failures} | "
                     f"{'<br>'.join(row['recompile_limit_hits']).replace('|', chr(92) + '|') or '-'} |")
    return lines


def markdown(report):
    """The report as markdown (provenance first)."""
    setup = report["setup"]
    lines = [
        provenance_line(report["provenance"]),
        f"{setup['backbone']} (random weights), on CPU; a batch of {setup['batch']} clips of "
        f"{setup['seconds']:g} s; backend `{setup['backend']}` (graphs counted as it receives them), "
        f"`dynamic={setup['dynamic']}`, dynamo's recompile limit {setup['recompile_limit']}.",
        "",
    ]
    single = report.get("single")
    if single:
        lines += [
            f"## One task: `AudioClassifier` ({setup['single']})",
            "",
            "Graph breaks per block (`torch._dynamo.explain` on the block, with the input the lobe's forward gives it):",
            "",
            *blocks_table(single["blocks"]),
            "",
            f"Whole lobe (features, blocks, pooling): {single['whole_lobe']['graphs']} graphs, "
            f"{single['whole_lobe']['breaks']} graph breaks; reasons: {reasons_cell(single['whole_lobe']['reasons'])}.",
            "",
            f"Compiled lobe, {len(single['calls'])} calls on one batch shape:",
            "",
            *calls_table(single["calls"]),
            "",
        ]
    many = report.get("multitask")
    if many:
        lines += [
            f"## Many tasks: `MultiTaskClassifier` ({', '.join(setup['tasks'])}; {many['lobes']} lobe(s))",
            "",
            f"Graph breaks per block during one call with the mix `{' '.join(many['probe_mix'])}` (explained inside "
            "the call, with its routes; passes: the block's runs in that call):",
            "",
            *blocks_table(many["blocks"]),
            "",
        ]
        for scope, result in many["scopes"].items():
            what = ("`classify_batch` compiled whole" if scope == "classify_batch"
                    else "every block compiled in place (`classify_batch` itself eager)")
            lines += [
                f"### {what}: task mixes of one batch shape",
                "",
                f"First call: {result['first_call_graphs']} graphs; the {len(result['calls']) - 1} later calls: "
                f"{result['later_graphs']} more graphs, in {result['recompiles_after_first_call']} calls "
                f"(recompilation beyond the first call: {'yes' if result['later_graphs'] else 'no'}; "
                f"functions that hit the recompile limit, then run eagerly: {result['recompile_limit_hits']}).",
                "",
                *calls_table(result["calls"]),
                "",
            ]
    return "\n".join(lines)


def parse_args(argv):
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="base", help="AST-base or a tiny AST")
    parser.add_argument("--single", default="lora", help=f"the single task's recipe yaml, one of {YAMLS}; '' skips it")
    parser.add_argument("--tasks", default="lora,bitfit,bottleneck,prompt_deep",
                        help="the many tasks' recipe yamls, comma separated; '' skips them")
    parser.add_argument("--batch", type=int, default=4, help="clips per call")
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length")
    parser.add_argument("--calls", type=int, default=3, help="calls of the compiled single-task lobe")
    parser.add_argument("--mixes", type=int, default=4, help="random task mixes (besides each task alone and round-robins)")
    parser.add_argument("--scopes", default=",".join(SCOPES),
                        help="many tasks: what is compiled, comma separated: classify_batch (whole), blocks (in place)")
    parser.add_argument("--backend", default="eager", help="torch.compile backend the counted graphs go to")
    parser.add_argument("--dynamic", choices=["auto", "true", "false"], default="auto",
                        help="torch.compile's dynamic (auto: None, dynamo's automatic dynamic shapes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report's numbers here")
    parser.add_argument("--markdown", help="also write the report (with where, when and how it was measured) here")
    args = parser.parse_args(argv)
    args.task_names = [name for name in args.tasks.split(",") if name]
    unknown = sorted(set(args.task_names + ([args.single] if args.single else [])) - set(YAMLS))
    if unknown:
        parser.error(f"unknown recipe yamls {unknown}; known: {YAMLS}")
    args.scope_names = [scope for scope in args.scopes.split(",") if scope]
    if not set(args.scope_names) <= set(SCOPES):
        parser.error(f"--scopes takes {', '.join(SCOPES)}, got {args.scopes!r}")
    if len(set(args.task_names)) != len(args.task_names):
        parser.error("--tasks names a yaml twice")
    if not args.single and not args.task_names:
        parser.error("nothing to report: --single and --tasks are both empty")
    if args.batch < 1 or args.calls < 1 or args.mixes < 0 or not args.seconds > 0:
        parser.error("--batch and --calls must be at least 1, --mixes at least 0, --seconds positive")
    args.dynamic_value = {"auto": None, "true": True, "false": False}[args.dynamic]
    return args


@torch.no_grad()  # restored on return: callers in the same process keep their grad mode
def main(argv):
    """Builds the models, writes the report and returns it as a dict."""
    args = parse_args(argv)
    facts = provenance("python benchmarks/compile_report.py", argv)
    backbone_name, config = BACKBONES[args.backbone]
    generator = torch.Generator().manual_seed(args.seed)
    samples = int(16000 * args.seconds)
    wavs = 0.1 * torch.randn(args.batch, samples, generator=generator)
    wav_lens = torch.linspace(1.0, 0.5, args.batch) if args.batch > 1 else torch.ones(1)
    report = {
        "provenance": facts,
        "setup": {
            "backbone": backbone_name, "batch": args.batch, "seconds": args.seconds, "backend": args.backend,
            "dynamic": args.dynamic, "recompile_limit": torch._dynamo.config.recompile_limit,
            "single": args.single, "tasks": args.task_names,
        },
    }
    names = list(dict.fromkeys(([args.single] if args.single else []) + args.task_names))
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        ASTModel(config()).save_pretrained(root / "ast")
        folders = make_task_folders(root, root / "ast", names)
        if args.single:
            report["single"] = single_task_report(
                folders[args.single], root / "single", wavs, wav_lens, args.calls, args.backend, args.dynamic_value
            )
        if args.task_names:
            report["multitask"] = multitask_report(
                folders, args.task_names, wavs, wav_lens, args.mixes, args.backend, args.dynamic_value, args.seed,
                args.scope_names,
            )
    text = markdown(report) + "\n"
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
