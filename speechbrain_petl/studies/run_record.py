"""What a recipe run records about itself, and whether a command may go on
with the run a folder holds.

``<output_folder>/params.json`` is the run's record.
:func:`speechbrain_petl.training.recipe.start_record` writes it when training
starts and :func:`speechbrain_petl.training.recipe.finish_run` marks it finished once
the run is tested (and its inference folder written); reports and studies read it back instead of guessing from
folder or file names. Its keys:

* ``dataset``, ``method``: the recipe yaml's ``dataset`` and ``method``
  keys (null when the yaml declares none);
* ``petl``, ``head``, ``frozen``, ``total``: parameter counts
  (:func:`speechbrain_petl.studies.params.summarize`);
* ``finished``: false until the run is tested;
* ``run_options``: the SpeechBrain run options that change what is trained
  (:data:`TRAINING_RUN_OPTIONS`), as the run was started with (absent from
  runs made before they were recorded);
* ``settings_changes``: one entry per start with
  ``--continue_with_new_settings`` that changed a setting: its ``date``,
  its ``changes``, ``previous_hyperparams`` (the name of the copy kept of
  the ``hyperparams.yaml`` it replaced) and a ``note`` on what the
  checkpoint restores over the new settings
  (:data:`RESTORED_OVER_NEW_SETTINGS`: a new ``lr`` does not reach a
  restored optimizer; more epochs, another batch size or augmentation do).

A folder without this record (not made by a recipe run) is left out by
the readers, with a note naming it.

**A run's settings** are its ``hyperparams.yaml`` (SpeechBrain's copy of the
yaml with the overrides applied and every reference resolved) and its
``run_options``. :func:`changed_settings` is the one comparison of them with
the settings a command would run with (:func:`command_settings`), used by a
recipe's ``train.py`` and by the study command before either writes
anything. Values are compared, not text: ``--lr=0.005`` where the yaml says
``0.005`` changes nothing, nor does editing a comment. What is not a
setting, so that a moved run resumes:

* where things are (:data:`LOCATION_KEYS`): the output and data folders,
  and ``backbone_source`` (which weights they are is decided by the
  backbone's fingerprint, checked against the run's checkpoints);
* how a run executes, not what it learns (:data:`EXECUTION_KEYS`, and the
  run options not in :data:`TRAINING_RUN_OPTIONS`: ``--device``,
  distributed options, checkpoint intervals, progress bars, compilation);
* any value that only refers to these (``save_folder: !ref <output_folder>/save``).
"""

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil

import ruamel.yaml
from hyperpyyaml import resolve_references
from hyperpyyaml.core import recursive_update

RECORD_FILE = "params.json"
#: SpeechBrain's copy of a run's resolved yaml in its output folder.
HPARAMS_FILE = "hyperparams.yaml"
#: The command-line flag that lets a run go on with changed settings.
CONTINUE_FLAG = "--continue_with_new_settings"
#: Top-level keys that say where a run's files are, not what it trains.
LOCATION_KEYS = ("output_folder", "data_folder", "backbone_source")
#: Top-level keys that change how a run executes, not its results: data
#: loading processes, redoing data preparation, recomputed activations and
#: the embedding cache (both give the same results, see docs/architecture.md).
EXECUTION_KEYS = ("num_workers", "skip_prep", "recompute", "embedding_cache")
#: SpeechBrain run options that change what is trained or tested.
TRAINING_RUN_OPTIONS = (
    "debug",
    "debug_batches",
    "debug_epochs",
    "precision",
    "eval_precision",
    "auto_mix_prec",
    "bfloat16_mix_prec",
    "max_grad_norm",
    "skip_nonfinite_grads",
    "nonfinite_patience",
    "grad_accumulation_factor",
    "optimizer_step_limit",
    "remove_vector_weight_decay",
)
#: What a run going on with new settings takes from its checkpoint anyway.
RESTORED_OVER_NEW_SETTINGS = (
    "resumed from the latest checkpoint: its trained tensors, epoch counter, random states and "
    "optimizer and scheduler states (their learning rates included) are restored over the new settings"
)
#: Tags whose value refers to other keys of the yaml.
REFERENCE_TAGS = ("!ref", "!copy")


class RunSettingsError(ValueError):
    """A command whose settings differ from those of the run its output
    folder holds; the message names each setting and how to proceed."""


def record_path(run_folder):
    """``<run_folder>/params.json``."""
    return os.path.join(run_folder, RECORD_FILE)


def read_record(run_folder):
    """The run's record (a dict), or None when the run has written none.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> read_record(folder) is None
    True
    >>> write_record(folder, {"dataset": "ESC50", "method": "lora", "finished": False})
    >>> mark_finished(folder)
    >>> read_record(folder)["finished"]
    True
    """
    path = record_path(run_folder)
    if not os.path.isfile(path):
        return None
    with open(path) as fin:
        try:
            record = json.load(fin)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}): restore it, or remove it to let the next run rewrite it"
            ) from err
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def write_record(run_folder, record):
    """Writes ``record`` as the run's ``params.json``, atomically (a run
    killed meanwhile leaves the old file or the new one, never half of one)."""
    path = record_path(run_folder)
    partial = path + ".partial"
    with open(partial, "w") as fout:
        json.dump(record, fout, indent=2)
    os.replace(partial, path)


def mark_finished(run_folder):
    """Sets ``finished: true`` in the run's record (which must exist)."""
    record = read_record(run_folder)
    if record is None:
        raise FileNotFoundError(f"{record_path(run_folder)} not found: the run wrote no record to mark finished")
    write_record(run_folder, dict(record, finished=True))


# ------------------------------------------------------------- settings
@dataclasses.dataclass
class RunSettings:
    """The settings a command would run with (see :func:`command_settings`).

    Arguments
    ---------
    hparams_file : str
        The recipe yaml.
    output_folder : str
        Its ``output_folder``, overrides applied.
    raw : ruamel.yaml.comments.CommentedMap
        The yaml with the overrides applied, references not resolved.
    resolved : ruamel.yaml.comments.CommentedMap
        The same with every reference resolved: what ``hyperparams.yaml``
        would hold.
    run_options : dict
        The run options of :data:`TRAINING_RUN_OPTIONS`.
    """

    hparams_file: str
    output_folder: str
    raw: object
    resolved: object
    run_options: dict


def command_settings(hparams_file, overrides="", run_options=None):
    """The settings of ``train.py hparams_file`` with ``overrides`` (yaml
    text, as ``speechbrain.parse_arguments`` returns them) and
    ``run_options`` (``RunOptions.as_dict()`` or any dict). An override of a
    key the yaml lacks is an error, as when the yaml is loaded.

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.yaml"
    >>> _ = path.write_text("output_folder: !PLACEHOLDER\\nlr: 0.005\\nopt: !name:torch.optim.SGD\\n  lr: !ref <lr>\\n")
    >>> settings = command_settings(path, "output_folder: run\\nlr: 0.5", {"debug": True, "device": "cpu"})
    >>> settings.output_folder, settings.resolved["opt"]["lr"], settings.run_options["debug"]
    ('run', 0.5, True)
    >>> "device" in settings.run_options  # where it runs is no setting
    False
    """
    reader = ruamel.yaml.YAML()
    with open(hparams_file) as fin:
        text = fin.read()
    with open(hparams_file) as fin:  # named: !include paths are relative to it
        resolved = reader.load(resolve_references(fin, overrides or None, overrides_must_match=True))
    raw = reader.load(text)
    if overrides:
        recursive_update(raw, reader.load(overrides) if isinstance(overrides, str) else overrides)
    if not isinstance(resolved, dict) or "output_folder" not in resolved:
        raise ValueError(f"{hparams_file} has no top-level output_folder: expected a recipe yaml")
    options = dict(run_options or {})
    return RunSettings(
        hparams_file=str(hparams_file),
        output_folder=str(resolved["output_folder"]),
        raw=raw,
        resolved=resolved,
        run_options={name: options[name] for name in TRAINING_RUN_OPTIONS if name in options},
    )


def recorded_settings(run_folder):
    """The run folder's ``hyperparams.yaml`` (parsed, tags kept), or None
    when it has none."""
    path = os.path.join(run_folder, HPARAMS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fin:
        try:
            settings = ruamel.yaml.YAML().load(fin)
        except ruamel.yaml.YAMLError as err:
            raise ValueError(
                f"{path} cannot be read as yaml ({err}); it records the settings of the run in "
                f"{run_folder}: restore it, or give another --output_folder"
            ) from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a yaml mapping (the run's settings), got {type(settings).__name__}")
    return settings


def holds_run(settings):
    """Whether the output folder of ``settings`` (a :class:`RunSettings`)
    holds a trained run: a saved checkpoint, or a record marked finished.
    A folder where training never saved anything does not: a command
    starts it afresh, whatever its settings."""
    record = read_record(settings.output_folder)
    if record is not None and record.get("finished"):
        return True
    return any(
        any(pathlib.Path(folder).glob("CKPT*/CKPT.yaml"))
        for folder in checkpoint_folders(settings)
    )


def checkpoint_folders(settings):
    """The ``checkpoints_dir`` of every checkpointer ``settings`` declares
    (top-level ``!new:...Checkpointer`` entries), or ``<output_folder>/save``."""
    folders = [
        str(node["checkpoints_dir"])
        for node in settings.resolved.values()
        if isinstance(node, dict) and str(_tag(node) or "").endswith("Checkpointer") and "checkpoints_dir" in node
    ]
    return folders or [os.path.join(settings.output_folder, "save")]


def changed_settings(settings):
    """What ``settings`` (a :class:`RunSettings`) changes of the run its
    output folder holds: one line per setting, empty when nothing changes
    or when the folder holds no trained run (:func:`holds_run`).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> yaml = "output_folder: !PLACEHOLDER\\nlr: 0.005\\nopt: !name:torch.optim.SGD\\n  lr: !ref <lr>\\n"
    >>> _ = (folder / "x.yaml").write_text(yaml)
    >>> run = folder / "run"
    >>> (run / "save" / "CKPT+1").mkdir(parents=True)
    >>> _ = (run / "save" / "CKPT+1" / "CKPT.yaml").write_text("end-of-epoch: true\\n")
    >>> with open(folder / "x.yaml") as fin:
    ...     _ = (run / "hyperparams.yaml").write_text(resolve_references(fin, f"output_folder: {run}").getvalue())
    >>> changed_settings(command_settings(folder / "x.yaml", f"output_folder: {run}\\nlr: 0.005"))
    []
    >>> changed_settings(command_settings(folder / "x.yaml", f"output_folder: {run}\\nlr: 0.5"))
    ['lr: 0.005 -> 0.5', '(and what refers to them: opt)']
    """
    if not holds_run(settings):
        return []
    folder = settings.output_folder
    recorded = recorded_settings(folder)
    if recorded is None:
        return [f"{os.path.join(folder, HPARAMS_FILE)} is missing: the settings of the run in this folder are unknown"]
    ignored = ignored_keys(settings.raw)
    differences = []
    for key in _union(recorded, settings.resolved):
        if key not in ignored:
            _compare(str(key), recorded.get(key, _ABSENT), settings.resolved.get(key, _ABSENT),
                     settings.raw.get(key), settings.raw, ignored, False, differences)
    own = [f"{path}: {_show(old)} -> {_show(new)}" for path, old, new, derived in differences if not derived]
    derived = list(dict.fromkeys(re.split(r"[.\[]", path)[0] for path, _, _, derived in differences if derived))
    if own:
        lines = own + ([f"(and what refers to them: {', '.join(derived)})"] if derived else [])
    else:
        lines = [f"{path}: {_show(old)} -> {_show(new)}" for path, old, new, _ in differences]
    record = read_record(folder) or {}
    if "run_options" in record:  # runs made before they were recorded: unknown
        before = record["run_options"]
        if not isinstance(before, dict):
            raise ValueError(f"{record_path(folder)}: run_options must map option names to values, got {before!r}")
        for name in TRAINING_RUN_OPTIONS:
            if name in before and name in settings.run_options and before[name] != settings.run_options[name]:
                lines.append(f"--{name}: {before[name]} -> {settings.run_options[name]}")
    return lines


def check_run_folder(settings, continue_with_new_settings=False):
    """Refuses (:class:`RunSettingsError`) a command whose ``settings``
    change those of the run its output folder holds, naming each change and
    how to proceed; with ``continue_with_new_settings`` returns the changes
    instead (for :func:`record_new_settings`). Reads only.

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.yaml"
    >>> _ = path.write_text("output_folder: !PLACEHOLDER\\nlr: 0.005\\n")
    >>> check_run_folder(command_settings(path, f"output_folder: {path.parent / 'new'}"))  # nothing there yet
    []
    """
    changes = changed_settings(settings)
    folder = settings.output_folder
    kept = os.path.join(folder, previous_hyperparams_name(folder))
    if changes and continue_with_new_settings and os.path.exists(kept):
        raise FileExistsError(
            f"{kept} exists but {record_path(folder)} does not list it: move it away before going on "
            "with new settings (it would be overwritten by the copy of the current hyperparams.yaml)"
        )
    if changes and not continue_with_new_settings:
        raise RunSettingsError(
            f"{folder} holds a run trained with other settings than this command's "
            f"(recorded in its {HPARAMS_FILE} and {RECORD_FILE}):\n  " + "\n  ".join(changes)
            + "\nNothing was written. To keep that run and train one with these settings, give another "
            f"--output_folder. To go on training it with these settings, add {CONTINUE_FLAG}: the "
            f"change is recorded in its {RECORD_FILE} and its {HPARAMS_FILE} is kept as "
            f"{previous_hyperparams_name(folder)}."
        )
    return changes


def previous_hyperparams_name(run_folder):
    """The name under which the next :func:`record_new_settings` keeps the
    folder's ``hyperparams.yaml``: ``hyperparams_before_change_<n>.yaml``.

    Example
    -------
    >>> previous_hyperparams_name(getfixture("tmp_path"))
    'hyperparams_before_change_1.yaml'
    """
    record = read_record(run_folder) or {}
    return f"hyperparams_before_change_{len(record.get('settings_changes', [])) + 1}.yaml"


def record_new_settings(run_folder, changes, run_options):
    """Records that the run in ``run_folder`` goes on with new settings:
    keeps its ``hyperparams.yaml`` under :func:`previous_hyperparams_name`
    (the next start writes the new one), appends the ``changes`` to the
    record's ``settings_changes``, stores the new ``run_options`` and marks
    the run unfinished. Returns the name of the kept copy (None when the
    folder had no ``hyperparams.yaml``).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "hyperparams.yaml").write_text("lr: 0.005\\n")
    >>> write_record(folder, {"method": "lora", "finished": True})
    >>> record_new_settings(folder, ["lr: 0.005 -> 0.5"], {"debug": False})
    'hyperparams_before_change_1.yaml'
    >>> record = read_record(folder)
    >>> record["finished"], record["settings_changes"][0]["changes"]
    (False, ['lr: 0.005 -> 0.5'])
    """
    record = read_record(run_folder) or {}
    kept = previous_hyperparams_name(run_folder)
    current = os.path.join(run_folder, HPARAMS_FILE)
    if os.path.isfile(current):
        destination = os.path.join(run_folder, kept)
        if os.path.exists(destination):  # checked by check_run_folder before anything was written
            raise FileExistsError(f"{destination} exists but {record_path(run_folder)} does not list it: move it away")
        shutil.copy2(current, destination)
    else:
        kept = None
    entry = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "changes": list(changes),
        "previous_hyperparams": kept,
        "note": RESTORED_OVER_NEW_SETTINGS,
    }
    changes_so_far = list(record.get("settings_changes", [])) + [entry]
    write_record(run_folder, dict(record, run_options=run_options, settings_changes=changes_so_far, finished=False))
    return kept


def record_run_options(run_folder, run_options):
    """Stores ``run_options`` in the run's record (creating it): done at
    the first start of a run, when they are the ones it trains with."""
    write_record(run_folder, dict(read_record(run_folder) or {}, run_options=run_options))


def ignored_keys(raw):
    """The top-level keys of ``raw`` (a yaml mapping) that are no setting:
    :data:`LOCATION_KEYS`, :data:`EXECUTION_KEYS` and the keys whose value
    only refers to those.

    Example
    -------
    >>> raw = ruamel.yaml.YAML().load("output_folder: x\\nsave_folder: !ref <output_folder>/save\\nlr: 1\\n")
    >>> ignored = ignored_keys(raw)
    >>> "save_folder" in ignored, "lr" in ignored
    (True, False)
    """
    ignored = set(LOCATION_KEYS + EXECUTION_KEYS)
    grown = True
    while grown:
        before = len(ignored)
        ignored |= {key for key, node in raw.items() if _references(node) and _references(node) <= ignored}
        grown = len(ignored) > before
    return ignored


class _Absent:
    """Stands for a setting one side does not have (shown as ``(not set)``)."""

    def __repr__(self):
        return "(not set)"


_ABSENT = _Absent()


def _tag(node):
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", None) if tag is not None else None


def _references(node):
    """The top-level names a ``!ref``/``!copy`` node refers to (empty set for others)."""
    if _tag(node) not in REFERENCE_TAGS:
        return set()
    return set(re.findall(r"<([^<>\[\].]+)", str(node.value)))


def _union(old, new):
    return list(old) + [key for key in new if key not in old]


def _compare(path, old, new, raw, raw_root, ignored, derived, out):
    """Appends ``(path, old, new, derived)`` for every difference between
    the resolved nodes ``old`` and ``new``; ``raw`` is ``new`` before
    references were resolved (in ``raw_root``, the whole yaml): what refers
    only to ignored keys is skipped, what refers to other keys is marked
    derived (their own line says it), and a reference to a whole key is
    followed (``modules: {backbone: !ref <backbone>}``)."""
    for _ in range(len(raw_root) + 1):  # a chain of references is at most every key long
        names = _references(raw)
        if not names:
            break
        if names <= ignored:
            return
        derived = True
        whole = re.fullmatch(r"\s*<(\w+)>\s*", str(raw.value))
        raw = raw_root.get(whole.group(1)) if whole else None
    if isinstance(old, dict) and isinstance(new, dict) and _tag(old) == _tag(new):
        for key in _union(old, new):
            child = raw.get(key) if isinstance(raw, dict) else None
            old_child, new_child = old.get(key, _ABSENT), new.get(key, _ABSENT)
            _compare(f"{path}.{key}", old_child, new_child, child, raw_root, ignored, derived, out)
    elif isinstance(old, list) and isinstance(new, list) and _tag(old) == _tag(new) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            child = raw[index] if isinstance(raw, list) and index < len(raw) else None
            _compare(f"{path}[{index}]", a, b, child, raw_root, ignored, derived, out)
    elif not _same_value(old, new):
        out.append((path, old, new, derived))


def _same_value(a, b):
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False  # containers of other tags or lengths (equal ones are walked)
    if _tag(a) is not None or _tag(b) is not None:
        return _tag(a) == _tag(b) and getattr(a, "value", None) == getattr(b, "value", None)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _show(node, limit=120):
    """A node as short yaml-like text."""
    if node is _ABSENT:
        return "(not set)"
    tag = _tag(node)
    prefix = f"{tag} " if tag else ""
    if isinstance(node, dict):
        text = prefix + "{" + ", ".join(f"{k}: {_show(v, limit)}" for k, v in node.items()) + "}"
    elif isinstance(node, list):
        text = prefix + "[" + ", ".join(_show(v, limit) for v in node) + "]"
    elif tag is not None:
        text = f"{tag} {node.value}".strip()
    elif node is None:
        text = "null"
    elif isinstance(node, bool):
        text = "true" if node else "false"
    elif isinstance(node, float):
        text = repr(float(node))
    else:
        text = str(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."
