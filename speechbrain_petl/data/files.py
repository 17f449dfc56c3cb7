"""Reading the files the package keeps, with one error path for a damaged one.

Every reader here raises :class:`DamagedFileError` when the file is there
but cannot be read as what it should be (emptied, truncated, overwritten):
its message names the file, says what is wrong and what to do, e.g.::

    /runs/gsc/inference/head.ckpt: empty file (0 bytes). This inference
    folder is damaged: write it again from its run (...)

A missing file stays a ``FileNotFoundError``: callers check for the files
they need and name them.

* :func:`load_torch`: ``torch.load(..., weights_only=True)`` (``.ckpt``);
* :func:`load_safetensors`, :func:`read_json`, :func:`read_yaml`;
* :func:`read_manifest`: a prepared CSV manifest, every row complete;
* :func:`load_label_encoder`: SpeechBrain's ``label_encoder.txt``;
* :func:`origin` / :func:`reading_folder`: the file a user passed, for a file
  that SpeechBrain's ``from_hparams`` linked or copied into its ``savedir``.

The ``*_ADVICE`` constants say what to do for each kind of file.
"""

import contextlib
import contextvars
import csv
import json
import os
import pickle
import zipfile

import ruamel.yaml.error
import torch
import yaml
from ruamel.yaml import YAML
from safetensors import SafetensorError
from safetensors.torch import load_file
from speechbrain.dataio.encoder import CategoricalEncoder

#: An inference folder's file is damaged.
INFERENCE_FOLDER_ADVICE = (
    "This inference folder is damaged: write it again from its run "
    "(`python -m speechbrain_petl.export <run output folder> <new folder>`; every run also "
    "keeps one in <run output folder>/inference), or copy it again from where it came from"
)
#: A prepared manifest is damaged.
MANIFEST_ADVICE = (
    "The preparation writes manifests whole, so it changed since: delete it and run the recipe "
    "again to prepare again (skip_prep: False); a manifest of your own must be a complete CSV file"
)
#: A PEFT adapter's file is damaged.
PEFT_ADVICE = (
    "This PEFT adapter is damaged: export it again (`python -m speechbrain_petl.export --peft "
    "<run output folder> <new folder>`) or download it again"
)
#: A run's ``label_encoder.txt`` is damaged.
LABEL_ENCODER_ADVICE = (
    "It is written from the training labels when a run starts: delete it and run again to have "
    "it written again (the same train.csv gives the same labels in the same order)"
)


class DamagedFileError(RuntimeError):
    """A file that is there but cannot be read as what it should be.

    Arguments
    ---------
    path : str or os.PathLike
        The file, as the user knows it.
    reason : str, optional
        What is wrong with it (without it, ``path`` is the whole message).
    advice : str, optional
        What to do.

    Example
    -------
    >>> err = DamagedFileError("run/head.ckpt", "empty file (0 bytes)", "Export the run again")
    >>> str(err), err.path
    ('run/head.ckpt: empty file (0 bytes). Export the run again.', 'run/head.ckpt')
    """

    def __init__(self, path, reason=None, advice=None):
        self.path, self.reason, self.advice = str(path), reason, advice
        if reason is None:
            message = self.path
        else:
            message = f"{self.path}: {reason}." + (f" {advice.rstrip('.')}." if advice else "")
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.advice)


def _reason(path, kind, err):
    """What is wrong with ``path``, which failed to read as ``kind``
    (``err``: the reader's exception or words)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    said = (str(err).strip().split(". ")[0].splitlines() or [type(err).__name__])[0]
    return f"cannot be read as {kind} ({size} bytes: truncated or overwritten?): {said}"


def load_torch(path, advice=None, shown=None):
    """``torch.load(path, map_location="cpu", weights_only=True)``, or a
    :class:`DamagedFileError` naming ``shown`` (default ``path``).

    Example
    -------
    >>> path = getfixture("tmp_path") / "head.ckpt"
    >>> torch.save({"w": torch.ones(2)}, path)
    >>> load_torch(path)["w"].tolist()
    [1.0, 1.0]
    >>> _ = path.write_bytes(b"")
    >>> load_torch(path, "Export it again.")
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...head.ckpt: empty file (0 bytes). Export it again.
    """
    shown = path if shown is None else shown
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        # (torch's message advises weights_only=False: never for a file that
        # may not be what it claims)
        reason = "not a tensors-only torch file (unpickling failed)"
        if os.path.getsize(path) == 0:
            reason = "empty file (0 bytes)"
    except (EOFError, RuntimeError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = _reason(path, "a torch file", err)
    raise DamagedFileError(shown, reason, advice) from None


def load_safetensors(path, advice=None, shown=None):
    """``safetensors.torch.load_file(path)``, or a :class:`DamagedFileError`.

    Example
    -------
    >>> from safetensors.torch import save_file
    >>> path = getfixture("tmp_path") / "adapter_model.safetensors"
    >>> save_file({"w": torch.ones(64)}, str(path))
    >>> _ = path.write_bytes(path.read_bytes()[:100])
    >>> load_safetensors(path)
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...: cannot be read as a safetensors file (100 bytes: ...
    """
    shown = path if shown is None else shown
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as err:
        raise DamagedFileError(shown, _reason(path, "a safetensors file", err), advice) from None


def read_json(path, advice=None, shown=None):
    """The JSON document in ``path``, or a :class:`DamagedFileError`.

    Example
    -------
    >>> path = getfixture("tmp_path") / "adapter_config.json"
    >>> _ = path.write_text('{"r": 4, "lora_al')
    >>> read_json(path)
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...: cannot be read as JSON (17 bytes: ...
    """
    shown = path if shown is None else shown
    try:
        with open(path, encoding="utf-8") as fin:
            return json.load(fin)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(shown, _reason(path, "JSON", err), advice) from None


def read_yaml(path, advice=None, shown=None, round_trip=False):
    """The YAML document in ``path`` (an empty file is damaged, not
    ``None``), or a :class:`DamagedFileError`. ``yaml.safe_load`` reads it,
    or with ``round_trip`` ruamel's round-trip loader, which keeps the tags
    (``!new:``) of a HyperPyYAML file without building anything.

    Example
    -------
    >>> path = getfixture("tmp_path") / "CKPT.yaml"
    >>> _ = path.write_text("end-of-epoch: true\\nunixtime: 1.5\\n")
    >>> read_yaml(path)
    {'end-of-epoch': True, 'unixtime': 1.5}
    >>> path = path.with_name("hyperparams.yaml")
    >>> _ = path.write_text('head: !new:torch.nn.Linear\\n  in_features: 3\\nlabels: ["dog", "ra')
    >>> read_yaml(path, "Export it again", round_trip=True)
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...hyperparams.yaml: cannot be read as YAML (63 bytes: truncated or overwritten?): found unexpected end of stream (line 3). Export it again.
    """
    shown = path if shown is None else shown
    try:
        with open(path, encoding="utf-8") as fin:
            document = YAML(typ="rt").load(fin) if round_trip else yaml.safe_load(fin)
    except (yaml.YAMLError, ruamel.yaml.error.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        said = f"{err.problem} (line {mark.line + 1})" if mark is not None and getattr(err, "problem", None) else err
        raise DamagedFileError(shown, _reason(path, "YAML", said), advice) from None
    if document is None:
        raise DamagedFileError(shown, _reason(path, "YAML", "no document"), advice)
    return document


def read_yaml_text(path, advice=None, shown=None):
    """The text of the YAML file ``path``, refusing an empty one (a
    :class:`DamagedFileError`) before anything parses it.

    Example
    -------
    >>> path = getfixture("tmp_path") / "hyperparams.yaml"
    >>> _ = path.write_text("")
    >>> read_yaml_text(path, "Run it again")
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...hyperparams.yaml: empty file (0 bytes). Run it again.
    """
    shown = path if shown is None else shown
    try:
        with open(path, encoding="utf-8") as fin:
            text = fin.read()
    except UnicodeDecodeError as err:
        raise DamagedFileError(shown, _reason(path, "UTF-8 text", err), advice) from None
    if not text.strip():
        raise DamagedFileError(shown, _reason(path, "YAML", "no document"), advice)
    return text


def read_manifest(path, columns=(), advice=MANIFEST_ADVICE):
    """The rows of a CSV manifest (``csv.DictReader``), refused with a
    :class:`DamagedFileError` when it is empty, cut short (no line break at
    its end), has a row with another number of fields than its header, or
    lacks one of ``columns``.

    Example
    -------
    >>> path = getfixture("tmp_path") / "train.csv"
    >>> _ = path.write_text("ID,wav,label\\na,/data/a.wav,dog\\nb,/data/b.w")
    >>> read_manifest(path, ["label"])
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...train.csv: does not end with a line break: cut short ...
    >>> _ = path.write_text("ID,wav,label\\na,/data/a.wav,dog\\n")
    >>> read_manifest(path, ["label"])
    [{'ID': 'a', 'wav': '/data/a.wav', 'label': 'dog'}]
    """
    try:
        with open(path, "rb") as fin:
            fin.seek(0, os.SEEK_END)
            if fin.tell() == 0:
                raise DamagedFileError(path, "empty file (0 bytes)", advice)
            fin.seek(-1, os.SEEK_END)
            if fin.read(1) not in (b"\n", b"\r"):
                raise DamagedFileError(
                    path, f"does not end with a line break: cut short (truncated?) at {fin.tell()} bytes", advice
                )
        with open(path, newline="", encoding="utf-8") as fin:
            reader = csv.DictReader(fin)
            header = reader.fieldnames or []
            missing = [column for column in columns if column not in header]
            if missing:
                raise DamagedFileError(
                    path, f"no {missing} column(s) in its header {header}; expected {list(columns)} at least", advice
                )
            rows = []
            for row in reader:
                if None in row or None in row.values():
                    fields = len(header) + len(row.get(None, [])) - list(row.values()).count(None)
                    raise DamagedFileError(
                        path, f"line {reader.line_num} has {fields} fields, its header {len(header)}", advice
                    )
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as err:
        raise DamagedFileError(path, _reason(path, "CSV", err), advice) from None
    return rows


def load_label_encoder(path, encoder=None, advice=LABEL_ENCODER_ADVICE):
    """Loads SpeechBrain's ``label_encoder.txt`` into ``encoder`` (default: a
    new ``CategoricalEncoder``), or raises a :class:`DamagedFileError` where
    SpeechBrain's ``load_if_possible`` would quietly report "not loaded".

    Example
    -------
    >>> path = getfixture("tmp_path") / "label_encoder.txt"
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["dog", "rain"])
    >>> encoder.save(path)
    >>> load_label_encoder(path).lab2ind
    {'dog': 0, 'rain': 1}
    >>> _ = path.write_text("'dog' => 0\\n'ra")
    >>> load_label_encoder(path)
    Traceback (most recent call last):
    speechbrain_petl.data.files.DamagedFileError: ...label_encoder.txt: cannot be read as ...
    """
    encoder = CategoricalEncoder() if encoder is None else encoder
    try:
        encoder.load(path)
    except FileNotFoundError:
        raise
    except KeyError as err:  # the extras after the labels ('starting_index') are cut off
        raise DamagedFileError(path, _reason(path, "a label encoder", f"no {err} after the labels"), advice) from None
    except (ValueError, SyntaxError, UnicodeDecodeError) as err:
        raise DamagedFileError(path, _reason(path, "a label encoder", err), advice) from None
    return encoder


# ------------------------------------------------- files behind a savedir
_READING_FOLDER = contextvars.ContextVar("speechbrain_petl_reading_folder", default=None)


@contextlib.contextmanager
def reading_folder(folder):
    """While active, :func:`origin` names a file that SpeechBrain copied
    into a ``savedir`` by the file of ``folder`` it came from (``None``:
    nothing to name, e.g. a hub id).

    Example
    -------
    >>> with reading_folder("/models/task"):
    ...     origin("/cache/task/head.ckpt")
    '/models/task/head.ckpt (read through its copy /cache/task/head.ckpt)'
    """
    token = _READING_FOLDER.set(None if folder is None else os.path.abspath(folder))
    try:
        yield
    finally:
        _READING_FOLDER.reset(token)


def origin(path):
    """The file a user has for ``path``, as errors should name it.

    SpeechBrain's ``from_hparams`` hands its loading hooks the files of its
    ``savedir``: a link to the folder's file (its default), named here by
    its target, or a copy, named by the file of the folder given to
    :func:`reading_folder` (and the copy). Other paths are returned as they are.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "head.ckpt").write_bytes(b"")
    >>> (tmp / "cache").mkdir()
    >>> (tmp / "cache" / "head.ckpt").symlink_to(tmp / "head.ckpt")
    >>> origin(tmp / "cache" / "head.ckpt") == str(tmp / "head.ckpt")
    True
    """
    path = os.fspath(path)
    folder = _READING_FOLDER.get()
    if folder is not None and os.path.dirname(os.path.abspath(path)) == folder:
        return path  # read in place (no savedir)
    if os.path.islink(path):
        target = os.readlink(path)
        return target if os.path.isabs(target) else os.path.join(os.path.dirname(path), target)
    if folder is not None:
        return f"{os.path.join(folder, os.path.basename(path))} (read through its copy {path})"
    return path


__all__ = [
    "DamagedFileError",
    "INFERENCE_FOLDER_ADVICE",
    "LABEL_ENCODER_ADVICE",
    "MANIFEST_ADVICE",
    "PEFT_ADVICE",
    "load_label_encoder",
    "load_safetensors",
    "load_torch",
    "origin",
    "read_json",
    "read_manifest",
    "read_yaml",
    "reading_folder",
]
