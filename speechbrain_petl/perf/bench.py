"""Training and inference benchmark of every PETL method, from the recipes' yamls.

Usage::

    python -m speechbrain_petl.perf.bench [--methods full,lora,lora:top3] [--frames 100,500]
        [--batch-size 8] [--steps 5] [--warmup 2] [--json out.json] [--markdown out.md]
        [--dtype fp32,bf16] [--device cuda --dtype bf16 --compile] [--profile]

Each method's model is built from its recipe yaml (default: the Speech
Commands AST yamls) with ``pretrained: False`` (the real architecture,
random weights, offline) and ``max_frames`` set to each requested size
(100 frames: a 1 s Speech Commands clip; 500: a 5 s ESC-50 clip). Every
method sees the same random batch and the same initial weights (the yamls
seed before building). ``lora:top3`` restricts a yaml's method to its top
3 blocks; ``lora:recompute=ffn`` sets the lobe's ``recompute`` (see
``Backbone.recompute``) and ``lora:attention=fp32`` its ``attention_dtype``
(see ``Backbone.attention_dtype``); ``plain`` (always measured unless ``--no-plain``) is the frozen
backbone without any method, for inference.

For every method and size it reports:

* ``step_s``: the median wall time of a full training step after
  ``warmup`` steps (fbank features, forward, cross-entropy, backward,
  the yaml's optimizer step), and ``clips_per_s``;
* ``tensor_peak_bytes``: the peak of tensor memory in a training step:
  the tensors live before it (weights, optimizer state, batch) plus the
  most the step allocates at once (CPU: PyTorch's allocator followed by
  the profiler's memory events in one extra step,
  :class:`~speechbrain_petl.perf.measure.TensorPeak`; CUDA:
  ``torch.cuda.max_memory_allocated``), the figure to compare methods by;
* ``peak_bytes``: on CPU the peak resident set (``ru_maxrss``) of a fresh
  process that built and trained only this model (``--isolate``, the CPU
  default): it also counts the libraries (importing torch alone is about
  0.5 GB) and memory the C allocator keeps; on CUDA
  ``torch.cuda.max_memory_allocated`` over the steps;
* ``saved_bytes``: what autograd keeps for the backward pass of one step
  (``torch.autograd.graph.saved_tensors_hooks``, each storage once,
  parameters excluded);
* ``trainable``: trainable parameters (PETL tensors and the head);
* ``infer_ms_per_clip``: inference time per clip (eval mode, whole batch,
  features included), and ``merged_ms_per_clip`` after
  ``backbone.merge`` for methods that merge (LoRA, BitFit, linear probing;
  adapters fold only their LayerNorm copies);
* ``flops_step`` (:mod:`speechbrain_petl.perf.flops`: matrix products
  only, counted analytically from the shapes) and ``matmul_fraction``: the
  step's achieved FLOP/s over the machine's own matmul rate in the dtype
  the step's products ran in, measured at the same thread count (the
  machine's fp32, bf16 and int8 rates and its ISA are in the report's
  ``machine``);
* ``features_fraction``: the share of the step spent computing the fbank,
  and ``data_fraction``: the share of (data loading + step) spent reading
  and collating the batch's WAV files in the main process (what
  ``num_workers=0`` would cost; workers overlap it with the step);
* every figure's ratio to full fine-tuning of the same size in the same
  run (``*_ratio``), and ``step_ratio_scaled``: the step ratio divided by
  the method's forward FLOPs relative to full fine-tuning (prompts and
  prefixes add tokens).

``--profile`` (CPU) runs, after the timed steps, one more step of each
measurement under ``torch.profiler`` and says where its time goes
(:mod:`speechbrain_petl.perf.profile`): the row's ``profile`` holds the
step's wall time split by phase (fbank, forward, backward, optimizer) and
by kind of op (each op's self time: matrix products, attention, casts,
LayerNorm, softmax, activations, element-wise ops, the optimizer...), its
top ops, the time inside no op, and the rate the matrix products reach in
their own kernels; the markdown adds a "Where the step goes" table.

``--dtype`` takes several settings, measured one after the other for each
method (so that a drifting machine affects them alike): ``fp32``;
``bf16``, the step under bf16 autocast with the frozen linears stored in
bf16 (``backbone_dtype: bf16``, :meth:`~speechbrain_petl.backbones.Backbone.store_frozen`);
``bf16-autocast``, bf16 autocast with the backbone stored in fp32. Ratios
to full fine-tuning are within one setting; with fp32 and another setting,
a table puts them side by side (``<setting> / fp32``).

The output is a markdown table per size and setting (stdout,
``--markdown``) and the same rows as JSON (``--json``). Wall times on a
shared machine are noisy: compare ratios from one run, and repeat.
"""

import argparse
import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

from speechbrain_petl.backbones.base import ATTENTION_DTYPES
from speechbrain_petl.backbones.blocks import RECOMPUTE_MODES
from speechbrain_petl.perf import profile as step_profile
from speechbrain_petl.perf.flops import count_step_flops
from speechbrain_petl.perf.measure import (
    ModuleTimer,
    SavedTensors,
    TensorPeak,
    cpu_name,
    isa,
    isa_text,
    matmul_rate,
    median,
    peak_rss_bytes,
    provenance,
    tensor_bytes,
    timed,
)

#: Where the Speech Commands recipe's AST yamls are: beside this module in
#: an installed wheel (``setup.py`` ships them as package data), else in the
#: recipe folder of the checkout this module runs from.
SHIPPED_HPARAMS = pathlib.Path(__file__).resolve().parent / "recipe_hparams"
CHECKOUT_HPARAMS = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "Google-speech-commands" / "PETL" / "hparams"
DEFAULT_HPARAMS = SHIPPED_HPARAMS if SHIPPED_HPARAMS.is_dir() else CHECKOUT_HPARAMS

#: The paper's rows, in its order (the stems of the recipe yamls without the dataset tag).
PAPER_METHODS = [
    "full", "linear", "bitfit", "prompt_shallow", "prompt_deep", "prefix", "lora",
    "bottleneck", "bottleneck_houlsby", "conformer", "conformer_houlsby",
]
PLAIN = "plain"
#: A method's options when none are given (see :func:`parse_method`).
NO_OPTIONS = {"top": None, "recompute": None, "attention": None}
PLACEHOLDER = re.compile(r"^([A-Za-z_]\w*):\s*!PLACEHOLDER", re.MULTILINE)
#: ``--dtype`` settings: (autocast dtype or None, how the frozen linears are stored).
DTYPES = {"fp32": (None, "fp32"), "bf16": (torch.bfloat16, "bf16"), "bf16-autocast": (torch.bfloat16, "fp32")}
#: The matmul rates measured (``machine["matmul_gflops"]``).
RATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
MB = 1e6
MIB = 2**20


# --------------------------------------------------------------------- models
def recipe_yamls(folder):
    """``{method: yaml path}`` for the AST yamls of a recipe's hparams folder
    (``lora_gsc.yaml`` -> ``lora``; Wav2Vec2 yamls, ``w2v2_*``, are left out).

    Example
    -------
    >>> sorted(recipe_yamls(DEFAULT_HPARAMS))[:3]
    ['bitfit', 'bottleneck', 'bottleneck_houlsby']
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder of recipe yamls; pass --hparams-dir "
            "recipes/<Dataset>/PETL/hparams of a checkout of this repository (an installed "
            f"package ships the Speech Commands yamls in {SHIPPED_HPARAMS})."
        )
    yamls = {}
    for path in sorted(folder.glob("*.yaml")):
        if not path.stem.startswith("w2v2_"):
            yamls[path.stem.rsplit("_", 1)[0]] = str(path)
    if not yamls:
        raise FileNotFoundError(f"{folder} holds no AST recipe yaml (*.yaml not starting with w2v2_).")
    return yamls


def parse_method(spec):
    """A method and its options: ``"lora:top3:recompute=ffn:attention=fp32"`` ->
    ``("lora", {"top": 3, "recompute": "ffn", "attention": "fp32"})`` (each
    option may be left out; ``attention`` sets the lobe's ``attention_dtype``).

    Example
    -------
    >>> parse_method("conformer:top6"), parse_method("full:recompute=blocks")
    (('conformer', {'top': 6, 'recompute': None, 'attention': None}), ('full', {'top': None, 'recompute': 'blocks', 'attention': None}))
    >>> parse_method("lora:attention=fp32")[1]["attention"]
    'fp32'
    """
    name, *options = spec.split(":")
    parsed = dict(NO_OPTIONS)
    for option in options:
        top = re.fullmatch(r"top(\d+)", option)
        recompute = re.fullmatch(r"recompute=(\w+)", option)
        attention = re.fullmatch(r"attention=(\w+)", option)
        if top and int(top.group(1)) >= 1:
            parsed["top"] = int(top.group(1))
        elif recompute and recompute.group(1) in RECOMPUTE_MODES:
            parsed["recompute"] = recompute.group(1)
        elif attention and attention.group(1) in ATTENTION_DTYPES:
            parsed["attention"] = attention.group(1)
        else:
            raise ValueError(
                f"Method {spec!r}: options are ':topK' (K >= 1 blocks), ':recompute=MODE' "
                f"(MODE in {[m for m in RECOMPUTE_MODES if m]}) and ':attention=DTYPE' (DTYPE in "
                f"{sorted(ATTENTION_DTYPES)}), e.g. 'lora:top3:recompute=ffn'."
            )
    return name, parsed


def load_recipe(yaml_path, overrides):
    """The hparams of a recipe yaml, with ``!PLACEHOLDER`` keys filled by
    dummies and ``output_folder`` in a temporary folder (nothing is kept)."""
    from hyperpyyaml import load_hyperpyyaml

    with open(yaml_path) as fin:
        text = fin.read()
    filled = {key: "unused-by-bench" for key in PLACEHOLDER.findall(text)}
    with tempfile.TemporaryDirectory() as tmp:
        if re.search(r"^output_folder:", text, re.MULTILINE):
            filled["output_folder"] = tmp
        return load_hyperpyyaml(text, {**filled, **overrides})


def restrict_to_top(backbone, blocks):
    """Re-attaches each method of ``backbone`` on its top ``blocks`` blocks
    only (same constructor arguments otherwise)."""
    if not 1 <= blocks <= backbone.num_layers:
        raise ValueError(f"top{blocks}: the backbone has {backbone.num_layers} blocks.")
    layers = list(range(backbone.num_layers - blocks, backbone.num_layers))
    for name, method in list(backbone.petl.items()):
        args = method.constructor_args()
        if "layers" not in args:
            raise ValueError(f"{type(method).__name__} takes no layers: ':top' does not apply to it.")
        backbone.detach(name)
        backbone.attach(type(method)(**{**args, "layers": layers}), name)


def make_batch(batch, frames, classes, seed=0):
    """The same random batch for every method: ``batch`` waveforms of exactly
    ``frames`` fbank frames (25 ms window, 10 ms shift at 16 kHz), full
    relative lengths and random labels.

    Example
    -------
    >>> wavs, lens, labels = make_batch(2, 100, 35)
    >>> wavs.shape, lens.tolist(), labels.shape
    (torch.Size([2, 16240]), [1.0, 1.0], torch.Size([2]))
    """
    generator = torch.Generator().manual_seed(seed)
    samples = 400 + (frames - 1) * 160
    wavs = 0.1 * torch.randn(batch, samples, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return wavs, torch.ones(batch), labels


# ------------------------------------------------------------------- measuring
def _write_wavs(wavs, folder):
    import soundfile as sf

    paths = []
    for i, wav in enumerate(wavs):
        path = os.path.join(folder, f"clip{i}.wav")
        sf.write(path, wav.numpy(), 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def _load_batch(paths):
    from speechbrain.dataio.batch import PaddedBatch

    from speechbrain_petl.data.audio import load_audio

    return PaddedBatch([{"id": os.path.basename(p), "sig": load_audio(p)} for p in paths])


def measure(spec):
    """Builds one method's model and measures it; returns its row (a dict).

    ``spec`` holds ``yaml``, ``method``, ``top``, ``frames``, ``batch``,
    ``steps``, ``warmup``, ``inference_repeats``, ``threads``, ``device``,
    ``dtype``, ``compile``, ``backbone_source`` and ``seed`` (see
    :func:`worker_spec`)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    overrides = {"pretrained": False, "max_frames": spec["frames"], "batch_size": spec["batch"]}
    if spec["backbone_source"]:
        overrides["backbone_source"] = spec["backbone_source"]
    hparams = load_recipe(spec["yaml"], overrides)
    backbone, head = hparams["modules"]["backbone"], hparams["modules"]["classifier"]
    if spec["top"]:
        restrict_to_top(backbone, spec["top"])
    backbone.recompute = spec["recompute"]
    backbone.attention_dtype = spec["attention"]
    plain = spec["method"] == PLAIN
    if plain:
        backbone.set_active([])
    autocast_dtype, stored = DTYPES[spec["dtype"]]
    if stored != "fp32":
        backbone.store_frozen(stored)
    backbone.to(device)
    head.to(device)
    if spec["compile"]:
        for block in backbone.layers:
            block.compile()
    wavs, lens, labels = make_batch(spec["batch"], spec["frames"], hparams.get("n_classes", 2), spec["seed"])
    wavs, lens, labels = wavs.to(device), lens.to(device), labels.to(device)
    autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    modules = torch.nn.ModuleList([backbone, head])
    params = [p for p in modules.parameters() if p.requires_grad]
    row = {
        "method": method_label(spec["method"], spec),
        "dtype": spec["dtype"],
        "frames": spec["frames"],
        "batch": spec["batch"],
        "trainable": 0 if plain else sum(p.numel() for p in params),
        "build_peak_bytes": peak_rss_bytes() if device.type == "cpu" else None,
    }
    with autocast:
        flops = count_step_flops(backbone, head, wavs, lens)
    row["flops_forward"] = flops["forward"]
    row["flops_step"] = None if plain else flops["step"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not plain:
        row.update(_measure_training(spec, hparams, backbone, head, params, (wavs, lens, labels), autocast))
    row["peak_bytes"] = (
        torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    )
    if device.type == "cuda" and not plain:
        row["tensor_peak_bytes"] = row["peak_bytes"]  # CUDA's allocator counts tensors only
    row.update(_measure_inference(spec, backbone, head, wavs, lens, autocast))
    return row


def _unmarked(name):
    """No marker: a step's phases when it is not profiled."""
    return contextlib.nullcontext()


def _measure_training(spec, hparams, backbone, head, params, batch, autocast):
    wavs, lens, labels = batch
    device = spec["device"]
    optimizer = hparams["opt_class"](params)
    backbone.train()
    head.train()

    def loss_fn():
        """Forward pass and cross-entropy."""
        with autocast:
            return F.cross_entropy(head(backbone(wavs, lens)).float(), labels)

    def step(phase=_unmarked):
        """One training step; ``phase(name)`` marks its parts (a StepProfiler's when profiled)."""
        optimizer.zero_grad(set_to_none=True)
        with phase("forward"):
            loss = loss_fn()
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()

    with SavedTensors(exclude=[p for m in (backbone, head) for p in m.parameters()]) as saved:
        loss = loss_fn()
    loss.backward()
    del loss
    optimizer.zero_grad(set_to_none=True)
    features = getattr(backbone, "features", None)
    step_times, feature_times, data_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        paths = _write_wavs(wavs.cpu(), tmp)
        timer = stack.enter_context(ModuleTimer(features, device)) if features is not None else None
        for i in range(spec["warmup"] + spec["steps"]):
            data_s, _ = timed(lambda: _load_batch(paths))
            if timer is not None:
                timer.reset()
            step_s, _ = timed(step, device)
            if i >= spec["warmup"]:
                step_times.append(step_s)
                data_times.append(data_s)
                if timer is not None:
                    feature_times.append(timer.seconds)
    step_s, data_s = median(step_times), median(data_times)
    features_s = median(feature_times)
    tensor_peak = None
    if torch.device(device).type == "cpu":
        # One more step, profiled: the tensors live before it (weights,
        # optimizer state, the batch; gradients are freed) plus its peak.
        optimizer.zero_grad(set_to_none=True)
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        live = tensor_bytes([*backbone.parameters(), *backbone.buffers(), *head.parameters(),
                             *head.buffers(), *state, wavs, lens, labels])
        with TensorPeak() as peak:
            step()
        tensor_peak = live + peak.bytes
    profiled = {}
    if spec.get("profile"):
        # One more step under the profiler, after the timed ones (they run unmarked).
        with step_profile.StepProfiler(features) as profiler:
            step(profiler.phase)
        profiled["profile"] = profiler.result
    return {
        "step_s": step_s,
        "tensor_peak_bytes": tensor_peak,
        "step_times": step_times,
        "clips_per_s": spec["batch"] / step_s,
        "saved_bytes": saved.bytes,
        "features_s": features_s,
        "features_fraction": None if features_s is None else features_s / step_s,
        "data_s": data_s,
        "data_fraction": data_s / (data_s + step_s),
        **profiled,
    }


def _measure_inference(spec, backbone, head, wavs, lens, autocast):
    backbone.eval()
    head.eval()
    device, batch = spec["device"], wavs.shape[0]

    def per_clip_ms():
        """Median inference time per clip, in ms."""
        with torch.inference_mode(), autocast:
            head(backbone(wavs, lens))
            times = [timed(lambda: head(backbone(wavs, lens)), device)[0]
                     for _ in range(spec["inference_repeats"])]
        return 1000 * median(times) / batch

    result = {"infer_ms_per_clip": per_clip_ms(), "merged_ms_per_clip": None}
    merged = []
    for name in backbone.active:
        try:
            backbone.merge(name)
        except TypeError:  # nothing of this method folds into the weights
            continue
        merged.append(name)
    if merged:
        result["merged_ms_per_clip"] = per_clip_ms()
        for name in reversed(merged):
            backbone.unmerge(name)
    return result


def measure_cache(spec):
    """Linear probing with the embedding cache on: the wall time of a first
    training epoch of ``spec["cache_batches"]`` batches of distinct clips
    (which fills the cache) and of a second one (which reads it)."""
    from speechbrain_petl.training.embedding_cache import EmbeddingCache

    torch.set_num_threads(spec["threads"])
    overrides = {"pretrained": False, "max_frames": spec["frames"], "batch_size": spec["batch"]}
    if spec["backbone_source"]:
        overrides["backbone_source"] = spec["backbone_source"]
    hparams = load_recipe(spec["yaml"], overrides)
    backbone, head = hparams["modules"]["backbone"], hparams["modules"]["classifier"]
    cache = EmbeddingCache().enable(backbone)
    batches = spec["cache_batches"]
    wavs, lens, labels = make_batch(spec["batch"] * batches, spec["frames"], hparams.get("n_classes", 2), spec["seed"])
    params = [p for m in (backbone, head) for p in m.parameters() if p.requires_grad]
    optimizer = hparams["opt_class"](params)
    backbone.train()
    head.train()

    def epoch():
        """One pass over the batches, training the head and the final LayerNorm copy."""
        for i in range(batches):
            rows = slice(i * spec["batch"], (i + 1) * spec["batch"])
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(backbone(wavs[rows], lens[rows])), labels[rows]).backward()
            optimizer.step()

    first, _ = timed(epoch)
    later = [timed(epoch)[0] for _ in range(2)]
    return {
        "method": "linear+cache", "frames": spec["frames"], "batch": spec["batch"], "batches": batches,
        "first_epoch_s": first, "later_epoch_s": median(later), "speedup": first / median(later),
        "hits": cache.hits, "misses": cache.misses,
    }


def method_label(name, options):
    """The row's name: the method and the options it was measured with.

    Example
    -------
    >>> method_label("lora", {"top": 3, "recompute": "ffn"}), method_label("full", {"top": None, "recompute": None})
    ('lora:top3:recompute=ffn', 'full')
    """
    label = name
    if options.get("top"):
        label += f":top{options['top']}"
    if options.get("recompute"):
        label += f":recompute={options['recompute']}"
    if options.get("attention"):
        label += f":attention={options['attention']}"
    return label


def worker_spec(args, yaml, method, options, frames):
    """The JSON-able settings one measurement needs (see :func:`measure`)."""
    return {
        "yaml": yaml, "method": method, "top": options["top"], "recompute": options["recompute"],
        "attention": options["attention"],
        "frames": frames, "batch": args.batch_size,
        "steps": args.steps, "warmup": args.warmup, "inference_repeats": args.inference_repeats,
        "threads": args.threads, "device": args.device, "dtype": args.dtype,
        "compile": args.compile, "backbone_source": args.backbone_source, "seed": args.seed,
        "cache_batches": args.cache_batches,
        # callers that build their own options (benchmarks/reference_step.py) have no --profile
        "profile": getattr(args, "profile", False),
    }


def run_worker(command, what):
    """Runs ``command`` (a worker process that prints its row as its last
    JSON line) and returns that row; errors name ``what`` it measured."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"The benchmark of {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"The worker of {what} printed no JSON row:\n{done.stdout[-2000:]}")
    return json.loads(lines[-1])


def measure_isolated(spec):
    """Runs :func:`measure` in a fresh Python process (its peak memory is
    then this method's alone) and returns its row."""
    return run_worker(
        [sys.executable, "-m", "speechbrain_petl.perf.bench", "--worker", json.dumps(spec)],
        f"{spec['method']!r} at {spec['frames']} frames",
    )


# ---------------------------------------------------------------------- report
RATIO_KEYS = ("step_s", "clips_per_s", "peak_bytes", "tensor_peak_bytes", "saved_bytes", "trainable", "flops_step")


def rate_dtype(setting):
    """The dtype whose matmul rate a ``--dtype`` setting's products run at.

    Example
    -------
    >>> rate_dtype("fp32"), rate_dtype("bf16-autocast")
    ('fp32', 'bf16')
    """
    return "fp32" if DTYPES[setting][0] is None else "bf16"


def add_ratios(rows, matmul_flops):
    """Adds to each row its ratios to the full fine-tuning row of the same
    size and ``--dtype`` setting (``<key>_ratio``; None without such a row),
    ``step_ratio_scaled`` and the achieved FLOP/s and its fraction of the
    rate in ``matmul_flops`` (``{"fp32": FLOP/s, "bf16": FLOP/s}``) of the
    dtype its products ran in.

    Example
    -------
    >>> rows = [{"method": "full", "frames": 100, "step_s": 4.0, "flops_forward": 10, "flops_step": 30},
    ...         {"method": "lora", "frames": 100, "step_s": 2.0, "flops_forward": 10, "flops_step": 20}]
    >>> add_ratios(rows, matmul_flops={"fp32": 10.0})[1]["step_s_ratio"], rows[1]["matmul_fraction"]
    (0.5, 1.0)
    """
    full = {(row["frames"], row.get("dtype", "fp32")): row for row in rows if row["method"] == "full"}
    for row in rows:
        ref = full.get((row["frames"], row.get("dtype", "fp32")))
        for key in RATIO_KEYS:
            mine, theirs = row.get(key), None if ref is None else ref.get(key)
            row[f"{key}_ratio"] = mine / theirs if mine is not None and theirs else None
        scaled = None
        if row["step_s_ratio"] is not None and ref.get("flops_forward") and row.get("flops_forward"):
            scaled = row["step_s_ratio"] / (row["flops_forward"] / ref["flops_forward"])
        row["step_ratio_scaled"] = scaled
        step_s, flops = row.get("step_s"), row.get("flops_step")
        row["flops_per_s"] = flops / step_s if step_s and flops else None
        rate = matmul_flops[rate_dtype(row.get("dtype", "fp32"))]
        row["matmul_fraction"] = row["flops_per_s"] / rate if row["flops_per_s"] else None
    return rows


def add_dtype_ratios(rows, base="fp32"):
    """Adds to each row not in ``base`` its ratios to the row of the same
    method and size in ``base`` (``<key>_vs_<base>``: ``step_s``,
    ``tensor_peak_bytes``, ``infer_ms_per_clip``; None without one).

    Example
    -------
    >>> rows = [{"method": "lora", "frames": 100, "dtype": "fp32", "step_s": 2.0},
    ...         {"method": "lora", "frames": 100, "dtype": "bf16", "step_s": 1.0}]
    >>> add_dtype_ratios(rows)[1]["step_s_vs_fp32"]
    0.5
    """
    same = {(row["method"], row["frames"]): row for row in rows if row.get("dtype") == base}
    for row in rows:
        if row.get("dtype") == base:
            continue
        ref = same.get((row["method"], row["frames"]))
        for key in DTYPE_RATIO_KEYS:
            mine, theirs = row.get(key), None if ref is None else ref.get(key)
            row[f"{key}_vs_{base}"] = mine / theirs if mine is not None and theirs else None
    return rows


DTYPE_RATIO_KEYS = ("step_s", "tensor_peak_bytes", "infer_ms_per_clip")


def _fmt(value, scale=1.0, digits=2):
    if value is None:
        return "–"
    return f"{value / scale:,.{digits}f}"


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}%"


COLUMNS = (
    "| method | trainable | step (s) | ×FFT | ×FFT / fwd FLOPs | clips/s | tensor peak MB | ×FFT "
    "| process peak MB | ×FFT | saved MiB | ×FFT | infer ms/clip | merged ms/clip | GFLOP/step | % matmul rate | features | data |"
)


def _settings(settings):
    dtypes = settings["dtype"] if isinstance(settings["dtype"], list) else [settings["dtype"]]
    return dtypes


def markdown(report):
    """The report as markdown: the machine, then one table per size and
    ``--dtype`` setting, and the settings side by side when fp32 is one."""
    machine, settings = report["machine"], report["settings"]
    rates = ", ".join(f"{name} {value:,.0f}" for name, value in machine["matmul_gflops"].items())
    dtypes = _settings(settings)
    lines = [
        f"Machine: {machine['cpu']} ({machine['threads']} threads), {machine['device_name']}; "
        f"{isa_text(machine['isa'])}; torch {machine['torch']}; measured matmul rates (GFLOP/s; int8: "
        f"GOP/s): {rates}.",
        f"Batch {settings['batch']}, {', '.join(dtypes)}{', torch.compile' if settings['compile'] else ''}; "
        f"median of {settings['steps']} steps after {settings['warmup']} warm-up; "
        f"models from {settings['hparams_dir']}.",
        f"Measured {settings['date']} with `{settings['command']}`.",
    ]
    for frames in sorted({row["frames"] for row in report["rows"]}):
        for dtype in dtypes:
            title = f"**{frames} frames**" if len(dtypes) == 1 else f"**{frames} frames, {dtype}**"
            lines += ["", title, "", COLUMNS, "|" + "---|" * COLUMNS.count(" | ") + "---|"]
            lines += _table_rows(report, frames, dtype)
        if "fp32" in dtypes and len(dtypes) > 1:
            lines += ["", *_side_by_side(report, frames, dtypes)]
    if any(row.get("profile") for row in report["rows"]):
        lines += ["", *step_profile.markdown_lines(report["rows"])]
    for row in report.get("embedding_cache", []):
        lines += ["", (
            f"Linear probing with the embedding cache, {row['frames']} frames, {row['batches']} batches "
            f"of {row['batch']}: first epoch {row['first_epoch_s']:.2f} s, later epochs "
            f"{row['later_epoch_s']:.3f} s ({row['speedup']:.0f}x faster)."
        )]
    return "\n".join(lines) + "\n"


def _side_by_side(report, frames, dtypes):
    """One table of each method in every setting against fp32."""
    others = [d for d in dtypes if d != "fp32"]
    header = ["method", "fp32 step (s)"]
    for dtype in others:
        header += [f"{dtype} step (s)", f"{dtype} / fp32", f"% matmul rate fp32 → {dtype}",
                   f"tensor peak {dtype} / fp32", f"infer ms/clip fp32 → {dtype}", f"infer {dtype} / fp32"]
    lines = [f"**{frames} frames: {', '.join(others)} against fp32**", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    rows = {(row["method"], row.get("dtype", "fp32")): row for row in report["rows"] if row["frames"] == frames}
    for method in dict.fromkeys(row["method"] for row in report["rows"] if row["frames"] == frames):
        base = rows.get((method, "fp32"), {})
        cells = [method, _fmt(base.get("step_s"))]
        for dtype in others:
            row = rows.get((method, dtype), {})
            cells += [
                _fmt(row.get("step_s")), _fmt(row.get("step_s_vs_fp32")),
                f"{_pct(base.get('matmul_fraction'))} → {_pct(row.get('matmul_fraction'))}",
                _fmt(row.get("tensor_peak_bytes_vs_fp32")),
                f"{_fmt(base.get('infer_ms_per_clip'), digits=1)} → {_fmt(row.get('infer_ms_per_clip'), digits=1)}",
                _fmt(row.get("infer_ms_per_clip_vs_fp32")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table_rows(report, frames, dtype):
    """The main table's lines of one size and setting."""
    lines = []
    for row in report["rows"]:
        if row["frames"] != frames or row.get("dtype", "fp32") != dtype:
            continue
        lines.append("| " + " | ".join([
            row["method"],
            f"{row['trainable']:,}",
            _fmt(row.get("step_s")),
            _fmt(row.get("step_s_ratio")),
            _fmt(row.get("step_ratio_scaled")),
            _fmt(row.get("clips_per_s"), digits=1),
            _fmt(row.get("tensor_peak_bytes"), MB, 0),
            _fmt(row.get("tensor_peak_bytes_ratio")),
            _fmt(row.get("peak_bytes"), MB, 0),
            _fmt(row.get("peak_bytes_ratio")),
            _fmt(row.get("saved_bytes"), MIB, 0),
            _fmt(row.get("saved_bytes_ratio")),
            _fmt(row.get("infer_ms_per_clip"), digits=1),
            _fmt(row.get("merged_ms_per_clip"), digits=1),
            _fmt(row.get("flops_step"), 1e9, 1),
            _pct(row.get("matmul_fraction")),
            _pct(row.get("features_fraction")),
            _pct(row.get("data_fraction")),
        ]) + " |")
    return lines


def machine_info(device):
    """CPU model and ISA (:func:`~speechbrain_petl.perf.measure.isa`), thread
    count, device name, torch version and the measured matmul rates on
    ``device`` (GFLOP/s; int8 in GOP/s) in fp32, bf16 and int8."""
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    return {
        "cpu": cpu_name(),
        "isa": isa(),
        "threads": torch.get_num_threads(),
        "device_name": device_name,
        "torch": torch.__version__,
        "matmul_gflops": {name: matmul_rate(device, dtype) / 1e9 for name, dtype in RATE_DTYPES.items()},
    }


# ------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m speechbrain_petl.perf.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(PAPER_METHODS),
                        help="comma-separated yaml names, each optionally with ':topK' and "
                             "':recompute=ffn|blocks' and ':attention=fp32' (default: the paper's 11)")
    parser.add_argument("--frames", default="100,500", help="comma-separated max_frames (GSC 100, ESC-50 500)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--inference-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32",
                        help=f"comma-separated settings of {sorted(DTYPES)}, e.g. fp32,bf16 (one sitting)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every transformer block")
    parser.add_argument("--hparams-dir", default=str(DEFAULT_HPARAMS))
    parser.add_argument("--backbone-source", default=None,
                        help="config source instead of the yamls' (e.g. a save_pretrained folder)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="one fresh process per measurement (default on CPU: true)")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="also time inference of the backbone without any method")
    parser.add_argument("--embedding-cache", action="store_true",
                        help="also time linear probing's epochs with the embedding cache (first vs later)")
    parser.add_argument("--cache-batches", type=int, default=4, help="batches per epoch for --embedding-cache")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more step of each measurement (torch.profiler, CPU) and say "
                             "where its time goes, by phase and by kind of op")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.worker is None:
        _check_args(args, parser)
    facts = provenance("python -m speechbrain_petl.perf.bench", argv)
    args.command, args.date = facts["command"], facts["date"]
    return args


def _check_args(args, parser):
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__}).")
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    args.dtype = [d for d in args.dtype.split(",") if d]
    unknown = [d for d in args.dtype if d not in DTYPES]
    if unknown or not args.dtype or len(set(args.dtype)) != len(args.dtype):
        parser.error(f"--dtype takes distinct comma-separated settings of {sorted(DTYPES)}, got {','.join(args.dtype)!r}")
    if args.profile and not args.device.startswith("cpu"):
        parser.error("--profile attributes CPU time (torch.profiler's CPU activity); on CUDA an op's CPU "
                     "time is its launch, not its work: use --device cpu.")
    if args.compile and not args.device.startswith("cuda"):
        parser.error("--compile is for --device cuda (on CPU it would time compilation, not PETL).")
    for name in ("batch_size", "steps", "threads", "inference_repeats", "cache_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    try:
        args.frames = [int(f) for f in args.frames.split(",")]
    except ValueError:
        parser.error(f"--frames takes comma-separated integers, got {args.frames!r}")
    if args.isolate is None:
        args.isolate = not args.device.startswith("cuda")


def run(args):
    """Measures every requested method and size; returns the report dict
    (``machine``, ``settings``, ``rows``)."""
    torch.set_num_threads(args.threads)
    yamls = recipe_yamls(args.hparams_dir)
    methods = [parse_method(spec) for spec in args.methods.split(",") if spec]
    unknown = sorted({name for name, _ in methods} - set(yamls))
    if unknown:
        raise ValueError(f"No yaml for {unknown} in {args.hparams_dir}; known: {sorted(yamls)}")
    if args.plain:
        plain_yaml = yamls.get("linear", next(iter(yamls.values())))
    report = {
        "machine": machine_info(args.device),
        "settings": {
            "batch": args.batch_size, "steps": args.steps, "warmup": args.warmup, "dtype": args.dtype,
            "compile": args.compile, "device": args.device, "hparams_dir": str(args.hparams_dir),
            "isolated": args.isolate, "frames": args.frames,
            "command": args.command, "date": args.date,
        },
        "rows": [],
    }
    jobs = [(yamls[name], name, options) for name, options in methods]
    if args.plain:
        jobs.append((plain_yaml, PLAIN, NO_OPTIONS))
    for frames in args.frames:
        for yaml, name, options in jobs:
            for dtype in args.dtype:  # one after the other: a drifting machine affects both alike
                spec = {**worker_spec(args, yaml, name, options, frames), "dtype": dtype}
                row = measure_isolated(spec) if args.isolate else measure(spec)
                if not args.isolate:
                    row["peak_bytes"] = None  # one process for all: its peak is no method's own
                    row["build_peak_bytes"] = None
                print(f"[bench] {row['method']} @ {frames} frames, {dtype}: step {row.get('step_s') or 0:.3f} s",
                      file=sys.stderr, flush=True)
                report["rows"].append(row)
    rates = {name: rate * 1e9 for name, rate in report["machine"]["matmul_gflops"].items()}
    add_ratios(report["rows"], rates)
    add_dtype_ratios(report["rows"])
    if args.profile:
        report["settings"]["profile"] = True
        for row in report["rows"]:
            if row.get("profile"):
                step_profile.add_kernel_rate(row["profile"], row.get("flops_step"), rates[rate_dtype(row["dtype"])])
    if args.embedding_cache:
        if "linear" not in yamls:
            raise ValueError(f"--embedding-cache needs a linear probing yaml in {args.hparams_dir}")
        report["embedding_cache"] = []
        for frames in args.frames:
            spec = {**worker_spec(args, yamls["linear"], "linear", NO_OPTIONS, frames), "cache": True,
                    "dtype": args.dtype[0]}
            row = measure_isolated(spec) if args.isolate else measure_cache(spec)
            print(f"[bench] embedding cache @ {frames} frames: {row['speedup']:.1f}x", file=sys.stderr, flush=True)
            report["embedding_cache"].append(row)
    return report


def publish(report, to_markdown, markdown_path=None, json_path=None):
    """Prints ``to_markdown(report)``, writes it to ``markdown_path`` and the
    report to ``json_path`` (each when given); returns the report."""
    text = to_markdown(report)
    print(text)
    if markdown_path:
        pathlib.Path(markdown_path).write_text(text)
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(report, indent=1))
    return report


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.perf.bench``."""
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(measure_cache(spec) if spec.get("cache") else measure(spec)))
        return None
    return publish(run(args), markdown, args.markdown, args.json)


if __name__ == "__main__":
    main()
