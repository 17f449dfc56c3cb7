"""Layout checks of a preparation: the dataset's files are where its layout says, its metadata tables have their columns, and outputs go outside the dataset folder."""

import csv
import os


def _require(path, dataset_name, data_folder, hint, want_dir):
    path = os.path.abspath(os.fspath(path))
    exists = os.path.isdir(path) if want_dir else os.path.isfile(path)
    if exists:
        return path
    what = "folder" if want_dir else "file"
    if data_folder is not None:
        rel = os.path.relpath(path, os.path.abspath(os.fspath(data_folder)))
        rel = rel.replace(os.sep, "/") + ("/" if want_dir else "")
        where = f"expected {rel} at {path}"
    else:
        where = f"expected {what} {path}"
    if os.path.exists(path):
        problem = f" (it exists but is not a {what})"
    else:
        problem = " (not found)"
    message = f"{dataset_name}: {where}{problem}"
    if hint:
        message += f"; {hint}"
    raise FileNotFoundError(message)


def require_file(path, dataset_name, data_folder=None, hint=""):
    """Raises a ``FileNotFoundError`` naming ``path`` unless it is a file.

    Arguments
    ---------
    path : str or os.PathLike
        The file that must exist.
    dataset_name : str
        Prefix of the message (e.g. ``"ESC-50"``).
    data_folder : str or os.PathLike, optional
        When given, the message also names ``path`` relative to it.
    hint : str
        What the dataset's layout should look like.

    Returns
    -------
    str
        The absolute path.

    Example
    -------
    >>> root = getfixture("tmp_path")
    >>> require_file(
    ...     root / "meta" / "esc50.csv", "ESC-50", data_folder=root,
    ...     hint="is data_folder the root of the ESC-50 release?",
    ... )  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ESC-50: expected meta/esc50.csv at .../meta/esc50.csv (not found); is data_folder the root of the ESC-50 release?
    """
    return _require(path, dataset_name, data_folder, hint, want_dir=False)


def require_folder(path, dataset_name, data_folder=None, hint=""):
    """Like :func:`require_file`, for a folder.

    Example
    -------
    >>> root = getfixture("tmp_path")
    >>> require_folder(root, "GSC") == str(root)
    True
    """
    return _require(path, dataset_name, data_folder, hint, want_dir=True)


def read_csv_table(path, columns, dataset_name, header=None):
    """The lines of a dataset's metadata CSV file, as dicts keyed by its
    header, after checking that it has ``columns`` and at least one line.

    Arguments
    ---------
    path : str or os.PathLike
        The CSV file (UTF-8, with a header line).
    columns : sequence of str
        Columns the file must have (others are allowed).
    dataset_name : str
        Prefix of the messages.
    header : str, optional
        The expected header, as the error message shows it; by default
        ``columns`` joined by commas.

    Returns
    -------
    list of dict
        One dict per line, in file order.

    Raises
    ------
    ValueError
        A column is missing, or the file lists nothing.

    Example
    -------
    >>> meta = getfixture("tmp_path") / "meta.csv"
    >>> _ = meta.write_text("filename,fold\\n1-a.wav,1\\n")
    >>> read_csv_table(meta, ("filename", "fold"), "ESC-50")
    [{'filename': '1-a.wav', 'fold': '1'}]
    >>> read_csv_table(meta, ("filename", "target"), "ESC-50")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ESC-50: .../meta.csv lacks column(s) ['target']; expected the header filename,target
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            expected = ",".join(columns) if header is None else header
            raise ValueError(f"{dataset_name}: {path} lacks column(s) {missing}; expected the header {expected}")
        lines = list(reader)
    if not lines:
        raise ValueError(f"{dataset_name}: {path} lists no clips")
    return lines


def _is_within(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_save_folder(data_folder, save_folder):
    """Refuses a ``save_folder`` that is, or is inside, ``data_folder``:
    preparation never writes into the dataset.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The dataset's root.
    save_folder : str or os.PathLike
        Where the preparation writes its outputs.

    Example
    -------
    >>> check_save_folder("/data/ESC-50", "/exp/esc50")
    >>> check_save_folder("/data/ESC-50", "/data/ESC-50/manifests")
    Traceback (most recent call last):
    ...
    ValueError: save_folder /data/ESC-50/manifests is inside data_folder /data/ESC-50; preparation never writes into the dataset's folder, choose another save_folder
    """
    if _is_within(save_folder, data_folder):
        raise ValueError(
            f"save_folder {save_folder} is inside data_folder {data_folder}; "
            "preparation never writes into the dataset's folder, choose "
            "another save_folder"
        )
