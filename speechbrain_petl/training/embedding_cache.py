"""Opt-in embedding cache for linear probing: later epochs skip the backbone.

Under linear probing the only trained tensors of the lobe are the affine
weight ``g`` and bias ``b`` of its final LayerNorm. A LayerNorm is
``LN(x) = g * z + b`` with ``z = (x - mean(x)) / std(x)`` per token, and
pooling (mean over real tokens, or the CLS token) is a weighted average, so

    pool(LN(x)) = g * pool(z) + b

The cache keeps ``pool(z)`` for each clip (one vector of the lobe's width:
3 kB for AST-base) and recomputes only ``g * pool(z) + b``, with gradients
for ``g`` and ``b``: the same values and gradients as the full forward pass,
up to float rounding, at the cost of a vector product.

An entry is keyed by

* the clip: a BLAKE2 digest of its real samples (the clip's content, which
  identifies it more strictly than its id: a changed file is a new entry);
* the backbone fingerprint (lobe, architecture, SHA-256 of the frozen
  weights, see :meth:`~speechbrain_petl.backbones.Backbone.fingerprint`);
* the feature settings (the lobe's constructor arguments: frames, sample
  rate, normalisation statistics, pooling).

It refuses to turn on when anything else trains in the lobe (another
method, full fine-tuning) or when a training-time augmentation is
configured (the backbone's input would differ every epoch), and a
forward pass given an augmentation while the cache is on is an error.

Wiring, in a recipe yaml (nothing else; off unless asked for)::

    embedding_cache: False   # True: epochs after the first skip the backbone
    __embedding_cache: !apply:speechbrain_petl.training.embedding_cache.enable_if
        enabled: !ref <embedding_cache>
        backbone: !ref <backbone>
        augmentation: !ref <augmentation>   # where the yaml defines one

The cache lives in memory, per process (each DDP process caches its own
clips); a restarted run fills it again during its first epoch.
"""

import hashlib
import json

import torch
import torch.nn.functional as F

from speechbrain_petl.backbones.features import relative_to_absolute
from speechbrain_petl.sites import Site


class EmbeddingCache:
    """Pooled, normalised-but-not-affine outputs of a frozen lobe, per clip.

    Enable it with :meth:`enable` (or :func:`enable_if` from a yaml); the
    lobe's ``forward`` then goes through :meth:`forward`.

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> from speechbrain_petl.methods import LinearProbing
    >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, petl=LinearProbing())
    >>> wavs = torch.randn(2, 8000)
    >>> plain = ast(wavs)
    >>> cache = EmbeddingCache().enable(ast)
    >>> first, second = ast(wavs), ast(wavs)
    >>> cache.misses, cache.hits, torch.allclose(second, plain, atol=1e-5)
    (2, 2, True)
    """

    def __init__(self):
        self._entries = {}
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._entries)

    # ---------------------------------------------------------------- turning on
    def enable(self, backbone, augmentation=None):
        """Makes ``backbone`` use this cache; refused (ValueError) when an
        augmentation is configured or anything but the final LayerNorm's
        affine (linear probing) trains in the lobe. Returns the cache."""
        if augmentation is not None:
            raise ValueError(
                "The embedding cache cannot be used with a training-time augmentation "
                f"({type(augmentation).__name__}): the backbone's input changes every epoch, "
                "so cached embeddings would be wrong. Set embedding_cache: False or remove "
                "the augmentation."
            )
        check_cacheable(backbone)
        backbone.embedding_cache = self
        return self

    @staticmethod
    def disable(backbone):
        """Makes ``backbone`` run its full forward pass again."""
        backbone.embedding_cache = None

    # ------------------------------------------------------------------- lookups
    def forward(self, backbone, wavs, wav_lens=None, augment=None):
        """What ``backbone(wavs, wav_lens)`` returns, from the cache where it
        holds the clips (the others go through the backbone once)."""
        if augment is not None:
            raise RuntimeError(
                "The backbone was given an augmentation while its embedding cache is on: "
                "cached embeddings would ignore it. Disable the cache or the augmentation."
            )
        check_cacheable(backbone)
        namespace = settings_key(backbone)
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])
        keys = [
            namespace + clip_digest(wav if lengths is None else wav[: lengths[i]])
            for i, wav in enumerate(wavs)
        ]
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        if missing:
            rows = torch.tensor(missing, device=wavs.device)
            summary = normalized_pool(
                backbone, wavs[rows], None if wav_lens is None else wav_lens[rows]
            )
            for i, vector in zip(missing, summary.float().cpu()):
                self._entries[keys[i]] = vector.clone()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        pooled = torch.stack([self._entries[key] for key in keys]).to(wavs.device)
        return final_affine(backbone, pooled)


def enable_if(enabled, backbone, augmentation=None):
    """``EmbeddingCache().enable(backbone, augmentation)`` when ``enabled``,
    else None: the yaml switch (see the module docstring).

    Example
    -------
    >>> enable_if(False, backbone=None) is None
    True
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"embedding_cache must be True or False, got {enabled!r}")
    if not enabled:
        return None
    return EmbeddingCache().enable(backbone, augmentation)


def check_cacheable(backbone):
    """Raises a ValueError naming what trains, unless the lobe's only
    trainable tensors are its final LayerNorm's affine (linear probing) or
    nothing, and its output is pooled."""
    if backbone.pooling is None:
        raise ValueError("The embedding cache needs a pooled backbone (pooling: mean or cls).")
    final = backbone.final_norm_site()
    training = [
        name for name, param in backbone.named_parameters()
        if param.requires_grad and not name.startswith("petl.")
    ]
    training += [
        f"sites of block {index}" for index, block in enumerate(backbone.layers)
        if any(site.may_train() for site in block.modules()
               if isinstance(site, Site) and site is not final)
    ]
    if final is not None and final.active_hooks():
        training.append("a hook on the final LayerNorm")
    if training:
        raise ValueError(
            "The embedding cache is for linear probing (only the final LayerNorm's affine and "
            f"the head train), but more trains in this {type(backbone).__name__}: "
            f"{training[:5]}. Set embedding_cache: False."
        )


def settings_key(backbone):
    """A short hex key for the backbone fingerprint and feature settings
    (lobe, architecture, frozen weights' SHA-256, constructor arguments
    other than the source's name)."""
    fingerprint = backbone.fingerprint()
    settings = {k: v for k, v in backbone.constructor_args().items() if k not in ("source", "pretrained")}
    record = {
        "lobe": fingerprint["lobe"],
        "architecture": fingerprint["architecture"],
        "frozen_sha256": fingerprint["frozen_sha256"],
        "settings": settings,
    }
    text = json.dumps(record, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32] + ":"


def clip_digest(wav):
    """BLAKE2 digest (hex) of a clip's samples, their dtype and count.

    Example
    -------
    >>> clip_digest(torch.zeros(4)) == clip_digest(torch.zeros(4)), clip_digest(torch.zeros(4)) == clip_digest(torch.zeros(5))
    (True, False)
    """
    wav = wav.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{wav.dtype}|{wav.numel()}|".encode(), digest_size=20)
    digest.update(wav.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.no_grad()
def normalized_pool(backbone, wavs, wav_lens=None):
    """``pool(z)``: the pooled output tokens, normalised by the final
    LayerNorm but without its affine (``(batch, width)``); without a final
    LayerNorm, the pooled output itself."""
    site = backbone.final_norm_site()
    captured = []
    handle = None
    if site is not None:
        handle = site.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    cache, backbone.embedding_cache = backbone.embedding_cache, None
    try:
        x, mask = backbone.encode(wavs, wav_lens)
    finally:
        backbone.embedding_cache = cache
        if handle is not None:
            handle.remove()
    if site is not None:
        x = F.layer_norm(captured[-1], site.norm.normalized_shape, None, None, site.norm.eps)
    return backbone.pool(x, mask)


def final_affine(backbone, pooled):
    """``g * pooled + b`` with the final LayerNorm's weight and bias in use
    (the trained copies under linear probing); ``pooled`` unchanged without
    a final LayerNorm."""
    site = backbone.final_norm_site()
    if site is None:
        return pooled
    weight, bias = site.param("weight"), site.param("bias")
    if weight is not None:
        pooled = pooled * weight
    if bias is not None:
        pooled = pooled + bias
    return pooled


__all__ = ["EmbeddingCache", "check_cacheable", "clip_digest", "enable_if", "final_affine", "normalized_pool"]
