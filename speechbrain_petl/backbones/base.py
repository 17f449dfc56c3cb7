"""What every frozen backbone lobe shares: sites, freezing, PETL, pooling.

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
* pools the final token sequence (mean over real tokens, or CLS).
"""

import abc
import contextlib
import logging
import os

import torch
from torch import nn

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    mark_as_transfer,
    register_checkpoint_hooks,
)

from speechbrain_petl.backbones.fingerprint import TensorHashCache
from speechbrain_petl.methods.base import PETLMethod
from speechbrain_petl.sites import Site, _ParameterSite

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", None)


@register_checkpoint_hooks
class Backbone(nn.Module, abc.ABC):
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
        ``"cls"`` (first token; only for backbones with a CLS token) or None
        (return the whole token sequence).
    """

    def __init__(self, pooling="mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.petl = MethodDict()
        self._inactive = set()
        self._hash_cache = TensorHashCache()

    # ------------------------------------------------------------------ setup
    def _finish_init(self, petl):
        if self.pooling == "cls" and self.num_special_tokens == 0:
            raise ValueError(
                f"{type(self).__name__} has no CLS token; use pooling: mean."
            )
        for param in self.parameters():
            param.requires_grad_(False)
        for name, method in _as_named_methods(petl):
            self.attach(method, name)

    def _keep_hf_model(self, model):
        # Kept unregistered: its weights are the lobe's own (shared objects),
        # registering it would duplicate them in every state_dict.
        self.__dict__["_hf_model"] = model

    @contextlib.contextmanager
    def _hf_model_for_saving(self):
        """The Hugging Face model holding the lobe's current weights; lobes
        whose own tensors differ from it (AST's resized positions) swap them
        in for the duration and restore the live model afterwards."""
        yield self.__dict__["_hf_model"]

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
        with self._hf_model_for_saving() as model:
            model.save_pretrained(folder)

    @property
    def num_layers(self):
        """Number of transformer blocks."""
        return len(self.layers)

    # ------------------------------------------------------------ lifecycle
    def attach(self, method, name=None, active=True):
        """Attaches a PETL method under ``name`` (default: the method's own).

        Arguments
        ---------
        method : PETLMethod
            A fresh method instance (one instance per attachment).
        name : str, optional
            Key under ``self.petl`` and at every site it uses.
        active : bool
            Whether the method takes part in the forward pass right away.

        Example
        -------
        >>> from transformers import ASTConfig
        >>> from speechbrain_petl.backbones import AST
        >>> from speechbrain_petl.methods import LoRA
        >>> config = ASTConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=64, max_length=64)
        >>> ast = AST(source=config, pretrained=False, max_frames=64)
        >>> ast.attach(LoRA(rank=2))
        >>> ast.attach(LoRA(rank=4), "task_b", active=False)
        >>> list(ast.petl), ast.active
        (['lora', 'task_b'], ['lora'])
        >>> ast.detach("task_b")
        >>> list(ast.petl)
        ['lora']
        """
        if not isinstance(method, PETLMethod):
            raise TypeError(
                f"petl entries must be PETL methods (e.g. "
                f"!new:speechbrain_petl.methods.LoRA), got {method!r}"
            )
        name = name or method.default_name
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"A PETL method's name must be a non-empty string without dots, got {name!r}")
        if name in self.petl:
            raise ValueError(f"A PETL method named '{name}' is already attached.")
        method.attach(self, name)
        self.petl._register(name, method)
        if not active:
            self._inactive.add(name)
        try:
            self._sync_sites()
        except RuntimeError:
            self.detach(name)
            raise

    def detach(self, name):
        """Removes method ``name``: its hooks, overrides and tensors. The
        backbone then computes exactly what it computed before the attach.
        A merged method must be unmerged first."""
        method = self._method(name)
        if name in self.merged:
            raise RuntimeError(f"'{name}' is merged into the frozen weights; unmerge('{name}') first.")
        for site in self.sites():
            site.remove_owner(name)
        method.detach(self)
        self.petl._unregister(name)
        self._inactive.discard(name)
        self._sync_sites()

    @property
    def active(self):
        """Names of the methods that take part in the forward pass."""
        return [name for name in self.petl if name not in self._inactive]

    def set_active(self, names):
        """Makes exactly ``names`` active (the others stay attached, unused).

        Refused when two active methods would replace the same frozen tensor
        or both insert tokens, and for a merged method left out (its update
        is in the weights: unmerge it first).
        """
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            self._method(name)
        inactive = set(self.petl) - set(names)
        merged_off = sorted(inactive & self.merged)
        if merged_off:
            raise RuntimeError(f"{merged_off} are merged into the weights; unmerge them before deactivating.")
        previous = self._inactive
        self._inactive = inactive
        try:
            self._sync_sites()
        except RuntimeError:
            self._inactive = previous
            self._sync_sites()
            raise

    def merge(self, name):
        """Folds method ``name`` into the frozen weights (LoRA updates, BitFit
        biases, trained LayerNorm copies); its sites stop running what was
        folded. Outputs are unchanged up to float rounding.

        Exact undo: the sites keep a copy of every tensor they overwrite, and
        :meth:`unmerge` copies it back (bit-identical; the copy costs the
        memory of the touched tensors: about 57 MB for LoRA on AST-base's
        query and value projections).
        """
        method = self._method(name)
        if name in self._inactive:
            raise RuntimeError(f"'{name}' is inactive; activate it before merging.")
        if name in self.merged:
            raise RuntimeError(f"'{name}' is merged already.")
        method.merge(self, name)

    def unmerge(self, name):
        """Restores the frozen weights ``merge(name)`` changed, bit for bit."""
        self._method(name)
        if name not in self.merged:
            raise RuntimeError(f"'{name}' is not merged.")
        for site in self.sites():
            if isinstance(site, _ParameterSite) and name in site.folded_owners():
                site.unfold(name)

    @property
    def merged(self):
        """Names of the methods folded into the frozen weights."""
        return {
            owner for site in self.sites() if isinstance(site, _ParameterSite)
            for owner in site.folded_owners()
        }

    def sites(self):
        """Every site of the backbone (all blocks, and the final norm)."""
        for path, module in self.named_modules():
            if isinstance(module, Site) and not path.startswith("petl."):
                yield module

    def _method(self, name):
        if name not in self.petl:
            raise KeyError(f"No PETL method named '{name}'; attached: {list(self.petl)}")
        return self.petl[name]

    def _sync_sites(self):
        """Tells every site which owners to skip; checks the active set."""
        active = set(self.active)
        inserting = [name for name in self.active if self.petl[name].inserts_tokens]
        if len(inserting) > 1:
            raise RuntimeError(
                f"{inserting} all insert tokens; two prompt methods active at once would "
                "shift each other's token positions. Keep one active (backbone.set_active)."
            )
        for site in self.sites():
            if isinstance(site, _ParameterSite):
                site.check_overrides(active)
        for site in self.sites():
            site.skip(self._inactive)

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

    # ------------------------------------------------------------- forward
    @abc.abstractmethod
    def embed(self, wavs, wav_lens=None, augment=None):
        """Waveforms -> (tokens (batch, time, width), mask (batch, time) or None).

        ``augment``, when given, is applied to the lobe's input features
        (AST: the normalised fbank ``(batch, frames, mels)``; Wav2Vec2: the
        waveforms): the recipe passes its augmentation at training time only.
        """

    def encode(self, wavs, wav_lens=None, augment=None):
        """Output tokens after the final norm and their mask."""
        x, mask = self.embed(wavs, wav_lens, augment)
        for block in self.layers:
            x, mask = block(x, mask)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, mask

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
        x, mask = self.encode(wavs, wav_lens, augment)
        return self.pool(x, mask)

    def pool(self, x, mask):
        """Applies the configured pooling to ``x`` (batch, time, width)."""
        if self.pooling is None:
            return x
        if self.pooling == "cls":
            return x[:, 0]
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

    def trainable_state_dict(self):
        """The trained tensors: every PETL module's state (buffers included)
        plus any backbone parameter a method unfroze (full fine-tuning)."""
        state = {f"petl.{k}": v for k, v in self.petl.state_dict().items()}
        for name, param in self.named_parameters():
            if param.requires_grad and not name.startswith("petl."):
                state[name] = param.detach()
        return state

    def load_trainable_state_dict(self, state, source="state dict"):
        """Loads what :meth:`trainable_state_dict` returned; keys must match."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise RuntimeError(
                f"{source} does not match the PETL configuration of this "
                f"{type(self).__name__}: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
            )
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise RuntimeError(
                    f"{source}: '{key}' has shape {found}, expected "
                    f"{tuple(expected[key].shape)} for this PETL configuration."
                )
        own = dict(self.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if not key.startswith("petl."):
                    own[key].copy_(value)
        petl_state = {k[len("petl."):]: v for k, v in state.items() if k.startswith("petl.")}
        self.petl.load_state_dict(petl_state, strict=True)

    def frozen_tensors(self):
        """``(name, tensor)`` for every backbone tensor that a trained state
        does not carry: what must be identical for that state to mean the
        same model. (Under full fine-tuning of AST that is no weight at all:
        the state carries every one of them.)"""
        carried = set(self.trainable_state_dict())
        for name, param in self.named_parameters():
            if not name.startswith("petl.") and name not in carried:
                yield name, param
        for name, buffer in self.named_buffers():
            if not name.startswith("petl."):
                yield name, buffer

    def fingerprint(self):
        """What identifies the frozen backbone a trained state belongs to:
        lobe class and architecture, and a SHA-256 of the content of every
        frozen tensor. ``source`` is recorded for information only: the same
        weights loaded from another folder are the same backbone."""
        tensors = list(self.frozen_tensors())
        return {
            "lobe": type(self).__name__,
            "source": self.source,
            "architecture": self.architecture(),
            "frozen_sha256": self._hash_cache.sha256(tensors),
            "frozen_tensors": len(tensors),
        }

    def architecture(self):
        """Shape-defining settings of the backbone (subclasses extend)."""
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers}

    def check_fingerprint(self, saved, source="checkpoint"):
        """Raises a clear error if ``saved`` was made on another backbone."""
        if not isinstance(saved, dict) or "frozen_sha256" not in saved:
            raise RuntimeError(
                f"{source} has no backbone fingerprint (frozen_sha256): it was not "
                "written by this version of speechbrain_petl."
            )
        mine = self.fingerprint()
        problems = [
            f"{key}: {source} has {saved.get(key)!r}, this backbone has {mine[key]!r}"
            for key in ("lobe", "architecture")
            if saved.get(key) != mine[key]
        ]
        if not problems and saved["frozen_sha256"] != mine["frozen_sha256"]:
            merged = f" (merged into it: {sorted(self.merged)})" if self.merged else ""
            problems.append(
                "frozen weights differ: trained on "
                f"{saved.get('source')!r} (sha256 {saved['frozen_sha256'][:16]}...), this "
                f"backbone is {self.source!r}{merged} (sha256 {mine['frozen_sha256'][:16]}...)"
            )
        if problems:
            raise RuntimeError(
                f"{source} was trained on another backbone and cannot be loaded "
                "onto this one:\n  " + "\n  ".join(problems)
            )

    @mark_as_saver
    def _save(self, path):
        torch.save(self.trained_state(), path)

    def trained_state(self):
        """What a checkpoint or an inference folder stores of this lobe:
        ``{"fingerprint": <dict>, "state": <trainable tensors>}``, plain
        tensors and strings only."""
        if self.merged:
            raise RuntimeError(
                f"Methods {sorted(self.merged)} are merged into the frozen weights; "
                "unmerge them before saving the trained state."
            )
        return {"fingerprint": self.fingerprint(), "state": self.trainable_state_dict()}

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.load_trained_state(saved, source=str(path))

    def load_trained_state(self, saved, source="trained state"):
        """Loads what :meth:`trained_state` returned, after checking that it
        was trained on this very backbone (same frozen weights)."""
        if not isinstance(saved, dict) or set(saved) != {"fingerprint", "state"}:
            raise RuntimeError(
                f"{source} is not a speechbrain_petl trained state "
                "(expected the keys 'fingerprint' and 'state')."
            )
        self.check_fingerprint(saved["fingerprint"], source=source)
        self.load_trainable_state_dict(saved["state"], source=source)

    @mark_as_transfer
    def _transfer(self, path):
        self._load(path)


class MethodDict(nn.ModuleDict):
    """``backbone.petl``: the attached methods by name, changed only through
    ``backbone.attach``/``backbone.detach`` (item assignment and deletion are
    refused: they would leave hooks behind, or a method without hooks)."""

    def __setitem__(self, key, module):
        raise TypeError("Use backbone.attach(method, name) to add a PETL method.")

    def __delitem__(self, key):
        raise TypeError("Use backbone.detach(name) to remove a PETL method.")

    def _register(self, name, method):
        nn.ModuleDict.__setitem__(self, name, method)

    def _unregister(self, name):
        nn.ModuleDict.__delitem__(self, name)


def _keep_frozen_in_eval(module):
    params = list(module.parameters())
    if not params:
        return  # parameter-free: keeps the mode of its parent
    if not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        _keep_frozen_in_eval(child)


def _as_named_methods(petl):
    """Normalises the ``petl`` argument: None, a method, a list or a dict."""
    if petl is None:
        return []
    if isinstance(petl, dict):
        return list(petl.items())
    if isinstance(petl, (list, tuple)):
        return [(None, method) for method in petl]
    return [(None, petl)]
