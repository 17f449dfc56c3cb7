"""How a lobe stores its frozen matrices: fp32, bf16 or int8.

A frozen backbone's weights never change, so they can be kept in fewer
bits while the trained tensors (the PETL methods under ``backbone.petl``,
any backbone weight a method unfroze, the head) and the optimizer's state
stay fp32:

* ``"bf16"`` stores the frozen ``nn.Linear`` weights and biases of the
  transformer blocks in bfloat16 (half their memory; they are nearly all of
  a backbone's weights) and the blocks run under CPU/CUDA autocast in
  bf16 (the lobe enters it itself, see
  :meth:`~speechbrain_petl.backbones.Backbone.compute_context`), so a
  bf16-stored lobe trains and infers whatever precision the caller asked
  for. LayerNorms, embeddings, the convolutional front ends and the fbank
  stay fp32. Training with it is the usual mixed precision: matrix
  products in bf16, gradients of the fp32 trained tensors in fp32.
* ``"int8"`` (inference only) quantises the same frozen linears to int8
  with one scale per output channel, and runs them with PyTorch's dynamic
  int8 linear kernel (``torch.ops.quantized.linear_dynamic``, FBGEMM:
  activations quantised per call). :class:`Int8Weight` takes the place of
  each ``site.linear.weight``, so hooks on the sites (LoRA, adapters) keep
  running on top, in fp32.

Why that kernel: ``torch.ao.quantization.quantize_dynamic`` wraps the same
kernel but warns that it will be removed; ``torchao``'s
``Int8DynamicActivationInt8WeightConfig`` (0.18) is the announced
replacement, but on CPU it ran a 768x3072 linear slower than fp32 on the
AVX512 machine this was written on, while the FBGEMM kernel ran it at
several times the fp32 rate. ``torch._int_mm`` has the raw int8 rate, but
quantising the activations with separate element-wise ops costs more than
the product saves.
"""

import functools
import warnings

import torch
from torch import nn

#: The settings of a lobe's ``backbone_dtype``.
BACKBONE_DTYPES = ("fp32", "bf16", "int8")
#: The settings a lobe can be built (and trained) with.
TRAINABLE_DTYPES = ("fp32", "bf16")


#: CPU flags of native low-precision matrix products (``/proc/cpuinfo``).
ISA_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")


@functools.lru_cache(maxsize=1)
def _cpu_flag_set():
    """The CPU's flags (``/proc/cpuinfo``), read once per process: the int8
    kernel asks on every call."""
    try:
        with open("/proc/cpuinfo") as fin:
            for line in fin:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags():
    """``{flag: bool}`` for :data:`ISA_FLAGS` on this machine's CPU (all
    False where ``/proc/cpuinfo`` cannot be read, e.g. not on Linux).

    Example
    -------
    >>> sorted(cpu_flags()) == sorted(ISA_FLAGS)
    True
    """
    flags = _cpu_flag_set()
    return {flag: flag in flags for flag in ISA_FLAGS}


def has_vnni():
    """Whether the CPU multiplies int8 natively (VNNI or AMX): FBGEMM's int8
    kernel then needs no reduced activation range (which costs a bit of
    precision and guards against int16 overflow on older CPUs)."""
    flags = cpu_flags()
    return flags["avx512_vnni"] or flags["avx_vnni"] or flags["amx_int8"]


def native_bf16_flags(flags=None):
    """The flags by which a CPU multiplies bf16 natively (``amx_bf16``,
    ``avx512_bf16``) among ``flags`` (default: this CPU's, :func:`cpu_flags`).

    Example
    -------
    >>> native_bf16_flags({"amx_bf16": False, "avx512_bf16": True, "avx512_vnni": True})
    ['avx512_bf16']
    """
    flags = cpu_flags() if flags is None else flags
    return [flag for flag in ("amx_bf16", "avx512_bf16") if flags.get(flag)]


def has_native_bf16():
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16);
    without it bf16 products are emulated and can be slower than fp32."""
    return bool(native_bf16_flags())


#: The settings of :func:`training_precision`.
PRECISION_SETTINGS = ("auto", "fp32", "bf16")


def training_precision(setting="auto", flags=None):
    """The precision to train in, and why: ``"auto"`` picks ``"bf16"`` where
    the CPU multiplies bf16 natively and ``"fp32"`` elsewhere (emulated bf16
    can be slower than fp32); ``"fp32"`` and ``"bf16"`` are taken as given.

    Arguments
    ---------
    setting : str
        ``"auto"``, ``"fp32"`` or ``"bf16"``.
    flags : dict, optional
        ``{flag: bool}`` as :func:`cpu_flags` returns (default: this CPU's).

    Returns
    -------
    (str, str)
        ``"fp32"`` or ``"bf16"``, and a sentence saying why.

    Example
    -------
    >>> training_precision("auto", {"avx512_bf16": True, "amx_bf16": False})
    ('bf16', 'auto: this CPU multiplies bf16 natively (avx512_bf16)')
    >>> training_precision("auto", {"avx512_bf16": False, "amx_bf16": False})[0]
    'fp32'
    >>> training_precision("fp16")
    Traceback (most recent call last):
    ...
    ValueError: precision must be one of ('auto', 'fp32', 'bf16'), got 'fp16'.
    """
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {setting!r}.")
    if setting != "auto":
        return setting, f"{setting}: as set"
    native = native_bf16_flags(flags)
    if native:
        return "bf16", f"auto: this CPU multiplies bf16 natively ({', '.join(native)})"
    return "fp32", "auto: this CPU has no native bf16 products (no avx512_bf16 or amx_bf16), so bf16 would be emulated"


def check_backbone_dtype(value, allowed=TRAINABLE_DTYPES):
    """Raises a ValueError naming ``allowed`` unless ``value`` is one of them.

    Example
    -------
    >>> check_backbone_dtype("bf16")
    'bf16'
    >>> check_backbone_dtype("int8")
    Traceback (most recent call last):
    ...
    ValueError: backbone_dtype must be one of ('fp32', 'bf16'), got 'int8' (int8 is for inference only: AudioClassifier's backbone_dtype).
    """
    if value not in allowed:
        hint = " (int8 is for inference only: AudioClassifier's backbone_dtype)" if value == "int8" else ""
        raise ValueError(f"backbone_dtype must be one of {allowed}, got {value!r}{hint}.")
    return value


def frozen_linears(layers):
    """``(path, nn.Linear)`` of every linear layer in ``layers`` (a lobe's
    blocks) whose weight is frozen, PETL modules excluded (they live under
    ``backbone.petl``, not in the blocks).

    Example
    -------
    >>> block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> _ = block[2].requires_grad_(False)
    >>> [path for path, _ in frozen_linears(block)]
    ['2']
    """
    return [
        (path, module) for path, module in layers.named_modules()
        if isinstance(module, nn.Linear) and not module.weight.requires_grad
    ]


def store_linears(linears, dtype):
    """Casts the weights (and biases) of ``linears`` to ``dtype`` in place of
    the originals (the same Parameter objects, new data); returns the bytes
    they took before and after.

    Example
    -------
    >>> layer = nn.Linear(4, 4)
    >>> store_linears([("0", layer)], torch.bfloat16), layer.weight.dtype
    ((80, 40), torch.bfloat16)
    """
    before = after = 0
    for _, linear in linears:
        for param in (linear.weight, linear.bias):
            if param is None:
                continue
            before += param.numel() * param.element_size()
            param.data = param.data.to(dtype)
            after += param.numel() * param.element_size()
    return before, after


class Int8Weight(torch.Tensor):
    """A frozen linear weight ``(out, in)`` held as int8 with one fp32 scale
    per output channel, which ``F.linear`` runs with PyTorch's dynamic int8
    kernel (inputs quantised per call, fp32 out). Every other operation sees
    the plain int8 tensor.

    Build it with :meth:`quantize`.

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> weight = torch.randn(16, 32)
    >>> q = Int8Weight.quantize(weight)
    >>> q.dtype, tuple(q.shape)
    (torch.int8, (16, 32))
    >>> x = torch.randn(4, 32)
    >>> y = torch.nn.functional.linear(x, q, torch.zeros(16))
    >>> exact = x @ weight.T
    >>> bool((y - exact).abs().max() < 0.02 * exact.abs().max())
    True
    """

    @staticmethod
    def __new__(cls, data, scales, packed, reduce_range):
        return torch.Tensor._make_subclass(cls, data, False)

    def __init__(self, data, scales, packed, reduce_range):
        self.scales = scales
        self.packed = packed
        #: FBGEMM's reduced activation range, for CPUs without native int8
        #: products (decided once, when quantised: not on every call).
        self.reduce_range = reduce_range

    @classmethod
    def quantize(cls, weight):
        """Symmetric per-output-channel int8 of an fp32/bf16 ``weight``."""
        weight = weight.detach().float().cpu()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        data = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantised tensor creation warns that it is deprecated
            qweight = torch._make_per_channel_quantized_tensor(
                data, scales.double(), torch.zeros(len(scales), dtype=torch.long), 0
            )
            packed = torch.ops.quantized.linear_prepack(qweight, None)
        return cls(data, scales, packed, not has_vnni())

    def linear(self, x, bias=None):
        """``x @ dequantised(self).T + bias`` with the int8 kernel; fp32 out."""
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, shape[-1]).float().contiguous()
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, self.reduce_range)
            if bias is not None:
                y = y + bias.float()
        return y.reshape(*shape[:-1], y.shape[-1])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(weight, Int8Weight) and not isinstance(x, Int8Weight):
                return weight.linear(x, bias)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def quantize_linears(linears):
    """Replaces the weight of each frozen linear in ``linears`` by an
    :class:`Int8Weight` (CPU only); returns the bytes the weights took
    before and after (int8 data; FBGEMM's packed copy is not counted).

    Example
    -------
    >>> layer = nn.Linear(32, 16).requires_grad_(False)
    >>> quantize_linears([("0", layer)])
    (2048, 512)
    >>> type(layer.weight).__name__, layer(torch.randn(2, 32)).shape
    ('Int8Weight', torch.Size([2, 16]))
    """
    before = after = 0
    for path, linear in linears:
        weight = linear.weight
        if weight.device.type != "cpu":
            raise ValueError(f"int8 weights run on CPU only; linear '{path}' is on {weight.device}.")
        if weight.requires_grad:
            raise ValueError(f"Linear '{path}' trains: only frozen linears are quantised.")
        before += weight.numel() * weight.element_size()
        quantized = Int8Weight.quantize(weight)
        del linear.weight  # a plain attribute from now on: not a parameter, never trained
        linear.weight = quantized
        after += quantized.numel()
    return before, after


__all__ = [
    "BACKBONE_DTYPES", "ISA_FLAGS", "PRECISION_SETTINGS", "TRAINABLE_DTYPES", "Int8Weight", "check_backbone_dtype", "cpu_flags",
    "frozen_linears", "has_native_bf16", "has_vnni", "native_bf16_flags",
    "quantize_linears", "store_linears", "training_precision",
]
