"""Leaving our stack: a trained run as a plain transformers model.

:func:`write_merged_model` (``python -m speechbrain_petl.export --merged``)
folds LoRA, BitFit, linear probing and full fine-tuning into the frozen
weights and writes the run as a ``save_pretrained`` folder of
``ASTForAudioClassification`` or ``Wav2Vec2ForSequenceClassification``, with
``id2label``/``label2id`` and a ``preprocessor_config.json`` holding the
run's feature settings, so that ``transformers.pipeline("audio-classification",
model=folder)`` classifies as our model does. PEFT adapters (out and in) are
in :mod:`speechbrain_petl.export.peft`, which shares this module's checks.

What transformers' heads can represent exactly (anything else is refused
with :class:`NotRepresentable`, naming what differs):

* ``ASTForAudioClassification`` pools ``(CLS + distillation token) / 2``
  after the final LayerNorm and classifies with ``LayerNorm + Linear``. A
  LayerNorm normalises each vector, so no choice of its weights computes the
  identity, and no weights turn the mean over all tokens into the mean of
  two. Only an AST run with ``pooling: cls_dist`` and a head
  ``torch.nn.Sequential(torch.nn.LayerNorm(width, eps=<the backbone's
  layer_norm_eps>), linear)`` maps exactly. The recipes' AST runs (``pooling:
  mean``, a linear head) do not: export their LoRA with ``--peft`` instead
  (onto ``ASTModel``; the head is written beside the adapter).
* ``Wav2Vec2ForSequenceClassification`` projects every frame, averages the
  real frames and classifies; both steps are affine, so our mean pooling
  and linear head map exactly: ``projector`` = our head,
  ``classifier`` = the identity (``classifier_proj_size`` = number of labels).
"""

import contextlib
import copy
import pathlib
import shutil

import torch
from speechbrain.nnet.linear import Linear as SpeechBrainLinear
from transformers import (
    ASTFeatureExtractor,
    ASTForAudioClassification,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
    WhisperFeatureExtractor,
)

from speechbrain_petl.backbones.ast import AST
from speechbrain_petl.backbones.lifecycle import NotMergeable
from speechbrain_petl.backbones.wav2vec2 import Wav2Vec2
from speechbrain_petl.backbones.whisper import WhisperEncoder
from speechbrain_petl.inference.folder import head_outputs, output_labels


class NotRepresentable(ValueError):
    """The run cannot be written in the requested format without changing
    what it computes; the message names each difference."""


# ------------------------------------------------------------------ the head
def split_head(head):
    """``(layer_norm or None, torch.nn.Linear)`` of a head: a linear layer
    (SpeechBrain's or torch's), alone or after a LayerNorm
    (``torch.nn.Sequential(LayerNorm, linear)``).

    Example
    -------
    >>> norm, linear = split_head(torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)))
    >>> type(norm).__name__, linear.out_features
    ('LayerNorm', 2)
    """
    norm = None
    if type(head) is torch.nn.Sequential and len(head) == 2 and type(head[0]) is torch.nn.LayerNorm:
        norm, head = head[0], head[1]
    if isinstance(head, SpeechBrainLinear):
        head = head.w
    if type(head) is not torch.nn.Linear:
        raise NotRepresentable(
            f"The head is a {type(head).__name__}; expected a linear layer "
            "(speechbrain.nnet.linear.Linear or torch.nn.Linear), alone or after a LayerNorm."
        )
    return norm, head


def representation_problems(backbone, head):
    """Why ``backbone`` + ``head`` do not compute what transformers'
    classification model of that backbone computes (empty when they do)."""
    norm, linear = split_head(head)
    problems = []
    if linear.in_features != backbone.hidden_size:
        problems.append(f"head: takes {linear.in_features} inputs, the backbone gives {backbone.hidden_size}")
    if isinstance(backbone, AST):
        if backbone.pooling != "cls_dist":
            problems.append(
                f"pooling: the run pools {backbone.pooling!r} (mean: every output token), "
                "ASTForAudioClassification pools (CLS + distillation token) / 2 (pooling: cls_dist)"
            )
        eps = backbone.config.layer_norm_eps
        if norm is None:
            problems.append(
                "head: the run's head is a linear layer on the pooled embedding, "
                "ASTForAudioClassification's classifier is LayerNorm + Linear (a LayerNorm "
                "normalises, whatever its weights: it cannot be the identity); train with "
                f"torch.nn.Sequential(torch.nn.LayerNorm({backbone.hidden_size}, eps={eps}), linear)"
            )
        elif (
            tuple(norm.normalized_shape) != (backbone.hidden_size,)
            or norm.eps != eps
            or not norm.elementwise_affine
            or norm.bias is None
        ):
            problems.append(
                f"head: its LayerNorm has shape {tuple(norm.normalized_shape)}, eps {norm.eps}, "
                f"affine {norm.elementwise_affine}, bias {norm.bias is not None}; "
                f"ASTForAudioClassification's has ({backbone.hidden_size},), eps {eps} "
                "(the backbone's layer_norm_eps), weight and bias"
            )
    elif isinstance(backbone, Wav2Vec2):
        if backbone.pooling != "mean":
            problems.append(
                f"pooling: the run pools {backbone.pooling!r}, "
                "Wav2Vec2ForSequenceClassification averages the real frames (pooling: mean)"
            )
        if norm is not None:
            problems.append(
                "head: a LayerNorm before the linear layer; Wav2Vec2ForSequenceClassification's "
                "projector and classifier are linear only"
            )
    else:
        problems.append(f"backbone: {type(backbone).__name__} has no transformers classification model here")
    return problems


# -------------------------------------------------------------- merged model
@contextlib.contextmanager
def merged_into_weights(backbone):
    """:meth:`~speechbrain_petl.backbones.Backbone.merged_weights`, with
    what cannot fold reported as :class:`NotRepresentable`."""
    try:
        with backbone.merged_weights():
            yield backbone
    except NotMergeable as err:
        raise NotRepresentable(str(err)) from None


def classification_model(backbone, head, labels):
    """transformers' classification model computing ``head(backbone(wav))``
    with the backbone's *current* weights (merge first), on the CPU."""
    problems = representation_problems(backbone, head)
    if problems:
        raise NotRepresentable(_problem_text(backbone, problems))
    norm, linear = split_head(head)
    with backbone.transformers_model() as base:
        config = copy.deepcopy(base.config)
        base_state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    if isinstance(backbone, AST):
        model = ASTForAudioClassification(config)
        model.audio_spectrogram_transformer.load_state_dict(base_state)
        _copy_linear(model.classifier.layernorm, norm)
        _copy_linear(model.classifier.dense, linear)
    else:
        config.classifier_proj_size = linear.out_features
        config.use_weighted_layer_sum = False
        model = Wav2Vec2ForSequenceClassification(config)
        model.wav2vec2.load_state_dict(base_state)
        _copy_linear(model.projector, linear)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.eye(linear.out_features))
            model.classifier.bias.zero_()
    return model.eval()


def _copy_linear(target, source):
    with torch.no_grad():
        target.weight.copy_(source.weight.detach().cpu())
        if source.bias is None:
            target.bias.zero_()
        else:
            target.bias.copy_(source.bias.detach().cpu())


def feature_extractor(backbone, sample_rate=16000):
    """transformers' feature extractor with the run's input settings."""
    if isinstance(backbone, AST):
        fbank = backbone.features
        return ASTFeatureExtractor(
            sampling_rate=fbank.sample_rate,
            num_mel_bins=fbank.num_mel_bins,
            max_length=fbank.max_frames,
            mean=fbank.mean,
            std=fbank.std,
            do_normalize=True,
            return_attention_mask=False,
        )
    if isinstance(backbone, WhisperEncoder):
        return WhisperFeatureExtractor(feature_size=backbone.config.num_mel_bins, sampling_rate=sample_rate)
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=sample_rate,
        padding_value=0.0,
        do_normalize=backbone.normalize_waveform,
        return_attention_mask=backbone.config.feat_extract_norm == "layer",
    )


def write_merged_model(dest, backbone, head, encoder, sample_rate=16000):
    """Writes ``backbone`` (its methods merged) + ``head`` as a plain
    transformers classification folder (see the module doc for what is
    representable); the live backbone is left unmerged.

    Arguments
    ---------
    dest : str or os.PathLike
        New folder (refused if it exists and is not empty).
    backbone : speechbrain_petl.backbones.Backbone
        AST or Wav2Vec2 lobe with its trained methods attached and active.
    head : torch.nn.Module
        The classification head.
    encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The run's labels (``id2label``; unused outputs get ``<unused output i>``).
    sample_rate : int
        Rate of the waveforms (Wav2Vec2; AST's is its fbank's).

    Returns
    -------
    pathlib.Path
        ``dest``: ``config.json``, ``model.safetensors``,
        ``preprocessor_config.json``, ``README.md``.
    """
    problems = representation_problems(backbone, head)
    if problems:
        raise NotRepresentable(_problem_text(backbone, problems))
    labels = output_labels(encoder, head_outputs(head))
    with merged_into_weights(backbone):
        model = classification_model(backbone, head, labels)
    card = (
        f"# {type(model).__name__} exported by speechbrain_petl\n\nMethods merged: "
        f"{', '.join(f'{n} ({type(m).__name__})' for n, m in backbone.petl.items()) or 'none'}.\n\n"
        "```python\nimport soundfile\nfrom transformers import pipeline\n\n"
        'classify = pipeline("audio-classification", model="<this folder>")\n'
        'wav, rate = soundfile.read("clip.wav", dtype="float32")  # a file name needs ffmpeg\n'
        'print(classify({"raw": wav, "sampling_rate": rate}, top_k=None))\n```\n'
    )
    with new_folder(dest) as partial:
        model.save_pretrained(partial)
        feature_extractor(backbone, sample_rate).save_pretrained(partial)
        (partial / "README.md").write_text(card)
    return pathlib.Path(dest)


def _problem_text(backbone, problems):
    targets = {AST: "ASTForAudioClassification", Wav2Vec2: "Wav2Vec2ForSequenceClassification"}
    target = targets.get(type(backbone), "a transformers classification model")
    return f"This run cannot be written as {target} exactly:\n  " + "\n  ".join(problems)


@contextlib.contextmanager
def new_folder(dest):
    """A hidden sibling folder to write into, renamed to ``dest`` when the
    block succeeds and removed when it fails; ``dest`` must be new or empty."""
    dest = pathlib.Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} already exists and is not an empty folder; choose a new one.")
    partial = dest.with_name(f".{dest.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an export that was interrupted
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dest.exists():
        dest.rmdir()  # empty, checked above
    partial.rename(dest)


__all__ = [
    "NotRepresentable",
    "classification_model",
    "feature_extractor",
    "merged_into_weights",
    "new_folder",
    "representation_problems",
    "split_head",
    "write_merged_model",
]
