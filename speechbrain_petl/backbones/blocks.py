"""Transformer blocks re-stated around Hugging Face weights, one site per step.

Each block's forward reads like its equation. For a pre-LN block (AST,
Wav2Vec2-large "stable layer norm")::

    h1 = h + MHSA(LN1(h))
    h2 = h1 + FFN(LN2(h1))

and for a post-LN block (Wav2Vec2-base)::

    h1 = LN1(h + MHSA(h))
    h2 = LN2(h1 + FFN(h1))

Site names (paths inside a block, identical for every backbone):

=====================  ============================================
``tokens``             token sequence entering the layer (prompts)
``mhsa_norm``          the LayerNorm of the attention sub-layer
``attention.query``    query projection  (also ``key``, ``value``)
``attention.keys_values``  keys/values after projection (prefixes)
``attention.output``   attention output projection
``mhsa``               the attention sub-layer as a whole (adapters)
``ffn_norm``           the LayerNorm of the feed-forward sub-layer
``mlp.fc1``            first feed-forward projection (also ``mlp.fc2``)
``ffn``                the feed-forward sub-layer as a whole (adapters)
=====================  ============================================

In a pre-LN block a sub-layer's norm precedes it; in a post-LN block it
follows the residual addition. Either way it is the norm "of" that sub-layer.

Recomputation (``Backbone.recompute``, see :data:`RECOMPUTE_MODES`) trades
a training step's time for the activations autograd keeps: ``"ffn"`` keeps
the feed-forward input instead of its hidden activations (``fc1`` and the
activation run again in the backward pass), ``"blocks"`` keeps each block's
input only (the block runs again). Outputs and gradients are unchanged.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from speechbrain_petl.sites import (
    KeyValueSite,
    LinearSite,
    NormSite,
    SublayerSite,
    TokenSite,
)


class SelfAttention(nn.Module):
    """Multi-head self-attention over frozen projections.

    Arguments
    ---------
    query, key, value, output : torch.nn.Linear
        The frozen projections.
    num_heads : int
        Number of attention heads.
    dropout : float
        Attention-probability dropout (active only when trained).
    position_bias : callable, optional
        An additive attention bias (WavLM's gated relative positions):
        ``position_bias(x, num_keys)`` gets the attention input ``x``
        ``(batch, queries, width)`` and the number of keys after the
        ``keys_values`` site (prefixes included) and returns a float tensor
        broadcastable to ``(batch, heads, queries, num_keys)``. A module is
        registered (its weights belong to the block).

    Example
    -------
    >>> lin = lambda: torch.nn.Linear(16, 16)
    >>> attn = SelfAttention(lin(), lin(), lin(), lin(), num_heads=4)
    >>> attn(torch.randn(2, 7, 16), None).shape
    torch.Size([2, 7, 16])
    """

    def __init__(self, query, key, value, output, num_heads, dropout=0.0, position_bias=None):
        super().__init__()
        if query.out_features % num_heads:
            raise ValueError(
                f"Width {query.out_features} is not divisible by "
                f"{num_heads} heads."
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = LinearSite(query)
        self.key = LinearSite(key)
        self.value = LinearSite(value)
        self.keys_values = KeyValueSite()
        self.output = LinearSite(output)
        self.position_bias = position_bias
        #: The dtype the attention products and softmax run in when it differs
        #: from the projections' (None: theirs, e.g. bf16 under autocast);
        #: set by the lobe's ``attention_dtype``.
        self.attention_dtype = None

    def _heads(self, x):
        batch, time, width = x.shape
        return x.view(batch, time, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, x, mask=None):
        """``x``: (batch, time, width); ``mask``: (batch, time) bool or None."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        k, v, kv_mask = self.keys_values(k, v, mask)
        attn_mask = None if kv_mask is None else kv_mask[:, None, None, :]
        if self.position_bias is not None:
            bias = self.position_bias(x, k.shape[1]).to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        dtype = self.attention_dtype
        if dtype is not None and q.dtype != dtype:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.to(dtype)
        with torch.autocast(q.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                self._heads(q),
                self._heads(k),
                self._heads(v),
                attn_mask=attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
            )
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.output(out)


class FeedForward(nn.Module):
    """Position-wise feed-forward network ``fc2(act(fc1(x)))``.

    With ``recompute`` set, a pass that builds a graph keeps only ``x`` for
    the hidden part ``act(fc1(x))`` (4x wider than ``x`` in most
    transformers) and recomputes it in the backward pass.

    Example
    -------
    >>> ffn = FeedForward(torch.nn.Linear(8, 32), torch.nn.Linear(32, 8), torch.nn.GELU())
    >>> ffn(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, fc1, fc2, activation, dropout=0.0):
        super().__init__()
        self.fc1 = LinearSite(fc1)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.fc2 = LinearSite(fc2)
        self.recompute = False

    def hidden(self, x):
        """``act(fc1(x))``: (batch, time, width) -> (batch, time, hidden)."""
        return self.activation(self.fc1(x))

    def forward(self, x, mask=None):
        """``x``: (batch, time, width); ``mask``: (batch, time) bool or None."""
        if self.recompute and torch.is_grad_enabled():
            hidden = checkpoint(self.hidden, x, use_reentrant=False)
        else:
            hidden = self.hidden(x)
        return self.fc2(self.dropout(hidden))


class _Block(nn.Module):
    """Sites shared by both block layouts."""

    def __init__(self, attention, mlp, mhsa_norm, ffn_norm, dropout=0.0):
        super().__init__()
        self.tokens = TokenSite()
        self.mhsa_norm = NormSite(mhsa_norm)
        self.attention = attention
        self.mhsa = SublayerSite()
        self.ffn_norm = NormSite(ffn_norm)
        self.mlp = mlp
        self.ffn = SublayerSite()
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def around(cls, projections, fc, norms, activation, num_heads, dropouts=(0.0, 0.0, 0.0), position_bias=None):
        """The block around a transformers layer's own modules (shared, not
        copied): ``projections`` (query, key, value, output linears), ``fc``
        (the feed-forward's two linears), ``norms`` (the LayerNorms before or
        after MHSA and FFN), ``dropouts`` (residual, attention, activation).

        Example
        -------
        >>> lin = lambda i, o: torch.nn.Linear(i, o)
        >>> block = PreNormBlock.around([lin(8, 8) for _ in range(4)], (lin(8, 16), lin(16, 8)),
        ...     (torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)), torch.nn.GELU(), num_heads=2)
        >>> block(torch.randn(2, 5, 8))[0].shape
        torch.Size([2, 5, 8])
        """
        residual, attention, activation_dropout = dropouts
        return cls(
            SelfAttention(*projections, num_heads=num_heads, dropout=attention, position_bias=position_bias),
            FeedForward(*fc, activation, dropout=activation_dropout),
            *norms,
            dropout=residual,
        )

    def _attend(self, x, mask):
        return self.dropout(self.attention(x, mask))

    def _feed_forward(self, x, mask):
        return self.dropout(self.mlp(x, mask))


class PreNormBlock(_Block):
    """``h1 = h + MHSA(LN1 h)``; ``h2 = h1 + FFN(LN2 h1)`` (AST, ViT)."""

    def forward(self, x, mask=None):
        """``x``: (batch, time, width); ``mask``: (batch, time) bool or None."""
        x, mask = self.tokens(x, mask)
        x = x + self.mhsa(self.mhsa_norm(x), self._attend, mask)
        x = x + self.ffn(self.ffn_norm(x), self._feed_forward, mask)
        return x, mask


class PostNormBlock(_Block):
    """``h1 = LN1(h + MHSA h)``; ``h2 = LN2(h1 + FFN h1)`` (Wav2Vec2-base)."""

    def forward(self, x, mask=None):
        """``x``: (batch, time, width); ``mask``: (batch, time) bool or None."""
        x, mask = self.tokens(x, mask)
        x = self.mhsa_norm(x + self.mhsa(x, self._attend, mask))
        x = self.ffn_norm(x + self.ffn(x, self._feed_forward, mask))
        return x, mask


#: ``Backbone.recompute`` values: what a training step recomputes in the
#: backward pass instead of keeping (None: nothing).
RECOMPUTE_MODES = (None, "ffn", "blocks")


def run_block(block, x, mask, recompute_block=False):
    """``block(x, mask)``; with ``recompute_block`` (and autograd recording)
    only ``x`` and ``mask`` are kept for the backward pass, which runs the
    block again.

    Example
    -------
    >>> lin = lambda i, o: torch.nn.Linear(i, o)
    >>> block = PreNormBlock(SelfAttention(lin(8, 8), lin(8, 8), lin(8, 8), lin(8, 8), num_heads=2),
    ...     FeedForward(lin(8, 16), lin(16, 8), torch.nn.GELU()), torch.nn.LayerNorm(8), torch.nn.LayerNorm(8))
    >>> x = torch.randn(2, 5, 8, requires_grad=True)
    >>> torch.allclose(run_block(block, x, None, True)[0], block(x)[0])
    True
    """
    if recompute_block and torch.is_grad_enabled():
        return checkpoint(block, x, mask, use_reentrant=False)
    return block(x, mask)


__all__ = [
    "RECOMPUTE_MODES",
    "run_block",
    "SelfAttention",
    "FeedForward",
    "PreNormBlock",
    "PostNormBlock",
]
