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
* pools the final token sequence (mean over real tokens, or CLS).
"""

import abc
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

from speechbrain_petl.methods.base import PETLMethod
from speechbrain_petl.sites import Site

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", None)


@register_checkpoint_hooks
class Backbone(nn.Module, abc.ABC):
    """Base class of the frozen backbone lobes.

    Subclasses must set ``self.layers`` (ModuleList of blocks),
    ``self.final_norm`` (a NormSite applied after the last block, or None),
    ``self.hidden_size`` and ``self.num_special_tokens`` (tokens such as CLS
    that lead the sequence and that prompts are inserted after), then call
    ``self._finish_init(petl)``.

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
        self.petl = nn.ModuleDict()

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

    def _sync_hf_model(self, model):
        """Copies lobe-side changes back into the Hugging Face model."""

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
        model = self.__dict__["_hf_model"]
        self._sync_hf_model(model)
        model.save_pretrained(folder)

    @property
    def num_layers(self):
        """Number of transformer blocks."""
        return len(self.layers)

    def attach(self, method, name=None):
        """Attaches a PETL method under ``name`` (default: the method's own).

        Example
        -------
        >>> from transformers import ASTConfig
        >>> from speechbrain_petl.backbones import AST
        >>> from speechbrain_petl.methods import LoRA
        >>> config = ASTConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=64, max_length=64)
        >>> ast = AST(source=config, pretrained=False, max_frames=64)
        >>> ast.attach(LoRA(rank=2))
        >>> list(ast.petl)
        ['lora']
        """
        if not isinstance(method, PETLMethod):
            raise TypeError(
                f"petl entries must be PETL methods (e.g. "
                f"!new:speechbrain_petl.methods.LoRA), got {method!r}"
            )
        name = name or method.default_name
        if name in self.petl:
            raise ValueError(f"A PETL method named '{name}' is already attached.")
        method.attach(self, name)
        self.petl[name] = method

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
        own = dict(self.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("petl."):
                    continue
                if own[key].shape != value.shape:
                    raise RuntimeError(
                        f"{source}: '{key}' has shape {tuple(value.shape)}, "
                        f"expected {tuple(own[key].shape)}."
                    )
                own[key].copy_(value)
        petl_state = {k[len("petl."):]: v for k, v in state.items() if k.startswith("petl.")}
        self.petl.load_state_dict(petl_state, strict=True)

    def fingerprint(self):
        """What identifies the frozen backbone a trained state belongs to:
        lobe class, source, architecture, and a checksum of frozen weights."""
        frozen = [p for p in self.parameters() if not p.requires_grad]
        checksum = sum(float(p.detach().double().abs().sum()) for p in frozen[:8])
        return {
            "lobe": type(self).__name__,
            "source": self.source,
            "architecture": self.architecture(),
            "frozen_checksum": checksum,
        }

    def architecture(self):
        """Shape-defining settings of the backbone (subclasses extend)."""
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers}

    def check_fingerprint(self, saved, source="checkpoint"):
        """Raises a clear error if ``saved`` was made on another backbone."""
        mine = self.fingerprint()
        problems = [
            f"{key}: checkpoint has {saved.get(key)!r}, this backbone has {mine[key]!r}"
            for key in ("lobe", "source", "architecture")
            if saved.get(key) != mine[key]
        ]
        theirs = saved.get("frozen_checksum", 0.0)
        if abs(theirs - mine["frozen_checksum"]) > 1e-6 * max(1.0, abs(theirs)):
            problems.append(
                "frozen weights differ (checksum "
                f"{theirs:.6g} vs {mine['frozen_checksum']:.6g}): other pretrained weights or another seed"
            )
        if problems:
            raise RuntimeError(
                f"{source} was trained on another backbone and cannot be loaded "
                "onto this one:\n  " + "\n  ".join(problems)
            )

    @mark_as_saver
    def _save(self, path):
        torch.save({"fingerprint": self.fingerprint(), "state": self.trainable_state_dict()}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or set(saved) != {"fingerprint", "state"}:
            raise RuntimeError(f"{path} is not a speechbrain_petl backbone checkpoint.")
        self.check_fingerprint(saved["fingerprint"], source=str(path))
        self.load_trainable_state_dict(saved["state"], source=str(path))

    @mark_as_transfer
    def _transfer(self, path):
        self._load(path)


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
