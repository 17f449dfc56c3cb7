#!/usr/bin/env python3
"""Training step of each PETL method here against the paper's reference code.

Usage (on 2 CPU cores, 2 to 5 minutes per method and sitting with the
defaults, full fine-tuning the longest)::

    python benchmarks/reference_step.py --reference-dir /path/to/PETL_AST \\
        [--reference-python /path/to/refvenv/bin/python] [--methods lora,full] \\
        [--sittings 3] [--steps 5] [--warmup 2] [--batch-size 8] [--frames 100] \\
        [--threads 2] [--json out.json] [--markdown out.md]

``--reference-dir`` is a checkout of the paper's repository
(``umbertocappellazzo/PETL_AST``); nothing of it is shipped here, its
model classes are imported from that folder at run time. Its code is
written for transformers 4.x (its requirements pin 4.28.1): it subclasses
modules that transformers 5 removed (``ASTEncoder``, ``ASTSelfAttention``,
``ASTOutput``) and reaches into their 4.x attributes, so its side runs under
another interpreter, ``--reference-python``, whose transformers is 4.x
(the worker refuses 5.x), e.g. a virtual environment made with::

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==<this torch's version> transformers==4.28.1

To time both sides on the very same torch build without downloading it
again, install only transformers 4.28.1 and its pins there
(``pip install --no-deps transformers==4.28.1 tokenizers==0.13.3
"huggingface_hub<1.0"``) and add a ``.pth`` file holding this environment's
``site-packages`` path to the new environment's ``site-packages`` (which
comes first on its ``sys.path``, so its transformers wins).

How each side is built
----------------------
* Ours: exactly ``python -m speechbrain_petl.perf.bench``'s worker
  (:func:`speechbrain_petl.perf.bench.measure_isolated`) on the recipe yaml of
  the method (default: Google Speech Commands, ``--hparams-dir``), with
  ``pretrained: False`` (AST-base, random weights) and ``max_frames =
  --frames``.
* Theirs: a worker mode of this script, run by ``--reference-python`` in a
  fresh process, puts ``--reference-dir`` on ``sys.path``, replaces
  ``ASTModel.from_pretrained`` (inherited by their subclasses) by one that
  returns ``cls(ASTConfig(...), *extra_args)`` (AST-base, the
  configuration shipped in ``speechbrain_petl/backbones/configs``, with
  ``max_length = --frames``), so no hub access is needed, and builds the
  class their ``main.py`` uses for the method with the sizes of our yaml
  (see :func:`reference_model`: their LoRA and adapter sizes are
  reduction rates, ``hidden / rank``). Full fine-tuning, linear probing and
  BitFit use their plain ``AST`` class with the parameters their
  ``main.py`` leaves trainable. Mean pooling (their ``final_output: ALL``)
  on both sides.

How both are timed
------------------
Same random batch (``--batch-size`` clips of ``--frames`` fbank frames,
35 classes, :func:`speechbrain_petl.perf.bench.make_batch`); theirs in fp32
(their code has no mixed precision), ours in each ``--ours-dtypes``
setting (default ``fp32,bf16``; bf16: autocast with the frozen linears
stored in bf16, a row of its own against the same fp32 reference),
``--threads`` torch threads, AdamW with the yaml's settings over the
trainable parameters. A step is ``zero_grad``, forward, cross-entropy,
backward and ``optimizer.step()``; both sides run one untimed forward and
backward, then ``--warmup`` untimed steps, then ``--steps`` timed ones
(:func:`speechbrain_petl.perf.measure.timed`), and report their median and
the process's peak resident set (``ru_maxrss``; each method and side in a
fresh process).

Features: their datasets compute the fbank once, when the dataset is
loaded, so their step starts from features: here too, their input is our
fbank of the batch, computed once outside their step. Our step starts
from waveforms (our pipeline computes the fbank in the step), so it is
timed with the fbank included and our fbank time is reported: ``ours /
theirs`` compares what each pipeline pays per step (ours handicapped by
the fbank), ``net / theirs`` subtracts our fbank time and compares the
networks alone.

Sittings: for each of ``--sittings`` sittings, for each method, ours then
theirs; the table gives per method the median over sittings of each side's
median step. A method is ``faster`` when ``ours / theirs < 1`` (``net
only`` when only ``net / theirs`` is). Wall times on a shared machine are
noisy: keep it idle.

Authors
 * speechbrain-petl contributors 2026
"""

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from speechbrain_petl.perf.measure import isa_text, median, peak_rss_bytes, timed  # noqa: E402

#: The AST-base configuration both sides are built from (shipped here, not downloaded).
AST_CONFIG = REPO / "speechbrain_petl" / "backbones" / "configs" / "ast-finetuned-audioset-10-10-0.4593.json"

#: Our method (recipe yaml stem) -> (their module, their class, what their run of it trains).
METHODS = {
    "full": ("src.AST", "AST", "AST, every parameter trainable"),
    "linear": ("src.AST", "AST", "AST frozen except its final LayerNorm; head"),
    "bitfit": ("src.AST", "AST", "AST frozen except the biases of its Linear and LayerNorm layers"),
    "prompt_shallow": ("src.AST_prompt_tuning", "PromptAST", "prompts replace the distillation token, input only"),
    "prompt_deep": ("src.AST_prompt_tuning", "PromptAST", "prompts replace the distillation token, every layer"),
    "prefix": ("src.AST_prompt_tuning", "AST_Prefix_tuning", "key and value prefixes in every layer"),
    "lora": ("src.AST_LoRA", "AST_LoRA", "LoRA on query and value"),
    "bottleneck": ("src.AST_adapters", "AST_adapter", "bottleneck adapter, FFN (Pfeiffer)"),
    "bottleneck_houlsby": ("src.AST_adapters", "AST_adapter", "bottleneck adapters, MHSA and FFN (Houlsby)"),
    "conformer": ("src.AST_adapters", "AST_adapter", "Conformer adapter, FFN (Pfeiffer)"),
    "conformer_houlsby": ("src.AST_adapters", "AST_adapter", "Conformer adapters, MHSA and FFN (Houlsby)"),
}
ADAPTER_BLOCKS = {"BottleneckAdapter": "bottleneck", "ConformerAdapter": "conformer"}
PLACEMENTS = {"pfeiffer": "Pfeiffer", "houlsby": "Houlsby"}
MB = 1e6


# ------------------------------------------------------------------ mapping
def module_file(module):
    """The file of a reference module, relative to the checkout's root.

    Example
    -------
    >>> module_file("src.AST_LoRA")
    'src/AST_LoRA.py'
    """
    return module.replace(".", "/") + ".py"


def reduction_rate(hidden, size, what):
    """The integer rate ``k`` with ``round(hidden / k) == size``: how the
    reference sizes LoRA ranks and adapter bottlenecks.

    Example
    -------
    >>> reduction_rate(768, 6, "rank"), reduction_rate(768, 12, "bottleneck")
    (128, 64)
    """
    rate = max(1, round(hidden / size))
    if round(hidden / rate) != size:
        raise ValueError(
            f"The reference sizes the {what} as round({hidden} / k) for an integer k: "
            f"no k gives {size}."
        )
    return rate


def _setting(settings, key, method):
    """``settings[key]``, or an error naming the method and the key."""
    if key not in settings:
        raise ValueError(f"Method {method!r}: our yaml's method has no {key!r} (settings: {sorted(settings)}).")
    return settings[key]


def reference_model(method, settings, hidden=768, patch=16):
    """How the reference builds ``method`` with our yaml's sizes.

    ``settings`` are our method's constructor arguments (an adapter block's
    class name and keywords flattened in, see :func:`recipe_settings`).
    Returns ``{"module", "class", "kwargs", "prompt_config", "trainable"}``:
    their class is called with ``max_length``, ``num_classes`` and
    ``kwargs`` (``PromptAST`` with a ``Prompt_config(**prompt_config)``
    instead), then ``trainable`` (``all``, ``linear``, ``bitfit`` or
    ``own``: as their class leaves it) picks what trains.

    Example
    -------
    >>> built = reference_model("lora", {"rank": 6, "alpha": 0.75})
    >>> built["class"], built["kwargs"]["rank"], built["kwargs"]["alpha"]
    ('AST_LoRA', 128, 16.0)
    """
    if method not in METHODS:
        raise ValueError(f"The reference has no counterpart of {method!r}; known: {sorted(METHODS)}")
    layers = settings.get("layers")
    if layers is not None and not (method == "prompt_shallow" and list(layers) == [0]):
        raise ValueError(
            f"Method {method!r}: our yaml restricts it to layers {layers}; the reference applies "
            "it to every layer (shallow prompts: the input only)."
        )
    module, cls, _ = METHODS[method]
    built = {"module": module, "class": cls, "kwargs": {}, "prompt_config": None, "trainable": "own"}
    if method in ("full", "linear", "bitfit"):
        built["kwargs"] = {"final_output": "ALL"}
        built["trainable"] = "all" if method == "full" else method
    elif method.startswith("prompt_"):
        built["prompt_config"] = {
            "NUM_TOKENS": _setting(settings, "length", method),
            "DEEP": bool(_setting(settings, "deep", method)),
            "FINAL_OUTPUT": "ALL",
        }
    elif method == "prefix":
        built["kwargs"] = {
            "final_output": "ALL", "num_tokens": _setting(settings, "length", method),
            "patch_size": patch, "hidden_size": hidden,
        }
    elif method == "lora":
        rank = _setting(settings, "rank", method)
        rate = reduction_rate(hidden, rank, "LoRA rank")
        # Their scaling is alpha / rate; ours alpha / rank: keep ours.
        built["kwargs"] = {
            "final_output": "ALL", "rank": rate, "alpha": _setting(settings, "alpha", method) / rank * rate,
        }
    else:
        block = _setting(settings, "block", method)
        if block not in ADAPTER_BLOCKS:
            raise ValueError(f"Method {method!r}: the reference has no {block!r}; it has {sorted(ADAPTER_BLOCKS)}.")
        placement = _setting(settings, "placement", method)
        if placement not in PLACEMENTS:
            raise ValueError(f"Method {method!r}: the reference has no placement {placement!r}.")
        built["kwargs"] = {
            "final_output": "ALL",
            "reduction_rate": reduction_rate(hidden, _setting(settings, "bottleneck", method), "adapter bottleneck"),
            "adapter_type": PLACEMENTS[placement],
            "seq_or_par": _setting(settings, "mode", method),
            "apply_residual": False,
            "adapter_block": ADAPTER_BLOCKS[block],
            "kernel_size": settings.get("kernel_size"),
        }
    return built


# ---------------------------------------------------------------- our side
def recipe_settings(yaml_path, frames, batch, seed, features_path, backbone_source=None):
    """Loads our recipe yaml (random weights) and returns what the reference
    side needs: the method's constructor arguments (``settings``), the
    classes, the backbone's width, the optimizer's keywords; writes our
    fbank of the benchmark batch (``make_batch``) to ``features_path``.
    ``backbone_source`` replaces the yaml's (a configuration folder)."""
    from speechbrain_petl.perf import bench

    overrides = {"pretrained": False, "max_frames": frames, "batch_size": batch}
    if backbone_source is not None:
        overrides["backbone_source"] = backbone_source
    hparams = bench.load_recipe(yaml_path, overrides)
    for key in ("petl", "modules", "n_classes", "opt_class"):
        if key not in hparams:
            raise ValueError(f"{yaml_path} has no {key!r}: not a PETL recipe yaml.")
    settings = dict(hparams["petl"].constructor_args())
    block = settings.pop("block", None)
    if block is not None:  # a class, or a partial of one (!name: with keywords)
        settings["block"] = getattr(block, "func", block).__name__
        settings.update(getattr(block, "keywords", {}))
    backbone = hparams["modules"]["backbone"]
    wavs, lens, labels = bench.make_batch(batch, frames, hparams["n_classes"], seed)
    with torch.no_grad():
        torch.save({"features": backbone.features(wavs, lens), "labels": labels}, features_path)
    return {
        "settings": settings,
        "n_classes": hparams["n_classes"],
        "hidden": backbone.hidden_size,
        "optimizer": dict(getattr(hparams["opt_class"], "keywords", {})),
    }


def measure_ours(args, yaml_path, method, dtype="fp32"):
    """Our step, in a fresh process (``speechbrain_petl.perf.bench``'s worker),
    in ``dtype`` (a ``--dtype`` setting of the bench: ``fp32``, or ``bf16``:
    autocast with the frozen linears stored in bf16)."""
    from speechbrain_petl.perf import bench

    options = argparse.Namespace(
        batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, inference_repeats=1,
        threads=args.threads, device="cpu", dtype=dtype, compile=False, backbone_source=None,
        seed=args.seed, cache_batches=1,
    )
    row = bench.measure_isolated(bench.worker_spec(options, yaml_path, method, bench.NO_OPTIONS, args.frames))
    features = row.get("features_s") or 0.0
    return {
        "step_s": row["step_s"], "step_times": row["step_times"], "features_s": features,
        "net_s": row["step_s"] - features, "trainable": row["trainable"], "peak_bytes": row["peak_bytes"],
    }


# -------------------------------------------------------------- their side
def offline_from_pretrained(config):
    """A ``from_pretrained`` replacement that builds ``cls(ASTConfig)`` with
    random weights from the ``config`` dict, never reading the hub."""
    from transformers import ASTConfig

    def from_pretrained(cls, source, *model_args, ignore_mismatched_sizes=None, **overrides):
        """``cls`` built offline: ``source`` is ignored, keyword arguments
        (``max_length``) override the configuration as they would there."""
        return cls(ASTConfig(**{**config, **overrides}), *model_args)

    return classmethod(from_pretrained)


def build_reference(spec):
    """Imports the reference class from ``spec["reference_dir"]`` and builds
    the model of ``spec["method"]``; returns it with what trains set."""
    from transformers import ASTModel

    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise ImportError(
            f"{sys.executable} has transformers {transformers.__version__}; the reference code at "
            f"{spec['reference_dir']} was written for 4.x (it pins 4.28.1). Pass --reference-python, "
            "the python of an environment with transformers 4.28.1 (see this script's docstring)."
        )
    sys.path.insert(0, spec["reference_dir"])
    built = spec["built"]
    ASTModel.from_pretrained = offline_from_pretrained(spec["ast_config"])
    try:
        module = importlib.import_module(built["module"])
    except ImportError as error:
        raise ImportError(
            f"{spec['reference_dir']}/{module_file(built['module'])} does not import under "
            f"{sys.executable} (transformers {transformers.__version__}): {error}"
        ) from error
    cls = getattr(module, built["class"])
    sizes = {"max_length": spec["frames"], "num_classes": spec["n_classes"]}
    if built["prompt_config"] is not None:
        model = cls(prompt_config=module.Prompt_config(**built["prompt_config"]), **sizes)
    else:
        model = cls(**sizes, **built["kwargs"])
    if built["trainable"] in ("linear", "bitfit"):
        model.model.requires_grad_(False)
        if built["trainable"] == "linear":
            model.model.layernorm.requires_grad_(True)
        else:
            for layer in model.model.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm)):
                    layer.bias.requires_grad_(True)
    return model


def measure_reference(spec):
    """The reference's step (run in the reference's interpreter): builds the
    model, trains on the saved features, returns the row."""
    import platform

    import transformers

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = build_reference(spec)
    batch = torch.load(spec["features_path"])
    features, labels = batch["features"], batch["labels"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, **spec["optimizer"])
    model.train()

    def step():
        """One training step: forward, cross-entropy, backward, AdamW."""
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()

    torch.nn.functional.cross_entropy(model(features), labels).backward()  # untimed, as ours
    optimizer.zero_grad(set_to_none=True)
    times = [timed(step)[0] for _ in range(spec["warmup"] + spec["steps"])][spec["warmup"]:]
    return {
        "step_s": median(times), "step_times": times, "trainable": sum(p.numel() for p in params),
        "peak_bytes": peak_rss_bytes(), "transformers": transformers.__version__,
        "torch": torch.__version__, "python": platform.python_version(),
    }


def run_reference(args, spec):
    """Runs :func:`measure_reference` in a fresh ``--reference-python`` process."""
    from speechbrain_petl.perf import bench

    return bench.run_worker(
        [args.reference_python, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(spec)],
        f"the reference's {spec['method']!r} ({args.reference_python})",
    )


# ------------------------------------------------------------------ report
def summarise(method, sittings, ours_dtype="fp32"):
    """One table row from a method's sittings (``[{"ours": row, "theirs":
    row}, ...]``, ours run in ``ours_dtype``, theirs always in fp32): medians
    over sittings, ratios, parameters, peaks.

    Example
    -------
    >>> ours = {"step_s": 2.0, "features_s": 0.5, "net_s": 1.5, "trainable": 10, "peak_bytes": 5}
    >>> row = summarise("lora", [{"ours": ours, "theirs": {"step_s": 3.0, "trainable": 12, "peak_bytes": 6}}])
    >>> row["ratio"], row["net_ratio"], row["faster"]
    (0.6666666666666666, 0.5, 'yes')
    """
    ours = [s["ours"] for s in sittings]
    theirs = [s["theirs"] for s in sittings]
    row = {
        "method": method,
        "ours_dtype": ours_dtype,
        "reference": METHODS[method][1],
        "sittings": len(sittings),
        "ours_step_s": median([r["step_s"] for r in ours]),
        "ours_features_s": median([r["features_s"] for r in ours]),
        "ours_net_s": median([r["net_s"] for r in ours]),
        "theirs_step_s": median([r["step_s"] for r in theirs]),
        "ours_trainable": ours[0]["trainable"],
        "theirs_trainable": theirs[0]["trainable"],
        "ours_peak_bytes": max(r["peak_bytes"] for r in ours),
        "theirs_peak_bytes": max(r["peak_bytes"] for r in theirs),
    }
    row["ratio"] = row["ours_step_s"] / row["theirs_step_s"]
    row["net_ratio"] = row["ours_net_s"] / row["theirs_step_s"]
    row["faster"] = "yes" if row["ratio"] < 1 else "net only" if row["net_ratio"] < 1 else "no"
    return row


COLUMNS = (
    "| method | ours in | their class | trainable (ours) | trainable (theirs) | ours step (s) | ours fbank (s) "
    "| ours net (s) | theirs step (s) | ours / theirs | net / theirs | peak MB (ours) | peak MB (theirs) | faster |"
)


def markdown(report):
    """The report as markdown: machine and settings, then one row per method."""
    machine, settings, ref = report["machine"], report["settings"], report["reference"]
    lines = [
        f"Machine: {machine['cpu']}"
        + (f" ({isa_text(machine['isa'])}; matmul GFLOP/s: fp32 {machine['matmul_gflops']['fp32']:,.0f}, "
           f"bf16 {machine['matmul_gflops']['bf16']:,.0f})" if "isa" in machine else "")
        + f", {settings['threads']} torch threads; ours: torch {machine['torch']}, "
        f"transformers {machine['transformers']}; theirs: torch {ref['torch']}, transformers "
        f"{ref['transformers']} ({ref['python']}), reference {ref['dir']}"
        + (f" at {ref['commit'][:10]}" if ref.get("commit") else "") + ".",
        f"AST-base, random weights, theirs in fp32 (their code has no other mode), ours in "
        f"{' and '.join(settings.get('ours_dtypes', ['fp32']))} (bf16: autocast with the frozen linears "
        f"stored in bf16), batch {settings['batch']}, {settings['frames']} frames, "
        f"AdamW; median of {settings['steps']} steps after {settings['warmup']} warm-up, median over "
        f"{settings['sittings']} sitting(s) (each: ours then theirs, one fresh process each).",
        "Ours times its fbank inside the step (our pipeline computes it per step); theirs starts from "
        "precomputed fbank features (their datasets compute them once): 'net' is our step minus our fbank.",
        "",
        COLUMNS,
        "|" + "---|" * (COLUMNS.count(" | ") + 1),
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join([
            row["method"], row.get("ours_dtype", "fp32"), row["reference"], f"{row['ours_trainable']:,}", f"{row['theirs_trainable']:,}",
            f"{row['ours_step_s']:.3f}", f"{row['ours_features_s']:.3f}", f"{row['ours_net_s']:.3f}",
            f"{row['theirs_step_s']:.3f}", f"{row['ratio']:.2f}", f"{row['net_ratio']:.2f}",
            f"{row['ours_peak_bytes'] / MB:,.0f}", f"{row['theirs_peak_bytes'] / MB:,.0f}", row["faster"],
        ]) + " |")
    return "\n".join(lines) + "\n"


VERSIONS = (
    "import json, platform, torch, transformers; print(json.dumps({'python': platform.python_version(), "
    "'torch': torch.__version__, 'transformers': transformers.__version__}))"
)


def reference_versions(python):
    """Python, torch and transformers versions of the reference's interpreter;
    an error unless it has torch and a transformers 4.x."""
    done = subprocess.run([python, "-c", VERSIONS], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"--reference-python {python} cannot import torch and transformers:\n{done.stderr[-2000:]}")
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    if int(versions["transformers"].split(".")[0]) >= 5:
        raise RuntimeError(
            f"--reference-python {python} has transformers {versions['transformers']}; the reference code "
            "was written for 4.x (it pins 4.28.1). Pass the python of an environment with transformers "
            "4.28.1 (see this script's docstring)."
        )
    return versions


def reference_commit(folder):
    """The git commit of the reference checkout, or None when it is not one."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:  # no git on this machine
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# --------------------------------------------------------------------- CLI
def parse_args(argv=None):
    """Command-line options (see the module docstring); checks them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", help="checkout of github.com/umbertocappellazzo/PETL_AST (required)")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="interpreter for the reference side (one with transformers 4.x); default: this one")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    parser.add_argument("--ours-dtypes", default="fp32,bf16",
                        help="our side's settings, comma separated: fp32, bf16 (theirs is always fp32)")
    parser.add_argument("--sittings", type=int, default=3, help="rounds of (ours, theirs) per method")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100, help="fbank frames (Speech Commands: 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hparams-dir", default=str(REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams"),
                        help="our recipe yamls (<method>_<dataset>.yaml)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        check_args(args, parser)
    return args


def check_args(args, parser):
    """Errors (``parser.error``) naming the option, path or file at fault."""
    for name in ("sittings", "steps", "batch_size", "frames", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    args.ours_dtypes = [d for d in args.ours_dtypes.split(",") if d]
    if not args.ours_dtypes or any(d not in ("fp32", "bf16") for d in args.ours_dtypes):
        parser.error(f"--ours-dtypes takes fp32 and/or bf16, got {args.ours_dtypes}")
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    if not args.reference_dir:
        parser.error("--reference-dir is required: a checkout of github.com/umbertocappellazzo/PETL_AST")
    folder = pathlib.Path(args.reference_dir).expanduser().resolve()
    if not folder.is_dir():
        parser.error(f"--reference-dir {folder}: no such folder (a checkout of umbertocappellazzo/PETL_AST)")
    needed = {module_file(METHODS[m][0]) for m in args.methods}
    missing = sorted(path for path in needed if not (folder / path).is_file())
    if missing:
        parser.error(f"--reference-dir {folder} lacks {missing}: not a checkout of umbertocappellazzo/PETL_AST")
    args.reference_dir = str(folder)
    python = pathlib.Path(args.reference_python)
    if not (python.is_file() and os.access(python, os.X_OK)):
        parser.error(f"--reference-python {python}: no such executable")
    if not AST_CONFIG.is_file():
        parser.error(f"{AST_CONFIG} is missing: run from a checkout of this repository")


def run(args):
    """All sittings; returns the report (``machine``, ``settings``,
    ``reference``, ``sittings``, ``rows``)."""
    import transformers

    from speechbrain_petl.perf import bench

    torch.set_num_threads(args.threads)
    yamls = bench.recipe_yamls(args.hparams_dir)
    missing = [m for m in args.methods if m not in yamls]
    if missing:
        raise ValueError(f"No yaml for {missing} in {args.hparams_dir}; it has {sorted(yamls)}")
    versions = reference_versions(args.reference_python)
    machine = bench.machine_info("cpu")
    machine["transformers"] = transformers.__version__
    ast_config = json.loads(AST_CONFIG.read_text())
    report = {
        "machine": machine,
        "settings": {
            "batch": args.batch_size, "frames": args.frames, "steps": args.steps, "warmup": args.warmup,
            "sittings": args.sittings, "threads": args.threads, "hparams_dir": args.hparams_dir,
            "ours_dtypes": args.ours_dtypes,
        },
        "reference": {"dir": args.reference_dir, "commit": reference_commit(args.reference_dir),
                      **versions, "python": f"{args.reference_python}, Python {versions['python']}"},
        "sittings": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        specs = {}
        for method in args.methods:
            features_path = os.path.join(tmp, f"{method}.pt")
            recipe = recipe_settings(yamls[method], args.frames, args.batch_size, args.seed, features_path)
            specs[method] = {
                "method": method, "reference_dir": args.reference_dir, "ast_config": ast_config,
                "built": reference_model(method, recipe["settings"], recipe["hidden"], ast_config["patch_size"]),
                "frames": args.frames, "n_classes": recipe["n_classes"], "optimizer": recipe["optimizer"],
                "features_path": features_path, "threads": args.threads, "seed": args.seed,
                "steps": args.steps, "warmup": args.warmup, "settings": recipe["settings"],
            }
        for sitting in range(args.sittings):
            results = {}
            for method in args.methods:
                ours = {dtype: measure_ours(args, yamls[method], method, dtype) for dtype in args.ours_dtypes}
                theirs = run_reference(args, specs[method])
                results[method] = {"ours": ours, "theirs": theirs}
                print(f"[reference_step] sitting {sitting + 1}: {method}: ours "
                      + ", ".join(f"{d} {o['step_s']:.3f} s (fbank {o['features_s']:.3f} s)" for d, o in ours.items())
                      + f", theirs {theirs['step_s']:.3f} s", file=sys.stderr, flush=True)
            report["sittings"].append(results)
    report["builds"] = {m: {"ours": specs[m]["settings"], "theirs": specs[m]["built"]} for m in args.methods}
    report["rows"] = [
        summarise(m, [{"ours": s[m]["ours"][dtype], "theirs": s[m]["theirs"]} for s in report["sittings"]], dtype)
        for m in args.methods for dtype in args.ours_dtypes
    ]
    return report


def main(argv=None):
    """Entry point: the benchmark, or (``--worker``) the reference's side of one method."""
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure_reference(json.loads(args.worker))))
        return None
    from speechbrain_petl.perf import bench

    return bench.publish(run(args), markdown, args.markdown, args.json)


if __name__ == "__main__":
    main()
