"""A run's LoRA as a PEFT adapter, and a PEFT LoRA adapter as our LoRA.

* :func:`write_peft_adapter` (``python -m speechbrain_petl.export --peft``):
  ``adapter_config.json`` + ``adapter_model.safetensors``, module names in
  transformers' terms, plus ``labels.json`` and the run's
  ``preprocessor_config.json``. The adapter goes on transformers'
  classification model (head as ``modules_to_save``) when that model
  represents the run's pooling and head exactly (see
  :mod:`speechbrain_petl.export.merged`), else on the bare backbone
  (``ASTModel`` / ``Wav2Vec2Model``) with the head in ``head.safetensors``.
* :func:`lora_from_peft`: a PEFT LoRA adapter attached to a lobe as our
  :class:`~speechbrain_petl.methods.LoRA`.

Our adapters also record the fingerprint of the frozen weights they were
trained on (:data:`BASE_FINGERPRINT`, beside PEFT's files, which PEFT
ignores); :func:`lora_from_peft` refuses them on other weights, as an
inference folder is refused. Adapters from elsewhere record none and load.

Scaling: ours is ``alpha / rank``; PEFT's is ``lora_alpha / r`` (or
``lora_alpha / sqrt(r)`` with ``use_rslora``). The export writes
``lora_alpha = alpha``, ``use_rslora = false``, so the recipes' effective
0.125 (rank 6, ``alpha: 0.75``) stays 0.125 to the bit.
"""

import json
import math
import pathlib

import torch
from safetensors.torch import save_file

from speechbrain_petl.backbones.ast import AST
from speechbrain_petl.backbones.wav2vec2 import Wav2Vec2
from speechbrain_petl.backbones.wavlm import WavLM
from speechbrain_petl.data.files import PEFT_ADVICE, load_safetensors, read_json
from speechbrain_petl.export.merged import (
    NotRepresentable,
    feature_extractor,
    new_folder,
    representation_problems,
    split_head,
)
from speechbrain_petl.inference.folder import head_outputs, output_labels
from speechbrain_petl.methods import LoRA

#: Prefix PEFT gives every tensor of a saved adapter.
PEFT_PREFIX = "base_model.model."

#: The file of an adapter we export that holds the fingerprint of the frozen
#: weights it was trained on (:meth:`speechbrain_petl.backbones.Backbone.fingerprint`).
BASE_FINGERPRINT = "base_fingerprint.json"

#: transformers 4.x names of AST's projections -> the 5.x names our lobes see.
AST_V4_NAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def hf_module_names(backbone):
    """``{id(module): name}`` over the backbone's transformers model (names
    as ``ASTModel`` / ``Wav2Vec2Model`` give them)."""
    with backbone.transformers_model() as base:
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
    with backbone.transformers_model() as base:
        return type(base).__name__, "", None


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
        ``AutoFeatureExtractor``), ``labels.json``, ``README.md``,
        :data:`BASE_FINGERPRINT`, and
        ``head.safetensors`` when the head is not part of the adapter
        (``modules_to_save``).
    """
    _, lora = single_lora(backbone)
    if getattr(backbone, "crop_positions", False):
        raise NotRepresentable(
            "This WhisperEncoder run cropped its positions to each batch (crop_positions: True); transformers' "
            "WhisperModel encodes 30 s windows, so the adapter on it would see other inputs than in training. "
            "Train with crop_positions: False for a PEFT adapter, or share the run's inference folder."
        )
    if isinstance(backbone, WavLM):
        bypassed = sorted({target for _, target, _ in lora.updates() if target.startswith("attention.")})
        if bypassed:
            raise NotRepresentable(
                "transformers' WavLMAttention hands the weights of q_proj/k_proj/v_proj/out_proj straight to "
                "F.multi_head_attention_forward, so PEFT would never apply a LoRA on "
                f"{bypassed} (the adapter would load and change nothing); only mlp.fc1 / mlp.fc2 targets "
                "travel as a PEFT adapter on WavLM. Share the run's inference folder instead."
            )
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
    with new_folder(dest) as partial:
        save_file(_plain(tensors), partial / "adapter_model.safetensors")
        (partial / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (partial / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
        (partial / BASE_FINGERPRINT).write_text(json.dumps(backbone.fingerprint(), indent=1) + "\n")
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
        config = read_json(config_file, "Pass a save_pretrained folder of the base model")
        where, length = f"{base_model!r}", config.get("max_length") if isinstance(config, dict) else None
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
        "`AutoFeatureExtractor.from_pretrained(\"<this folder>\")`. "
        f"`{BASE_FINGERPRINT}`: the SHA-256 of the base weights it was trained on "
        "(`speechbrain_petl.export.peft.lora_from_peft` refuses other weights).",
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

    An adapter we exported records the fingerprint of its frozen weights
    (:data:`BASE_FINGERPRINT`): on a backbone with other weights it is
    refused (:class:`~speechbrain_petl.backbones.trained_state.FingerprintMismatch`
    naming both SHA-256). A file that cannot be read is a
    :class:`~speechbrain_petl.data.files.DamagedFileError` naming it.

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
    config = read_json(config_file, PEFT_ADVICE)
    if not isinstance(config, dict):
        raise NotRepresentable(f"{config_file} holds a {type(config).__name__}: expected a PEFT config (an object).")
    _check_peft_config(config, config_file)
    missing = [key for key in ("r", "lora_alpha") if key not in config]
    if missing:
        raise NotRepresentable(f"{config_file} has no {missing}: expected a PEFT LoRA config.")
    fingerprint_file = folder / BASE_FINGERPRINT
    if fingerprint_file.is_file():
        backbone.check_fingerprint(read_json(fingerprint_file, PEFT_ADVICE), source=f"The PEFT adapter {folder}")
    rank = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    alpha = config["lora_alpha"] if not config.get("use_rslora") else scaling * rank
    sites = {names: key for key, names in _site_names(backbone).items()}
    pairs, others = {}, {}
    for key, tensor in load_safetensors(weights_file, PEFT_ADVICE).items():
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


__all__ = ["hf_module_names", "lora_from_peft", "single_lora", "write_peft_adapter"]
