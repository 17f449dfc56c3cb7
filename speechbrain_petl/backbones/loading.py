"""Loading Hugging Face backbones from a hub id, a local folder or a config.

``pretrained=False`` builds the architecture with random weights and never
touches the network for the default checkpoints: their ``config.json`` files
ship inside this package (``backbones/configs/``).
"""

import json
import os
import pathlib

from transformers import PretrainedConfig

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"

#: Hub ids whose config.json ships with the package.
SHIPPED_CONFIGS = {
    "MIT/ast-finetuned-audioset-10-10-0.4593": "ast-finetuned-audioset-10-10-0.4593.json",
    "facebook/wav2vec2-base-960h": "wav2vec2-base-960h.json",
}


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
        return config_class.from_pretrained(source)
    if source in SHIPPED_CONFIGS:
        with open(CONFIG_DIR / SHIPPED_CONFIGS[source]) as fin:
            return config_class(**json.load(fin))
    return config_class.from_pretrained(source)


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
        return model_class.from_pretrained(str(source))
    return model_class(load_config(config_class, source))


def describe_source(source):
    """A short printable description of ``source`` for logs and checkpoints."""
    if isinstance(source, PretrainedConfig):
        return f"<{type(source).__name__}>"
    return str(source)
