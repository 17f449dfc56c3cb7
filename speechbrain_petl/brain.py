"""The classification Brain shared by every recipe.

Expects ``modules`` with a ``backbone`` (a :class:`~speechbrain_petl.backbones.Backbone`
lobe with its PETL methods attached) and a ``classifier`` (the head), and
batches with ``sig`` (waveforms, relative lengths) and ``label_encoded``.
Only trainable tensors reach the optimizer.
"""

import speechbrain as sb
import torch
import torch.nn.functional as F

from speechbrain_petl.backbones.base import Backbone


def trainable_parameters(modules):
    """The parameters that require gradients, each once, in a stable order.

    Example
    -------
    >>> frozen, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
    >>> frozen.requires_grad_(False)
    Linear(in_features=2, out_features=2, bias=True)
    >>> len(trainable_parameters(torch.nn.ModuleList([frozen, head])))
    2
    """
    seen, params = set(), []
    for param in modules.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


class ClassificationBrain(sb.Brain):
    """Utterance classification on top of a frozen backbone lobe."""

    def compute_forward(self, batch, stage):
        """Waveforms -> logits ``(batch, classes)``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        embeddings = self.modules.backbone(wavs, wav_lens)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy, plus accuracy statistics outside training."""
        labels = batch.label_encoded.data.view(-1)
        loss = F.cross_entropy(predictions.float(), labels)
        if stage != sb.Stage.TRAIN:
            self.correct += (predictions.argmax(dim=-1) == labels).sum().item()
            self.seen += labels.numel()
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.correct, self.seen = 0, 0

    def init_optimizers(self):
        """One optimizer over the trainable tensors only (PETL + head)."""
        if self.opt_class is None:
            return
        self.optimizer = self.opt_class(trainable_parameters(self.modules))
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    @property
    def backbone(self):
        """The backbone lobe (unwrapped from DDP if needed)."""
        module = self.modules.backbone
        module = getattr(module, "module", module)
        if not isinstance(module, Backbone):
            raise TypeError(
                f"modules.backbone must be a speechbrain_petl Backbone, got {type(module).__name__}"
            )
        return module
