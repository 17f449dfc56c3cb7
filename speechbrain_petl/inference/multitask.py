"""One frozen backbone serving many trained tasks, sample by sample.

:meth:`MultiTaskClassifier.from_folders` loads N inference folders (written
by :func:`~speechbrain_petl.inference.folder.write_inference_folder`, possibly
with different PETL methods)
onto **one** backbone: each task's methods attach under the task's name,
after its fingerprint is checked against the backbone, and its head and
labels sit beside. Tasks whose input settings differ (AST's ``max_frames``:
100 for Speech Commands, 500 for ESC-50) get a lobe each, but those lobes
share every frozen tensor whose content is identical (all but AST's
position embeddings), so the weights are resident once.

:meth:`MultiTaskClassifier.classify_batch` routes each sample to its task.
Within one settings group, one call

1. computes the features and the embeddings (fbank, patch embedding, or
   Wav2Vec2's CNN) once for the whole group;
2. runs the blocks below the lowest one any requested task adapts once for
   the whole group (a task restricted to the top layers leaves the lower
   blocks shared);
3. runs the remaining blocks **once** for every task whose methods keep the
   number of tokens (LoRA, bottleneck and Conformer adapters, BitFit,
   linear probing), each sample seeing only its own task's hooks and
   parameter copies (the sites' per-owner routing, see
   :meth:`speechbrain_petl.backbones.Backbone.routed`);
4. runs them once per task for methods that change the number of tokens or
   keys (prompts, prefixes), on that task's sub-batch;
5. applies each task's head to its samples.

Each sample's result equals what its task's single-task model gives, on
clips of any length: a clip longer than its task's crop length is cropped,
classified in windows or refused as ``long_clips`` says
(:data:`~speechbrain_petl.inference.classifier.LONG_CLIP_POLICIES`), as
:class:`~speechbrain_petl.inference.AudioClassifier` does.
Full fine-tuning cannot share a backbone and is refused.
"""

import torch

from speechbrain_petl.backbones import Backbone
from speechbrain_petl.data.audio import read_clip
from speechbrain_petl.inference.classifier import (
    FirstTime,
    check_long_clips,
    checked_batch,
    classify_spans,
    clip_lengths,
    clip_spans,
    log_crop,
)
from speechbrain_petl.inference.folder import InferenceFolder, best_used_output, unused_outputs


class Task:
    """One trained task on a shared lobe: its methods' names there, head and labels.

    Arguments
    ---------
    name : str
        The task's name (the key given to ``from_folders``).
    lobe : speechbrain_petl.backbones.Backbone
        The (shared) lobe its methods are attached to.
    methods : list of str
        Names of its methods, already attached to ``lobe``.
    head : torch.nn.Module
        Its classification head (embeddings -> logits).
    labels : list of str
        The label of each output unit.
    folder : str
        Where it was loaded from.
    max_audio_samples : int, optional
        Clips are cropped to this many samples, as in training (folders
        written before the lobe's ``max_samples`` recorded it).
    """

    def __init__(self, name, lobe, methods, head, labels, folder, max_audio_samples=None):
        self.name = name
        self.lobe = lobe
        self.methods = list(methods)
        self.head = head
        self.labels = list(labels)
        self.folder = folder
        self.max_audio_samples = max_audio_samples
        # Fixed once the methods are attached: computed here, not on every call.
        #: The lowest block the task's methods touch (the blocks below are shared).
        self.first_layer = lobe.first_layer_used(self.methods)
        #: Whether the task runs routed per sample (else on a sub-batch of its own).
        self.per_sample = not any(lobe.needs_own_batch(name) for name in self.methods)
        #: Output units no training label maps to: never the best class.
        self.unused_outputs = unused_outputs(self.labels)

    @property
    def max_samples(self):
        """The task's crop length: its lobe's ``max_samples``, or its
        ``max_audio_samples`` where smaller; None: no limit."""
        limits = [limit for limit in (self.lobe.max_samples, self.max_audio_samples) if limit is not None]
        return min(limits) if limits else None


class MultiTaskClassifier(torch.nn.Module):
    """Several trained tasks on one frozen backbone, routed per sample.

    Build it with :meth:`from_folders`. See the module docstring for how a
    mixed batch is computed.

    Arguments
    ---------
    tasks : dict
        ``{name: Task}``.
    sample_rate : int
        The rate every task expects.
    long_clips : str
        What to do with a clip longer than its task's crop length:
        ``"crop"`` (default), ``"windows"`` or ``"refuse"``
        (:data:`~speechbrain_petl.inference.classifier.LONG_CLIP_POLICIES`).

    Example
    -------
    >>> import pathlib
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> from speechbrain_petl.methods import BitFit, LoRA
    >>> from speechbrain_petl.inference.folder import label_encoder, write_inference_folder
    >>> tmp = getfixture("tmp_path")
    >>> AST(tiny_config("ast"), pretrained=False, max_frames=64).save_pretrained(tmp / "ast")
    >>> for name, method in [("dogs", LoRA(rank=2)), ("rain", BitFit())]:
    ...     lobe = AST(str(tmp / "ast"), max_frames=64, petl=method)
    ...     _ = write_inference_folder(tmp / name, lobe, torch.nn.Linear(32, 2), label_encoder(["no", "yes"]))
    >>> classifier = MultiTaskClassifier.from_folders({"dogs": tmp / "dogs", "rain": tmp / "rain"})
    >>> log_probs, scores, indices, labels = classifier.classify_batch(
    ...     torch.randn(3, 8000), tasks=["dogs", "rain", "dogs"])
    >>> len(log_probs), labels[1] in ("no", "yes")
    (3, True)
    """

    def __init__(self, tasks, sample_rate=16000, long_clips="crop"):
        super().__init__()
        self.tasks = dict(tasks)
        self.sample_rate = sample_rate
        self.long_clips = check_long_clips(long_clips)
        self._crop_notice = FirstTime()
        lobes = []
        for task in self.tasks.values():
            if not any(task.lobe is lobe for lobe in lobes):
                lobes.append(task.lobe)
        self.lobes = torch.nn.ModuleList(lobes)
        self.heads = torch.nn.ModuleDict({name: task.head for name, task in self.tasks.items()})
        self.eval()

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_folders(cls, folders, savedir=None, backbone_source=None, device="cpu", overrides=None,
                     long_clips="crop"):
        """Loads inference folders onto one backbone.

        A folder whose yaml differs from the settings it was trained with
        is refused, naming the key, unless its ``overrides`` name that key.

        Arguments
        ---------
        folders : dict
            ``{task name: inference folder}``; names are non-empty strings
            without dots.
        savedir : str, optional
            Accepted for symmetry with ``from_hparams``; local folders are
            read in place, so nothing is copied.
        backbone_source : str, optional
            Where the frozen weights are, instead of the source the first
            folder records (every folder's fingerprint is checked anyway).
        device : str
            Where the modules run.
        overrides : dict, optional
            ``{task name: overrides}``, each HyperPyYAML overrides of that
            folder's yaml as ``AudioClassifier.from_hparams`` takes them
            (e.g. ``{"dogs": {"embedding_model": {"pooling": "cls"}}}``).
        long_clips : str
            See the class's arguments.
        """
        if not isinstance(folders, dict) or not folders:
            raise ValueError("folders must be a non-empty dict {task name: inference folder}.")
        overrides = dict(overrides or {})
        strangers = sorted(set(overrides) - set(folders), key=str)
        if strangers:
            raise KeyError(f"overrides name tasks {strangers} that folders does not: {sorted(folders, key=str)}")
        del savedir  # folders are read where they are
        lobes = {}  # settings key -> lobe
        tasks = {}
        sample_rates = {}
        for name, folder in folders.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Task names must be non-empty strings without dots, got {name!r}")
            task_folder = InferenceFolder.read(folder, overrides.get(name))
            sample_rates[name] = task_folder.sample_rate
            key = (task_folder.lobe_class, repr(sorted(task_folder.lobe_settings.items())))
            if key not in lobes:
                lobe = task_folder.lobe(backbone_source)
                first = next(iter(lobes.values()), None)
                if first is not None:
                    _share_frozen_tensors(first, lobe, folder)
                lobes[key] = lobe
            tasks[name] = _attach_task(name, task_folder, lobes[key])
        if len(set(sample_rates.values())) > 1:
            raise ValueError(f"The tasks expect different sample rates: {sample_rates}; serve them separately.")
        return cls(tasks, sample_rate=next(iter(sample_rates.values())), long_clips=long_clips).to(device)

    # -------------------------------------------------------------- inference
    def classify_batch(self, wavs, wav_lens=None, tasks=None, long_clips=None):
        """Classifies each clip of ``(batch, samples)`` waveforms with its task.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)`` float waveforms at :attr:`sample_rate`.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` relative lengths in (0, 1].
        tasks : list of str
            The task of each clip.
        long_clips : str, optional
            This call's policy for clips longer than their task's crop
            length (default: the classifier's ``long_clips``).

        Returns
        -------
        (list of log-probability tensors, best log-probabilities (batch,), best indices (batch,), labels)
            Tasks have different numbers of classes, so log-probabilities
            come as one tensor per clip.
        """
        wavs, wav_lens = checked_batch(wavs, wav_lens)
        batch = wavs.shape[0]
        if tasks is None or isinstance(tasks, str) or len(tasks) != batch:
            found = "none" if tasks is None else repr(tasks) if isinstance(tasks, str) else f"{len(tasks)} names"
            raise ValueError(f"tasks must name the task of each of the {batch} clips, got {found}")
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise KeyError(f"Unknown tasks {unknown}; loaded: {sorted(self.tasks)}")
        tasks = list(tasks)
        lengths = clip_lengths(wavs, wav_lens)
        return self._classify(wavs, wav_lens, lengths, tasks, [f"clip {i} of the batch" for i in range(batch)],
                              long_clips)

    def _classify(self, wavs, wav_lens, lengths, tasks, names, long_clips):
        """The ``classify_batch`` tuple, each clip longer than its task's
        crop length handled as ``long_clips`` says."""
        policy = check_long_clips(long_clips or self.long_clips)
        limits = [self.tasks[task].max_samples for task in tasks]
        spans = clip_spans(lengths, limits, policy, names, self.sample_rate)
        if all(own == [(0, length)] for own, length in zip(spans, lengths)):
            log_probs = self._log_probs(wavs, wav_lens, tasks)
        else:
            if policy == "crop" and self._crop_notice.claim():
                cropped = next(i for i, own in enumerate(spans) if own[0][1] < lengths[i])
                log_crop(names[cropped], lengths[cropped], limits[cropped], self.sample_rate)
            log_probs = classify_spans(
                lambda w, lens, clips: self._log_probs(w, lens, [tasks[clip] for clip in clips]),
                wavs, spans, len(lengths),
            )
        best = [best_used_output(lp, self.tasks[task].unused_outputs) for lp, task in zip(log_probs, tasks)]
        scores = torch.stack([score for score, _ in best])
        indices = torch.stack([index for _, index in best])
        labels = [self.tasks[task].labels[index] for task, index in zip(tasks, indices.tolist())]
        return log_probs, scores, indices, labels

    def _log_probs(self, wavs, wav_lens, tasks):
        """Each clip's log-probabilities under its task (a list: tasks have
        different numbers of classes)."""
        device = next(self.parameters()).device
        wavs, wav_lens = wavs.to(device), wav_lens.to(device)
        log_probs = [None] * len(tasks)
        with torch.no_grad():
            for lobe in self.lobes:
                rows = [i for i, task in enumerate(tasks) if self.tasks[task].lobe is lobe]
                if rows:
                    group = torch.tensor(rows, device=device)
                    outputs = self._run_group(lobe, wavs[group], wav_lens[group], [tasks[i] for i in rows])
                    for i, output in zip(rows, outputs):
                        log_probs[i] = output
        return log_probs

    def _run_group(self, lobe, wavs, wav_lens, tasks):
        """Log-probabilities of the clips of one settings group (see the module docstring)."""
        requested = {name: self.tasks[name] for name in dict.fromkeys(tasks)}
        shared_until = min(task.first_layer for task in requested.values())
        with lobe.routed({}):  # no task's method below shared_until
            x, mask = lobe.embed(wavs, wav_lens)
            x, mask = lobe.run_layers(x, mask, 0, shared_until)
        embeddings = torch.empty(len(tasks), lobe.hidden_size, dtype=x.dtype, device=x.device)

        def rows_of(names):
            """Indices of the clips whose task is in ``names``."""
            return torch.tensor([i for i, task in enumerate(tasks) if task in names], device=x.device)

        def pick(t, rows):
            """Those rows of ``t`` (None stays None)."""
            return None if t is None else t.index_select(0, rows)

        routed = [name for name, task in requested.items() if task.per_sample]
        if routed:
            rows = rows_of(routed)
            sub_tasks = [tasks[j] for j in rows.tolist()]
            routes = {}
            for name in routed:
                task_rows = torch.tensor([i for i, t in enumerate(sub_tasks) if t == name], device=x.device)
                for method in requested[name].methods:
                    routes[method] = None if len(task_rows) == len(sub_tasks) else task_rows
            with lobe.routed(routes):
                h, m = lobe.run_layers(pick(x, rows), pick(mask, rows), shared_until)
                embeddings.index_copy_(0, rows, lobe.finish(h, m))
        for name, task in requested.items():
            if task.per_sample:
                continue
            rows = rows_of([name])
            with lobe.routed({method: None for method in task.methods}):
                h, m = lobe.run_layers(pick(x, rows), pick(mask, rows), shared_until)
                embeddings.index_copy_(0, rows, lobe.finish(h, m))
        outputs = []
        for i, name in enumerate(tasks):
            logits = self.tasks[name].head(embeddings[i : i + 1])
            outputs.append(torch.log_softmax(logits, dim=-1)[0])
        return outputs

    def classify_files(self, paths, tasks, long_clips=None):
        """Classifies audio files, each with its task (the ``classify_batch``
        tuple); files are resampled, and long ones handled as ``long_clips``
        says (as in ``classify_batch``; errors and notices name the file)."""
        if len(paths) != len(tasks):
            raise ValueError(f"{len(paths)} files but {len(tasks)} task names.")
        clips = []
        for path, task in zip(paths, tasks):
            if task not in self.tasks:
                raise KeyError(f"Unknown task {task!r}; loaded: {sorted(self.tasks)}")
            clips.append(read_clip(path, self.sample_rate))
        longest = max(len(clip) for clip in clips)
        wavs = torch.zeros(len(clips), longest)
        for i, clip in enumerate(clips):
            wavs[i, : len(clip)] = clip
        wav_lens = torch.tensor([len(clip) / longest for clip in clips])
        return self._classify(wavs, wav_lens, [len(clip) for clip in clips], list(tasks), [str(p) for p in paths],
                              long_clips)

    def resident_bytes(self):
        """Bytes of every distinct tensor the classifier holds (shared ones once)."""
        return resident_bytes(self)


def resident_bytes(*modules):
    """Bytes of the distinct tensor storages reachable from ``modules``
    (their parameters and buffers, and those of a lobe's Hugging Face model).

    Example
    -------
    >>> layer = torch.nn.Linear(4, 4)
    >>> resident_bytes(layer, layer)
    80
    """
    seen, total = set(), 0
    for module in modules:
        tensors = list(module.parameters()) + list(module.buffers())
        for lobe in module.modules():
            if isinstance(lobe, Backbone):
                tensors += lobe.resident_tensors()
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def _share_frozen_tensors(first, lobe, folder):
    """Makes ``lobe`` use ``first``'s frozen tensors wherever name, shape and
    content agree (every weight but, for AST, the resized positions)."""
    if type(first) is not type(lobe):
        raise ValueError(
            f"{folder} was trained on a {type(lobe).__name__}, the other tasks on a "
            f"{type(first).__name__}: one classifier serves one backbone."
        )
    theirs = dict(first.named_parameters())
    for name, param in list(lobe.named_parameters()):
        other = theirs.get(name)
        if name.startswith("petl.") or other is None or other.shape != param.shape:
            continue
        if torch.equal(other, param):
            owner_path, _, leaf = name.rpartition(".")
            setattr(lobe.get_submodule(owner_path), leaf, other)


def _attach_task(name, folder, lobe):
    """Attaches the folder's methods to ``lobe`` under the task's name and
    loads their trained tensors, after checking the fingerprint."""
    ckpt = folder.path / "embedding_model.ckpt"
    trained = folder.trained_state()
    state = trained["state"]
    outside = sorted(key for key in state if not key.startswith("petl."))
    methods = folder.methods()
    if outside or any(m.trains_backbone_weights for m in methods.values()):
        raise ValueError(
            f"{folder.path} is full fine-tuning: its task changes the backbone's own weights, "
            "so it cannot share a backbone. Load it alone with AudioClassifier.from_hparams."
        )
    lobe.check_fingerprint(trained["fingerprint"], source=str(ckpt))
    head = folder.head().eval()
    folder.check_settings(lobe, methods, head)
    names = []
    for original, method in methods.items():
        attached = name if len(methods) == 1 else f"{name}_{original}"
        lobe.attach(method, attached, active=False)
        prefix = f"petl.{original}."
        own = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        try:
            method.load_state_dict(own, strict=True)
        except RuntimeError as err:
            raise RuntimeError(f"{ckpt}: the tensors of method '{original}' do not fit it: {err}") from None
        method.eval()
        names.append(attached)
    unused = sorted(key for key in state if not any(key.startswith(f"petl.{o}.") for o in methods))
    if unused:
        raise RuntimeError(f"{ckpt} holds tensors of no method the yaml names: {unused[:5]}")
    return Task(name, lobe, names, head, folder.labels, str(folder.path), folder.max_audio_samples)


__all__ = ["MultiTaskClassifier", "Task", "resident_bytes"]
