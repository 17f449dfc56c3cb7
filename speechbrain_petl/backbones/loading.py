"""Loading Hugging Face backbones from a hub id, a local folder or a config.

``pretrained=False`` builds the architecture with random weights and never
touches the network for the default checkpoints: their ``config.json`` files
ship inside this package (``backbones/configs/``).

Loading is loud: a folder holding another kind of model, a pretrained load
that leaves any backbone weight missing or unexpected, and a hub id that is
neither cached nor reachable are errors naming the source, what it holds
and what the lobe expects, instead of a randomly initialised backbone.
"""

import json
import os
import pathlib
import socket
import urllib.parse

import huggingface_hub
from transformers import PretrainedConfig

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"

#: Hub ids whose config.json ships with the package.
SHIPPED_CONFIGS = {
    "MIT/ast-finetuned-audioset-10-10-0.4593": "ast-finetuned-audioset-10-10-0.4593.json",
    "facebook/wav2vec2-base-960h": "wav2vec2-base-960h.json",
    "facebook/hubert-base-ls960": "hubert-base-ls960.json",
    "microsoft/wavlm-base-plus": "wavlm-base-plus.json",
    "openai/whisper-base": "whisper-base.json",
    "openai/whisper-small": "whisper-small.json",
}

#: The lobe (yaml class) built on each Hugging Face model type, for messages.
LOBES = {
    "audio-spectrogram-transformer": "AST (speechbrain_petl.backbones.AST)",
    "wav2vec2": "Wav2Vec2 (speechbrain_petl.backbones.Wav2Vec2)",
    "hubert": "HuBERT (speechbrain_petl.backbones.HuBERT)",
    "wavlm": "WavLM (speechbrain_petl.backbones.WavLM)",
    "whisper": "WhisperEncoder (speechbrain_petl.backbones.WhisperEncoder)",
}

#: Weights a pretrained checkpoint may lack without harm: Wav2Vec2's mask
#: embedding, used only by its training-time masking, which the frozen lobe
#: never applies (facebook/wav2vec2-base-960h does not ship it).
TOLERATED_MISSING = {"masked_spec_embed"}

#: How long to wait for the hub before saying it cannot be reached (s).
HUB_TIMEOUT = 3.0


def _lobe(config_class):
    return LOBES.get(config_class.model_type, config_class.__name__)


def check_model_type(folder, config_class, model_class):
    """Raises a ValueError unless the ``config.json`` of ``folder`` describes
    a model of ``config_class``'s type, naming what the folder holds.

    Example
    -------
    >>> import json
    >>> from transformers import ASTConfig, ASTModel
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "config.json").write_text(json.dumps(
    ...     {"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}))
    >>> check_model_type(folder, ASTConfig, ASTModel)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Backbone folder '...' holds a Wav2Vec2ForCTC (model_type 'wav2vec2'), but the AST (speechbrain_petl.backbones.AST) lobe expects an ASTModel (model_type 'audio-spectrogram-transformer'); ...
    """
    config_file = os.path.join(folder, "config.json")
    with open(config_file) as fin:
        config = json.load(fin)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} does not hold a JSON object; expected a save_pretrained config.")
    model_type = config.get("model_type")
    if model_type != config_class.model_type:
        holds = " / ".join(config.get("architectures") or []) or "model"
        raise ValueError(
            f"Backbone folder '{folder}' holds a {holds} (model_type {model_type!r}), but the "
            f"{_lobe(config_class)} lobe expects an {model_class.__name__} (model_type "
            f"{config_class.model_type!r}); backbone_source must be a save_pretrained folder of "
            f"that kind{_other_lobe(model_type)}."
        )


def _other_lobe(model_type):
    lobe = LOBES.get(model_type)
    return f" (this folder fits the {lobe} lobe: use a yaml made for it)" if lobe else ""


def _check_loading_info(model, info, source, config_class):
    children = {name for name, _ in model.named_children()} | {name for name, _ in model.named_parameters(recurse=False)}
    missing = sorted(k for k in info["missing_keys"] if k.split(".")[-1] not in TOLERATED_MISSING)
    unexpected = sorted(k for k in info["unexpected_keys"] if k.split(".")[0] in children)  # not a task head
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ()))
    if not (missing or unexpected or mismatched):
        return
    problems = [
        f"{label} {len(keys)}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
        if keys
    ]
    raise ValueError(
        f"Backbone source '{source}' does not hold the weights of a {type(model).__name__} for the "
        f"{_lobe(config_class)} lobe ({'; '.join(problems)}): with pretrained: True every backbone "
        "weight must come from it. Check backbone_source, or use --pretrained=False for random weights."
    )


def _looks_like_a_path(source):
    return source.startswith(("/", ".", "~")) or os.sep + os.sep in source or source.count("/") > 1


def _require_hub(source, model_class):
    """Fails fast (no 30 s of retries) when ``source`` is a hub id that is
    neither in the local cache nor reachable."""
    cache = os.environ.get("HF_HUB_CACHE") or huggingface_hub.constants.HF_HUB_CACHE
    if isinstance(huggingface_hub.try_to_load_from_cache(source, "config.json", cache_dir=cache), str):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    reason = "HF_HUB_OFFLINE is set" if offline else None
    if not offline:
        url = urllib.parse.urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=HUB_TIMEOUT).close()
        except OSError as err:
            reason = f"{endpoint} cannot be reached ({err})"
    if reason:
        raise OSError(
            f"Backbone '{source}' is not in the Hugging Face cache ({cache}) and {reason}. Offline, pass "
            f"--backbone_source=<local folder> (written by save_pretrained() of a {model_class.__name__}), "
            "or --pretrained=False to build the architecture with random weights."
        )


def load_config(config_class, source):
    """The configuration of ``source`` without downloading any weight.

    Arguments
    ---------
    config_class : type
        e.g. ``transformers.ASTConfig``.
    source : str, os.PathLike or PretrainedConfig
        A config object, a folder written by ``save_pretrained``, or a hub id.

    Example
    -------
    >>> from transformers import ASTConfig
    >>> load_config(ASTConfig, "MIT/ast-finetuned-audioset-10-10-0.4593").hidden_size
    768
    """
    if isinstance(source, PretrainedConfig):
        if not isinstance(source, config_class):
            raise TypeError(
                f"Expected a {config_class.__name__}, got {type(source).__name__}."
            )
        return source
    source = str(source)
    if os.path.isdir(source):
        config_file = os.path.join(source, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"Backbone folder '{source}' has no config.json; expected a "
                "folder written by save_pretrained()."
            )
        check_model_type(source, config_class, model_class_of(config_class))
        return config_class.from_pretrained(source)
    if source in SHIPPED_CONFIGS:
        with open(CONFIG_DIR / SHIPPED_CONFIGS[source]) as fin:
            return config_class(**json.load(fin))
    _require_source(source, model_class_of(config_class))
    return config_class.from_pretrained(source)


def model_class_of(config_class):
    """The name-giving model class of a config class, for messages."""
    import transformers

    names = {"ASTConfig": "ASTModel", "Wav2Vec2Config": "Wav2Vec2Model", "HubertConfig": "HubertModel",
             "WavLMConfig": "WavLMModel", "WhisperConfig": "WhisperModel"}
    name = names.get(config_class.__name__)
    return getattr(transformers, name) if name else config_class


def _require_source(source, model_class):
    if _looks_like_a_path(source):
        raise FileNotFoundError(
            f"Backbone folder '{source}' does not exist; expected a folder written by "
            f"save_pretrained() of a {model_class.__name__}, or a Hugging Face hub id."
        )
    _require_hub(source, model_class)


def load_model(model_class, config_class, source, pretrained):
    """A Hugging Face model: pretrained weights, or random ones from a config.

    Arguments
    ---------
    model_class : type
        e.g. ``transformers.ASTModel``.
    config_class : type
        Its configuration class.
    source : str, os.PathLike or PretrainedConfig
        Hub id, local ``save_pretrained`` folder, or (with pretrained=False)
        a config object.
    pretrained : bool
        Load the weights of ``source``; else initialise randomly.
    """
    if pretrained:
        if isinstance(source, PretrainedConfig):
            raise ValueError(
                "A config object has no weights: pass pretrained=False, or a "
                "hub id / save_pretrained folder as source."
            )
        if os.path.isdir(str(source)) and not any(
            name.endswith((".safetensors", ".bin"))
            for name in os.listdir(str(source))
        ):
            raise FileNotFoundError(
                f"Backbone folder '{source}' holds no weights "
                "(*.safetensors or *.bin); use pretrained=False to build it "
                "from its config.json."
            )
        source = str(source)
        if os.path.isdir(source):
            check_model_type(source, config_class, model_class)
        else:
            _require_source(source, model_class)
        model, info = model_class.from_pretrained(source, output_loading_info=True)
        _check_loading_info(model, info, source, config_class)
        return model
    return model_class(load_config(config_class, source))


def describe_source(source):
    """A short printable description of ``source`` for logs and checkpoints."""
    if isinstance(source, PretrainedConfig):
        return f"<{type(source).__name__}>"
    return str(source)
