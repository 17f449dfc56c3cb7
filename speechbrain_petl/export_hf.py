"""Leaving our stack: a trained run as a plain transformers model or a PEFT adapter.

Three exits, all offline (``python -m speechbrain_petl.export --merged`` and
``--peft`` call the first two on a run folder):

* :func:`write_merged_model`: LoRA, BitFit, linear probing and full
  fine-tuning are folded into the frozen weights and the run is written as a
  ``save_pretrained`` folder of ``ASTForAudioClassification`` or
  ``Wav2Vec2ForSequenceClassification``, with ``id2label``/``label2id`` and a
  ``preprocessor_config.json`` holding the run's feature settings, so that
  ``transformers.pipeline("audio-classification", model=folder)`` classifies
  as our model does.
* :func:`write_peft_adapter`: the LoRA tensors of a run in PEFT's format
  (``adapter_config.json`` + ``adapter_model.safetensors``), module names in
  transformers' terms; ``peft.PeftModel.from_pretrained`` puts them on the
  backbone loaded with transformers.
* :func:`lora_from_peft`: the other way, a PEFT LoRA adapter becomes our
  :class:`~speechbrain_petl.methods.LoRA`, attached to a lobe.

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

Scaling: ours is ``alpha / rank``; PEFT's is ``lora_alpha / r`` (or
``lora_alpha / sqrt(r)`` with ``use_rslora``). The export writes
``lora_alpha = alpha``, ``use_rslora = false``, so the recipes' effective
0.125 (rank 6, ``alpha: 0.75``) stays 0.125 to the bit.
"""

import contextlib
import copy
import json
import math
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file
from speechbrain.nnet.linear import Linear as SpeechBrainLinear
from transformers import (
    ASTFeatureExtractor,
    ASTForAudioClassification,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
)

from speechbrain_petl.backbones.ast import AST
from speechbrain_petl.backbones.wav2vec2 import Wav2Vec2
from speechbrain_petl.inference import head_outputs, output_labels
from speechbrain_petl.methods import FullFineTuning, LoRA

#: Prefix PEFT gives every tensor of a saved adapter.
PEFT_PREFIX = "base_model.model."

#: transformers 4.x names of AST's projections -> the 5.x names our lobes see.
AST_V4_NAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


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
    """Folds every attached method into the frozen weights for the duration
    (full fine-tuning already is in them), checks that no hook, adapter or
    override still runs, and restores the weights bit for bit afterwards."""
    inactive = [name for name in backbone.petl if name not in backbone.active]
    if inactive:
        raise NotRepresentable(f"Methods {inactive} are inactive; detach or activate them first.")
    if backbone.merged:
        raise NotRepresentable(f"Methods {sorted(backbone.merged)} are merged already; unmerge them first.")
    done = []
    try:
        for name, method in backbone.petl.items():
            if isinstance(method, FullFineTuning):
                continue
            try:
                backbone.merge(name)
            except TypeError as err:
                raise NotRepresentable(
                    f"'{name}' ({type(method).__name__}) cannot be written into plain weights: {err}"
                ) from None
            done.append(name)
        left = still_running(backbone)
        if left:
            raise NotRepresentable(
                "After merging, these methods still run modules that a plain transformers model "
                f"does not have: {left}. Only LoRA, BitFit, linear probing and full fine-tuning "
                "become plain weights."
            )
        yield backbone
    finally:
        for name in reversed(done):
            backbone.unmerge(name)


def still_running(backbone):
    """``{method: [site paths]}`` of the methods whose hooks or overrides
    still run (not folded into the weights)."""
    active = set(backbone.active)
    left = {}
    for path, site in _sites(backbone):
        folded = site.folded_owners() if hasattr(site, "folded_owners") else set()
        for owner in sorted((site.owners() & active) - folded):
            left.setdefault(owner, []).append(path)
    return left


def _sites(backbone):
    from speechbrain_petl.sites import Site

    for path, module in backbone.named_modules():
        if isinstance(module, Site) and not path.startswith("petl."):
            yield path, module


def classification_model(backbone, head, labels):
    """transformers' classification model computing ``head(backbone(wav))``
    with the backbone's *current* weights (merge first), on the CPU."""
    problems = representation_problems(backbone, head)
    if problems:
        raise NotRepresentable(_problem_text(backbone, problems))
    norm, linear = split_head(head)
    with backbone._hf_model_for_saving() as base:
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
    with _new_folder(dest) as partial:
        model.save_pretrained(partial)
        feature_extractor(backbone, sample_rate).save_pretrained(partial)
        (partial / "README.md").write_text(card)
    return pathlib.Path(dest)


def _problem_text(backbone, problems):
    target = "ASTForAudioClassification" if isinstance(backbone, AST) else "Wav2Vec2ForSequenceClassification"
    return f"This run cannot be written as {target} exactly:\n  " + "\n  ".join(problems)


@contextlib.contextmanager
def _new_folder(dest):
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


# ---------------------------------------------------------------- PEFT out
def hf_module_names(backbone):
    """``{id(module): name}`` over the backbone's transformers model (names
    as ``ASTModel`` / ``Wav2Vec2Model`` give them)."""
    with backbone._hf_model_for_saving() as base:
        return {id(module): name for name, module in base.named_modules()}


def single_lora(backbone):
    """``(name, LoRA)``: the run's one method, refused unless it is a LoRA."""
    methods = dict(backbone.petl.items())
    if len(methods) != 1 or not isinstance(next(iter(methods.values())), LoRA):
        found = {name: type(method).__name__ for name, method in methods.items()}
        raise NotRepresentable(
            f"A PEFT LoRA adapter holds one LoRA; this run's methods are {found or 'none (linear head only)'}."
        )
    name, lora = next(iter(methods.items()))
    if name not in backbone.active or name in backbone.merged:
        raise NotRepresentable(f"'{name}' must be attached, active and not merged.")
    return name, lora


def peft_base(backbone, head):
    """``(model class name, module prefix, modules_to_save)`` of the
    transformers model an adapter of this run goes on: the classification
    model when it represents the head exactly, else the bare backbone
    (``ASTModel`` / ``Wav2Vec2Model``), with the head written beside it."""
    if not representation_problems(backbone, head):
        if isinstance(backbone, AST):
            return "ASTForAudioClassification", "audio_spectrogram_transformer.", ["classifier"]
        return "Wav2Vec2ForSequenceClassification", "wav2vec2.", ["projector", "classifier"]
    return type(backbone.__dict__["_hf_model"]).__name__, "", None


def write_peft_adapter(dest, backbone, head, encoder, base_model=None, sample_rate=16000):
    """Writes the run's LoRA as a PEFT adapter folder.

    Arguments
    ---------
    dest : str or os.PathLike
        New folder (refused if it exists and is not empty).
    backbone : speechbrain_petl.backbones.Backbone
        The lobe with one LoRA attached (not merged).
    head : torch.nn.Module
        The classification head.
    encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The run's labels.
    base_model : str, optional
        ``base_model_name_or_path`` to record (default: the lobe's source);
        a local folder is checked to hold the run's weights.
    sample_rate : int
        Rate of the waveforms (Wav2Vec2; AST's is its fbank's).

    Returns
    -------
    pathlib.Path
        ``dest``: ``adapter_config.json``, ``adapter_model.safetensors``,
        ``preprocessor_config.json`` (the run's input settings, for
        ``AutoFeatureExtractor``), ``labels.json``, ``README.md``, and
        ``head.safetensors`` when the head is not part of the adapter
        (``modules_to_save``).
    """
    _, lora = single_lora(backbone)
    if isinstance(backbone, AST):
        _check_base_length(backbone, base_model)
    if base_model is not None and pathlib.Path(base_model).is_dir():
        _check_same_weights(backbone, base_model)
    labels = output_labels(encoder, head_outputs(head))
    model_class, prefix, to_save = peft_base(backbone, head)
    names = hf_module_names(backbone)
    tensors, targets = {}, []
    for layer, target, update in lora.updates():
        module = prefix + names[id(backbone.site(layer, target).linear)]
        targets.append(module)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = update.down.weight
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = update.up.weight
    norm, linear = split_head(head)
    head_tensors = {}
    if to_save and isinstance(backbone, AST):
        head_tensors = {"classifier.layernorm": norm, "classifier.dense": linear}
    elif to_save:
        eye = torch.nn.Linear(linear.out_features, linear.out_features)
        with torch.no_grad():
            eye.weight.copy_(torch.eye(linear.out_features))
            eye.bias.zero_()
        head_tensors = {"projector": linear, "classifier": eye}
    for module, layer_module in head_tensors.items():
        tensors[f"{PEFT_PREFIX}{module}.weight"] = layer_module.weight
        tensors[f"{PEFT_PREFIX}{module}.bias"] = layer_module.bias
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model or backbone.source,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "use_rslora": False,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(targets),
        "modules_to_save": to_save,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    card = _peft_card(backbone, head, model_class, labels, config, to_save)
    with _new_folder(dest) as partial:
        save_file(_plain(tensors), partial / "adapter_model.safetensors")
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (partial / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
        feature_extractor(backbone, sample_rate).save_pretrained(partial)
        if not to_save:
            head_state = {"weight": linear.weight}
            if linear.bias is not None:
                head_state["bias"] = linear.bias
            if norm is not None:
                head_state.update({"norm.weight": norm.weight, "norm.bias": norm.bias})
            save_file(_plain(head_state), partial / "head.safetensors")
        (partial / "README.md").write_text(card)
    return pathlib.Path(dest)


def _check_base_length(backbone, base_model):
    """Refuses an AST base model whose ``max_length`` (hence position
    embeddings) differs from the run's ``max_frames``."""
    where, length = repr(backbone.source), backbone.config.max_length
    if base_model is not None:
        config_file = pathlib.Path(base_model) / "config.json"
        if not config_file.is_file():
            raise NotRepresentable(
                f"base_model {base_model!r}: no config.json there; for an AST adapter, pass the "
                "local folder of the base model so its max_length can be checked."
            )
        where, length = f"{base_model!r}", json.loads(config_file.read_text()).get("max_length")
    if length != backbone.max_frames:
        raise NotRepresentable(
            f"The run's AST uses max_frames={backbone.max_frames}; the base model {where} has "
            f"max_length={length} (other position embeddings), so PEFT would put the adapter on "
            "another model. Write the base at the run's length, "
            f"AST({backbone.source!r}, max_frames={backbone.max_frames}).save_pretrained(folder), "
            "and pass that folder (--backbone_source=folder)."
        )


def _check_same_weights(backbone, base_model):
    """Loads the lobe from ``base_model`` and refuses other weights than the
    run's (the fingerprint decides, as for inference folders)."""
    args = {**backbone.constructor_args(), "source": str(base_model), "pretrained": True}
    other = type(backbone)(**args)
    try:
        other.check_fingerprint(backbone.fingerprint(), source="the run")
    except RuntimeError as err:
        raise NotRepresentable(f"base_model {str(base_model)!r} is not the run's backbone: {err}") from None


def _plain(tensors):
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _peft_card(backbone, head, model_class, labels, config, to_save):
    extra = ""
    if model_class == "Wav2Vec2ForSequenceClassification":
        extra = f", num_labels={len(labels)}, classifier_proj_size={len(labels)}"
    elif model_class == "ASTForAudioClassification":
        extra = f", num_labels={len(labels)}"
    lines = [
        f"# LoRA adapter (PEFT) exported by speechbrain_petl, for `{model_class}`",
        "",
        f"Rank {config['r']}, lora_alpha {config['lora_alpha']} (scaling "
        f"{config['lora_alpha'] / config['r']}), {len(config['target_modules'])} projections.",
        "Labels, one per output: `labels.json`; the run's input settings: "
        "`AutoFeatureExtractor.from_pretrained(\"<this folder>\")`.",
        "",
        "```python",
        f"from transformers import {model_class}",
        "from peft import PeftModel",
        "",
        f'base = {model_class}.from_pretrained("{config["base_model_name_or_path"]}"{extra})',
        'model = PeftModel.from_pretrained(base, "<this folder>").eval()',
        "```",
        "",
    ]
    if not to_save:
        pooled = {
            "mean": "hidden.mean(dim=1)",
            "cls": "hidden[:, 0]",
            "cls_dist": "(hidden[:, 0] + hidden[:, 1]) / 2",
        }[backbone.pooling]
        norm, _ = split_head(head)
        lines += [
            f"transformers' classification model of this backbone cannot compute this run's "
            f"pooling ({backbone.pooling}) and head exactly, so the adapter goes on `{model_class}` "
            "and the head is in `head.safetensors`:",
            "",
            "```python",
            "import torch",
            "from safetensors.torch import load_file",
            "",
            'head = load_file("<this folder>/head.safetensors")',
            "hidden = model(input_values).last_hidden_state"
            + ("  # a padded batch: mean over each clip's real frames" if isinstance(backbone, Wav2Vec2) else ""),
            f"pooled = {pooled}",
        ]
        if norm is not None:
            lines.append(
                'pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], '
                f'head["norm.weight"], head["norm.bias"], {norm.eps})'
            )
        lines += ['logits = torch.nn.functional.linear(pooled, head["weight"], head.get("bias"))', "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------- PEFT in
def lora_from_peft(adapter_dir, backbone, name="lora"):
    """Attaches the LoRA of a PEFT adapter folder to ``backbone`` as our
    :class:`~speechbrain_petl.methods.LoRA` (same scaling, same tensors).

    Module names may be transformers 5's (``layers.3.attention.q_proj``),
    with any prefix (``audio_spectrogram_transformer.``), or transformers
    4's for AST (``encoder.layer.3.attention.attention.query``).

    Arguments
    ---------
    adapter_dir : str or os.PathLike
        Folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
    backbone : speechbrain_petl.backbones.Backbone
        The lobe of the adapter's base model.
    name : str
        Name to attach the LoRA under.

    Returns
    -------
    (LoRA, dict)
        The attached method, and the adapter's other tensors by module path
        (its ``modules_to_save``, e.g. a classifier), which a LoRA state
        does not hold.
    """
    folder = pathlib.Path(adapter_dir)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for path in (config_file, weights_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a PEFT adapter folder.")
    config = json.loads(config_file.read_text())
    _check_peft_config(config, config_file)
    rank = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    alpha = config["lora_alpha"] if not config.get("use_rslora") else scaling * rank
    sites = {names: key for key, names in _site_names(backbone).items()}
    pairs, others = {}, {}
    for key, tensor in load_file(str(weights_file)).items():
        path = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            if f".{part}." in path:
                module, tail = path.split(f".{part}.", 1)
                if tail != "weight":
                    raise NotRepresentable(f"{weights_file}: '{key}' is not a plain LoRA weight.")
                pairs.setdefault(_find_site(module, sites, weights_file), {})[part] = tensor
                break
        else:
            if "lora_" in path:
                raise NotRepresentable(f"{weights_file}: '{key}' is a LoRA variant our LoRA has no place for.")
            others[path] = tensor
    layers = sorted({layer for layer, _ in pairs})
    targets = sorted({target for _, target in pairs})
    missing = [(layer, t) for layer in layers for t in targets if (layer, t) not in pairs]
    if not pairs or missing:
        raise NotRepresentable(
            f"{weights_file}: our LoRA adapts the same projections in every chosen layer; "
            f"the adapter has {sorted(pairs)} (missing {missing})."
        )
    lora = LoRA(
        rank=rank,
        alpha=alpha,
        targets=targets,
        dropout=config.get("lora_dropout", 0.0),
        layers=None if len(layers) == backbone.num_layers else layers,
    )
    backbone.attach(lora, name)
    with torch.no_grad():
        for (layer, target), pair in pairs.items():
            update = lora.layers[str(layer)].get_submodule(target)
            for part, param in (("lora_A", update.down.weight), ("lora_B", update.up.weight)):
                if part not in pair or pair[part].shape != param.shape:
                    backbone.detach(name)
                    found = tuple(pair[part].shape) if part in pair else "nothing"
                    raise NotRepresentable(
                        f"{weights_file}: layer {layer} {target} {part} is {found}, expected {tuple(param.shape)}."
                    )
                param.copy_(pair[part].to(param.dtype))
    return lora, others


def _check_peft_config(config, where):
    expected = {
        "peft_type": "LORA",
        "use_dora": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "lora_bias": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layer_replication": None,
        "target_parameters": None,
    }
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k, v) != v and config.get(k) is not None}
    if wrong:
        raise NotRepresentable(f"{where}: {wrong}; our LoRA maps a plain LoRA only ({expected}).")


def _site_names(backbone):
    """``{(layer, site): transformers name}`` of every linear site."""
    names = hf_module_names(backbone)
    out = {}
    for layer in range(backbone.num_layers):
        for site_name in backbone.site_names():
            site = backbone.site(layer, site_name)
            if hasattr(site, "linear"):
                out[(layer, site_name)] = names[id(site.linear)]
    return out


def _find_site(module, sites, where):
    module = _v5_name(module)
    for hf_name, key in sites.items():
        if module == hf_name or module.endswith("." + hf_name):
            return key
    raise NotRepresentable(f"{where}: module '{module}' is not a linear projection of this backbone's blocks.")


def _v5_name(module):
    """transformers 4.x AST module names -> 5.x (unchanged otherwise)."""
    if ".encoder.layer." not in f".{module}":
        return module
    head, rest = f".{module}".split(".encoder.layer.", 1)
    index, inner = rest.split(".", 1)
    return f"{head}.layers.{index}.{AST_V4_NAMES.get(inner, inner)}".lstrip(".")


__all__ = [
    "NotRepresentable",
    "lora_from_peft",
    "merged_into_weights",
    "write_merged_model",
    "write_peft_adapter",
]
