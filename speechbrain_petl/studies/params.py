"""Parameter report of the model a HyperPyYAML file describes.

Usage::

    python -m speechbrain_petl.studies.params HPARAMS.yaml [--key=value ...]
    python -m speechbrain_petl.studies.params --markdown A.yaml B.yaml ... [--key=value ...]

Builds the ``modules`` of the yaml (use ``--pretrained=False`` to work
offline: random weights from the shipped config), prints a per-module
breakdown, and ends with one JSON line::

    {"petl": N, "head": H, "frozen": F, "total": T}

``petl`` counts everything that trains inside the backbone lobe (PETL
modules, plus backbone tensors a method unfroze); ``head`` the trainable
parameters of the other modules (the classifier); ``frozen`` everything
that does not train. Nothing is written: ``!PLACEHOLDER`` keys get dummy
values and ``output_folder`` points to a temporary folder.

With ``--markdown``, one table row per yaml (the same overrides for all):
its methods as they describe themselves (mixtures of adapters: experts x
expert width, slots or router, sites) and its counts, for docs pages that
must not carry hand-typed numbers (``docs/moa.md``).
"""

import collections
import json
import re
import sys
import tempfile

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.backbones.base import Backbone

PLACEHOLDER = re.compile(r"^([A-Za-z_][\w]*):\s*!PLACEHOLDER", re.MULTILINE)


def count(module):
    """(trainable, frozen) parameter counts of ``module``."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return trainable, frozen


def petl_breakdown(backbone):
    """Trainable tensors of the lobe grouped across layers.

    Returns a list of (pattern, count) such as
    ``("petl.lora.layers.*.attention.query.down.weight", 55296)``.
    """
    groups = collections.OrderedDict()
    for name, param in backbone.named_parameters():
        if param.requires_grad:
            key = re.sub(r"layers\.\d+\.", "layers.*.", name)
            groups[key] = groups.get(key, 0) + param.numel()
    return list(groups.items())


def summarize(modules):
    """Counts for a dict of modules holding exactly one backbone lobe.

    Example
    -------
    >>> import torch
    >>> from speechbrain_petl.backbones import AST, tiny_config
    >>> from speechbrain_petl.methods import LoRA
    >>> ast = AST(tiny_config("ast"), pretrained=False, max_frames=64, petl=LoRA(rank=2))
    >>> summary = summarize({"backbone": ast, "classifier": torch.nn.Linear(32, 5)})
    >>> summary["petl"], summary["head"]
    (512, 165)
    """
    backbones = [m for m in modules.values() if isinstance(m, Backbone)]
    if len(backbones) != 1:
        raise ValueError(
            f"'modules' must hold exactly one speechbrain_petl backbone lobe, found {len(backbones)}"
        )
    petl = head = frozen = 0
    for module in modules.values():
        trainable, fixed = count(module)
        frozen += fixed
        if isinstance(module, Backbone):
            petl += trainable
        else:
            head += trainable
    return {"petl": petl, "head": head, "frozen": frozen, "total": petl + head + frozen}


def report(modules, out=None):
    """Prints the breakdown of ``modules`` (to ``out``, default stdout) and
    returns the summary dict."""
    out = out or sys.stdout
    summary = summarize(modules)
    for key, module in modules.items():
        trainable, fixed = count(module)
        print(f"{key}: {type(module).__name__}  trainable {trainable:,}  frozen {fixed:,}", file=out)
        if isinstance(module, Backbone):
            print(f"  source: {module.source}", file=out)
            for name, method in module.petl.items():
                print(
                    f"  petl '{name}': {type(method).__name__}  {method.num_trainable():,}",
                    file=out,
                )
                if hasattr(method, "describe"):
                    print(f"    {method.describe()}", file=out)
            for pattern, n in petl_breakdown(module):
                print(f"    {pattern}: {n:,}", file=out)
    print(json.dumps(summary), file=out)
    return summary


def load_modules(argv):
    """Parses ``HPARAMS.yaml --key=value`` and builds the yaml's modules.

    Parses ``HPARAMS.yaml --key=value ...`` and builds the yaml's modules."""
    hparams_file, _, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as fin:
        text = fin.read()
    given = set(re.findall(r"^([A-Za-z_]\w*):", overrides or "", re.MULTILINE))
    extra = [
        f"{key}: unused-by-params-report"
        for key in PLACEHOLDER.findall(text)
        if key not in given
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if re.search(r"^output_folder:", text, re.MULTILINE) and "output_folder" not in given:
            extra.append(f"output_folder: {tmp}")
        hparams = load_hyperpyyaml(text, "\n".join([overrides or ""] + extra))
    if "modules" not in hparams:
        raise KeyError(
            f"{hparams_file} has no 'modules' key; expected a dict of the "
            "modules to train (backbone and classifier), as in SpeechBrain recipes."
        )
    return dict(hparams["modules"])


def describe_methods(modules):
    """The lobe's methods, each as it describes itself (else its class name)."""
    backbone = next(m for m in modules.values() if isinstance(m, Backbone))
    parts = [m.describe() if hasattr(m, "describe") else type(m).__name__ for m in backbone.petl.values()]
    return "; ".join(parts) or "none"


def markdown_table(yamls, overrides=(), out=None):
    """Prints a markdown table of the PETL and head counts of each yaml
    (built on the meta device) and returns its rows."""
    import os

    import torch

    out = out or sys.stdout
    rows = []
    print("| yaml | methods | PETL params | head params |\n|---|---|---:|---:|", file=out)
    for path in yamls:
        with torch.device("meta"):
            modules = load_modules([path, *overrides])
        summary = summarize(modules)
        name = os.path.relpath(path) if not os.path.isabs(path) else path
        row = (name, describe_methods(modules), summary["petl"], summary["head"])
        rows.append(row)
        print(f"| `{row[0]}` | {row[1]} | {row[2]:,} | {row[3]:,} |", file=out)
    return rows


def main(argv=None):
    """Entry point of ``python -m speechbrain_petl.studies.params``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return None
    if "--markdown" in argv:
        rest = [a for a in argv if a != "--markdown"]
        yamls = [a for a in rest if not a.startswith("--")]
        if not yamls:
            raise SystemExit("--markdown needs at least one yaml")
        return markdown_table(yamls, [a for a in rest if a.startswith("--")])
    return report(load_modules(argv))


if __name__ == "__main__":
    main()
