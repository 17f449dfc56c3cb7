"""What every frozen backbone lobe shares: sites, freezing, pooling.

The jobs are split along their seams: :class:`Backbone` (this module) owns
the blocks, their sites, freezing and pooling; the method lifecycle lives in
:mod:`speechbrain_petl.backbones.lifecycle` (:class:`MethodHost`) and the
trained state, fingerprint and checkpoint hooks in
:mod:`speechbrain_petl.backbones.trained_state` (:class:`TrainedState`).

A lobe subclass loads Hugging Face weights, re-states its blocks with
:mod:`speechbrain_petl.backbones.blocks` and implements ``embed``. This base
class then

* freezes every backbone parameter (``requires_grad=False``) while letting
  gradients flow *through* frozen layers to PETL modules below them (nothing
  runs under ``torch.no_grad`` except inputs with nothing trainable below);
* keeps frozen modules in eval mode when the lobe is put in train mode, so
  dropout and friends stay off in the frozen part while PETL modules train;
* attaches PETL methods, registered under ``self.petl[name]``: that
  ModuleDict (plus any backbone tensor a method unfroze) is the trained state,
  and it is all that SpeechBrain checkpoints of the lobe contain;
* gives methods a lifecycle (PEFT-style): ``attach``/``detach``, an active
  set (``set_active``), and ``merge``/``unmerge`` into the frozen weights.
  The one record of what is attached where is the sites' dicts keyed by
  method name; ``self.petl`` can only change through ``attach``/``detach``,
  so the two never drift apart;
* identifies the frozen weights by a content hash (:meth:`fingerprint`);
* pools the final token sequence (mean over real tokens, CLS, or CLS and
  distillation tokens);
* crops its input to :attr:`Backbone.max_samples` (the ``max_samples``
  setting, or the lobe's own input limit), so that every interface that
  builds the lobe classifies a long clip the same way;
* stores its frozen matrices in fp32, bf16 or (inference) int8
  (``backbone_dtype``, :meth:`Backbone.store_frozen`,
  :mod:`speechbrain_petl.backbones.precision`) and runs its blocks in the
  matching precision.
"""

import abc
import contextlib
import logging
import os

import torch
from torch import nn

from speechbrain_petl.backbones.blocks import RECOMPUTE_MODES, FeedForward, SelfAttention, run_block
from speechbrain_petl.backbones.features import relative_to_absolute
from speechbrain_petl.backbones.fingerprint import TensorHashCache
from speechbrain_petl.backbones.lifecycle import MethodDict, MethodHost, as_named_methods
from speechbrain_petl.backbones.loading import describe_source, load_model
from speechbrain_petl.backbones.precision import (
    BACKBONE_DTYPES,
    Int8Weight,
    check_backbone_dtype,
    frozen_linears,
    quantize_linears,
    store_linears,
)
from speechbrain_petl.backbones.trained_state import TrainedState
from speechbrain_petl.sites import Site

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "cls_dist", None)


class Backbone(MethodHost, TrainedState, nn.Module, abc.ABC):
    """Base class of the frozen backbone lobes.

    Subclasses must set ``self.layers`` (ModuleList of blocks),
    ``self.final_norm`` (a NormSite applied after the last block, or None),
    ``self.hidden_size``, ``self.num_special_tokens`` (tokens such as CLS
    that lead the sequence and that prompts are inserted after),
    ``self.source`` (printable) and ``self.pretrained``, implement
    ``embed``, ``constructor_args`` and ``min_samples``, then call
    ``self._finish_init(petl)`` last.

    Arguments
    ---------
    pooling : str or None
        ``"mean"`` (mean over all real output tokens, the paper's choice),
        ``"cls"`` (first token; only for backbones with a CLS token),
        ``"cls_dist"`` (mean of the first two tokens: AST's CLS and
        distillation tokens, as transformers' ``ASTModel`` pools; what
        ``python -m speechbrain_petl.export --merged`` needs for AST) or None
        (return the whole token sequence).
    recompute : str, optional
        Less activation memory for a slower training step (see
        :attr:`recompute`): None (default), ``"ffn"`` or ``"blocks"``.
    max_samples : int, optional
        Clips are cropped to their first ``max_samples`` samples (the
        recipe's ``max_audio_samples``, which an inference folder passes on);
        None: only the lobe's own input limit applies (see :attr:`max_samples`).
    backbone_dtype : str
        How the frozen linears of the blocks are stored: ``"fp32"``
        (default) or ``"bf16"`` (half their memory; the blocks then run
        under bf16 autocast, see :meth:`store_frozen`). Applied after the
        ``petl`` methods are attached: weights a method trains (full
        fine-tuning) stay fp32. Not part of :meth:`constructor_args`: a
        checkpoint or inference folder of a bf16-stored lobe is that of an
        fp32 one (fp32 tensors only, same fingerprint).
    attention_dtype : str, optional
        What the attention products and softmax run in (see
        :attr:`attention_dtype`): None (default: the blocks' compute dtype)
        or ``"fp32"``.
    """

    def __init__(self, pooling="mean", recompute=None, max_samples=None, backbone_dtype="fp32", attention_dtype=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        _check_recompute(recompute)
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                        or max_samples < 1):
            raise ValueError(f"max_samples must be a positive number of samples or None, got {max_samples!r}")
        self.pooling = pooling
        self._recompute = recompute
        #: The ``max_samples`` setting as given (None: no crop of its own).
        self.max_samples_setting = max_samples
        self.petl = MethodDict()
        self._inactive = set()
        self._hash_cache = TensorHashCache()
        _check_attention_dtype(attention_dtype)
        self._attention_dtype = attention_dtype
        self._backbone_dtype_setting = check_backbone_dtype(backbone_dtype)
        self._backbone_dtype = "fp32"
        #: ``{sha256 of the frozen tensors as stored: sha256 of them in fp32}``
        #: (see :meth:`store_frozen`).
        self._storage_aliases = {}

    # ------------------------------------------------------------------ setup
    def _finish_init(self, petl):
        if self.pooling == "cls" and self.num_special_tokens == 0:
            raise ValueError(
                f"{type(self).__name__} has no CLS token; use pooling: mean."
            )
        if self.pooling == "cls_dist" and self.num_special_tokens < 2:
            raise ValueError(
                f"{type(self).__name__} has no CLS and distillation tokens; use pooling: mean."
            )
        if self.max_samples_setting is not None and self.max_samples_setting < self.min_samples:
            raise ValueError(
                f"max_samples={self.max_samples_setting} is shorter than the {self.min_samples} samples "
                f"{type(self).__name__} needs at least."
            )
        for param in self.parameters():
            param.requires_grad_(False)
        self.recompute = self._recompute
        self.attention_dtype = self._attention_dtype
        self._forget_sites()  # the blocks exist now: list their sites on first use
        for name, method in as_named_methods(petl):
            self.attach(method, name)
        if self._backbone_dtype_setting != "fp32":
            self.store_frozen(self._backbone_dtype_setting)

    # ------------------------------------------------------------- precision
    @property
    def backbone_dtype(self):
        """How the frozen linears of the blocks are stored now: ``"fp32"``,
        ``"bf16"`` or ``"int8"`` (see :meth:`store_frozen`)."""
        return self._backbone_dtype

    def store_frozen(self, dtype):
        """Stores the frozen ``nn.Linear`` weights of the blocks in ``dtype``
        (``"bf16"``, or ``"int8"`` for inference on CPU; see
        :mod:`speechbrain_petl.backbones.precision`); trained tensors (PETL
        methods, weights a method unfroze) are left in fp32. Returns the
        bytes those weights took before and after.

        The fingerprint does not change: the SHA-256 of the frozen tensors
        as stored now is recorded as standing for the SHA-256 of the fp32
        tensors they were made from, so a trained state saved from either
        lobe loads onto the other. Once the stored weights change (a merge
        writes them; unmerge restores them bit for bit), the fingerprint is
        that of the stored tensors, as it would be in fp32.

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import LoRA
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, petl=LoRA(rank=2))
        >>> before = ast.fingerprint()
        >>> fp32_bytes, bf16_bytes = ast.store_frozen("bf16")
        >>> bf16_bytes / fp32_bytes, ast.backbone_dtype, ast.fingerprint() == before
        (0.5, 'bf16', True)
        >>> {p.dtype for p in ast.petl.parameters()}
        {torch.float32}
        """
        if dtype not in BACKBONE_DTYPES or dtype == "fp32":
            raise ValueError(f"store_frozen takes 'bf16' or 'int8', got {dtype!r}.")
        if self._backbone_dtype != "fp32":
            raise RuntimeError(f"The frozen weights are stored in {self._backbone_dtype} already.")
        if self.merged:
            raise RuntimeError(f"Methods {sorted(self.merged)} are merged into the weights; unmerge them first.")
        if dtype == "int8":
            overridden = [path for path, site in self.named_sites()
                          if getattr(site, "linear", None) is not None and site.owners() - set(site.hook_names())]
            if overridden:
                raise ValueError(
                    f"int8 keeps no fp32 weight or bias to override: methods override parameters of the "
                    f"linears at {overridden[:3]} (BitFit, say). Use bf16, or merge them first."
                )
        source_sha = self._hash_cache.sha256(self.frozen_tensors())
        linears = frozen_linears(self.layers)
        if dtype == "bf16":
            sizes = store_linears(linears, torch.bfloat16)
        else:
            sizes = quantize_linears(linears)
        self._backbone_dtype = dtype
        self._storage_aliases[self._hash_cache.sha256(self.frozen_tensors())] = source_sha
        return sizes

    def frozen_sha256(self):
        """SHA-256 of the frozen tensors, as their fp32 originals' where
        they are stored in fewer bits unchanged (see :meth:`store_frozen`)."""
        sha = self._hash_cache.sha256(self.frozen_tensors())
        return self._storage_aliases.get(sha, sha)

    def compute_context(self):
        """The context the blocks run in: bf16 autocast on the lobe's device
        type when the frozen linears are stored in bf16 (their products then
        run in bf16 whatever the caller asked for), else nothing."""
        if self._backbone_dtype != "bf16":
            return contextlib.nullcontext()
        device_type = next(self.layers.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def attach(self, method, name=None, active=True):
        """Attaches a PETL method (see :meth:`MethodHost.attach`); refused
        when it would train a weight stored in fewer bits than fp32."""
        super().attach(method, name, active)
        lowered = [
            path for path, param in self.layers.named_parameters()
            if param.requires_grad and param.dtype != torch.float32
        ]
        if lowered:
            self.detach(name or method.default_name)
            raise ValueError(
                f"{type(method).__name__} trains backbone weights stored in {self._backbone_dtype} "
                f"({lowered[:3]}): attach it when building the lobe (petl=...) so that they stay fp32."
            )

    def int8_weights(self):
        """The :class:`~speechbrain_petl.backbones.precision.Int8Weight` s of
        int8-stored linears (plain attributes, not parameters)."""
        return [m.weight for m in self.layers.modules() if isinstance(getattr(m, "weight", None), Int8Weight)]

    @property
    def recompute(self):
        """What a training step recomputes in its backward pass instead of
        keeping, to save activation memory (outputs and gradients are the
        same):

        * None: nothing (fastest);
        * ``"ffn"``: each feed-forward's hidden activations (``fc1`` output
          and activation, 4x the width in most transformers): autograd keeps
          the feed-forward input instead, and the backward pass runs ``fc1``
          again (about a third of a block's forward products);
        * ``"blocks"``: whole blocks (gradient checkpointing): only each
          block's input is kept; the backward pass runs every block again.

        Inference (no autograd graph) is unaffected.
        """
        return self._recompute

    @recompute.setter
    def recompute(self, mode):
        """Sets the mode on every block (a ValueError names the valid modes)."""
        _check_recompute(mode)
        for index, block in enumerate(self.layers):
            if not isinstance(getattr(block, "mlp", None), FeedForward):
                raise TypeError(f"Block {index} of {type(self).__name__} has no FeedForward 'mlp' to recompute.")
            block.mlp.recompute = mode == "ffn"
        self._recompute = mode

    @property
    def attention_dtype(self):
        """What the blocks' attention products and softmax run in: None (the
        blocks' compute dtype: bf16 under bf16 autocast or with
        ``backbone_dtype: bf16``) or ``"fp32"`` (q, k and v are cast to fp32
        and attention runs with autocast off; the projections around it keep
        their dtype). Where a CPU's fused bf16 attention kernel is slower
        than its fp32 one (short sequences without AMX, see
        docs/performance.md), ``"fp32"`` makes a bf16 step faster; autograd
        then keeps q, k, v and the output in fp32 (twice their bf16 bytes).

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, attention_dtype="fp32")
        >>> ast.attention_dtype, {block.attention.attention_dtype for block in ast.layers}
        ('fp32', {torch.float32})
        """
        return self._attention_dtype

    @attention_dtype.setter
    def attention_dtype(self, dtype):
        """Sets it on every block's attention (a ValueError names the valid values)."""
        _check_attention_dtype(dtype)
        attentions = [m for m in self.layers.modules() if isinstance(m, SelfAttention)]
        if not attentions:
            raise TypeError(f"{type(self).__name__} has no SelfAttention in its blocks.")
        for attention in attentions:
            attention.attention_dtype = None if dtype is None else ATTENTION_DTYPES[dtype]
        self._attention_dtype = dtype

    def _load_transformers_model(self, model_class, config_class, source, pretrained):
        """Loads ``source`` (:func:`~speechbrain_petl.backbones.loading.load_model`),
        records ``source``, ``pretrained`` and ``config``, and returns the
        model. The model is kept unregistered: its weights are the lobe's
        own (shared objects), registering it would duplicate them in every
        state_dict."""
        model = load_model(model_class, config_class, source, pretrained)
        self.source = describe_source(source)
        self.pretrained = pretrained
        self.config = model.config
        self.__dict__["_hf_model"] = model
        return model

    @contextlib.contextmanager
    def transformers_model(self):
        """The transformers model (e.g. ``ASTModel``, ``Wav2Vec2Model``)
        holding the lobe's current weights, for saving or exporting; lobes
        whose own tensors differ from it (AST's resized positions) swap them
        in for the duration and restore the live model afterwards."""
        yield self.__dict__["_hf_model"]

    def resident_tensors(self):
        """Every tensor the lobe keeps in memory: its parameters and buffers
        and those of the transformers model it was built from (mostly the
        same objects; AST's original position embeddings are not)."""
        model = self.__dict__["_hf_model"]
        return [*self.parameters(), *self.buffers(), *model.parameters(), *model.buffers(), *self.int8_weights()]

    def save_pretrained(self, folder):
        """Writes the backbone (with any fine-tuned weights) as a Hugging Face
        ``save_pretrained`` folder, loadable as ``source`` by this lobe.

        PETL modules are not part of it: refuses when a method owns trained
        tensors that the folder would silently leave out.
        """
        lost = [name for name, method in self.petl.items() if any(True for _ in method.parameters())]
        if lost:
            raise RuntimeError(
                f"save_pretrained writes the backbone only; the PETL methods {lost} "
                "would be lost. Save them with a checkpoint instead."
            )
        if os.path.exists(os.path.join(folder, "config.json")):
            raise FileExistsError(f"{folder} already holds a model (config.json); choose a new folder.")
        if self.merged:
            raise RuntimeError(
                f"Methods {sorted(self.merged)} are merged into the weights; unmerge them "
                "before save_pretrained (or export the merged model on purpose)."
            )
        with self.transformers_model() as model:
            model.save_pretrained(folder)

    @property
    def num_layers(self):
        """Number of transformer blocks."""
        return len(self.layers)

    def site(self, layer, name):
        """The site called ``name`` in block ``layer`` (see :meth:`site_names`)."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(
                f"Layer {layer} does not exist: {type(self).__name__} has "
                f"{self.num_layers} layers (0..{self.num_layers - 1})."
            )
        try:
            site = self.layers[layer].get_submodule(name)
        except AttributeError:
            site = None
        if not isinstance(site, Site):
            raise KeyError(
                f"Unknown site '{name}'. Sites of a block: {self.site_names()}"
            )
        return site

    def site_names(self):
        """Paths of every site inside a block."""
        return [
            path for path, module in self.layers[0].named_modules()
            if isinstance(module, Site) and path
        ]

    def final_norm_site(self):
        """The LayerNorm that produces the lobe's output tokens, or None."""
        return self.final_norm

    # ------------------------------------------------------------- cropping
    @property
    def input_limit(self):
        """Samples of a clip the lobe can look at, however it is set: later
        samples change nothing (AST: those ``max_frames`` fbank frames
        cover; Whisper: its 30 s window); None: no limit (Wav2Vec2, HuBERT,
        WavLM)."""
        return None

    @property
    def max_samples(self):
        """The crop length: a clip's samples after its first ``max_samples``
        are never looked at (the smaller of the ``max_samples`` setting and
        :attr:`input_limit`); None when clips of any length are used whole.
        Every path into the lobe (``forward``, ``encode``, ``embed``) crops
        to it."""
        limits = [limit for limit in (self.max_samples_setting, self.input_limit) if limit is not None]
        return min(limits) if limits else None

    def crop(self, wavs, wav_lens=None):
        """``(wavs, wav_lens)`` cut to the clips' first :attr:`max_samples`
        samples, relative lengths recomputed (see :func:`crop_batch`)."""
        return crop_batch(wavs, wav_lens, self.max_samples)

    # ------------------------------------------------------------- forward
    @abc.abstractmethod
    def embed(self, wavs, wav_lens=None, augment=None):
        """Waveforms -> (tokens (batch, time, width), mask (batch, time) or None).

        Implementations first :meth:`crop` the waveforms. ``augment``, when
        given, is applied to the lobe's input features
        (AST: the normalised fbank ``(batch, frames, mels)``; Wav2Vec2, HuBERT,
        WavLM: the waveforms; Whisper: the log-mel ``(batch, frames, mels)``):
        the recipe passes its augmentation at training time only.
        """

    #: An :class:`~speechbrain_petl.training.embedding_cache.EmbeddingCache` that
    #: ``forward`` goes through when set (linear probing only, opt-in).
    embedding_cache = None

    def encode(self, wavs, wav_lens=None, augment=None):
        """Output tokens after the final norm and their mask."""
        x, mask = self.embed(wavs, wav_lens, augment)
        x, mask = self.run_layers(x, mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, mask

    def run_layers(self, x, mask, start=0, stop=None):
        """Blocks ``start`` to ``stop - 1`` (default: all) on tokens ``x``
        ``(batch, time, width)`` and their mask: ``encode`` in parts, so
        that blocks shared by several tasks run once."""
        with self.compute_context():
            for block in self.layers[start:stop]:
                x, mask = run_block(block, x, mask, recompute_block=self._recompute == "blocks")
        if self._backbone_dtype == "bf16" and x.dtype != torch.float32 and not torch.is_autocast_enabled(x.device.type):
            x = x.float()  # the caller computes in fp32: what follows the blocks gets fp32
        return x, mask

    def finish(self, x, mask):
        """The final norm and the pooling of the last block's tokens."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.pool(x, mask)

    def forward(self, wavs, wav_lens=None, augment=None):
        """Pooled embeddings ``(batch, width)``, or tokens if ``pooling`` is None.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)`` 16 kHz waveforms.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` SpeechBrain relative lengths.
        augment : callable, optional
            Training-time augmentation of the input features (see ``embed``).
        """
        if self.embedding_cache is not None:
            return self.embedding_cache.forward(self, wavs, wav_lens, augment)
        x, mask = self.encode(wavs, wav_lens, augment)
        return self.pool(x, mask)

    def pool(self, x, mask):
        """Applies the configured pooling to ``x`` (batch, time, width)."""
        if self.pooling is None:
            return x
        if self.pooling == "cls":
            return x[:, 0]
        if self.pooling == "cls_dist":
            return (x[:, 0] + x[:, 1]) / 2
        if mask is None:
            return x.mean(dim=1)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    # ------------------------------------------------------------ freezing
    def train(self, mode=True):
        """Train mode for PETL modules and unfrozen parts only.

        A backbone module whose parameters are all frozen stays in eval mode
        (no dropout, LayerDrop or masking); parameter-free modules such as
        dropout follow the nearest module that owns parameters (at the top
        level: whether any backbone parameter trains at all).
        """
        super().train(mode)
        if not mode:
            return self
        backbone_trains = any(
            p.requires_grad for n, p in self.named_parameters() if not n.startswith("petl.")
        )
        for name, child in self.named_children():
            if name == "petl":
                continue
            if next(child.parameters(), None) is None:
                child.train(backbone_trains)  # e.g. dropout after the embeddings
            else:
                _keep_frozen_in_eval(child)
        return self

    def architecture(self):
        """Shape-defining settings of the backbone (subclasses extend)."""
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers}


def crop_batch(wavs, wav_lens, max_samples):
    """``(batch, samples)`` waveforms and their relative lengths, cut to
    the clips' first ``max_samples`` samples: the relative lengths are
    recomputed for the new width, so that each clip keeps
    ``min(its length, max_samples)`` real samples. Unchanged when
    ``max_samples`` is None or the batch is not wider.

    Example
    -------
    >>> import torch
    >>> wavs, wav_lens = crop_batch(torch.ones(2, 10), torch.tensor([1.0, 0.3]), 5)
    >>> tuple(wavs.shape), [round(x, 3) for x in wav_lens.tolist()]
    ((2, 5), [1.0, 0.6])
    """
    if max_samples is None or wavs.shape[-1] <= max_samples:
        return wavs, wav_lens
    if wav_lens is not None:
        lengths = relative_to_absolute(wav_lens, wavs.shape[-1]).clamp(max=max_samples)
        wav_lens = (lengths.to(wav_lens.dtype) if wav_lens.is_floating_point() else lengths.float()) / max_samples
    return wavs[..., :max_samples], wav_lens


def _check_recompute(mode):
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {mode!r}")


#: The settings of :attr:`Backbone.attention_dtype` (None: the blocks' own).
ATTENTION_DTYPES = {"fp32": torch.float32}


def _check_attention_dtype(dtype):
    if dtype is not None and dtype not in ATTENTION_DTYPES:
        raise ValueError(f"attention_dtype must be None or one of {sorted(ATTENTION_DTYPES)}, got {dtype!r}")


def _keep_frozen_in_eval(module):
    params = list(module.parameters())
    if not params:
        return  # parameter-free: keeps the mode of its parent
    if not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        _keep_frozen_in_eval(child)
