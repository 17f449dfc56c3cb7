"""A recipe run's output folder read back: its model rebuilt from its
``hyperparams.yaml`` and best checkpoint, wherever the folder now is.

The run's record (``params.json``) is in :mod:`~speechbrain_petl.studies.run_record`,
its test accuracy and curves in :mod:`~speechbrain_petl.studies.results`.
"""

import os
import pathlib
import re

import ruamel.yaml.error
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.data.files import DamagedFileError, load_label_encoder, read_yaml_text
from speechbrain_petl.studies.results import test_accuracy

#: What to do about a run's damaged ``hyperparams.yaml``.
RUN_HPARAMS_ADVICE = (
    "SpeechBrain writes it when the run starts: run the recipe's train.py again with the same "
    "command in this folder to have it written again (the run resumes from its checkpoints)"
)
#: Keys every recipe run's ``hyperparams.yaml`` holds, which ``load_run`` reads.
RUN_KEYS = ("checkpointer", "save_folder", "label_encoder", "backbone", "classifier")

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
    text = read_yaml_text(hparams_file, RUN_HPARAMS_ADVICE)
    text = rebase(text, "output_folder", str(folder), hparams_file)
    for key, value in overrides.items():
        text = rebase(text, key, str(value), hparams_file)
    try:
        hparams = load_hyperpyyaml(text)
    except ruamel.yaml.error.YAMLError as err:
        raise DamagedFileError(hparams_file, f"cannot be read as HyperPyYAML: {err}".splitlines()[0], RUN_HPARAMS_ADVICE) from None
    missing = [key for key in RUN_KEYS if key not in hparams]
    if missing:
        raise DamagedFileError(
            hparams_file, f"no {', '.join(map(repr, missing))}, which every recipe run writes", RUN_HPARAMS_ADVICE
        )
    checkpoint = hparams["checkpointer"].recover_if_possible(max_key=max_key)
    if checkpoint is None:
        raise FileNotFoundError(f"No checkpoint under {hparams['save_folder']}: the run has not saved one yet.")
    encoder = load_label_encoder(os.path.join(hparams["save_folder"], "label_encoder.txt"), hparams["label_encoder"])
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


def run_card(output_folder, backbone):
    """Model-card facts of a run: title, run folder name, test accuracy."""
    accuracy = test_accuracy(output_folder)
    card = {"run": pathlib.Path(output_folder).resolve().name}
    methods = ", ".join(type(m).__name__ for m in backbone.petl.values()) or "linear head"
    card["title"] = f"{type(backbone).__name__} + {methods}"
    if accuracy is not None:
        card["test_accuracy"], card["test_clips"] = accuracy
    return card
