"""``AudioClassifier``: one trained task through SpeechBrain's interfaces.

An inference folder (:mod:`speechbrain_petl.inference.folder`) loads with

* :meth:`AudioClassifier.from_hparams` (this module),
* SpeechBrain's stock ``EncoderClassifier.from_hparams`` (the yaml names its
  modules the way that interface expects: ``compute_features`` and
  ``mean_var_norm`` pass waveforms through, ``embedding_model`` is the lobe,
  ``classifier`` returns log-probabilities),
* or ``speechbrain.inference.interfaces.foreign_class``.

All return SpeechBrain's usual ``(log-probabilities, best log-probability,
best index, labels)``.
"""

import os

import torch
from speechbrain.inference.classifiers import EncoderClassifier

from speechbrain_petl.data.audio import read_clip
from speechbrain_petl.inference.folder import (
    InferenceFolder,
    PassThrough,
    check_folder,
    head_outputs,
    label_encoder,
    output_labels,
)
from speechbrain_petl.studies.runs import load_run


class AudioClassifier(EncoderClassifier):
    """SpeechBrain's ``EncoderClassifier`` for a frozen backbone with PETL
    modules, with checked inputs: every bad clip or folder gets an error that
    names it instead of a confident label or a torch traceback.

    Modules (as ``EncoderClassifier``): ``compute_features`` and
    ``mean_var_norm`` (pass-throughs), ``embedding_model`` (the lobe, called
    with ``(wavs, wav_lens)``) and ``classifier`` (log-probabilities);
    hparams: ``label_encoder`` and ``sample_rate``.

    Inputs: clips are resampled to the model's rate and down-mixed, and
    cropped to ``max_audio_samples`` when the recipe trained on cropped clips
    (hparam; IEMOCAP's Wav2Vec2 recipes: 8 s). Empty
    clips and clips with NaN/Inf samples are refused. A clip shorter than the
    lobe's ``min_samples`` is refused (Wav2Vec2: shorter than its CNN's
    receptive field); AST accepts any non-empty clip and zero-pads it, as it
    pads every clip to ``max_frames``.

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

    @classmethod
    def from_modules(cls, backbone, head, encoder, sample_rate=16000, run_opts=None, max_audio_samples=None):
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
            modules=modules, hparams=hparams, run_opts=run_opts or {"device": "cpu"}, freeze_params=False
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
        is not an inference folder's is named before anything is built."""
        if os.path.exists(str(source)):
            if hparams_file == "hyperparams.yaml":
                InferenceFolder.read(source)
            else:
                check_folder(source, hparams_file)
        return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    @classmethod
    def from_experiment(cls, output_folder, max_key="acc", overrides=None, run_opts=None):
        """The best checkpoint (by ``max_key``) of a recipe's output folder,
        wherever that folder now is (see :func:`speechbrain_petl.studies.runs.load_run`)."""
        run = load_run(output_folder, max_key=max_key, overrides=overrides)
        return cls.from_modules(
            run["backbone"], run["head"], run["label_encoder"], run["sample_rate"], run_opts,
            run["hparams"].get("max_audio_samples"),
        )

    @property
    def sample_rate(self):
        """The rate the model expects; files are resampled to it."""
        return getattr(self.hparams, "sample_rate", 16000)

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies ``(batch, samples)`` waveforms at :attr:`sample_rate`.

        Returns
        -------
        (log-probabilities (batch, classes), best log-probability, best index, labels)
        """
        if not isinstance(wavs, torch.Tensor) or wavs.dim() != 2:
            shape = tuple(wavs.shape) if isinstance(wavs, torch.Tensor) else type(wavs).__name__
            raise ValueError(f"classify_batch expects (batch, samples) waveforms, got {shape}")
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        if wav_lens.shape != (wavs.shape[0],):
            raise ValueError(f"wav_lens must have shape ({wavs.shape[0]},), got {tuple(wav_lens.shape)}")
        lengths = torch.round(wav_lens.float().cpu() * wavs.shape[1]).long()
        for i, length in enumerate(lengths.tolist()):
            self._check_clip(wavs[i, :length], f"clip {i} of the batch")
        with torch.no_grad():
            return super().classify_batch(wavs, wav_lens)

    def classify_file(self, path):
        """Classifies one audio file (any rate, mono or stereo, any format
        libsndfile reads); returns the ``classify_batch`` tuple for a batch of one."""
        path = str(path)
        wav = read_clip(path, self.sample_rate)
        self._check_clip(wav, path)
        max_samples = getattr(self.hparams, "max_audio_samples", None)
        if max_samples is not None:
            wav = wav[:max_samples]
        return self.classify_batch(wav.unsqueeze(0))

    def _check_clip(self, wav, what):
        if wav.numel() == 0:
            raise ValueError(f"{what} is empty: no audio samples to classify.")
        if not torch.isfinite(wav).all():
            bad = int((~torch.isfinite(wav)).sum())
            raise ValueError(f"{what} holds {bad} NaN/Inf samples of {wav.numel()}.")
        minimum = self.mods.embedding_model.min_samples
        if wav.numel() < minimum:
            raise ValueError(
                f"{what} has {wav.numel()} samples; this model needs at least {minimum} "
                f"({1000 * minimum / self.sample_rate:.0f} ms at {self.sample_rate} Hz)."
            )
