"""Where a training step's time goes: one step under ``torch.profiler``.

:class:`StepProfiler` runs one training step under the PyTorch profiler
(CPU activity only: no memory events, no stacks, no shapes) and splits the
step's wall time two ways, each adding up to it:

* by **phase**: the wall time inside the markers the step sets with
  :meth:`StepProfiler.phase` (``forward``, ``backward``, ``optimizer``) and
  inside the lobe's ``features`` module (the fbank, marked by forward hooks;
  it runs inside ``forward`` and is taken out of it); ``other`` is the rest
  (``zero_grad``, the Python between the markers);
* by **kind of op** (:func:`op_kind`): each op's *self* CPU time (its time
  minus the time of the ops it calls, so nothing is counted twice), summed
  per kind; every op under the optimizer's marker counts as ``optimizer``.
  ``outside_ops_s``, the wall time minus the sum of the self times, is the
  time inside no op: Python, the profiler's own bookkeeping, idle.

The analytic FLOPs of the step (:mod:`~speechbrain_petl.perf.flops`: the
matrix products, attention's ``Q K^T`` and ``P V`` included, the fbank's
not) over the self time of the ``matmul`` and ``attention`` ops outside the
fbank give the products' own rate (:func:`add_kernel_rate`); an
approximation: the fused attention kernels' time also holds their softmax
and scaling, which the FLOPs do not count. Against the machine's rate it
tells slow kernels from time spent outside them.

The profiler adds a few microseconds per op, so the profiled step is
slower than an unprofiled one: compare shares, not its wall time.
"""

import re
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

#: The name prefix of the phase markers (``record_function``).
MARKER = "petl.phase."
#: The phases a step is split into; ``other`` is what no marker covers.
PHASES = ("features", "forward", "backward", "optimizer", "other")
#: The kinds of op (:func:`op_kind`), in the report's order.
KINDS = (
    "matmul", "attention", "conv", "casts", "norm", "softmax", "activation", "elementwise", "layout",
    "fft", "autograd", "optimizer", "other",
)

#: ``(kind, pattern)``: an op's name without its namespace (``aten::mm`` ->
#: ``mm``) is of the first kind whose pattern matches it whole.
_KIND_PATTERNS = [
    # the optimizer's multi-tensor and fused kernels (any op under its step counts too)
    ("optimizer", r"_foreach_\w+|_fused_(adam|adamw|sgd|adagrad)\w*"),
    # fused attention kernels and their backward
    ("attention", r"\w*scaled_dot_product\w*|_\w*(flash|efficient|cudnn)_attention\w*"),
    # matrix products: ATen's, oneDNN's (mkldnn) and the int8 ones
    ("matmul", r"mm|addmm|bmm|baddbmm|addbmm|mv|addmv|dot|vdot|_int_mm|_addmm_activation"
               r"|mkldnn_linear\w*|_linear_pointwise\w*|mkldnn_matmul|_mkldnn_matmul\w*|linear_dynamic\w*"
               r"|_weight_int8pack_mm|_weight_int4pack_mm\w*|fbgemm_linear\w*"),
    # convolutions: the patch embedding, the Conformer adapters' depthwise one
    ("conv", r"(?!\w*convert)\w*conv\w*|_nnpack_available"),
    # dtype casts and copies (autocast's casts are _to_copy -> copy_)
    ("casts", r"_to_copy|copy_|to|clone|contiguous|type_as|_copy_from\w*"),
    ("norm", r"\w*(layer|group|batch|instance|rms)_norm\w*"),
    ("softmax", r"_?(log_)?softmax(_backward_data)?"),
    ("activation", r"(gelu|silu|relu|glu|sigmoid|tanh|elu|selu|leaky_relu|hardswish|hardsigmoid|mish"
                   r"|softplus)_?(backward)?|threshold_backward|relu6?_?"),
    # pointwise arithmetic, comparisons, reductions, dropout, the loss's gather
    ("elementwise", r"(add|sub|rsub|mul|div|neg|pow|sqrt|rsqrt|exp|exp2|expm1|log|log2|log10|log1p|abs"
                    r"|sign|sgn|reciprocal|square|clamp|clamp_min|clamp_max|clip|where|masked_fill|fill"
                    r"|zero|lerp|addcmul|addcdiv|maximum|minimum|max|min|amax|amin|argmax|argmin|sum"
                    r"|mean|var|std|var_mean|std_mean|prod|norm|linalg_vector_norm|cumsum|cos|sin"
                    r"|round|floor|ceil|trunc|frac|eq|ne|lt|le|gt|ge|logical_\w+|bitwise_\w+"
                    r"|isnan|isinf|nan_to_num|erf|erfc|dropout|native_dropout|native_dropout_backward"
                    r"|bernoulli|uniform|normal|random|nll_loss\w*|cross_entropy_loss|mse_loss\w*"
                    r"|_unsafe_masked_index\w*|sort|topk|any|all)_?"),
    # views, shapes, allocation, concatenation, padding, indexing, scalars,
    # and the own time of composite ops whose work lands in the ops they call
    ("layout", r"view|_unsafe_view|view_as|view_as_real|view_as_complex|reshape|_reshape_alias|as_strided_?"
               r"|t|transpose_?|permute|expand|expand_as|squeeze_?|unsqueeze_?|select|slice|narrow|unbind"
               r"|split|split_with_sizes|chunk|flatten|unflatten|movedim|numpy_T|alias|detach_?|real|imag"
               r"|resolve_conj|resolve_neg|lift_fresh|empty|empty_like|empty_strided|new_empty"
               r"|new_empty_strided|new_zeros|new_ones|zeros|zeros_like|ones|ones_like|full|full_like"
               r"|arange|linspace|scalar_tensor|resize_|resize_as_|set_|cat|stack|pad|constant_pad_nd"
               r"|(replication|reflection)_pad\dd\w*|select_backward|slice_backward|index|index_select"
               r"|index_put_?|_index_put_impl_|gather|scatter\w*|repeat|repeat_interleave|flip|roll|tile"
               r"|embedding|embedding_backward|item|_local_scalar_dense|is_nonzero|result_type"
               r"|linear|matmul|einsum|tensordot"),
    # the fbank's FFT and window
    ("fft", r"\w*fft\w*|stft|hann_window|hamming_window|povey_window"),
]
_KIND_RES = [(kind, re.compile(pattern)) for kind, pattern in _KIND_PATTERNS]
#: Ops autograd's engine runs around the backward kernels: their self time
#: is the engine's own work (``autograd::engine::evaluate_function: X``,
#: ``XBackward0``, ``torch::autograd::AccumulateGrad``).
_AUTOGRAD = re.compile(r"autograd::engine::.*|torch::autograd::\w+|\w+Backward\d*")


def op_kind(name):
    """The kind of a profiled op, from its name (see :data:`KINDS`).

    ``matmul`` (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``, oneDNN's
    linear and matmul ops, int8 products), ``attention`` (the fused
    ``scaled_dot_product`` kernels and their backward), ``conv``, ``casts``
    (``_to_copy``, ``copy_``, ``to``, ``clone``: dtype casts, and copies
    that change no dtype, since ``copy_`` does both), ``norm`` (LayerNorm, BatchNorm forward and
    backward), ``softmax`` (also the loss's log-softmax), ``activation``
    (GELU, SiLU, ReLU, GLU and their backward), ``elementwise`` (pointwise
    arithmetic, comparisons, reductions, dropout, the loss's gather),
    ``layout`` (views, shapes, allocation, ``cat``, padding, indexing, and
    the own time of composite ops such as ``aten::linear`` or
    ``aten::matmul`` whose work lands in the ops they call), ``fft`` (the
    fbank's FFT and window), ``autograd`` (the engine's own nodes),
    ``optimizer`` (multi-tensor and fused optimizer kernels; :func:`attribute`
    also counts every op under the optimizer's step as ``optimizer``) and
    ``other``: anything else, listed by name in the report.

    Example
    -------
    >>> [op_kind(n) for n in ("aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ...                       "aten::mkldnn_convolution", "aten::_to_copy", "aten::native_layer_norm_backward")]
    ['matmul', 'attention', 'conv', 'casts', 'norm']
    >>> [op_kind(n) for n in ("aten::_log_softmax", "aten::gelu_backward", "aten::add_", "aten::linear",
    ...                       "autograd::engine::evaluate_function: MmBackward0", "aten::_foreach_mul_",
    ...                       "aten::some_new_op")]
    ['softmax', 'activation', 'elementwise', 'layout', 'autograd', 'optimizer', 'other']
    """
    if _AUTOGRAD.fullmatch(name):
        return "autograd"
    base = name.rsplit("::", 1)[-1]
    for kind, pattern in _KIND_RES:
        if pattern.fullmatch(base):
            return kind
    return "other"


class StepProfiler:
    """Profiles the code run inside it (one training step) and attributes its
    wall time by phase and by kind of op (see the module docstring); the
    result is :attr:`result`, a JSON-able dict (see :func:`attribute`), and
    the profiler's events are kept in :attr:`events`.

    CPU time only: on CUDA the ops' CPU time is launch time, not work.

    Arguments
    ---------
    features : torch.nn.Module, optional
        The module computing the input features (the fbank): its forward
        calls are marked as the ``features`` phase.
    top : int
        How many ops :attr:`result` lists by self time.

    Example
    -------
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU())
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with StepProfiler() as profiler:
    ...     with profiler.phase("forward"):
    ...         loss = model(torch.randn(4, 16)).sum()
    ...     with profiler.phase("backward"):
    ...         loss.backward()
    ...     with profiler.phase("optimizer"):
    ...         optimizer.step()
    >>> result = profiler.result
    >>> result["kinds"]["matmul"] > 0, result["kinds"]["optimizer"] > 0, result["outside_ops_s"] >= 0
    (True, True, True)
    """

    def __init__(self, features=None, top=8):
        self.features = features
        self.top = top
        self.result = None
        self.events = None
        self._profile = None
        self._handles = []
        self._open = []
        self._start = None

    def phase(self, name):
        """A context marking the code inside it as phase ``name`` (one of
        :data:`PHASES` but ``other``)."""
        if name not in PHASES[:-1]:
            raise ValueError(f"Unknown phase {name!r}: expected one of {list(PHASES[:-1])}.")
        return record_function(MARKER + name)

    def _enter_features(self, module, args):
        marker = self.phase("features")
        marker.__enter__()
        self._open.append(marker)

    def _exit_features(self, module, args, output):
        self._open.pop().__exit__(None, None, None)

    def __enter__(self):
        if self.features is not None:
            self._handles = [
                self.features.register_forward_pre_hook(self._enter_features),
                self.features.register_forward_hook(self._exit_features),
            ]
        self._profile = profile(activities=[ProfilerActivity.CPU])
        self._profile.__enter__()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall_s = time.perf_counter() - self._start
        self._profile.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if exc[0] is None:
            self.events = self._profile.events()
            self.result = attribute(self.events, wall_s, self.top)
        return False


def _phase_spans(events):
    """``[(start_us, end_us, phase)]`` of the phase markers among ``events``."""
    return [
        (event.time_range.start, event.time_range.end, event.name[len(MARKER):])
        for event in events if event.name.startswith(MARKER)
    ]


def _innermost(spans, time_us):
    """The phase of the innermost span holding ``time_us`` (``other`` if none)."""
    holding = [span for span in spans if span[0] <= time_us < span[1]]
    return max(holding, key=lambda span: span[0])[2] if holding else "other"


def attribute(events, wall_s, top=8, others=5):
    """Splits ``wall_s``, the wall time of a profiled step, by phase and by
    kind of op from the profiler's ``events`` (``profile.events()``).

    Returns a dict: ``wall_s``; ``ops_s``, the sum of every op's self time
    (user annotations such as the phase markers are not ops); ``outside_ops_s``
    (``wall_s - ops_s``); ``phases`` (seconds per phase of :data:`PHASES`:
    the markers' wall time, less the markers nested in them, ``other`` the
    rest of ``wall_s``); ``kinds`` (self seconds per kind of :data:`KINDS`)
    and ``kind_calls`` (ops run per kind);
    ``by_phase`` (``{phase: {kind: self seconds}}``, non-zero ones);
    ``top_ops`` (the ``top`` ops by self time: ``name``, ``kind``, ``s``,
    ``calls``); ``other_ops`` (the ``others`` ops of kind ``other``, so that
    nothing hides there) and ``matmul_kernel_s`` (the self time of the
    ``matmul`` and ``attention`` ops outside the features phase, see
    :func:`add_kernel_rate`).

    Example
    -------
    >>> from torch.autograd.profiler_util import FunctionEvent
    >>> forward = FunctionEvent(0, MARKER + "forward", 1, 0, 100, is_user_annotation=True)
    >>> mm = FunctionEvent(1, "aten::mm", 1, 10, 70)         # 60 us, 20 of them in a cast it calls
    >>> cast = FunctionEvent(2, "aten::_to_copy", 1, 20, 40)
    >>> for parent, child in ((forward, mm), (mm, cast)):
    ...     child.set_cpu_parent(parent); parent.append_cpu_child(child)
    >>> result = attribute([forward, mm, cast], wall_s=120e-6)  # 20 us before the forward pass
    >>> {key: round(result[key] * 1e6) for key in ("wall_s", "ops_s", "outside_ops_s")}
    {'wall_s': 120, 'ops_s': 60, 'outside_ops_s': 60}
    >>> [round(result["kinds"][kind] * 1e6) for kind in ("matmul", "casts")]
    [40, 20]
    >>> {phase: round(seconds * 1e6) for phase, seconds in result["phases"].items() if seconds}
    {'forward': 100, 'other': 20}
    """
    spans = _phase_spans(events)
    phases = dict.fromkeys(PHASES, 0.0)
    for start, end, name in spans:
        inner = [s for s in spans if s != (start, end, name) and start <= s[0] and s[1] <= end]
        direct = [s for s in inner if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in inner)]
        phases[name] += (end - start - sum(s[1] - s[0] for s in direct)) / 1e6
    phases["other"] = wall_s - sum(phases.values())
    kinds, calls = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0)
    by_phase, by_op = {}, {}
    for event in events:
        if event.is_user_annotation or event.is_python_function or event.name.startswith(MARKER):
            continue
        phase = _innermost(spans, event.time_range.start)
        kind = "optimizer" if phase == "optimizer" else op_kind(event.name)
        seconds = event.self_cpu_time_total / 1e6
        kinds[kind] += seconds
        calls[kind] += 1
        by_phase.setdefault(phase, {}).setdefault(kind, 0.0)
        by_phase[phase][kind] += seconds
        entry = by_op.setdefault((event.name, kind), {"name": event.name, "kind": kind, "s": 0.0, "calls": 0})
        entry["s"] += seconds
        entry["calls"] += 1
    ops_s = sum(kinds.values())
    ranked = sorted(by_op.values(), key=lambda op: -op["s"])
    kernel_s = sum(
        seconds for phase, per_kind in by_phase.items() if phase != "features"
        for kind, seconds in per_kind.items() if kind in ("matmul", "attention")
    )
    return {
        "wall_s": wall_s,
        "ops_s": ops_s,
        "outside_ops_s": wall_s - ops_s,
        "phases": phases,
        "kinds": kinds,
        "kind_calls": calls,
        "by_phase": {phase: {k: s for k, s in per_kind.items() if s} for phase, per_kind in by_phase.items()},
        "top_ops": ranked[:top],
        "other_ops": [{k: op[k] for k in ("name", "s", "calls")} for op in ranked if op["kind"] == "other"][:others],
        "matmul_kernel_s": kernel_s,
    }


def add_kernel_rate(result, flops, rate):
    """Adds to a :func:`attribute` result the rate of the step's products in
    their own kernels: ``matmul_kernel_flops_per_s``, the step's analytic
    ``flops`` over ``matmul_kernel_s``, and ``matmul_kernel_fraction``, that
    over ``rate`` (the machine's matmul FLOP/s in the step's dtype); None
    where either is missing. Returns ``result``.

    Example
    -------
    >>> add_kernel_rate({"matmul_kernel_s": 0.5}, flops=4e9, rate=1e10)["matmul_kernel_fraction"]
    0.8
    """
    kernel_s = result.get("matmul_kernel_s")
    per_s = flops / kernel_s if flops and kernel_s else None
    result["matmul_kernel_flops_per_s"] = per_s
    result["matmul_kernel_fraction"] = per_s / rate if per_s and rate else None
    return result


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown_lines(rows):
    """The "Where the step goes" table of the bench's ``rows`` that hold a
    ``profile`` (one line per method, size and dtype: the timed step, the
    profiled one, each kind's share of it, the time outside ops, and the
    share of the machine's matmul rate reached by the whole step and by the
    products' own kernels), then each row's phases and top ops."""
    rows = [row for row in rows if row.get("profile")]
    header = ["method", "frames", "dtype", "step (s)", "profiled (s)", *KINDS, "outside ops",
              "% of matmul rate: step → matmul kernels"]
    lines = [
        "**Where the step goes**: one more step per row under `torch.profiler` (CPU): each op's self "
        "time, by kind, as a share of that step's wall time (`profiled`; the profiler slows each op a "
        "little); `outside ops` is the time inside no op (Python, dispatch, idle). The matmul kernels' "
        "rate is the step's analytic FLOPs (products and attention's products, not the fbank) over the "
        "self time of the `matmul` and `attention` ops outside the fbank, an approximation (the fused "
        "attention kernels' time also holds their softmax), against the machine's rate in the step's dtype.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        prof, wall = row["profile"], row["profile"]["wall_s"]
        step = "–" if row.get("step_s") is None else f"{row['step_s']:,.3f}"
        cells = [row["method"], str(row["frames"]), row.get("dtype", "fp32"), step, f"{wall:,.3f}"]
        cells += [_pct(prof["kinds"][kind] / wall) for kind in KINDS]
        cells += [_pct(prof["outside_ops_s"] / wall),
                  f"{_pct(row.get('matmul_fraction'))} → {_pct(prof.get('matmul_kernel_fraction'))}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Phases of the profiled step and its top ops by self time (ms, % of the step):", ""]
    for row in rows:
        prof, wall = row["profile"], row["profile"]["wall_s"]
        phases = ", ".join(f"{phase} {_pct(prof['phases'][phase] / wall)}" for phase in PHASES)
        tops = ", ".join(f"`{op['name']}` {1000 * op['s']:,.2f} ({_pct(op['s'] / wall)})" for op in prof["top_ops"])
        line = f"* {row['method']}, {row['frames']} frames, {row.get('dtype', 'fp32')}: {phases}; top: {tops}"
        if prof["other_ops"]:
            line += "; other: " + ", ".join(f"`{op['name']}` {1000 * op['s']:,.2f}" for op in prof["other_ops"])
        lines.append(line + ".")
    return lines


__all__ = ["KINDS", "MARKER", "PHASES", "StepProfiler", "add_kernel_rate", "attribute", "markdown_lines", "op_kind"]
