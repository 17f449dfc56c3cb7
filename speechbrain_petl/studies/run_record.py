"""What a recipe run records about itself: ``<output_folder>/params.json``.

:func:`speechbrain_petl.training.recipe.start_record` writes it when training
starts and :func:`speechbrain_petl.training.recipe.finish_run` marks it finished once
the run is tested (and its inference folder written); reports and studies read it back instead of guessing from
folder or file names. Its keys:

* ``dataset``, ``method``: the recipe yaml's ``dataset`` and ``method``
  keys (null when the yaml declares none);
* ``petl``, ``head``, ``frozen``, ``total``: parameter counts
  (:func:`speechbrain_petl.studies.params.summarize`);
* ``finished``: false until the run is tested.

A folder without this record (not made by a recipe run) is left out by
the readers, with a note naming it.
"""

import json
import os

RECORD_FILE = "params.json"


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
            raise ValueError(f"{path} is not valid JSON ({err}): rerun the run to rewrite it") from err
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
