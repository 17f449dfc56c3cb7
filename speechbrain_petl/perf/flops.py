"""Analytic FLOP count of one training step of a backbone lobe and its head.

The formula: every matrix product costs ``2 * M * N * K`` FLOPs (one
multiply and one add per multiply-accumulate); element-wise work (LayerNorm,
GELU, softmax, residual additions, biases), the fbank features and the
optimizer are not counted. Per clip, a transformer block with ``N`` query
tokens, ``K`` attended keys (``N`` plus any prefix), width ``d`` and FFN
width ``f`` costs in the forward pass::

    q, k, v, o projections   4 * 2 * N * d * d
    Q K^T and P V            2 * 2 * N * K * d
    fc1, fc2                 2 * 2 * N * d * f

(AST-base at 100 frames: N = K = 110, d = 768, f = 3072, about 174 MFLOP
per token and block-stack.) PETL modules, the patch embedding and the
head cost ``2 * rows * (weights)`` each: every weight of a linear layer
or convolution is used once per output position (a depthwise kernel of
``k`` taps on ``c`` channels costs ``2 * N * c * k``). Prompts and prefixes
cost nothing themselves; they enlarge ``N`` and ``K``.

The backward pass costs, for each product, one more product of the same
size for the gradient of its input (only if autograd needs it: something
trainable lies below) and one for the gradient of its weight (only if that
weight trains). Attention's two products have no weights; their backward
recomputes nothing on CPU's and CUDA's fused kernels but needs four
products (``dV``, ``dP``, ``dQ``, ``dK``): twice the forward, whenever
queries, keys or values need a gradient.

The shapes (``N``, ``K``, which inputs need gradients) are read from one
real forward pass with autograd on, so token methods, layer selections and
anything that runs without autograd are counted as they run.
"""

import torch
from torch import nn

from speechbrain_petl.backbones.blocks import SelfAttention
from speechbrain_petl.sites import KeyValueSite, LinearSite


def _weight_flops(output, weight):
    """``2 * rows * weights``: the forward FLOPs of a linear map or convolution
    producing ``output`` (channels last for linear, second for convolutions)."""
    out_channels = weight.shape[0]
    return 2 * (output.numel() // out_channels) * weight.numel()


class _Counter:
    """Accumulates forward and backward FLOPs by kind while hooks fire."""

    def __init__(self):
        self.forward = {}
        self.backward = {}

    def add(self, kind, forward, input_grad, weight_grad):
        """Counts one product: its forward FLOPs, and as many again for each
        gradient (input, weight) autograd will compute."""
        self.forward[kind] = self.forward.get(kind, 0) + forward
        backward = (forward if input_grad else 0) + (forward if weight_grad else 0)
        self.backward[kind] = self.backward.get(kind, 0) + backward


def count_step_flops(backbone, head, wavs, wav_lens=None):
    """FLOPs of one training step of ``head(backbone(wavs))`` on this batch.

    Runs one forward pass with autograd on (its graph is dropped) to see
    the shapes and which tensors need gradients, and applies the formula of
    the module docstring.

    Arguments
    ---------
    backbone : speechbrain_petl.backbones.Backbone
        The lobe with its PETL methods attached.
    head : torch.nn.Module
        The classifier on the pooled embeddings.
    wavs, wav_lens : torch.Tensor
        The batch.

    Returns
    -------
    dict
        ``forward``, ``backward`` and ``step`` (their sum) for the whole
        batch, and ``by_kind``: the forward and backward FLOPs of each kind
        (``frozen_linear``, ``attention``, ``petl``, ``embedding``, ``head``).

    Example
    -------
    >>> from transformers import ASTConfig
    >>> from speechbrain_petl.backbones import AST
    >>> config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=64, max_length=16, time_stride=16, frequency_stride=16)
    >>> ast = AST(config, pretrained=False, max_frames=16)   # 2 + 8 tokens
    >>> flops = count_step_flops(ast, torch.nn.Linear(32, 2), torch.randn(1, 2000))
    >>> flops["by_kind"]["attention"]["forward"] == 4 * 10 * 10 * 32
    True
    """
    counter = _Counter()
    handles = []
    attention_queries = {}

    def linear_site_hook(site, args, output):
        """A frozen projection (with the weight its site uses)."""
        x = args[0]
        weight = site.param("weight")
        counter.add("frozen_linear", _weight_flops(output, weight), x.requires_grad, weight.requires_grad)

    def module_hook(kind):
        """A hook counting a Linear or convolution as ``kind``."""
        def hook(module, args, output):
            """Counts one call."""
            counter.add(kind, _weight_flops(output, module.weight), args[0].requires_grad,
                        module.weight.requires_grad)
        return hook

    def query_hook(attention):
        """Remembers the queries of ``attention`` until its keys are known."""
        def hook(site, args, output):
            """Keeps the queries."""
            attention_queries[attention] = output
        return hook

    def keys_values_hook(attention):
        """Counts the two products of ``attention`` once its keys are known."""
        def hook(site, args, output):
            """Counts ``Q K^T`` and ``P V``."""
            keys, values, _ = output
            queries = attention_queries.pop(attention)
            batch, count, width = queries.shape
            forward = 2 * 2 * batch * count * keys.shape[1] * width
            needs_grad = queries.requires_grad or keys.requires_grad or values.requires_grad
            counter.add("attention", forward, needs_grad, needs_grad)
        return hook

    for name, module in backbone.named_modules():
        if isinstance(module, LinearSite):
            handles.append(module.register_forward_hook(linear_site_hook))
        elif isinstance(module, SelfAttention):
            handles.append(module.query.register_forward_hook(query_hook(module)))
            kv_site = module.keys_values
            if not isinstance(kv_site, KeyValueSite):
                raise TypeError(f"{name}.keys_values is not a KeyValueSite")
            handles.append(kv_site.register_forward_hook(keys_values_hook(module)))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not _inside_site(backbone, name):
            kind = "petl" if name.startswith("petl.") else "embedding"
            handles.append(module.register_forward_hook(module_hook(kind)))
    for module in head.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            handles.append(module.register_forward_hook(module_hook("head")))
    try:
        with torch.enable_grad():
            head(backbone(wavs, wav_lens))
    finally:
        for handle in handles:
            handle.remove()
    forward, backward = sum(counter.forward.values()), sum(counter.backward.values())
    return {
        "forward": forward,
        "backward": backward,
        "step": forward + backward,
        "by_kind": {
            kind: {"forward": counter.forward[kind], "backward": counter.backward[kind]}
            for kind in sorted(counter.forward)
        },
    }


def _inside_site(backbone, name):
    """True for modules a LinearSite runs itself (its ``linear``): the site's
    hook counts them."""
    parent = name.rpartition(".")[0]
    return bool(parent) and isinstance(backbone.get_submodule(parent), LinearSite)


__all__ = ["count_step_flops"]
