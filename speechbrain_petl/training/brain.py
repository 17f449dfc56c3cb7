"""The classification Brain shared by every recipe.

Expects ``modules`` with a ``backbone`` (a :class:`~speechbrain_petl.backbones.Backbone`
lobe with its PETL methods attached) and a ``classifier`` (the head), and
batches with ``id``, ``sig`` (waveforms, relative lengths) and
``label_encoded``. Besides SpeechBrain's arguments it takes, by keyword
(a recipe's ``train.py`` passes them from its yaml, so that the script names
every hyper-parameter it uses):

* ``label_encoder`` (CategoricalEncoder): names the classes in the test
  outputs (without one, classes are named by their index);
* ``train_logger``: SpeechBrain's logger of the per-epoch statistics
  (without one, they go to this module's ``logging`` logger);
* ``augmentation``: applied to the backbone's input features at
  training time only (e.g. SpecAugment on AST's fbank);
* ``lr_scheduler``: a ``!name:`` scheduler factory called as
  ``factory(optimizer, total_steps=...)`` (total optimizer steps over the
  epochs of the counter given to :meth:`~ClassificationBrain.fit`) and
  stepped every batch, e.g. :func:`speechbrain_petl.training.schedulers.warmup_cosine`;
* ``test_stats_file`` / ``test_predictions_file``: where the test
  stage writes per-class accuracy, confusion and per-clip predictions.

Only trainable tensors reach the optimizer; the best checkpoint is kept by
validation accuracy (``acc``) next to the most recent one.

Resuming is exact: besides SpeechBrain's position in the epoch (``step``,
the loader's position, the running loss), the Brain's checkpoint holds the
epoch's running accuracy counts and the random states of torch, numpy and
Python, so a killed-and-resumed run on CPU ends with the tensors, logged
statistics and predictions of an uninterrupted one.
"""

import csv
import logging
import math
import random

import numpy as np

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.metric_stats import ClassificationStats

from speechbrain_petl.backbones.base import Backbone

logger = logging.getLogger(__name__)


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


def random_states():
    """The states of the torch (CPU and CUDA), numpy and Python generators,
    as a dict that ``torch.load(..., weights_only=True)`` reads back.

    Example
    -------
    >>> states = random_states()
    >>> first = torch.rand(2), np.random.rand(), random.random()
    >>> set_random_states(states)
    >>> second = torch.rand(2), np.random.rand(), random.random()
    >>> bool((first[0] == second[0]).all()) and first[1:] == second[1:]
    True
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss": python_gauss},
    }


def set_random_states(states):
    """Restores what :func:`random_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


@register_checkpoint_hooks
class ClassificationBrain(sb.Brain):
    """Utterance classification on top of a frozen backbone lobe.

    Arguments
    ---------
    modules, opt_class, hparams, run_opts, checkpointer
        As SpeechBrain's :class:`~speechbrain.core.Brain`.
    label_encoder, train_logger, augmentation, lr_scheduler, test_stats_file, test_predictions_file
        Keyword only, each optional; see the module's docstring.

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> lobe = AST(tiny_config("ast"), pretrained=False, max_frames=64)
    >>> brain = ClassificationBrain(
    ...     modules={"backbone": lobe, "classifier": torch.nn.Linear(lobe.hidden_size, 2)},
    ...     opt_class=lambda params: torch.optim.AdamW(params, lr=0.01),
    ...     run_opts={"device": "cpu"},
    ... )
    >>> brain.backbone is lobe
    True
    """

    steps_per_epoch = None
    epoch_counter = None  # the counter given to fit(), for the scheduler's length and the test log
    _resumed_counts = None  # (correct, seen) of a training epoch resumed mid-way
    _pending_random_states = None  # restored just before the first resumed batch

    def __init__(
        self,
        modules=None,
        opt_class=None,
        hparams=None,
        run_opts=None,
        checkpointer=None,
        *,
        label_encoder=None,
        train_logger=None,
        augmentation=None,
        lr_scheduler=None,
        test_stats_file=None,
        test_predictions_file=None,
    ):
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        self.label_encoder = label_encoder
        self.train_logger = train_logger
        self.augmentation = augmentation
        self.make_lr_scheduler = lr_scheduler
        self.lr_scheduler = None
        self.test_stats_file = test_stats_file
        self.test_predictions_file = test_predictions_file

    def fit(self, epoch_counter, *args, **kwargs):
        """SpeechBrain's ``fit``; the counter's ``limit`` sets the
        scheduler's length, and its position is logged with the test."""
        self.epoch_counter = epoch_counter
        return super().fit(epoch_counter, *args, **kwargs)

    def compute_forward(self, batch, stage):
        """Waveforms -> logits ``(batch, classes)``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        augment = self.augmentation if stage == sb.Stage.TRAIN else None
        embeddings = self.modules.backbone(wavs, wav_lens, augment=augment)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy; accuracy and confusion statistics on the side."""
        labels = batch.label_encoded.data.view(-1)
        loss = F.cross_entropy(predictions.float(), labels)
        predicted = self._best_used_unit(predictions.detach())
        self.correct += (predicted == labels).sum().item()
        self.seen += labels.numel()
        if stage != sb.Stage.TRAIN:
            self.stats.append(
                ids=batch.id,
                predictions=self._decode(predicted),
                targets=self._decode(labels),
            )
            self.probabilities.extend(predictions.detach().float().softmax(dim=-1).cpu().tolist())
        return loss

    def _best_used_unit(self, logits):
        """The best output unit of each row among those a training label
        maps to: a head wider than the labels present (a miniature dataset,
        a few-shot subset) never predicts a unit no label names, as the
        inference interfaces never return one."""
        width = logits.shape[-1]
        if self.label_encoder is not None and len(self.label_encoder.ind2lab) < width:
            used = torch.zeros(width, dtype=torch.bool, device=logits.device)
            used[[i for i in self.label_encoder.ind2lab if i < width]] = True
            logits = logits.masked_fill(~used, float("-inf"))
        return logits.argmax(dim=-1)

    def _decode(self, indices):
        """Class indices -> labels; an output unit no training label maps to
        (the head may be wider than the labels present) is named as such."""
        if self.label_encoder is None:
            return [str(i) for i in indices.tolist()]
        ind2lab = self.label_encoder.ind2lab
        return [ind2lab.get(i, f"<unused output {i}>") for i in indices.tolist()]

    def on_stage_start(self, stage, epoch=None):
        """Resets the stage's accuracy counts and statistics."""
        self.correct, self.seen = 0, 0
        if stage == sb.Stage.TRAIN and self._resumed_counts is not None:
            self.correct, self.seen = self._resumed_counts  # the epoch's batches before the restart
        self._resumed_counts = None
        self.stats = ClassificationStats()
        self.probabilities = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's loss and accuracy; checkpoints after validation; writes test outputs."""
        if stage == sb.Stage.TRAIN and self._pending_random_states is not None:
            # resumed from a checkpoint taken after the epoch's last batch
            set_random_states(self._pending_random_states)
            self._pending_random_states = None
        stats = {"loss": stage_loss, "acc": self.correct / max(self.seen, 1)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self._log_stats(stats_meta={"epoch": epoch, "lr": lr}, train_stats=self.train_stats, valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta={"acc": stats["acc"]}, max_keys=["acc"])
        else:
            loaded = None if self.epoch_counter is None else self.epoch_counter.current
            self._log_stats(stats_meta={"Epoch loaded": loaded}, test_stats=stats)
            self._write_test_outputs()

    def _log_stats(self, **stats):
        if self.train_logger is not None:
            self.train_logger.log_stats(**stats)
        elif if_main_process():
            logger.info(", ".join(f"{key}: {value}" for key, value in stats.items()))

    def _write_test_outputs(self):
        if not if_main_process():
            return
        if self.test_stats_file:
            with open(self.test_stats_file, "w") as fout:
                self.stats.write_stats(fout)
        if self.test_predictions_file:
            self.write_predictions(self.test_predictions_file)

    def write_predictions(self, path):
        """Per-clip test outputs: ``ID, target, prediction, score`` (the
        predicted class's probability; the prediction is the best unit a
        label maps to) and one ``prob_<label>`` column per
        output unit (softmax probabilities), enough for calibration and
        error analysis without running the model again."""
        width = len(self.probabilities[0]) if self.probabilities else 0
        labels = self._decode(torch.arange(width))
        with open(path, "w", newline="") as fout:
            writer = csv.writer(fout)
            writer.writerow(["ID", "target", "prediction", "score"] + [f"prob_{label}" for label in labels])
            for clip, target, prediction, probs in zip(
                self.stats.ids, self.stats.targets, self.stats.predictions, self.probabilities
            ):
                score = probs[labels.index(prediction)]
                writer.writerow([clip, target, prediction, f"{score:.6g}"] + [f"{p:.6g}" for p in probs])

    def fit_batch(self, batch):
        """SpeechBrain's training step, with the random states kept for exact resume."""
        if self._pending_random_states is not None:
            # After the resumed epoch's loader started (which draws a seed),
            # exactly where the interrupted run saved them.
            set_random_states(self._pending_random_states)
            self._pending_random_states = None
        return super().fit_batch(batch)

    @mark_as_saver
    def _save(self, path):
        torch.save(
            {
                "step": self.step,
                "avg_train_loss": self.avg_train_loss,
                "optimizer_step": self.optimizer_step,
                "correct": getattr(self, "correct", 0),
                "seen": getattr(self, "seen", 0),
                "random_states": random_states(),
            },
            path,
        )

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.step = saved["step"]
        self.avg_train_loss = saved["avg_train_loss"]
        self.optimizer_step = saved["optimizer_step"]
        if end_of_epoch:
            set_random_states(saved["random_states"])
        else:
            self._resumed_counts = (saved["correct"], saved["seen"])
            self._pending_random_states = saved["random_states"]

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the per-step learning-rate schedule after each optimizer step."""
        if should_step and self.lr_scheduler is not None:
            self.lr_scheduler.step()

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; remembers the number of training steps per epoch."""
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.steps_per_epoch = len(loader)
        return loader

    def init_optimizers(self):
        """One optimizer over the trainable tensors only (PETL + head), and
        the per-step scheduler if the hparams ask for one."""
        if self.opt_class is None:
            return
        self.optimizer = self.opt_class(trainable_parameters(self.modules))
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        if self.make_lr_scheduler is None:
            return
        if self.steps_per_epoch is None or self.epoch_counter is None:
            raise RuntimeError("lr_scheduler needs the training loader and epoch counter: call fit() with a train set.")
        steps = math.ceil(self.steps_per_epoch / self.grad_accumulation_factor)
        self.lr_scheduler = self.make_lr_scheduler(self.optimizer, total_steps=steps * self.epoch_counter.limit)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def _wrap_distributed(self):
        """SpeechBrain's DDP wrapping on CUDA; on CPU (gloo) the trainable
        modules are wrapped without device ids, the form DDP takes there.
        The Conformer adapter's MaskedBatchNorm1d takes its statistics over
        every process's real frames itself, on both."""
        if self.distributed_launch and not str(self.device).startswith("cuda"):
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = DistributedDataParallel(
                        module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()

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
