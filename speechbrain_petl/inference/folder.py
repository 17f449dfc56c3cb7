"""The inference folder: what it holds, how it is written, and how it is read.

A trained task is a folder of about 1 MB::

    hyperparams.yaml      inference only: backbone source and settings, PETL
                          methods, head, labels, a SpeechBrain Pretrainer, and
                          the record of the settings it was trained with
                          (``trained_settings`` and their SHA-256)
    embedding_model.ckpt  the trained PETL tensors + the backbone fingerprint
    head.ckpt             the classification head's tensors
    label_encoder.txt     the labels, one per output unit (SpeechBrain's format)
    README.md             a model card
    custom_interface.py   one import, for SpeechBrain's ``foreign_class``

Both ``.ckpt`` files are ``torch.save`` archives of plain tensors, strings
and numbers (``torch.load(..., weights_only=True)`` reads them; they hold no
code). The frozen backbone is not copied: the yaml names its source (a hub
id or a ``save_pretrained`` folder), and loading checks that its weights
hash to the recorded fingerprint. Nothing inside refers to the folder's own
location, so the folder can be moved, copied, or pushed as it is to a model
repository. Under full fine-tuning the trained state *is* the whole
backbone, so the folder then holds a full model copy.

:func:`write_inference_folder` writes one from live modules (every recipe
run calls it when it finishes; ``python -m speechbrain_petl.export`` calls
it for a run folder). :class:`InferenceFolder` reads one without building
its backbone; :class:`~speechbrain_petl.inference.AudioClassifier` (through
SpeechBrain's ``from_hparams``) and
:class:`~speechbrain_petl.inference.MultiTaskClassifier` (onto a shared
backbone) both check a folder through it.

Loading checks the yaml against ``trained_settings``
(:func:`check_output_settings`): a setting edited by hand is refused,
naming its key, unless the loader's ``overrides`` name it.

The yaml names its helpers by their public path in
:mod:`speechbrain_petl.inference` (``speechbrain_petl.inference.label_encoder``,
``.PassThrough``, ``.load_head_state``), which stays the same when the
modules behind it move.
"""

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import torch
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import recursive_update
from ruamel.yaml import YAML
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.nnet.linear import Linear as SpeechBrainLinear

from speechbrain_petl.data.files import (
    INFERENCE_FOLDER_ADVICE,
    DamagedFileError,
    load_torch,
    origin,
    read_yaml,
)
from speechbrain_petl.hyperyaml import Apply, New, Name, Ref, callable_spec, dumps, import_path
from speechbrain_petl.studies.params import summarize

#: The line of its yaml's header that marks a folder written here.
WRITTEN_BY = "# Written by speechbrain_petl.export."

#: The module ``speechbrain.inference.interfaces.foreign_class`` imports from
#: the folder (``pymodule_file="custom_interface.py", classname="AudioClassifier"``).
CUSTOM_INTERFACE = '''"""Entry point for speechbrain.inference.interfaces.foreign_class:
foreign_class(source=<this folder>, pymodule_file="custom_interface.py",
classname="AudioClassifier"). Needs the speechbrain_petl package installed."""

from speechbrain_petl.inference import AudioClassifier  # noqa: F401
'''


# ------------------------------------------------------------------ helpers
#: The files an inference folder must hold.
INFERENCE_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "head.ckpt", "label_encoder.txt")


class PassThrough(torch.nn.Module):
    """Returns its first argument: the ``compute_features`` and
    ``mean_var_norm`` steps of ``EncoderClassifier`` for a lobe that takes
    raw waveforms and normalises them itself.

    Example
    -------
    >>> PassThrough()(torch.ones(2), torch.zeros(2)).tolist()
    [1.0, 1.0]
    """

    def forward(self, x, *args, **kwargs):
        """Returns ``x`` unchanged."""
        return x


def label_encoder(labels):
    """A ``CategoricalEncoder`` whose index ``i`` is ``labels[i]``.

    Example
    -------
    >>> label_encoder(["dog", "rain"]).decode_ndim([1, 0])
    ['rain', 'dog']
    """
    encoder = CategoricalEncoder()
    for label in labels:
        encoder.add_label(label)
    encoder.expect_len(len(labels))
    return encoder


def unused_label(index):
    """The name :func:`output_labels` gives output unit ``index`` when no
    training label maps to it."""
    return f"<unused output {index}>"


def output_labels(encoder, n_outputs):
    """The label of each of the head's ``n_outputs`` units; a unit that no
    training label maps to (a head wider than the labels seen) is named
    ``<unused output i>``.

    Example
    -------
    >>> output_labels(label_encoder(["dog"]), 2)
    ['dog', '<unused output 1>']
    """
    return [encoder.ind2lab.get(i, unused_label(i)) for i in range(n_outputs)]


def unused_outputs(labels):
    """Indices of the output units :func:`output_labels` named unused: the
    inference interfaces never return them as the best class.

    Example
    -------
    >>> unused_outputs(["dog", "<unused output 1>", "rain", "<unused output 3>"])
    [1, 3]
    """
    return [i for i, label in enumerate(labels) if label == unused_label(i)]


def best_used_output(log_probs, unused):
    """``(score, index)`` of the best output unit of each row of
    ``log_probs`` ``(batch, units)`` among the units not in ``unused``
    (the log-probabilities themselves are not changed: those units keep
    the probability the trained head gives them).

    Example
    -------
    >>> score, index = best_used_output(torch.log(torch.tensor([[0.2, 0.7, 0.1]])), [1])
    >>> index.tolist(), round(score.exp().item(), 3)
    ([0], 0.2)
    """
    if not unused:
        return torch.max(log_probs, dim=-1)
    masked = log_probs.clone()
    masked[..., unused] = float("-inf")
    return torch.max(masked, dim=-1)


def head_outputs(head):
    """Number of output units of a linear head (SpeechBrain's or torch's),
    alone or last in a ``torch.nn.Sequential`` (e.g. after a LayerNorm)."""
    if isinstance(head, torch.nn.Sequential) and len(head):
        head = head[-1]
    linear = getattr(head, "w", head)
    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"Expected a linear head, got {type(head).__name__}.")
    return linear.out_features


def load_head_state(head, path):
    """Pretrainer hook: loads ``head.ckpt`` strictly (plain tensors only),
    with errors (:class:`~speechbrain_petl.data.files.DamagedFileError`)
    that name the file of the folder the user gave, not SpeechBrain's
    ``savedir`` link or copy of it."""

    shown = origin(path)
    state = load_torch(path, INFERENCE_FOLDER_ADVICE, shown=shown)
    expected = head.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise DamagedFileError(
            shown, f"holds {found}, expected the head's tensors {sorted(expected)}", INFERENCE_FOLDER_ADVICE
        )
    for key, value in state.items():
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if found != tuple(expected[key].shape):
            raise DamagedFileError(
                shown, f"'{key}' has shape {found}, the yaml's head expects {tuple(expected[key].shape)}",
                INFERENCE_FOLDER_ADVICE,
            )
    head.load_state_dict(state)


# ------------------------------------------------------------------ reading
def check_folder(folder, hparams_file="hyperparams.yaml"):
    """Raises, naming what is wrong, unless ``folder`` is a folder holding
    every file of :data:`INFERENCE_FILES` (``hparams_file`` in place of
    ``hyperparams.yaml``).

    Example
    -------
    >>> check_folder(getfixture("tmp_path"))
    Traceback (most recent call last):
    FileNotFoundError: ... is not a complete inference folder: hyperparams.yaml, ...
    """
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; expected an inference folder.")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; expected an inference folder.")
    expected = [hparams_file if name == "hyperparams.yaml" else name for name in INFERENCE_FILES]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete inference folder: {', '.join(missing)} missing "
            f"(expected {', '.join(expected)}; write one with "
            "`python -m speechbrain_petl.export <output_folder>`)."
        )


@dataclasses.dataclass
class InferenceFolder:
    """An inference folder as read from disk, its backbone not built.

    Build it with :meth:`read`; :meth:`methods`, :meth:`head` and
    :meth:`trained_state` then build the parts a task needs on a lobe
    that already exists (the multi-task classifier's shared backbone),
    and :meth:`check_settings` checks them against the settings the folder
    was trained with.

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> from speechbrain_petl.methods import LoRA
    >>> tmp = getfixture("tmp_path")
    >>> AST(tiny_config("ast", num_hidden_layers=1), pretrained=False, max_frames=64).save_pretrained(tmp / "ast")
    >>> lobe = AST(str(tmp / "ast"), max_frames=64, petl=LoRA(rank=2))
    >>> _ = write_inference_folder(tmp / "task", lobe, torch.nn.Linear(32, 2), label_encoder(["no", "yes"]))
    >>> folder = InferenceFolder.read(tmp / "task")
    >>> folder.lobe_class, folder.lobe_settings["max_frames"], folder.labels
    ('speechbrain_petl.backbones.AST', 64, ['no', 'yes'])
    >>> list(folder.methods()), type(folder.head()).__name__
    (['lora'], 'Linear')
    """

    #: The folder.
    path: pathlib.Path
    #: Import path of the lobe's class (``speechbrain_petl.backbones.AST``).
    lobe_class: str
    #: The lobe's constructor arguments other than ``source`` and ``petl``.
    lobe_settings: Dict[str, Any]
    #: Where the frozen weights are (hub id or folder), as recorded.
    backbone_source: str
    #: The label of each output unit.
    labels: List[str]
    #: The rate the model expects.
    sample_rate: int = 16000
    #: Clips are cropped to this many samples, as in training (None: not cropped).
    max_audio_samples: Optional[int] = None
    #: The yaml's ``petl`` and ``head`` entries, as yaml text (built on demand).
    parts_yaml: str = dataclasses.field(default="", repr=False)
    #: The settings that shaped the trained outputs, as written
    #: (:func:`output_settings`); None for folders written before they were recorded.
    trained_settings: Optional[Dict[str, Any]] = dataclasses.field(default=None, repr=False)
    #: The digest written beside :attr:`trained_settings`.
    trained_settings_sha256: Optional[str] = dataclasses.field(default=None, repr=False)
    #: The settings keys the ``overrides`` given to :meth:`read` change on purpose.
    overridden_settings: Tuple[str, ...] = ()

    @classmethod
    def read(cls, folder, overrides=None):
        """Checks the files of ``folder`` and reads its yaml (nothing is
        built), with ``overrides`` applied as HyperPyYAML applies them
        (a dict or yaml text, e.g. ``{"embedding_model": {"pooling": "cls"}}``)."""
        folder = pathlib.Path(folder)
        check_folder(folder)
        yaml_file = folder / "hyperparams.yaml"
        document = read_yaml(yaml_file, INFERENCE_FOLDER_ADVICE, round_trip=True)
        if overrides and isinstance(document, dict):
            recursive_update(document, _as_mapping(overrides))
        model = document.get("embedding_model") if isinstance(document, dict) else None
        tag = getattr(getattr(model, "tag", None), "value", None) or ""
        if not tag.startswith("!new:"):
            raise DamagedFileError(
                yaml_file, "'embedding_model' is not a !new: lobe, as write_inference_folder writes it",
                INFERENCE_FOLDER_ADVICE,
            )
        for key in ("backbone_source", "head", "labels"):
            if key not in document:
                raise DamagedFileError(
                    yaml_file, f"no '{key}' key, which write_inference_folder writes", INFERENCE_FOLDER_ADVICE
                )
        parts = {"head": document["head"], "labels": document["labels"]}
        if "petl" in model:
            parts["petl"] = model["petl"]
        text = io.StringIO()
        YAML(typ="rt").dump(parts, text)
        max_samples = document.get("max_audio_samples")
        return cls(
            path=folder,
            lobe_class=tag[len("!new:"):],
            lobe_settings={key: _plain(value) for key, value in model.items() if key not in ("source", "petl")},
            backbone_source=str(document["backbone_source"]),
            labels=[str(label) for label in document["labels"]],
            sample_rate=int(document.get("sample_rate", 16000)),
            max_audio_samples=None if max_samples is None else int(max_samples),
            parts_yaml=text.getvalue(),
            trained_settings=_plain_value(document.get(SETTINGS_KEY)),
            trained_settings_sha256=_plain_value(document.get(SETTINGS_DIGEST_KEY)),
            overridden_settings=tuple(override_keys(overrides)),
        )

    def check_settings(self, lobe, methods, head):
        """Raises a ValueError naming each setting of the built ``lobe``,
        ``methods`` (``{name: method}`` as in the yaml) and ``head``, or of
        the labels, rate and crop, that differs from what the folder was
        trained with, unless the overrides given to :meth:`read` name it
        (:func:`check_output_settings`). Folders written before settings
        were recorded pass."""
        if self.trained_settings is None:
            return
        actual = output_settings(
            import_path(type(lobe)), lobe.constructor_args(), methods, head, self.labels, self.sample_rate,
            self.max_audio_samples,
        )
        check_output_settings(
            self.trained_settings, self.trained_settings_sha256, actual, self.overridden_settings,
            where=str(self.path / "hyperparams.yaml"),
        )

    def methods(self):
        """``{name: method}``: the folder's PETL methods, built untrained."""
        return dict(load_hyperpyyaml(self.parts_yaml).get("petl") or {})

    def head(self):
        """The classification head with ``head.ckpt`` loaded."""
        head = load_hyperpyyaml(self.parts_yaml)["head"]
        load_head_state(head, self.path / "head.ckpt")
        return head

    def trained_state(self):
        """The trained state in ``embedding_model.ckpt``: a dict of the
        backbone's ``fingerprint`` and the methods' ``state`` tensors (a
        :class:`~speechbrain_petl.data.files.DamagedFileError` naming the file
        when it cannot be read)."""
        path = self.path / "embedding_model.ckpt"
        trained = load_torch(path, INFERENCE_FOLDER_ADVICE)
        if not isinstance(trained, dict) or set(trained) != {"fingerprint", "state"}:
            raise DamagedFileError(
                path, "not a speechbrain_petl trained state (expected the keys 'fingerprint' and 'state')",
                INFERENCE_FOLDER_ADVICE,
            )
        return trained

    def lobe(self, source=None):
        """The folder's lobe without its methods, pretrained weights from
        ``source`` (default: :attr:`backbone_source`)."""
        module_path, _, class_name = self.lobe_class.rpartition(".")
        lobe_class = getattr(__import__(module_path, fromlist=[class_name]), class_name)
        settings = dict(self.lobe_settings, pretrained=True)
        return lobe_class(source=source or self.backbone_source, **settings).eval()


def _plain(value):
    """ruamel's scalar types as plain Python values."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if value is None:
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    raise ValueError(f"Unexpected lobe setting {value!r} in an inference folder's embedding_model.")


# --------------------------------------------------------- trained settings
#: The yaml key under which a folder records the settings that shaped its
#: outputs (:func:`output_settings`), and the key of their SHA-256.
SETTINGS_KEY = "trained_settings"
SETTINGS_DIGEST_KEY = "trained_settings_sha256"


def output_settings(lobe_class, lobe_settings, methods, head, labels, sample_rate=16000, max_audio_samples=None):
    """Every setting that shapes a task's outputs, flat, keyed by its path
    in the inference yaml: the lobe's constructor arguments (but its
    ``source``: the fingerprint checks the weights), each method's class
    and constructor arguments, the head's classes and shapes, the labels,
    the rate and the crop. A class is recorded as its yaml tag.

    Example
    -------
    >>> from speechbrain_petl.methods import LoRA
    >>> settings = output_settings("speechbrain_petl.backbones.AST", {"max_frames": 64, "pooling": "mean"},
    ...                            {"lora": LoRA(rank=2)}, torch.nn.Linear(32, 2), ["no", "yes"])
    >>> settings["embedding_model.petl.lora"], settings["embedding_model.petl.lora.rank"]
    ('!new:speechbrain_petl.methods.LoRA', 2)
    >>> settings["embedding_model.pooling"], settings["head.out_features"], settings["labels"]
    ('mean', 2, ['no', 'yes'])
    """
    model_args = {key: value for key, value in lobe_settings.items() if key not in ("source", "petl")}
    if methods:
        model_args["petl"] = {name: method_spec(method) for name, method in methods.items()}
    spec = {
        "sample_rate": sample_rate,
        "max_audio_samples": max_audio_samples,
        "embedding_model": New(lobe_class, model_args),
        "head": head_spec(head),
        "labels": list(labels),
    }
    flat = {}
    for key, value in spec.items():
        _flatten(key, value, flat)
    return flat


def settings_sha256(settings):
    """SHA-256 of ``settings`` (a flat dict of plain values), key order aside.

    Example
    -------
    >>> settings_sha256({"a": 1, "b": [2.5]}) == settings_sha256({"b": [2.5], "a": 1})
    True
    """
    text = json.dumps(_plain_value(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def override_keys(overrides):
    """The settings keys (dotted yaml paths) that HyperPyYAML ``overrides``
    (a dict or yaml text) set.

    Example
    -------
    >>> override_keys({"backbone_source": "here", "embedding_model": {"petl": {"lora": {"alpha": 1.5}}}})
    ['backbone_source', 'embedding_model.petl.lora.alpha']
    """
    keys = []

    def walk(path, value):
        """Collects the paths of the leaves (and of tagged mappings) under ``path``."""
        if isinstance(value, Mapping) and value:
            if getattr(getattr(value, "tag", None), "value", None):
                keys.append(path)  # e.g. a whole new !new: object
            for key, item in value.items():
                walk(f"{path}.{key}" if path else str(key), item)
        elif path:
            keys.append(path)

    walk("", _as_mapping(overrides) if overrides else {})
    return keys


def check_output_settings(recorded, recorded_sha256, actual, overridden=(), where="hyperparams.yaml"):
    """Raises a ValueError unless the settings a task is built with
    (``actual``, from :func:`output_settings`) are those it was trained with
    (``recorded``, written with the digest ``recorded_sha256``). Keys that
    ``overridden`` names (or lies under) may differ: they were changed on
    purpose. An edited record (its digest no longer matches) is refused too.

    Example
    -------
    >>> trained = {"embedding_model.pooling": "mean", "labels": ["no", "yes"]}
    >>> check_output_settings(trained, settings_sha256(trained), dict(trained, **{"embedding_model.pooling": "cls"}))
    Traceback (most recent call last):
     ...
    ValueError: hyperparams.yaml does not describe the model it was trained as: 'embedding_model.pooling' is 'cls' there, trained with 'mean'. ...
    >>> check_output_settings(trained, settings_sha256(trained), dict(trained, **{"embedding_model.pooling": "cls"}),
    ...                       overridden=["embedding_model.pooling"])
    """

    def allowed(key):
        """Whether an override names ``key`` or a mapping above it."""
        return any(key == name or key.startswith(name + ".") for name in overridden)

    recorded = _plain_value(recorded)
    if not isinstance(recorded, dict) or (
        settings_sha256(recorded) != recorded_sha256 and not allowed(SETTINGS_DIGEST_KEY)
    ):
        raise ValueError(
            f"{where}: '{SETTINGS_KEY}' does not match '{SETTINGS_DIGEST_KEY}': the record of the settings "
            "the folder was trained with was edited. Restore it (write the folder again with "
            "python -m speechbrain_petl.export), or pass overrides naming "
            f"'{SETTINGS_DIGEST_KEY}' to load it anyway."
        )
    missing = object()
    differing = [
        key for key in sorted(set(recorded) | set(actual))
        if recorded.get(key, missing) != _plain_value(actual.get(key, missing)) and not allowed(key)
    ]
    if differing:

        def shown(settings, key):
            """The setting's value as the message shows it."""
            return repr(settings[key]) if key in settings else "absent"

        problems = "; ".join(
            f"'{key}' is {shown(actual, key)} there, trained with {shown(recorded, key)}" for key in differing
        )
        first = differing[0]
        example = _plain_value(actual.get(first))
        for part in reversed(first.split(".")):
            example = {part: example}
        raise ValueError(
            f"{where} does not describe the model it was trained as: {problems}. Restore the trained "
            f"values, or name each key in overrides to change it on purpose (e.g. overrides={example!r})."
        )


def _flatten(path, value, flat):
    """Adds ``value`` (plain, or a :class:`New`/:class:`Name`/:class:`Apply`
    spec, or a callable) to ``flat`` under ``path`` and its children's paths."""
    if callable(value) and not isinstance(value, (New, Name, Apply)):
        value = callable_spec(value)
    if isinstance(value, (New, Name, Apply)):
        tag = {New: "!new:", Name: "!name:", Apply: "!apply:"}[type(value)]
        flat[path] = f"{tag}{value.path}"
        for index, item in enumerate(getattr(value, "args", None) or []):
            _flatten(f"{path}.{index}", item, flat)
        for key, item in value.kwargs.items():
            _flatten(f"{path}.{key}", item, flat)
    elif isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{path}.{key}", item, flat)
    elif isinstance(value, (list, tuple)) and any(
        isinstance(item, (New, Name, Apply, dict, list, tuple)) or callable(item) for item in value
    ):
        for index, item in enumerate(value):
            _flatten(f"{path}.{index}", item, flat)
    else:
        flat[path] = _plain_value(value)


def _plain_value(value):
    """Plain Python values (dicts, lists, str, int, float, bool, None) of
    ``value`` (ruamel's scalar and container types, tuples)."""
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {str(key): _plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(item) for item in value]
    raise TypeError(f"Cannot record {value!r} ({type(value).__name__}) as a plain setting.")


def _as_mapping(overrides):
    """HyperPyYAML ``overrides`` (a dict or yaml text) as a mapping."""
    if isinstance(overrides, str):
        overrides = YAML(typ="rt").load(overrides) or {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict or yaml text of one, got {type(overrides).__name__}")
    return overrides


# ------------------------------------------------------------------ writing
def method_spec(method):
    """The yaml object that rebuilds a PETL ``method`` (untrained)."""
    return New(import_path(type(method)), _yaml_args(method.constructor_args()))


def lobe_arguments(backbone, max_audio_samples=None):
    """The lobe's constructor arguments as an inference folder writes them:
    ``max_samples`` is the crop the recipe trained with (the smaller of the
    lobe's own and ``max_audio_samples``), so that every interface building
    the lobe crops as training did.

    Example
    -------
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> lobe = AST(tiny_config("ast"), pretrained=False, max_frames=64)
    >>> lobe_arguments(lobe, max_audio_samples=8000)["max_samples"], lobe.constructor_args()["max_samples"]
    (8000, None)
    """
    arguments = dict(backbone.constructor_args())
    crops = [n for n in (arguments.get("max_samples"), max_audio_samples) if n is not None]
    if crops:
        if "max_samples" not in arguments:
            raise ValueError(
                f"{type(backbone).__name__} takes no max_samples: its inference folder could not "
                f"crop clips to max_audio_samples={max_audio_samples} in every interface."
            )
        arguments["max_samples"] = min(crops)
    return arguments


def inference_yaml(
    backbone, head, labels, sample_rate=16000, backbone_source=None, title="", max_audio_samples=None
):
    """The ``hyperparams.yaml`` text of an inference folder."""
    methods = dict(backbone.petl.items())
    backbone_args = lobe_arguments(backbone, max_audio_samples)
    source = backbone_source or backbone_args.pop("source")
    backbone_args.pop("source", None)
    settings = output_settings(
        import_path(type(backbone)), backbone_args, methods, head, labels, sample_rate, max_audio_samples
    )
    backbone_args = {"source": Ref("backbone_source"), **backbone_args}
    if methods:
        backbone_args["petl"] = {name: method_spec(method) for name, method in methods.items()}
    header = [
        "# " + "#" * 76,
        f"# Inference: {title}" if title else "# Inference",
        "# Frozen backbone + trained PETL tensors (embedding_model.ckpt) + head (head.ckpt).",
        "# Loads with speechbrain_petl.inference.AudioClassifier.from_hparams(source=<this folder>)",
        "# or speechbrain.inference.classifiers.EncoderClassifier.from_hparams(source=<this folder>).",
        WRITTEN_BY,
        "# " + "#" * 76,
        "",
    ]
    sections = [
        ({"sample_rate": sample_rate}, None),
        (
            {"max_audio_samples": max_audio_samples},
            "Clips were cropped to this many samples in training; embedding_model's max_samples\n"
            "# crops them so in every interface.",
        ) if max_audio_samples is not None else ({}, None),
        (
            {"backbone_source": source},
            "The frozen backbone: a hub id or a save_pretrained folder holding the weights\n"
            "# whose sha256 embedding_model.ckpt records (any copy of them will do).",
        ),
        ({"embedding_model": New(import_path(type(backbone)), backbone_args)}, None),
        (
            {
                "head": head_spec(head),
                "classifier": New(
                    "torch.nn.Sequential", args=[Ref("head"), New("torch.nn.LogSoftmax", {"dim": -1})]
                ),
            },
            "Classification head; the classifier returns log-probabilities.",
        ),
        (
            {
                "labels": labels,
                "label_encoder": Apply("speechbrain_petl.inference.label_encoder", {"labels": Ref("labels")}),
                "compute_features": New("speechbrain_petl.inference.PassThrough"),
                "mean_var_norm": New("speechbrain_petl.inference.PassThrough"),
            },
            "Labels of the output units (label_encoder.txt holds the same), and\n"
            "# EncoderClassifier's steps: the lobe takes waveforms and computes its own features.",
        ),
        (
            {
                "modules": {
                    "compute_features": Ref("compute_features"),
                    "mean_var_norm": Ref("mean_var_norm"),
                    "embedding_model": Ref("embedding_model"),
                    "classifier": Ref("classifier"),
                }
            },
            None,
        ),
        (
            {
                "pretrainer": New(
                    "speechbrain.utils.parameter_transfer.Pretrainer",
                    {
                        "loadables": {"embedding_model": Ref("embedding_model"), "head": Ref("head")},
                        "custom_hooks": {"head": Name("speechbrain_petl.inference.load_head_state")},
                    },
                )
            },
            "Loads embedding_model.ckpt and head.ckpt from the folder this yaml is loaded from.",
        ),
        (
            {SETTINGS_KEY: settings, SETTINGS_DIGEST_KEY: settings_sha256(settings)},
            "The settings the tensors were trained with, as written (keyed by their path in this\n"
            "# yaml). AudioClassifier and MultiTaskClassifier refuse a yaml that differs from them,\n"
            "# naming the key, unless overrides={...} names that key: edit the settings above\n"
            "# through overrides, not by hand.",
        ),
    ]
    body = []
    for mapping, comment in sections:
        if not mapping:
            continue
        if comment:
            body.append(f"# {comment}\n")
        body.append(dumps(mapping) + "\n")
    return "\n".join(header) + "".join(body)


def head_spec(head):
    """The yaml object that rebuilds ``head``: a linear layer, alone or after
    a LayerNorm (``torch.nn.Sequential(LayerNorm, linear)``, the shape of
    transformers' AST classifier)."""
    if type(head) is torch.nn.Sequential and len(head) == 2 and type(head[0]) is torch.nn.LayerNorm:
        norm = head[0]
        return New(
            "torch.nn.Sequential",
            args=[
                New(
                    "torch.nn.LayerNorm",
                    {
                        "normalized_shape": list(norm.normalized_shape),
                        "eps": norm.eps,
                        "elementwise_affine": norm.elementwise_affine,
                        "bias": norm.bias is not None,
                    },
                ),
                head_spec(head[1]),
            ],
        )
    if isinstance(head, SpeechBrainLinear):
        return New(
            "speechbrain.nnet.linear.Linear",
            {"input_size": head.w.in_features, "n_neurons": head.w.out_features, "bias": head.w.bias is not None},
        )
    if type(head) is torch.nn.Linear:
        return New(
            "torch.nn.Linear",
            {"in_features": head.in_features, "out_features": head.out_features, "bias": head.bias is not None},
        )
    raise TypeError(
        f"The head is a {type(head).__name__}; an inference folder can describe a "
        "speechbrain.nnet.linear.Linear or torch.nn.Linear head, alone or as "
        "torch.nn.Sequential(torch.nn.LayerNorm, linear)."
    )


def _yaml_args(args):
    out = {}
    for key, value in args.items():
        if callable(value):
            value = callable_spec(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def write_inference_folder(
    dest,
    backbone,
    head,
    encoder,
    sample_rate=16000,
    backbone_source=None,
    card=None,
    replace=False,
    max_audio_samples=None,
):
    """Writes an inference folder (see the module doc) for live modules.

    Arguments
    ---------
    dest : str or os.PathLike
        New folder (refused if it exists and is not empty).
    backbone : speechbrain_petl.backbones.Backbone
        The lobe with its trained methods attached (all active, none merged).
    head : torch.nn.Module
        The classification head (a linear layer).
    encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The run's label encoder.
    sample_rate : int
        Rate the model expects.
    backbone_source : str, optional
        Source to record instead of the lobe's own (same weights).
    card : dict, optional
        Extra facts for the model card: ``title``, ``dataset``, ``run``,
        ``test_accuracy``, ``test_clips``.
    replace : bool
        Replace ``dest`` if it is an inference folder written before (a
        recipe run re-exporting); anything else there is never touched.
    max_audio_samples : int, optional
        Crop clips to this many samples, as the recipe's data pipeline did:
        written as the lobe's ``max_samples`` (see :func:`lobe_arguments`),
        so every interface that builds the lobe crops alike.

    Returns
    -------
    pathlib.Path
        ``dest``.
    """
    dest = pathlib.Path(dest)
    if not backbone.pretrained:
        raise ValueError(
            "The backbone was built with random weights (pretrained: False): they exist "
            "nowhere else, so an inference folder without them could not be loaded. Save the "
            "backbone with save_pretrained() and train from that folder instead."
        )
    inactive = [name for name in backbone.petl if name not in backbone.active]
    if inactive:
        raise ValueError(f"Methods {inactive} are inactive; detach them or activate them before exporting.")
    previous = None
    if dest.exists():
        if replace and is_inference_folder(dest):
            previous = dest
        elif not dest.is_dir() or any(dest.iterdir()):
            raise FileExistsError(f"{dest} already exists and is not an empty folder; choose a new one.")
    card = dict(card or {})
    labels = output_labels(encoder, head_outputs(head))
    partial = dest.with_name(f".{dest.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an export that was interrupted
    partial.mkdir(parents=True)
    trained = backbone.trained_state()
    torch.save(trained, partial / "embedding_model.ckpt")
    torch.save({k: v.detach().cpu().clone() for k, v in head.state_dict().items()}, partial / "head.ckpt")
    label_encoder(labels).save(partial / "label_encoder.txt")
    (partial / "custom_interface.py").write_text(CUSTOM_INTERFACE)
    (partial / "hyperparams.yaml").write_text(
        inference_yaml(
            backbone, head, labels, sample_rate, backbone_source, card.get("title", ""), max_audio_samples
        )
    )
    (partial / "README.md").write_text(
        model_card(backbone, head, labels, trained["fingerprint"], backbone_source, card, partial)
    )
    if previous is not None:
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(partial, dest)
        shutil.rmtree(old)
    else:
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(partial, dest)
    return dest


def is_inference_folder(folder):
    """Whether ``folder`` was written by :func:`write_inference_folder`."""
    yaml_file = pathlib.Path(folder) / "hyperparams.yaml"
    return yaml_file.is_file() and WRITTEN_BY in yaml_file.read_text()


def model_card(backbone, head, labels, fingerprint, backbone_source, card, folder):
    """The README.md of an inference folder."""
    counts = summarize({"backbone": backbone, "classifier": head})
    methods = "\n".join(
        f"- `{name}`: `{import_path(type(m))}` {json.dumps(_card_args(m.constructor_args()))}"
        for name, m in backbone.petl.items()
    ) or "- none (frozen backbone + head)"
    accuracy = card.get("test_accuracy")
    accuracy_line = (
        f"{100 * accuracy:.2f} % on {card.get('test_clips')} test clips (`test_predictions.csv` of the run)"
        if accuracy is not None else "not measured"
    )
    sizes = {p.name: p.stat().st_size for p in sorted(pathlib.Path(folder).iterdir())}
    source = backbone_source or fingerprint["source"]
    full = any(m.trains_backbone_weights for m in backbone.petl.values())
    lines = [
        f"# {card.get('title') or 'PETL audio classifier'}",
        "",
        "A frozen audio transformer with parameter-efficient (PETL) modules, trained "
        "with speechbrain-petl. This folder holds only the trained tensors "
        "(`embedding_model.ckpt`, `head.ckpt`); the backbone is loaded from its source.",
        "",
        "| | |",
        "|---|---|",
        f"| Task | {card.get('dataset', 'audio classification')}, {len(labels)} output classes |",
        f"| Backbone | `{fingerprint['lobe']}` from `{source}` (frozen) |",
        f"| Backbone weights sha256 | `{fingerprint['frozen_sha256']}` ({fingerprint['frozen_tensors']} tensors) |",
        f"| Trained parameters | {counts['petl']:,} PETL + {counts['head']:,} head |",
        f"| Frozen parameters | {counts['frozen']:,} (not in this folder) |",
        f"| Test accuracy | {accuracy_line} |",
        f"| Run | {card.get('run', 'n/a')} |",
        "",
        "## Methods",
        "",
        methods,
        "",
        "## Labels",
        "",
        ", ".join(f"`{label}`" for label in labels),
        "",
        "## Use",
        "",
        "```python",
        "from speechbrain_petl.inference import AudioClassifier",
        "",
        'classifier = AudioClassifier.from_hparams(source="<this folder>", savedir="<a cache folder>")',
        'log_probs, score, index, labels = classifier.classify_file("clip.wav")',
        "```",
        "",
        "SpeechBrain's own interface loads it too (with `speechbrain_petl` installed, "
        "since the yaml names its lobe):",
        "",
        "```python",
        "from speechbrain.inference.classifiers import EncoderClassifier",
        "",
        'classifier = EncoderClassifier.from_hparams(source="<this folder>", savedir="<a cache folder>")',
        "```",
        "",
        "The backbone is loaded from `backbone_source` in `hyperparams.yaml`; to use a local "
        "copy of the same weights, pass `overrides={\"backbone_source\": \"<folder>\"}`. "
        "Other weights are refused (their sha256 differs).",
        "",
        "This folder is laid out as a Hugging Face model repository: pushed as it is, it loads "
        "with `source=\"<user>/<repo>\"`.",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---|",
        *[f"| `{name}` | {size:,} |" for name, size in sizes.items()],
        "",
    ]
    if full:
        lines += [
            "Full fine-tuning trains every backbone weight, so `embedding_model.ckpt` holds a "
            "whole model copy rather than a small PETL state.",
            "",
        ]
    return "\n".join(lines)


def _card_args(args):
    return {
        k: (callable_spec(v).path if callable(v) else list(v) if isinstance(v, tuple) else v)
        for k, v in args.items()
    }
