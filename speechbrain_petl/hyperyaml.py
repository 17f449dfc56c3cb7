"""Writing HyperPyYAML: live objects back into the text that builds them.

An inference folder's ``hyperparams.yaml`` is generated from the trained
objects themselves (a lobe's and a method's ``constructor_args``), so it
never depends on how the training yaml happened to be written. Values are
plain YAML scalars, lists and mappings, plus four tags:

* :class:`New` -> ``!new:path.Class`` (an object built from keyword args);
* :class:`Name` -> ``!name:path.function`` (a class or a partial);
* :class:`Apply` -> ``!apply:path.function`` (what the function returns);
* :class:`Ref` -> ``!ref <key>``.

Example
-------
>>> text = dumps({"rank": 6, "lora": New("speechbrain_petl.methods.LoRA", {"rank": Ref("rank")})})
>>> print(text)
rank: 6
lora: !new:speechbrain_petl.methods.LoRA
    rank: !ref <rank>
<BLANKLINE>
>>> from hyperpyyaml import load_hyperpyyaml
>>> load_hyperpyyaml(text)["lora"].rank
6
>>> text = dumps({"seq": New("torch.nn.Sequential", args=[New("torch.nn.Softmax", {"dim": -1})])})
>>> print(text, end="")
seq: !new:torch.nn.Sequential
    - !new:torch.nn.Softmax
        dim: -1
>>> load_hyperpyyaml(text)["seq"][0].dim
-1
"""

import dataclasses
import functools
import importlib
import json
import math
from typing import Any, Dict, List

INDENT = "    "


@dataclasses.dataclass
class New:
    """``!new:<path>`` with keyword arguments, or with positional ``args``."""

    path: str
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    args: List[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Apply:
    """``!apply:<path>`` with keyword arguments: the function's result."""

    path: str
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Name:
    """``!name:<path>`` with keyword arguments bound (a partial)."""

    path: str
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Ref:
    """``!ref <key>``."""

    key: str


def import_path(obj):
    """The shortest dotted path under which ``obj`` (a class or function)
    can be imported back, e.g. ``speechbrain_petl.methods.LoRA``.

    Example
    -------
    >>> from speechbrain_petl.methods.lora import LoRA
    >>> import_path(LoRA)
    'speechbrain_petl.methods.LoRA'
    """
    module, name = obj.__module__, obj.__qualname__
    if "<" in name or "." in name:
        raise ValueError(f"{obj!r} is not importable by name: it cannot be written to a yaml.")
    parts = module.split(".")
    for cut in range(1, len(parts) + 1):
        candidate = ".".join(parts[:cut])
        if getattr(importlib.import_module(candidate), name, None) is obj:
            return f"{candidate}.{name}"
    raise ValueError(f"{module}.{name} does not import back to {obj!r}.")


def callable_spec(obj):
    """A class, function or keyword-only ``functools.partial`` as :class:`Name`.

    Example
    -------
    >>> import torch
    >>> callable_spec(functools.partial(torch.nn.GELU, approximate="tanh"))
    Name(path='torch.nn.GELU', kwargs={'approximate': 'tanh'})
    >>> callable_spec(functools.partial(torch.nn.Sequential, act=torch.nn.GELU)).kwargs
    {'act': Name(path='torch.nn.GELU', kwargs={})}
    """
    if isinstance(obj, functools.partial):
        if obj.args:
            raise ValueError(f"{obj!r} binds positional arguments; only keyword ones can be written to a yaml.")
        inner = callable_spec(obj.func)
        keywords = {  # classes and partials bound as keywords (an adapter's activation)
            key: callable_spec(value) if isinstance(value, (type, functools.partial)) else value
            for key, value in obj.keywords.items()
        }
        return Name(inner.path, {**inner.kwargs, **keywords})
    return Name(import_path(obj))


def dumps(mapping):
    """HyperPyYAML text of a top-level ``mapping`` (see the module doc)."""
    return "".join(_mapping_lines(mapping, 0))


def _mapping_lines(mapping, depth):
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"yaml keys must be strings, got {key!r}")
        yield from _entry(f"{INDENT * depth}{_scalar(key) if _needs_quotes(key) else key}:", value, depth)


def _entry(prefix, value, depth):
    if isinstance(value, (New, Name, Apply)):
        tag = {New: "!new:", Name: "!name:", Apply: "!apply:"}[type(value)]
        yield f"{prefix} {tag}{value.path}\n"
        if getattr(value, "args", None):
            if value.kwargs:
                raise ValueError(f"{value.path}: a yaml object takes positional or keyword arguments, not both")
            for item in value.args:
                yield from _entry(f"{INDENT * (depth + 1)}-", item, depth + 1)
        yield from _mapping_lines(value.kwargs, depth + 1)
    elif isinstance(value, dict):
        if not value:
            yield f"{prefix} {{}}\n"
        else:
            yield f"{prefix}\n"
            yield from _mapping_lines(value, depth + 1)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (New, Name, Apply, dict, list, tuple)) for v in value):
        yield f"{prefix}\n"
        for item in value:
            yield from _entry(f"{INDENT * (depth + 1)}-", item, depth + 1)
    else:
        yield f"{prefix} {_flow(value)}\n"


def _flow(value):
    if isinstance(value, Ref):
        return f"!ref <{value.key}>"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} to a yaml")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write a {type(value).__name__} ({value!r}) to a yaml")


def _needs_quotes(key):
    return not key.replace("_", "a").isalnum()
