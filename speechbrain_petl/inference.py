"""Inference with a trained PETL classifier through SpeechBrain's interfaces."""

import os

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.interfaces import Pretrained

from speechbrain_petl.data.audio import load_audio


class AudioClassifier(Pretrained):
    """A frozen backbone with its PETL modules and head, as a SpeechBrain
    ``Pretrained`` interface.

    Modules: ``backbone`` (a lobe with PETL methods attached) and
    ``classifier``; hparams: ``label_encoder`` (and optionally
    ``sample_rate``, default 16000).

    Example
    -------
    >>> from transformers import ASTConfig
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> from speechbrain_petl.backbones import AST
    >>> config = ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, max_length=64)
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["dog", "rain"])
    >>> classifier = AudioClassifier(
    ...     modules={"backbone": AST(config, pretrained=False, max_frames=64),
    ...              "classifier": torch.nn.Linear(32, 2)},
    ...     hparams={"label_encoder": encoder}, run_opts={"device": "cpu"})
    >>> probs, score, index, labels = classifier.classify_batch(torch.randn(3, 8000))
    >>> probs.shape, labels[0] in ("dog", "rain")
    (torch.Size([3, 2]), True)
    """

    MODULES_NEEDED = ["backbone", "classifier"]
    HPARAMS_NEEDED = ["label_encoder"]

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies a batch of 16 kHz waveforms ``(batch, samples)``.

        Returns
        -------
        (probabilities, best score, best index, best labels)
        """
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        with torch.no_grad(), self.inference_ctx:
            logits = self.mods.classifier(self.mods.backbone(wavs, wav_lens.to(self.device)))
        probs = logits.float().softmax(dim=-1)
        score, index = probs.max(dim=-1)
        ind2lab = self.hparams.label_encoder.ind2lab
        labels = [ind2lab.get(i, f"<unused output {i}>") for i in index.tolist()]
        return probs, score, index, labels

    def classify_file(self, path):
        """Classifies one audio file (any rate/channels: resampled, down-mixed)."""
        sample_rate = getattr(self.hparams, "sample_rate", 16000)
        return self.classify_batch(load_audio(path, sample_rate).unsqueeze(0))

    @classmethod
    def from_experiment(cls, output_folder, max_key="acc", run_opts=None):
        """Loads the best checkpoint of a recipe's output folder.

        Reads ``<output_folder>/hyperparams.yaml`` (the copy SpeechBrain
        saves, with the run's overrides), builds the backbone, PETL modules
        and head it describes, restores the checkpoint with the highest
        ``max_key`` and the saved label encoder.
        """
        hparams_file = os.path.join(output_folder, "hyperparams.yaml")
        if not os.path.isfile(hparams_file):
            raise FileNotFoundError(
                f"{hparams_file} not found: expected the output folder of a recipe run."
            )
        with open(hparams_file) as fin:
            hparams = load_hyperpyyaml(fin, {"output_folder": str(output_folder)})
        checkpoint = hparams["checkpointer"].recover_if_possible(max_key=max_key)
        if checkpoint is None:
            raise FileNotFoundError(f"No checkpoint under {hparams['save_folder']}.")
        encoder = hparams["label_encoder"]
        encoder.load(os.path.join(hparams["save_folder"], "label_encoder.txt"))
        modules = {"backbone": hparams["backbone"], "classifier": hparams["classifier"]}
        return cls(
            modules=modules,
            hparams={"label_encoder": encoder, "sample_rate": hparams.get("sample_rate", 16000)},
            run_opts=run_opts or {"device": "cpu"},
        )
