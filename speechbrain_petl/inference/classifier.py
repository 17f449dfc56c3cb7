"""``AudioClassifier``: one trained task through SpeechBrain's interfaces.

An inference folder (:mod:`speechbrain_petl.inference.folder`) loads with

* :meth:`AudioClassifier.from_hparams` (this module),
* SpeechBrain's stock ``EncoderClassifier.from_hparams`` (the yaml names its
  modules the way that interface expects: ``compute_features`` and
  ``mean_var_norm`` pass waveforms through, ``embedding_model`` is the lobe,
  ``classifier`` returns log-probabilities),
* or ``speechbrain.inference.interfaces.foreign_class``.

All return SpeechBrain's usual ``(log-probabilities, best log-probability,
best index, labels)``, and all crop a clip to the lobe's
:attr:`~speechbrain_petl.backbones.Backbone.max_samples`, so they agree on
clips of any length. Our interfaces (:class:`AudioClassifier`, and
:class:`~speechbrain_petl.inference.MultiTaskClassifier`, which shares this
module's helpers) can instead classify a long clip whole in windows, or
refuse it: see :data:`LONG_CLIP_POLICIES`.
"""

import logging
import math
import os
import threading

import torch
from speechbrain.inference.classifiers import EncoderClassifier

from speechbrain_petl.backbones.base import crop_batch
from speechbrain_petl.backbones.precision import BACKBONE_DTYPES
from speechbrain_petl.data.audio import read_clip
from speechbrain_petl.data.files import reading_folder
from speechbrain_petl.hyperyaml import import_path
from speechbrain_petl.inference.folder import (
    SETTINGS_DIGEST_KEY,
    SETTINGS_KEY,
    InferenceFolder,
    PassThrough,
    best_used_output,
    check_folder,
    check_output_settings,
    head_outputs,
    label_encoder,
    output_labels,
    output_settings,
    override_keys,
    unused_outputs,
)
from speechbrain_petl.studies.runs import load_run

logger = logging.getLogger(__name__)

#: What the inference interfaces do with a clip longer than the model's
#: crop length (``max_samples``: the recipe's ``max_audio_samples``, AST's
#: ``max_frames``, Whisper's 30 s window):
#:
#: * ``"crop"`` (default): classify its first ``max_samples`` samples, as
#:   training did and as SpeechBrain's stock interface does; logged once
#:   per interface, naming the first clip cropped;
#: * ``"windows"``: classify it whole, in windows of ``max_samples`` samples
#:   every ``max_samples // 2`` samples (the last window ends at the clip's
#:   end), and average the windows' posterior probabilities; a clip no
#:   longer than ``max_samples`` is one window, so it gets what ``"crop"``
#:   gives;
#: * ``"refuse"``: raise a ValueError naming the clip, its length and the limit.
LONG_CLIP_POLICIES = ("crop", "windows", "refuse")


def check_long_clips(policy):
    """``policy`` if it is one of :data:`LONG_CLIP_POLICIES`, else a ValueError.

    Example
    -------
    >>> check_long_clips("trim")
    Traceback (most recent call last):
     ...
    ValueError: long_clips must be one of ('crop', 'windows', 'refuse'), got 'trim'
    """
    if policy not in LONG_CLIP_POLICIES:
        raise ValueError(f"long_clips must be one of {LONG_CLIP_POLICIES}, got {policy!r}")
    return policy


def window_spans(length, window):
    """``(start, stop)`` of the windows that cover a clip of ``length``
    samples: ``window`` samples every ``window // 2``, the last one ending at
    the clip's end; a clip no longer than ``window`` is one span.

    Example
    -------
    >>> window_spans(10, 4)
    [(0, 4), (2, 6), (4, 8), (6, 10)]
    >>> window_spans(9, 4), window_spans(3, 4)
    ([(0, 4), (2, 6), (4, 8), (5, 9)], [(0, 3)])
    """
    if length <= window:
        return [(0, length)]
    hop = max(1, window // 2)
    starts = list(range(0, length - window, hop)) + [length - window]
    return [(start, start + window) for start in starts]


def clip_spans(lengths, limits, policy, names, sample_rate):
    """Per clip, the ``(start, stop)`` spans of it that ``policy`` (see
    :data:`LONG_CLIP_POLICIES`) classifies, given each clip's length and
    crop length (None: no limit). ``"refuse"`` raises here, naming the clip.

    Example
    -------
    >>> clip_spans([3, 10], [4, 4], "crop", ["a", "b"], 16000)
    [[(0, 3)], [(0, 4)]]
    >>> clip_spans([3, 10], [4, None], "refuse", ["a", "b"], 16000)
    [[(0, 3)], [(0, 10)]]
    """
    spans = []
    for length, limit, name in zip(lengths, limits, names):
        if limit is None or length <= limit:
            spans.append([(0, length)])
        elif policy == "refuse":
            raise ValueError(
                f"{name} is {length} samples long ({length / sample_rate:.2f} s); this model takes at most "
                f"{limit} samples ({limit / sample_rate:.2f} s) and long_clips='refuse'. Pass "
                f"long_clips='crop' (its first {limit} samples, as in training) or 'windows' (windows of "
                f"{limit} samples, posteriors averaged) to classify it."
            )
        elif policy == "crop":
            spans.append([(0, limit)])
        else:
            spans.append(window_spans(length, limit))
    return spans


def classify_spans(log_probs_of, wavs, spans, batch_size):
    """Each clip's log posterior over its ``spans`` (from :func:`clip_spans`):
    the log of the mean of its spans' posterior probabilities.

    ``log_probs_of(wavs, wav_lens, clips)`` classifies a zero-padded batch of
    spans (``clips``: the clip each row was cut from) and returns one
    log-probability vector per row; spans are classified ``batch_size`` at a
    time. Returns the list of each clip's log-probabilities.
    """
    pieces = [(clip, start, stop) for clip, own in enumerate(spans) for start, stop in own]
    outputs = [[] for _ in spans]
    for first in range(0, len(pieces), max(1, batch_size)):
        chunk = pieces[first : first + max(1, batch_size)]
        width = max(stop - start for _, start, stop in chunk)
        batch = wavs.new_zeros(len(chunk), width)
        for row, (clip, start, stop) in enumerate(chunk):
            batch[row, : stop - start] = wavs[clip, start:stop]
        wav_lens = torch.tensor([(stop - start) / width for _, start, stop in chunk])
        for (clip, _, _), log_probs in zip(chunk, log_probs_of(batch, wav_lens, [clip for clip, _, _ in chunk])):
            outputs[clip].append(log_probs)
    return [
        own[0] if len(own) == 1 else torch.logsumexp(torch.stack(own), dim=0) - math.log(len(own))
        for own in outputs
    ]


def checked_batch(wavs, wav_lens=None):
    """``(wavs, wav_lens)`` for ``classify_batch``: float ``(batch, samples)``
    waveforms and relative lengths in (0, 1] (all ones when None); anything
    else is refused with an error that says what was expected.

    Example
    -------
    >>> checked_batch(torch.zeros(2, 10, dtype=torch.int16))
    Traceback (most recent call last):
     ...
    TypeError: classify_batch expects float waveforms (samples in [-1, 1]), got torch.int16: convert integer PCM first (int16: wavs.float() / 32768)
    >>> checked_batch(torch.zeros(2, 10), torch.tensor([1.0, 1.5]))
    Traceback (most recent call last):
     ...
    ValueError: wav_lens must be relative lengths in (0, 1]; clip 1 of the batch has 1.5 (no clip was classified)
    """
    if not isinstance(wavs, torch.Tensor) or wavs.dim() != 2:
        shape = tuple(wavs.shape) if isinstance(wavs, torch.Tensor) else type(wavs).__name__
        raise ValueError(f"classify_batch expects (batch, samples) waveforms, got {shape}")
    if not wavs.is_floating_point():
        raise TypeError(
            f"classify_batch expects float waveforms (samples in [-1, 1]), got {wavs.dtype}: "
            "convert integer PCM first (int16: wavs.float() / 32768)"
        )
    batch = wavs.shape[0]
    if batch == 0:
        raise ValueError("classify_batch got an empty batch (0 clips): nothing to classify.")
    if wav_lens is None:
        wav_lens = torch.ones(batch)
    if not isinstance(wav_lens, torch.Tensor) or wav_lens.shape != (batch,):
        shape = tuple(wav_lens.shape) if isinstance(wav_lens, torch.Tensor) else type(wav_lens).__name__
        raise ValueError(f"wav_lens must have shape ({batch},), got {shape}")
    if not wav_lens.is_floating_point():
        wav_lens = wav_lens.float()
    outside = (~((wav_lens > 0) & (wav_lens <= 1))).nonzero().flatten().tolist()
    if outside:
        found = "; ".join(f"clip {clip} of the batch has {wav_lens[clip].item()}" for clip in outside)
        raise ValueError(f"wav_lens must be relative lengths in (0, 1]; {found} (no clip was classified)")
    return wavs, wav_lens


def clip_problem(wav, min_samples, sample_rate):
    """Why the 1-D clip ``wav`` cannot be classified, or None when it can:
    empty, NaN/Inf samples, or fewer than ``min_samples`` samples (the
    lobe's ``min_samples``).

    Example
    -------
    >>> clip_problem(torch.zeros(0), 1, 16000), clip_problem(torch.ones(80), 400, 16000)
    ('is empty: no audio samples to classify', 'has 80 samples; this model needs at least 400 (25 ms at 16000 Hz)')
    >>> clip_problem(torch.ones(400), 400, 16000) is None
    True
    """
    if wav.numel() == 0:
        return "is empty: no audio samples to classify"
    finite = torch.isfinite(wav)
    if not finite.all():
        return f"holds {int((~finite).sum())} NaN/Inf samples of {wav.numel()}"
    if wav.numel() < min_samples:
        return (
            f"has {wav.numel()} samples; this model needs at least {min_samples} "
            f"({1000 * min_samples / sample_rate:.0f} ms at {sample_rate} Hz)"
        )
    return None


def check_clips(clips, names, min_samples, sample_rate, paddings=None):
    """The clip checks of every inference interface (``AudioClassifier``,
    ``MultiTaskClassifier``; ``classify_batch``, ``classify_file(s)``):
    refuses the whole call, with one ValueError naming **every** bad clip
    and why (:func:`clip_problem`; NaN/Inf in a row's zero padding too),
    so that no clip is classified and no bad clip is skipped.

    Arguments
    ---------
    clips : list of torch.Tensor
        1-D clips (a batch row up to its length, or a file's samples).
    names : list of str
        How errors name each clip (``clip i of the batch``, its file).
    min_samples : int or list of int
        The shortest clip each clip's model takes (one value for all, or one per clip).
    sample_rate : int
        For the messages.
    paddings : list of torch.Tensor, optional
        Each batch row past its length (must be finite).

    Example
    -------
    >>> wavs = torch.ones(3, 4)
    >>> wavs[2, 1] = float("nan")
    >>> check_clips([wavs[0, :4], wavs[1, :0], wavs[2, :4]], ["clip 0", "clip 1", "clip 2"], 1, 16000)
    Traceback (most recent call last):
     ...
    ValueError: 2 of 3 clips cannot be classified (none was): clip 1 is empty: no audio samples to classify; clip 2 holds 1 NaN/Inf samples of 4.
    """
    if isinstance(min_samples, int):
        min_samples = [min_samples] * len(clips)
    problems = []
    for i, (clip, name, minimum) in enumerate(zip(clips, names, min_samples)):
        why = clip_problem(clip, minimum, sample_rate)
        if why is None and paddings is not None and not torch.isfinite(paddings[i]).all():
            why = f"holds {int((~torch.isfinite(paddings[i])).sum())} NaN/Inf samples in its padding (past its wav_lens)"
        if why is not None:
            problems.append(f"{name} {why}")
    if len(problems) == 1:
        raise ValueError(problems[0] + ".")
    if problems:
        raise ValueError(
            f"{len(problems)} of {len(clips)} clips cannot be classified (none was): " + "; ".join(problems) + "."
        )


def check_batch_clips(wavs, lengths, min_samples, sample_rate):
    """:func:`check_clips` on the rows of a checked batch (``lengths`` from
    :func:`clip_lengths`; clips named ``clip i of the batch``). One pass
    over the batch when every clip is good; the clip by clip check (which
    names the bad ones) only when one is not."""
    minimums = [min_samples] * len(lengths) if isinstance(min_samples, int) else min_samples
    if all(length > 0 and length >= low for length, low in zip(lengths, minimums)) and math.isfinite(float(wavs.sum())):
        return  # a NaN or Inf sample makes the sum NaN or Inf (an overflowing sum only costs the full check)
    check_clips(
        [wavs[i, :length] for i, length in enumerate(lengths)],
        [f"clip {i} of the batch" for i in range(len(lengths))],
        min_samples, sample_rate,
        paddings=[wavs[i, length:] for i, length in enumerate(lengths)],
    )


def clip_lengths(wavs, wav_lens):
    """Each clip's number of samples, from relative lengths."""
    return torch.round(wav_lens.float().cpu() * wavs.shape[1]).long().tolist()


class FirstTime:
    """Says True once, the first time it is asked, and False after, from
    any thread (for a notice logged once per interface).

    Example
    -------
    >>> first = FirstTime()
    >>> first.claim(), first.claim()
    (True, False)
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._claimed = False

    def claim(self):
        """True for the first caller only."""
        with self._lock:
            claimed, self._claimed = self._claimed, True
        return not claimed


def log_crop(name, length, limit, sample_rate):
    """The notice that a clip was cropped (logged once per interface)."""
    logger.warning(
        "%s is %d samples long (%.2f s); this model classifies its first %d samples (%.2f s) only, as it "
        "was trained (long_clips='crop'). Pass long_clips='windows' to classify long clips whole, or "
        "'refuse' to get an error. Logged once per classifier.",
        name, length, length / sample_rate, limit, limit / sample_rate,
    )


class AudioClassifier(EncoderClassifier):
    """SpeechBrain's ``EncoderClassifier`` for a frozen backbone with PETL
    modules, with checked inputs: every bad clip or folder gets an error that
    names it instead of a confident label or a torch traceback.

    Modules (as ``EncoderClassifier``): ``compute_features`` and
    ``mean_var_norm`` (pass-throughs), ``embedding_model`` (the lobe, called
    with ``(wavs, wav_lens)``) and ``classifier`` (log-probabilities);
    hparams: ``label_encoder`` and ``sample_rate``.

    Inputs: clips are resampled to the model's rate and down-mixed. A clip
    longer than :attr:`max_samples` (the recipe's ``max_audio_samples``,
    AST's ``max_frames``, Whisper's 30 s) is cropped, classified in windows
    or refused, as ``long_clips`` says (:data:`LONG_CLIP_POLICIES`; default
    ``"crop"``, what the lobe does in every interface). Empty clips, clips
    with NaN/Inf samples, integer waveforms and relative lengths outside
    (0, 1] are refused. A clip shorter than the lobe's ``min_samples`` is
    refused (Wav2Vec2: shorter than its CNN's receptive field); AST accepts
    any non-empty clip and zero-pads it, as it pads every clip to
    ``max_frames``. A batch holding a bad clip is refused whole, with one
    error naming every bad clip (:func:`check_clips`, which
    ``MultiTaskClassifier`` calls too).

    Outputs: an output unit no training label maps to (a head wider than
    the labels, ``<unused output i>``) keeps its log-probability but is
    never the best index or label.

    Loading from a folder refuses a yaml whose settings differ from those
    it was trained with (``trained_settings``), naming the key, unless the
    ``overrides`` given to :meth:`from_hparams` name it.

    Arguments
    ---------
    modules, hparams, run_opts, freeze_params
        As SpeechBrain's ``Pretrained``.
    long_clips : str
        See :data:`LONG_CLIP_POLICIES`.
    overridden_settings : list of str
        Settings keys changed on purpose (:meth:`from_hparams` passes the
        keys its ``overrides`` set).
    loaded_from : str, optional
        Where the folder was loaded from, for messages.
    backbone_dtype : str, optional
        How the lobe's frozen linears are stored and run
        (:meth:`~speechbrain_petl.backbones.Backbone.store_frozen`):
        ``"fp32"``, ``"bf16"`` (bf16 products; what
        ``run_opts={"precision": "bf16"}`` selects when this is not given;
        otherwise the lobe stays as built: fp32 from an inference folder, as
        the run stored it from :meth:`from_experiment`) or ``"int8"`` (CPU: int8 products, activations quantised per call;
        methods that override a linear's weight or bias, such as BitFit,
        need bf16 or fp32). Trained tensors and the head stay fp32. Applied
        after the trained state is loaded, to the lobe itself (a lobe given
        to :meth:`from_modules` is changed in place).

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> config = tiny_config("ast", num_hidden_layers=1)
    >>> classifier = AudioClassifier.from_modules(
    ...     AST(config, pretrained=False, max_frames=64), torch.nn.Linear(32, 2),
    ...     label_encoder(["dog", "rain"]))
    >>> log_probs, score, index, labels = classifier.classify_batch(torch.randn(3, 8000))
    >>> log_probs.shape, labels[0] in ("dog", "rain")
    (torch.Size([3, 2]), True)
    """

    HPARAMS_NEEDED = ["label_encoder"]

    def __init__(
        self, modules=None, hparams=None, run_opts=None, freeze_params=True, long_clips="crop",
        overridden_settings=(), loaded_from=None, backbone_dtype=None,
    ):
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, freeze_params=freeze_params)
        self.long_clips = check_long_clips(long_clips)
        lobe = self.mods.embedding_model
        if backbone_dtype is None:
            backbone_dtype = "bf16" if self.precision == "bf16" else lobe.backbone_dtype
        if backbone_dtype not in BACKBONE_DTYPES:
            raise ValueError(f"backbone_dtype must be one of {BACKBONE_DTYPES}, got {backbone_dtype!r}.")
        if backbone_dtype != lobe.backbone_dtype:
            if lobe.backbone_dtype != "fp32":
                raise ValueError(
                    f"The lobe's frozen weights are stored in {lobe.backbone_dtype} (a run trained with "
                    f"backbone_dtype: {lobe.backbone_dtype}, say); {backbone_dtype} needs them from fp32. Load its "
                    "inference folder (fp32) with from_hparams instead."
                )
            lobe.store_frozen(backbone_dtype)
        encoder = self.hparams.label_encoder
        #: Output units no training label maps to: never the best class.
        self.unused_outputs = unused_outputs([encoder.ind2lab[i] for i in range(len(encoder))])
        self._crop_notice = FirstTime()
        if hparams is not None and SETTINGS_KEY in hparams:
            self._check_settings(hparams, overridden_settings, loaded_from)

    def _check_settings(self, hparams, overridden_settings, loaded_from):
        """Refuses a yaml whose settings differ from the trained ones (see the class doc)."""
        lobe = self.mods.embedding_model
        actual = output_settings(
            import_path(type(lobe)), lobe.constructor_args(), dict(lobe.petl.items()), hparams["head"],
            hparams["labels"], hparams.get("sample_rate", 16000), hparams.get("max_audio_samples"),
        )
        where = os.path.join(str(loaded_from or hparams.get("savedir") or "."), "hyperparams.yaml")
        check_output_settings(
            hparams[SETTINGS_KEY], hparams.get(SETTINGS_DIGEST_KEY), actual, overridden_settings, where
        )

    @classmethod
    def from_modules(
        cls, backbone, head, encoder, sample_rate=16000, run_opts=None, max_audio_samples=None, long_clips="crop",
        backbone_dtype=None,
    ):
        """Builds the interface around live modules (a lobe and its head);
        head outputs the encoder does not name get ``<unused output i>``."""
        encoder = label_encoder(output_labels(encoder, head_outputs(head)))
        modules = {
            "compute_features": PassThrough(),
            "mean_var_norm": PassThrough(),
            "embedding_model": backbone,
            "classifier": torch.nn.Sequential(head, torch.nn.LogSoftmax(dim=-1)),
        }
        hparams = {"label_encoder": encoder, "sample_rate": sample_rate, "max_audio_samples": max_audio_samples}
        # Not frozen: that would turn the live lobe's trainable tensors into
        # frozen ones (and change its fingerprint); eval mode and no_grad suffice.
        interface = cls(
            modules=modules, hparams=hparams, run_opts=run_opts or {"device": "cpu"}, freeze_params=False,
            long_clips=long_clips, backbone_dtype=backbone_dtype,
        )
        interface.mods.eval()
        return interface

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Loads an inference folder (a local folder, or a model repo id
        where a hub is reachable) through SpeechBrain's ``from_hparams``,
        as the stock interfaces do. A local folder is read first by
        :class:`~speechbrain_petl.inference.folder.InferenceFolder` (the
        reader ``MultiTaskClassifier`` uses): a missing file or a yaml that
        is not an inference folder's is named before anything is built.

        ``overrides`` (SpeechBrain's) may change settings the folder was
        trained with (e.g. ``{"embedding_model": {"pooling": "cls"}}``): the
        keys they name are exempt from the settings check. ``long_clips``
        (:data:`LONG_CLIP_POLICIES`) and ``backbone_dtype`` (e.g.
        ``"int8"``; ``run_opts={"precision": "bf16"}`` selects ``"bf16"``)
        are passed to the constructor."""
        kwargs.setdefault("overridden_settings", override_keys(kwargs.get("overrides")))
        kwargs.setdefault("loaded_from", str(source))
        if os.path.exists(str(source)):
            if hparams_file == "hyperparams.yaml":
                InferenceFolder.read(source)
            else:
                check_folder(source, hparams_file)
        # Errors of the loading hooks name this folder's files, not savedir's copies.
        with reading_folder(str(source) if os.path.exists(str(source)) else None):
            return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    @classmethod
    def from_experiment(
        cls, output_folder, max_key="acc", overrides=None, run_opts=None, long_clips="crop", backbone_dtype=None
    ):
        """The best checkpoint (by ``max_key``) of a recipe's output folder,
        wherever that folder now is (see :func:`speechbrain_petl.studies.runs.load_run`)."""
        run = load_run(output_folder, max_key=max_key, overrides=overrides)
        return cls.from_modules(
            run["backbone"], run["head"], run["label_encoder"], run["sample_rate"], run_opts,
            run["hparams"].get("max_audio_samples"), long_clips, backbone_dtype,
        )

    @property
    def sample_rate(self):
        """The rate the model expects; files are resampled to it."""
        return getattr(self.hparams, "sample_rate", 16000)

    @property
    def max_samples(self):
        """The crop length: the lobe's :attr:`~speechbrain_petl.backbones.Backbone.max_samples`,
        or the folder's ``max_audio_samples`` where smaller (folders written
        before the lobe cropped); None: clips of any length are used whole."""
        limits = [self.mods.embedding_model.max_samples, getattr(self.hparams, "max_audio_samples", None)]
        limits = [limit for limit in limits if limit is not None]
        return min(limits) if limits else None

    def classify_batch(self, wavs, wav_lens=None, long_clips=None):
        """Classifies ``(batch, samples)`` float waveforms at :attr:`sample_rate`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(batch, samples)``, float.
        wav_lens : torch.Tensor, optional
            ``(batch,)`` relative lengths in (0, 1].
        long_clips : str, optional
            This call's :data:`LONG_CLIP_POLICIES` entry (default: the
            interface's ``long_clips``).

        Returns
        -------
        (log-probabilities (batch, classes), best log-probability, best index, labels)
        """
        wavs, wav_lens = checked_batch(wavs, wav_lens)
        lengths = clip_lengths(wavs, wav_lens)
        check_batch_clips(wavs, lengths, self.mods.embedding_model.min_samples, self.sample_rate)
        names = [f"clip {i} of the batch" for i in range(len(lengths))]
        return self._classify(wavs, wav_lens, lengths, names, long_clips)

    def classify_file(self, path, long_clips=None):
        """Classifies one audio file (any rate, mono or stereo, any format
        libsndfile reads); returns the ``classify_batch`` tuple for a batch
        of one (``long_clips`` as there)."""
        path = str(path)
        wav = read_clip(path, self.sample_rate)
        check_clips([wav], [path], self.mods.embedding_model.min_samples, self.sample_rate)
        return self._classify(wav.unsqueeze(0), torch.ones(1), [len(wav)], [path], long_clips)

    def _classify(self, wavs, wav_lens, lengths, names, long_clips):
        """Checked clips -> the ``classify_batch`` tuple, long clips handled as ``long_clips`` says."""
        policy = check_long_clips(long_clips or self.long_clips)
        limit = self.max_samples
        spans = clip_spans(lengths, [limit] * len(lengths), policy, names, self.sample_rate)
        with torch.no_grad():
            if all(own == [(0, length)] for own, length in zip(spans, lengths)):
                log_probs = self._log_probs(wavs, wav_lens)
            elif policy == "crop":
                cropped = next(i for i, length in enumerate(lengths) if length > limit)
                if self._crop_notice.claim():
                    log_crop(names[cropped], lengths[cropped], limit, self.sample_rate)
                log_probs = self._log_probs(*crop_batch(wavs, wav_lens, limit))
            else:
                log_probs = torch.stack(
                    classify_spans(lambda w, lens, _: self._log_probs(w, lens), wavs, spans, len(lengths))
                )
        score, index = best_used_output(log_probs, self.unused_outputs)
        return log_probs, score, index, self.hparams.label_encoder.decode_torch(index)

    def _log_probs(self, wavs, wav_lens):
        """``(batch, classes)`` log-probabilities, as ``EncoderClassifier`` computes them."""
        return self.mods.classifier(self.encode_batch(wavs, wav_lens)).squeeze(1)
