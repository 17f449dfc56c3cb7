"""Importing a recipe's modules (``recipes/<Recipe>/<module>.py``) in tests.

Recipe scripts are standalone files, not a package: they are meant to be run
from their own folder, where they import their sibling modules by plain name
(``from esc50_prepare import prepare_esc50``). :func:`load_recipe_module`
imports one under a unique name, with its folder on ``sys.path`` while it is
being executed, so that such sibling imports work.
"""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


#: The task folder of our recipes inside each dataset folder (SpeechBrain's layout).
TASK = "PETL"


def recipe_folder(dataset):
    """``recipes/<dataset>/PETL`` (or ``recipes/<dataset>`` for a recipe
    without task folders, such as the quickstart)."""
    task = RECIPES / dataset / TASK
    return task if task.is_dir() else RECIPES / dataset


def load_recipe_module(recipe, module):
    """Imports ``<recipe folder>/<module>.py`` (once; later calls return the
    same module object).

    Arguments
    ---------
    recipe : str
        Dataset folder under ``recipes/``, e.g. ``"ESC50"`` (its ``PETL``
        task folder is used).
    module : str
        File name without ``.py``, e.g. ``"esc50_prepare"``.

    Returns
    -------
    module
    """
    folder = recipe_folder(recipe)
    path = folder / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe module {path}")
    name = f"_recipe_{recipe}_{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(folder))
    return loaded


def train_tiny_lora_run(root):
    """A finished LoRA Speech Commands run (SpeechBrain's debug epochs) on a
    tiny AST, written under ``root``: ``{"out", "backbone", "data", "argv"}``
    (``argv``: the command without ``--output_folder``)."""
    from mini_datasets import make_speech_commands
    from tiny import save_tiny_ast

    root = pathlib.Path(root)
    data = make_speech_commands(root / "speech_commands_v0.02")
    backbone = save_tiny_ast(root / "backbone")
    argv = [
        str(REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams" / "lora_gsc.yaml"),
        f"--data_folder={data}", f"--backbone_source={backbone}",
        "--num_workers=0", "--device=cpu", "--debug", "--debug_persistently",
    ]
    out = root / "run"
    load_recipe_module("Google-speech-commands", "train").main(argv + [f"--output_folder={out}"])
    return {"out": out, "backbone": backbone, "data": data, "argv": argv}
