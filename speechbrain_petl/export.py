"""A trained task as an inference folder of about 1 MB.

Usage::

    python -m speechbrain_petl.export OUTPUT_FOLDER [DEST] [--backbone_source=ID_OR_FOLDER]
    python -m speechbrain_petl.export --merged OUTPUT_FOLDER DEST
    python -m speechbrain_petl.export --peft OUTPUT_FOLDER DEST [--backbone_source=ID_OR_FOLDER]

``--merged`` writes the run (LoRA, BitFit, linear probing or full
fine-tuning merged into the weights) as a plain transformers
``ASTForAudioClassification`` / ``Wav2Vec2ForSequenceClassification`` folder
for ``transformers.pipeline("audio-classification", model=DEST)``; ``--peft``
writes a LoRA run as a PEFT adapter (``--backbone_source`` is then its
``base_model_name_or_path``). Both refuse, naming what differs, a run that
transformers' model cannot compute exactly (see
:mod:`speechbrain_petl.export_hf` and :mod:`speechbrain_petl.export_peft`).
Without either flag:

reads a finished recipe run (its ``hyperparams.yaml`` and best checkpoint by
validation accuracy) and writes ``DEST`` (default ``OUTPUT_FOLDER/inference``;
every recipe run also writes it when it finishes)::

    hyperparams.yaml      inference only: backbone source and settings, PETL
                          methods, head, labels, and a SpeechBrain Pretrainer
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
repository (``from_hparams(source="user/repo")`` where a hub is reachable).

Under full fine-tuning the trained state *is* the whole backbone, so the
folder holds a full model copy (about 341 MB for AST-base).

``--backbone_source`` records another source for the same weights (e.g. the
hub id of the local copy the run used); the fingerprint still decides.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import sys

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.linear import Linear as SpeechBrainLinear

from speechbrain_petl.hyperyaml import Apply, New, Name, Ref, callable_spec, dumps, import_path
from speechbrain_petl.inference import head_outputs, label_encoder, output_labels
from speechbrain_petl.params import summarize

#: The module ``speechbrain.inference.interfaces.foreign_class`` imports from
#: the folder (``pymodule_file="custom_interface.py", classname="AudioClassifier"``).
CUSTOM_INTERFACE = '''"""Entry point for speechbrain.inference.interfaces.foreign_class:
foreign_class(source=<this folder>, pymodule_file="custom_interface.py",
classname="AudioClassifier"). Needs the speechbrain_petl package installed."""

from speechbrain_petl.inference import AudioClassifier  # noqa: F401
'''

#: Top-level keys of a run's yaml that ``load_run`` may rebase: their value is
#: a path that the saved yaml repeats wherever it was referenced.
REBASABLE = ("output_folder", "backbone_source")


# ----------------------------------------------------------------- reading a run
def load_run(output_folder, max_key="acc", overrides=None):
    """Rebuilds the model of a recipe run from its output folder.

    SpeechBrain saves the run's ``hyperparams.yaml`` with every reference
    resolved, i.e. with the absolute or relative paths of the place the run
    was made. Those paths are rebased onto ``output_folder`` as it is now, so
    a moved or copied run loads its *own* checkpoint and nothing is written
    outside it.

    Arguments
    ---------
    output_folder : str or os.PathLike
        A recipe run's output folder.
    max_key : str
        Which checkpoint: the one with the highest value of this meta key.
    overrides : dict, optional
        ``{"backbone_source": <folder or hub id>}`` for a backbone that moved.

    Returns
    -------
    dict
        ``backbone``, ``head``, ``label_encoder``, ``sample_rate``,
        ``checkpoint`` (SpeechBrain's Checkpoint) and ``hparams``.
    """
    folder = pathlib.Path(output_folder).resolve()
    hparams_file = folder / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise FileNotFoundError(f"{hparams_file} not found: expected the output folder of a recipe run.")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(REBASABLE[1:]))
    if unknown:
        raise ValueError(f"Cannot override {unknown} of a finished run; only {list(REBASABLE[1:])}.")
    text = hparams_file.read_text()
    text = rebase(text, "output_folder", str(folder), hparams_file)
    for key, value in overrides.items():
        text = rebase(text, key, str(value), hparams_file)
    hparams = load_hyperpyyaml(text)
    checkpoint = hparams["checkpointer"].recover_if_possible(max_key=max_key)
    if checkpoint is None:
        raise FileNotFoundError(f"No checkpoint under {hparams['save_folder']}: the run has not saved one yet.")
    encoder = hparams["label_encoder"]
    encoder.load(os.path.join(hparams["save_folder"], "label_encoder.txt"))
    return {
        "backbone": hparams["backbone"],
        "head": hparams["classifier"],
        "label_encoder": encoder,
        "sample_rate": hparams.get("sample_rate", 16000),
        "checkpoint": checkpoint,
        "hparams": hparams,
    }


def rebase(text, key, new_value, where="hyperparams.yaml"):
    """Replaces the value of top-level ``key`` in a resolved yaml text, and
    every value that repeats it as a whole or as a path prefix.

    Example
    -------
    >>> text = "output_folder: old/run\\nsave_folder: old/run/save\\nother: old/runner\\n"
    >>> print(rebase(text, "output_folder", "/new/run"), end="")
    output_folder: /new/run
    save_folder: /new/run/save
    other: old/runner
    """
    text = unfold_plain_scalars(text)
    match = re.search(rf"^{key}:[ \t]*(\S[^#\n]*?)[ \t]*(#.*)?$", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"{where} has no top-level '{key}' to rebase.")
    old = match.group(1).strip("'\"")
    pattern = re.compile(
        rf"^(\s*(?:- |[\w.]+:[ \t]+))(['\"]?){re.escape(old)}(?=[/'\"\s]|$)", re.MULTILINE
    )
    return pattern.sub(lambda m: m.group(1) + m.group(2) + new_value.replace("\\", "\\\\"), text)


def unfold_plain_scalars(text):
    r"""Joins the plain scalars a yaml writer folded onto the next lines
    (``key:`` then an indented ``/a/long/path``) back onto their key's line.

    Example
    -------
    >>> print(unfold_plain_scalars("a:\n  /long/path\nb:\n  c: 1\n"), end="")
    a: /long/path
    b:
      c: 1
    """
    lines = text.split("\n")
    out = []
    for line in lines:
        previous = out[-1] if out else ""
        key_only = re.match(r"^(\s*)(- )?[\w.]+:\s*$", previous)
        if (
            key_only
            and line.strip()
            and len(line) - len(line.lstrip()) > len(key_only.group(1))
            and not re.match(r"^\s*([\w.]+:(\s|$)|- |#|!)", line)
        ):
            out[-1] = previous.rstrip() + " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def measured_test_accuracy(output_folder):
    """``(accuracy, clips)`` from a run's ``test_predictions.csv``, or None."""
    path = pathlib.Path(output_folder) / "test_predictions.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fin:
        rows = list(csv.DictReader(fin))
    if not rows:
        return None
    return sum(r["target"] == r["prediction"] for r in rows) / len(rows), len(rows)


# ---------------------------------------------------------------- writing one
def inference_yaml(
    backbone, head, labels, sample_rate=16000, backbone_source=None, title="", max_audio_samples=None
):
    """The ``hyperparams.yaml`` text of an inference folder."""
    methods = dict(backbone.petl.items())
    backbone_args = dict(backbone.constructor_args())
    source = backbone_source or backbone_args.pop("source")
    backbone_args.pop("source", None)
    backbone_args = {"source": Ref("backbone_source"), **backbone_args}
    if methods:
        backbone_args["petl"] = {
            name: New(import_path(type(method)), _yaml_args(method.constructor_args()))
            for name, method in methods.items()
        }
    header = [
        "# " + "#" * 76,
        f"# Inference: {title}" if title else "# Inference",
        "# Frozen backbone + trained PETL tensors (embedding_model.ckpt) + head (head.ckpt).",
        "# Loads with speechbrain_petl.inference.AudioClassifier.from_hparams(source=<this folder>)",
        "# or speechbrain.inference.classifiers.EncoderClassifier.from_hparams(source=<this folder>).",
        "# Written by speechbrain_petl.export.",
        "# " + "#" * 76,
        "",
    ]
    sections = [
        ({"sample_rate": sample_rate}, None),
        (
            {"max_audio_samples": max_audio_samples},
            "Clips are cropped to this many samples, as in training (AudioClassifier.classify_file).",
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
        Crop clips to this many samples, as the recipe's data pipeline did.

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
    return yaml_file.is_file() and "# Written by speechbrain_petl.export." in yaml_file.read_text()


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
    full = any(type(m).__name__ == "FullFineTuning" for m in backbone.petl.values())
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


def export_run(output_folder, dest=None, backbone_source=None, overrides=None):
    """Writes the inference folder of a finished run (best checkpoint by
    validation accuracy); ``dest`` defaults to ``<output_folder>/inference``."""
    run = load_run(output_folder, overrides=overrides)
    dest = pathlib.Path(output_folder) / "inference" if dest is None else pathlib.Path(dest)
    return write_inference_folder(
        dest,
        run["backbone"],
        run["head"],
        run["label_encoder"],
        run["sample_rate"],
        backbone_source,
        run_card(output_folder, run["backbone"]),
        max_audio_samples=run["hparams"].get("max_audio_samples"),
    )


def run_card(output_folder, backbone):
    """Model-card facts of a run: title, run folder name, test accuracy."""
    accuracy = measured_test_accuracy(output_folder)
    card = {"run": pathlib.Path(output_folder).resolve().name}
    methods = ", ".join(type(m).__name__ for m in backbone.petl.values()) or "linear head"
    card["title"] = f"{type(backbone).__name__} + {methods}"
    if accuracy is not None:
        card["test_accuracy"], card["test_clips"] = accuracy
    return card


def main(argv):
    """Entry point of ``python -m speechbrain_petl.export`` (see the module doc):
    ``[--merged | --peft] OUTPUT_FOLDER [DEST] [--backbone_source=...]``."""
    options = [a for a in argv if a.startswith("--")]
    positional = [a for a in argv if not a.startswith("--")]
    backbone_source, kind = None, None
    for option in options:
        if option.startswith("--backbone_source="):
            backbone_source = option.split("=", 1)[1]
        elif option in ("--merged", "--peft"):
            if kind is not None:
                raise SystemExit(f"--{kind} and {option}: choose one export format.")
            kind = option[2:]
        else:
            raise SystemExit(f"Unknown option {option}; see python -m speechbrain_petl.export --help")
    if kind == "merged" and backbone_source is not None:
        raise SystemExit("--merged writes every weight into DEST; --backbone_source does not apply.")
    if not 1 <= len(positional) <= 2 or (kind and len(positional) != 2):
        raise SystemExit(__doc__)
    if kind is None:
        dest = export_run(*positional, backbone_source=backbone_source)
    else:
        from speechbrain_petl import export_hf, export_peft

        run = load_run(positional[0])
        try:
            if kind == "merged":
                dest = export_hf.write_merged_model(
                    positional[1], run["backbone"], run["head"], run["label_encoder"], run["sample_rate"]
                )
            else:
                dest = export_peft.write_peft_adapter(
                    positional[1], run["backbone"], run["head"], run["label_encoder"], backbone_source,
                    run["sample_rate"],
                )
        except export_hf.NotRepresentable as err:
            raise SystemExit(f"{positional[0]}: not exported. {err}") from None
    total = sum(p.stat().st_size for p in dest.iterdir())
    print(f"Wrote {dest} ({total / 1e6:.2f} MB)")
    return dest


if __name__ == "__main__":
    main(sys.argv[1:])
