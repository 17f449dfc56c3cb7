"""What a trained lobe stores: its trainable state, the fingerprint of the
frozen weights it belongs to, and SpeechBrain's checkpoint hooks.

:class:`TrainedState` is a mixin of :class:`speechbrain_petl.backbones.Backbone`.
It relies on the backbone's ``petl``, ``merged`` (from the lifecycle),
``source``, ``architecture()`` and ``frozen_sha256()`` (the hash of the
frozen tensors, the fp32 one for a lobe storing them in fewer bits).

Two hooks read a trained state: the Checkpointer's (``_load``, a training
checkpoint; the Checkpointer names the checkpoint and what to do) and the
Pretrainer's (``_transfer``, an inference folder's ``embedding_model.ckpt``,
named as the user's folder holds it rather than as SpeechBrain's ``savedir``
link or copy, see :func:`speechbrain_petl.data.files.origin`).
"""

import torch

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    mark_as_transfer,
    register_checkpoint_hooks,
)

from speechbrain_petl.data.files import INFERENCE_FOLDER_ADVICE, load_torch, origin


class FingerprintMismatch(RuntimeError):
    """A trained state (checkpoint, inference folder, PEFT adapter) made on
    other frozen weights than the backbone it is loaded onto; the message
    names the file and both weights' SHA-256."""


@register_checkpoint_hooks
class TrainedState:
    """The trained tensors of a lobe, their fingerprint, and the
    save/load/transfer hooks SpeechBrain's Checkpointer and Pretrainer call."""

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
            "frozen_sha256": self.frozen_sha256(),
            "frozen_tensors": len(tensors),
        }

    def check_fingerprint(self, saved, source="checkpoint"):
        """Raises :class:`FingerprintMismatch`, naming ``source``, if ``saved``
        was made on another backbone."""
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
            raise FingerprintMismatch(
                f"{source} was trained on another backbone and cannot be loaded "
                "onto this one:\n  " + "\n  ".join(problems)
                + "\nLoad it onto the weights it was trained on (backbone_source: a hub id or folder holding them)."
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
        saved = load_torch(path)
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
        shown = origin(path)
        saved = load_torch(path, INFERENCE_FOLDER_ADVICE, shown=shown)
        self.load_trained_state(saved, source=shown)
