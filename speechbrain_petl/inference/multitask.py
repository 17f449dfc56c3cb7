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

Serving: calls may run from many threads or asyncio tasks at once (each
call's routes live in a context variable, never on the shared sites), and
:meth:`MultiTaskClassifier.add_task` / :meth:`MultiTaskClassifier.remove_task`
change the tasks of a running classifier: calls share a readers-writer
lock, a change takes it alone for the moment it attaches or detaches, so a
call sees the tasks wholly before or wholly after a change.
"""

import contextlib
import threading

import torch

from speechbrain_petl.backbones import Backbone
from speechbrain_petl.data.audio import read_clip
from speechbrain_petl.inference.classifier import (
    FirstTime,
    check_batch_clips,
    check_clips,
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

    def __init__(self, name, lobe, methods, head, labels, folder, max_audio_samples=None, settings_key=None):
        self.name = name
        #: The lobe settings it needs (tasks with equal keys share a lobe).
        self.settings_key = settings_key
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

    def __init__(self, tasks, sample_rate=16000, long_clips="crop", backbone_source=None):
        super().__init__()
        self.tasks = dict(tasks)
        if not self.tasks:
            raise ValueError("A MultiTaskClassifier needs at least one task.")
        self.sample_rate = sample_rate
        self.long_clips = check_long_clips(long_clips)
        #: Where :meth:`add_task` loads a lobe for new settings from (None:
        #: the source the task's folder records).
        self.backbone_source = backbone_source
        self._crop_notice = FirstTime()
        # Calls share it; add_task/remove_task publish under it alone.
        self._calls = ReadersWriterLock()
        # One add_task/remove_task at a time (calls go on meanwhile).
        self._changes = threading.Lock()
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
            :meth:`add_task` loads from there too.
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
            _check_task_name(name)
            task_folder = InferenceFolder.read(folder, overrides.get(name))
            sample_rates[name] = task_folder.sample_rate
            key = _settings_key(task_folder)
            lobe, _ = _lobe_for(task_folder, key, lobes, backbone_source)
            lobes[key] = lobe
            tasks[name] = _attach_task(name, task_folder, lobe, key)
        if len(set(sample_rates.values())) > 1:
            raise ValueError(f"The tasks expect different sample rates: {sample_rates}; serve them separately.")
        server = cls(tasks, sample_rate=next(iter(sample_rates.values())), long_clips=long_clips,
                     backbone_source=backbone_source)
        return server.to(device)

    def add_task(self, name, folder, overrides=None):
        """Loads one more inference folder onto the running classifier.

        The task's methods attach to the lobe of its settings group; a task
        with new lobe settings gets a lobe of its own that shares every
        frozen tensor of equal content with the others (as
        :meth:`from_folders` does: that lobe is read from
        :attr:`backbone_source`, or the folder's source, then its duplicate
        tensors are dropped). Calls from other threads go on while the
        folder is read; the task is then attached and published alone
        (calls wait a moment), so a call sees it wholly or not at all.
        Refused, changing nothing, for a name in use, another sample rate,
        a folder of another backbone (fingerprint) or full fine-tuning.

        Example
        -------
        >>> from speechbrain_petl.backbones import AST, tiny_config
        >>> from speechbrain_petl.methods import BitFit, LoRA
        >>> from speechbrain_petl.inference.folder import label_encoder, write_inference_folder
        >>> tmp = getfixture("tmp_path")
        >>> AST(tiny_config("ast"), pretrained=False, max_frames=64).save_pretrained(tmp / "ast")
        >>> def task_folder(name, method):
        ...     lobe, head = AST(str(tmp / "ast"), max_frames=64, petl=method), torch.nn.Linear(32, 2)
        ...     return write_inference_folder(tmp / name, lobe, head, label_encoder(["no", "yes"]))
        >>> _ = task_folder("rain", BitFit())
        >>> server = MultiTaskClassifier.from_folders({"dogs": task_folder("dogs", LoRA(rank=2))})
        >>> before = server.resident_bytes()
        >>> server.add_task("rain", tmp / "rain")
        >>> server.classify_batch(torch.randn(2, 8000), tasks=["rain", "dogs"])[3][0] in ("no", "yes")
        True
        >>> server.remove_task("rain")
        >>> sorted(server.tasks), server.resident_bytes() == before
        (['dogs'], True)
        """
        _check_task_name(name)
        task_folder = InferenceFolder.read(folder, overrides)
        if task_folder.sample_rate != self.sample_rate:
            raise ValueError(
                f"{folder} expects {task_folder.sample_rate} Hz, the classifier's tasks {self.sample_rate} Hz; "
                "serve it separately."
            )
        key = _settings_key(task_folder)
        with self._changes:
            self._refuse_taken(name)
            lobes = {task.settings_key: task.lobe for task in self.tasks.values()}
            lobe, new_lobe = _lobe_for(task_folder, key, lobes, self.backbone_source)
            if new_lobe:
                lobe.to(self._device())
            with self._calls.writing():
                task = _attach_task(name, task_folder, lobe, key)
                for method in task.methods:
                    lobe.petl[method].to(self._device())
                task.head.to(self._device())
                self.tasks[name] = task
                self.heads[name] = task.head
                if new_lobe:
                    self.lobes.append(lobe)

    def remove_task(self, name):
        """Removes task ``name``: its methods detach from their lobe, its
        head goes, and a lobe no task uses any more is dropped, so memory
        returns to what it was before the task came (:meth:`resident_bytes`).
        Calls running meanwhile finish first; later calls naming it are
        refused as unknown. The last task cannot be removed (the
        classifier holds the backbone for its tasks; add another first)."""
        with self._changes, self._calls.writing():
            if name not in self.tasks:
                raise KeyError(f"No task named {name!r}; loaded: {sorted(self.tasks)}")
            if len(self.tasks) == 1:
                raise ValueError(
                    f"{name!r} is the classifier's last task; add another before removing it "
                    "(the classifier keeps the backbone for its tasks)."
                )
            task = self.tasks[name]
            for method in task.methods:
                task.lobe.detach(method)
            del self.tasks[name]
            del self.heads[name]
            if not any(other.lobe is task.lobe for other in self.tasks.values()):
                self.lobes = torch.nn.ModuleList([lobe for lobe in self.lobes if lobe is not task.lobe])

    def _refuse_taken(self, name):
        if name in self.tasks:
            raise ValueError(f"A task named {name!r} is loaded already; remove_task({name!r}) first.")

    def _device(self):
        return next(self.lobes[0].parameters()).device

    # -------------------------------------------------------------- inference
    def classify_batch(self, wavs, wav_lens=None, tasks=None, long_clips=None):
        """Classifies each clip of ``(batch, samples)`` waveforms with its task.

        Safe from many threads or asyncio tasks at once, also while tasks
        are added or removed. A batch with a bad clip (empty, NaN/Inf
        samples, too short for its task's lobe, a relative length outside
        (0, 1], an unknown task) is refused whole, with one error naming
        every bad clip; no clip is classified.

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
        tasks = list(tasks)
        names = [f"clip {i} of the batch" for i in range(batch)]
        lengths = clip_lengths(wavs, wav_lens)
        with self._calls.reading():
            self._check_tasks(tasks, names)
            check_batch_clips(wavs, lengths, [self.tasks[task].lobe.min_samples for task in tasks], self.sample_rate)
            return self._classify(wavs, wav_lens, lengths, tasks, names, long_clips)

    def _check_tasks(self, tasks, names):
        """Refuses task names not loaded, naming the clips that ask for them."""
        unknown = {}
        for task, name in zip(tasks, names):
            if task not in self.tasks:
                unknown.setdefault(task, []).append(name)
        if unknown:
            where = "; ".join(f"{task!r}: {', '.join(clips)}" for task, clips in unknown.items())
            raise KeyError(f"Unknown tasks {sorted(unknown, key=str)} ({where}); loaded: {sorted(self.tasks)}")

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
                if not rows:
                    continue
                if len(rows) == len(tasks):  # one settings group: no copy of the batch
                    outputs = self._run_group(lobe, wavs, wav_lens, tasks)
                else:
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
        device = x.device
        rows_of = {name: [i for i, own in enumerate(tasks) if own == name] for name in requested}
        # Each pass runs the upper blocks on some clips: the tasks routed per
        # sample together, then each task that needs a sub-batch of its own.
        passes = []
        routed = [name for name, task in requested.items() if task.per_sample]
        if routed:
            rows = sorted(i for name in routed for i in rows_of[name])
            position = {clip: j for j, clip in enumerate(rows)}
            routes = {}
            for name in routed:
                own = None if len(routed) == 1 else torch.tensor([position[i] for i in rows_of[name]], device=device)
                routes.update((method, own) for method in requested[name].methods)
            passes.append((rows, routes))
        for name, task in requested.items():
            if not task.per_sample:
                passes.append((rows_of[name], {method: None for method in task.methods}))
        if len(passes) == 1:  # every clip in one pass: no copies of the tokens
            (rows, routes), = passes
            with lobe.routed(routes):
                embeddings = lobe.finish(*lobe.run_layers(x, mask, shared_until))
        else:
            embeddings = torch.empty(len(tasks), lobe.hidden_size, dtype=x.dtype, device=device)
            for rows, routes in passes:
                index = torch.tensor(rows, device=device)
                with lobe.routed(routes):
                    h, m = lobe.run_layers(x.index_select(0, index), _rows(mask, index), shared_until)
                    embeddings.index_copy_(0, index, lobe.finish(h, m))
        outputs = [None] * len(tasks)
        for name, task in requested.items():  # one head call per task, on all its clips
            rows = rows_of[name]
            own = embeddings if len(rows) == len(tasks) else embeddings.index_select(0, torch.tensor(rows, device=device))
            for i, log_probs in zip(rows, torch.log_softmax(task.head(own), dim=-1)):
                outputs[i] = log_probs
        return outputs

    def classify_files(self, paths, tasks, long_clips=None):
        """Classifies audio files, each with its task (the ``classify_batch``
        tuple); files are resampled, and long ones handled as ``long_clips``
        says (as in ``classify_batch``; errors and notices name the file).
        Files that cannot be classified are refused as in ``classify_batch``:
        the whole call, naming every bad file."""
        paths, tasks = list(paths), list(tasks)
        if not paths:
            raise ValueError("classify_files got no files: nothing to classify.")
        if len(paths) != len(tasks):
            raise ValueError(f"{len(paths)} files but {len(tasks)} task names.")
        names = [str(path) for path in paths]
        with self._calls.reading():
            self._check_tasks(tasks, names)
        clips = [read_clip(path, self.sample_rate) for path in paths]
        with self._calls.reading():
            self._check_tasks(tasks, names)  # again: a task may have gone meanwhile
            check_clips(clips, names, [self.tasks[task].lobe.min_samples for task in tasks], self.sample_rate)
            longest = max(len(clip) for clip in clips)
            wavs = torch.zeros(len(clips), longest)
            for i, clip in enumerate(clips):
                wavs[i, : len(clip)] = clip
            wav_lens = torch.tensor([len(clip) / longest for clip in clips])
            return self._classify(wavs, wav_lens, [len(clip) for clip in clips], tasks, names, long_clips)

    def resident_bytes(self):
        """Bytes of every distinct tensor the classifier holds (shared ones once)."""
        with self._calls.reading():
            return resident_bytes(self)


class ReadersWriterLock:
    """Many readers at once, or one writer alone; a waiting writer keeps new
    readers out, so it is not starved by a stream of calls. Not reentrant.

    Example
    -------
    >>> lock = ReadersWriterLock()
    >>> with lock.reading(), lock.reading():  # readers share
    ...     pass
    >>> with lock.writing():
    ...     pass
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def reading(self):
        """Held by a call for its whole duration."""
        with self._condition:
            while self._writing or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self):
        """Held alone, while no call runs."""
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


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


def _lobe_for(task_folder, key, lobes, backbone_source):
    """``(lobe, new)``: the lobe of settings ``key`` among ``lobes``
    (``{key: lobe}``), or a new one read from ``backbone_source`` (else the
    folder's source) that shares every equal frozen tensor with the others."""
    if key in lobes:
        return lobes[key], False
    lobe = task_folder.lobe(backbone_source)
    if lobes:
        _share_frozen_tensors(next(iter(lobes.values())), lobe, task_folder.path)
    return lobe, True


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


def _rows(t, index):
    """Those rows of ``t`` (None stays None)."""
    return None if t is None else t.index_select(0, index)


def _check_task_name(name):
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"Task names must be non-empty strings without dots, got {name!r}")


def _settings_key(folder):
    """Tasks whose folders give equal keys share a lobe."""
    return (folder.lobe_class, repr(sorted(folder.lobe_settings.items())))


def _attach_task(name, folder, lobe, settings_key=None):
    """Attaches the folder's methods to ``lobe`` under the task's name and
    loads their trained tensors, after checking the fingerprint; on any
    failure, what was attached is detached again (the lobe is left as it was)."""
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
    unused = sorted(key for key in state if not any(key.startswith(f"petl.{o}.") for o in methods))
    if unused:
        raise RuntimeError(f"{ckpt} holds tensors of no method the yaml names: {unused[:5]}")
    names = []
    done = False
    try:
        for original, method in methods.items():
            attached = name if len(methods) == 1 else f"{name}_{original}"
            lobe.attach(method, attached, active=False)
            names.append(attached)
            prefix = f"petl.{original}."
            own = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            try:
                method.load_state_dict(own, strict=True)
            except RuntimeError as err:
                raise RuntimeError(f"{ckpt}: the tensors of method '{original}' do not fit it: {err}") from None
            method.eval()
        task = Task(name, lobe, names, head, folder.labels, str(folder.path), folder.max_audio_samples, settings_key)
        done = True
    finally:
        if not done:
            for attached in reversed(names):
                lobe.detach(attached)
    return task


__all__ = ["MultiTaskClassifier", "ReadersWriterLock", "Task", "resident_bytes"]
