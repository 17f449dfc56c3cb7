"""Time, memory and saved activations of a training step, the machine's
matrix-multiplication rate (fp32, bf16, int8), and where, when and how a
figure was measured, including the CPU's instruction set: the same model
runs several times faster in bf16 or int8 on a CPU with native support
(AVX512-BF16, AMX, VNNI) and can run slower without it."""

import contextlib
import datetime
import platform
import resource
import shlex
import statistics
import sys
import time

import torch



def cpu_name():
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fin:
            names = [line.split(":", 1)[1].strip() for line in fin if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


def isa():
    """The instruction set that decides the low-precision rates: the CPU
    ``flags`` of :data:`~speechbrain_petl.backbones.precision.ISA_FLAGS`
    (``{flag: bool}``) and ``capability``, the widest vector ISA torch's
    CPU kernels use here (``torch.backends.cpu.get_cpu_capability()``).

    Example
    -------
    >>> facts = isa()
    >>> sorted(facts), "avx512_bf16" in facts["flags"]
    (['capability', 'flags'], True)
    """
    # Imported here: the reference benchmark's worker imports this module under
    # transformers 4.x, which the lobes (speechbrain_petl.backbones) do not support.
    from speechbrain_petl.backbones.precision import cpu_flags

    return {"flags": cpu_flags(), "capability": torch.backends.cpu.get_cpu_capability()}


def isa_text(facts):
    """The ISA of :func:`isa` in a few words.

    Example
    -------
    >>> isa_text({"flags": {"amx_bf16": False, "avx512_bf16": True}, "capability": "AVX512"})
    'avx512_bf16; torch CPU kernels: AVX512'
    """
    present = [flag for flag, on in facts["flags"].items() if on]
    return f"{', '.join(present) or 'no bf16/int8 instructions'}; torch CPU kernels: {facts['capability']}"


def provenance(command, argv):
    """Where, when and how a measurement is made: ``cpu`` and its ``isa``
    (:func:`isa`), torch's ``threads`` and version, the UTC ``date`` and the
    ``command`` line (``command`` followed by ``argv``, quoted as a shell
    would need).

    Example
    -------
    >>> facts = provenance("python -m speechbrain_petl.perf.bench", ["--frames", "100"])
    >>> facts["command"]
    'python -m speechbrain_petl.perf.bench --frames 100'
    """
    return {
        "cpu": cpu_name(),
        "isa": isa(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([command, *map(shlex.quote, argv)]),
    }


def provenance_line(facts):
    """One markdown line stating :func:`provenance`'s facts."""
    isa_part = f"; {isa_text(facts['isa'])}" if "isa" in facts else ""
    return (
        f"Measured {facts['date']} on {facts['cpu']} ({facts['threads']} torch threads, "
        f"torch {facts['torch']}{isa_part}) with `{facts['command']}`."
    )


def synchronize(device):
    """Waits for queued work on ``device`` (CUDA); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device="cpu"):
    """``(seconds, result)`` of ``fn()``, synchronising CUDA before and after.

    Example
    -------
    >>> seconds, value = timed(lambda: 2 + 2)
    >>> value, seconds >= 0
    (4, True)
    """
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median(values):
    """Median of a non-empty sequence (None for an empty one).

    Example
    -------
    >>> median([3.0, 1.0, 2.0]), median([])
    (2.0, None)
    """
    return statistics.median(values) if values else None


def matmul_rate(device="cpu", dtype=torch.float32, size=2048, repeats=5):
    """The machine's matrix-multiplication rate in FLOP/s (int8: operations
    per second): the best of ``repeats`` products of two ``size x size``
    matrices (``2 * size**3`` each) at the current thread count, after one
    warm-up product. ``torch.int8`` times ``torch._int_mm`` (int8 inputs,
    int32 sums: the kernel of int8 linears), other dtypes ``torch.mm``.

    Example
    -------
    >>> matmul_rate(size=64, repeats=2) > 0, matmul_rate(dtype=torch.int8, size=64, repeats=2) > 0
    (True, True)
    """
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-127, 128, (size, size), generator=generator, dtype=torch.int8).to(device)
        b = torch.randint(-127, 128, (size, size), generator=generator, dtype=torch.int8).to(device)
        product = torch._int_mm
    else:
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        product = torch.mm
    product(a, b)
    best = min(timed(lambda: product(a, b), device)[0] for _ in range(repeats))
    return 2 * size**3 / best


def peak_rss_bytes():
    """Peak resident set size of this process so far (``ru_maxrss``) in bytes.

    Example
    -------
    >>> peak_rss_bytes() > 0
    True
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kB on Linux


def tensor_bytes(tensors):
    """Bytes of the distinct storages behind ``tensors`` (views counted once).

    Example
    -------
    >>> x = torch.zeros(10)
    >>> tensor_bytes([x, x[:5], torch.zeros(2, dtype=torch.float64)])
    56
    """
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


class TensorPeak:
    """The peak of CPU tensor memory allocated while active, above what was
    allocated when it started: the CPU counterpart of CUDA's
    ``max_memory_allocated`` (process RSS also counts the libraries' code
    and data, and memory the C allocator keeps after tensors are freed).

    It follows PyTorch's CPU allocator through the profiler's memory events
    (``profile_memory``). Memory freed inside the block but allocated before
    it is not seen, so free nothing older than the block inside it (e.g.
    zero the gradients before) or the peak is overstated.

    Example
    -------
    >>> with TensorPeak() as peak:
    ...     a = torch.zeros(1000)            # 4,000 B
    ...     b = torch.zeros(500); del a, b   # 6,000 B at once, then nothing
    ...     c = torch.zeros(100)
    >>> peak.bytes
    6000
    """

    def __init__(self):
        self.bytes = None
        self._profile = None

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        self._profile.__exit__(*exc)
        events = [
            event for event in self._profile.profiler.kineto_results.events()
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        ]
        total = peak = 0
        for event in sorted(events, key=lambda event: event.start_ns()):
            total += event.nbytes()
            peak = max(peak, total)
        self.bytes = peak
        return False


class SavedTensors:
    """Counts the bytes autograd keeps for the backward pass while active.

    Each storage is counted once, whatever the number of views saved from
    it; storages of the ``exclude`` tensors (the model's parameters, which
    exist anyway) are not counted.

    Arguments
    ---------
    exclude : iterable of torch.Tensor
        Tensors whose storages are not counted.

    Example
    -------
    >>> w = torch.randn(4, 4, requires_grad=True)
    >>> with SavedTensors(exclude=[w]) as saved:
    ...     y = (torch.randn(8, 4) @ w).tanh().sum()
    >>> saved.bytes  # the input of the product (128 B) and tanh's output (128 B)
    256
    """

    def __init__(self, exclude=()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._storages = {}
        self._context = None

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self._exclude:
            self._storages[pointer] = storage.nbytes()
        return tensor

    @property
    def bytes(self):
        """Bytes of the distinct storages saved so far."""
        return sum(self._storages.values())

    def __enter__(self):
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)
        return False


class ModuleTimer:
    """Accumulates the wall time spent inside ``module``'s forward calls
    (with CUDA synchronised at both ends), e.g. AST's fbank inside a step.

    Example
    -------
    >>> layer = torch.nn.Linear(4, 4)
    >>> with ModuleTimer(layer) as timer:
    ...     _ = layer(torch.randn(2, 4))
    >>> timer.calls, timer.seconds > 0
    (1, True)
    """

    def __init__(self, module, device="cpu"):
        self.module = module
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._start = None
        self._handles = []

    def reset(self):
        """Forgets the time accumulated so far."""
        self.seconds, self.calls = 0.0, 0

    def _before(self, module, args):
        synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def __enter__(self):
        self._handles = [
            self.module.register_forward_pre_hook(self._before),
            self.module.register_forward_hook(self._after),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


__all__ = [
    "ModuleTimer", "SavedTensors", "TensorPeak", "isa", "isa_text", "matmul_rate", "median", "peak_rss_bytes",
    "synchronize", "tensor_bytes", "timed",
]
