"""Whether a preparation is current: its settings, its outputs and the size and time of every clip it checked, recorded in ``save_folder``."""

import json
import logging
import os
import tempfile


logger = logging.getLogger(__name__)


SETTINGS_FILE = "preparation_settings.json"


#: Size and modification time of every clip when it was checked.
CLIPS_RECORD = "prepared_clips.json"


def _normalise(settings):
    # What the settings look like once read back from JSON (tuples become
    # lists, keys strings), so that stored and current settings compare.
    return json.loads(json.dumps(settings, sort_keys=True))


def write_text_atomically(path, text):
    """Writes ``text`` to ``path`` through a temporary file in the same
    folder, renamed over ``path``: a reader sees the old file or the new
    one, never half of it (the manifests and the preparation records)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def clip_stats(paths):
    """``{path: [size in bytes, modification time in ns]}`` (None for a
    missing file): what :func:`preparation_is_current` compares to notice a
    clip that changed after it was checked.

    Example
    -------
    >>> path = getfixture("tmp_path") / "a.wav"
    >>> _ = path.write_bytes(b"1234")
    >>> clip_stats([str(path), str(path) + ".gone"])[str(path) + ".gone"] is None
    True
    """
    stats = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            stats[path] = None
            continue
        stats[path] = [stat.st_size, stat.st_mtime_ns]
    return stats


def _changed_clips(record):
    try:
        with open(record, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        return [f"{record} cannot be read ({err})"]
    if not isinstance(stored, dict):
        return [f"{record} does not hold a dict of clips"]
    current = clip_stats(list(stored))
    return [path for path, stat in stored.items() if current[path] != stat]


def preparation_is_current(save_folder, settings, outputs, clips_record=None):
    """Whether a previous preparation can be reused.

    True only when ``save_folder`` holds a settings record equal to
    ``settings`` (see :func:`mark_prepared`), every file of ``outputs``
    exists and, when ``clips_record`` is given (a file of
    :func:`clip_stats`, relative to ``save_folder``), no clip's size or
    modification time changed since it was checked. Otherwise logs why the
    preparation has to be redone (no record, which setting changed, which
    output is missing, which clip changed) and returns False.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder of the outputs and of the settings record.
    settings : dict
        JSON-serialisable settings of the current call.
    outputs : list of str
        Output files, relative to ``save_folder`` (or absolute).
    clips_record : str, optional
        File written from :func:`clip_stats` when the clips were checked.

    Returns
    -------
    bool

    Example
    -------
    >>> save = getfixture("tmp_path")
    >>> _ = (save / "train.csv").write_text("ID\\n")
    >>> preparation_is_current(save, {"fold": 1}, ["train.csv"])
    False
    >>> mark_prepared(save, {"fold": 1})
    >>> preparation_is_current(save, {"fold": 1}, ["train.csv"])
    True
    >>> preparation_is_current(save, {"fold": 2}, ["train.csv"])
    False
    """
    save_folder = os.fspath(save_folder)
    record = os.path.join(save_folder, SETTINGS_FILE)
    if not os.path.isfile(record):
        logger.info("No record of a previous preparation in %s", save_folder)
        return False
    try:
        with open(record, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        logger.warning("Cannot read %s (%s); preparing again", record, err)
        return False
    current = _normalise(settings)
    if not isinstance(stored, dict):
        logger.warning("%s does not hold a settings dict; preparing again",
                       record)
        return False
    if stored != current:
        for key in sorted(set(stored) | set(current)):
            if stored.get(key, "<unset>") != current.get(key, "<unset>"):
                logger.info(
                    "Preparation setting %r changed: %r -> %r; preparing "
                    "again",
                    key,
                    stored.get(key, "<unset>"),
                    current.get(key, "<unset>"),
                )
        return False
    missing = [
        o for o in outputs if not os.path.isfile(os.path.join(save_folder, o))
    ]
    if missing:
        logger.info(
            "Output(s) %s missing in %s; preparing again",
            ", ".join(missing),
            save_folder,
        )
        return False
    if clips_record is not None:
        record = os.path.join(save_folder, clips_record)
        if not os.path.isfile(record):
            logger.info("%s missing; preparing again", record)
            return False
        changed = _changed_clips(record)
        if changed:
            logger.info(
                "%d clip(s) changed on disk since they were checked (size or "
                "modification time), e.g. %s; preparing again",
                len(changed),
                changed[0],
            )
            return False
    logger.info(
        "%s is already prepared with the same settings; skipping preparation",
        save_folder,
    )
    return True


def mark_prepared(save_folder, settings):
    """Records ``settings`` as those of the preparation in ``save_folder``
    (``<save_folder>/preparation_settings.json``, written atomically). Call
    it last, once every output is written.

    Arguments
    ---------
    save_folder : str or os.PathLike
        Folder of the outputs.
    settings : dict
        JSON-serialisable settings.
    """
    text = json.dumps(_normalise(settings), indent=2, sort_keys=True) + "\n"
    write_text_atomically(os.path.join(os.fspath(save_folder), SETTINGS_FILE),
                       text)


def invalidate_preparation(save_folder):
    """Removes the settings record of ``save_folder``, if any. Call it before
    rewriting outputs, so that a preparation interrupted half-way is never
    taken for a complete one.

    Example
    -------
    >>> save = getfixture("tmp_path")
    >>> mark_prepared(save, {"fold": 1})
    >>> invalidate_preparation(save)
    >>> (save / SETTINGS_FILE).exists()
    False
    """
    record = os.path.join(os.fspath(save_folder), SETTINGS_FILE)
    if os.path.isfile(record):
        os.remove(record)
