#!/usr/bin/env python3
"""Writes the miniature datasets and tiny backbone configs committed under
``tests/samples/`` for the recipe tests of ``tests/recipes/*.csv``.

Run once from the repository root (the output is committed, a few hundred KB
per dataset)::

    python tests/samples/make_samples.py

Each dataset is written in its real layout by ``tests/mini_datasets.py``,
with fewer and shorter clips than the test fixtures use; the backbones are
``config.json`` files only (``--pretrained=False`` builds them with random
weights), so no weights are committed.
"""

import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mini_datasets  # noqa: E402
from tiny import (  # noqa: E402
    tiny_ast_config,
    tiny_hubert_config,
    tiny_w2v2_config,
    tiny_wavlm_config,
    tiny_whisper_config,
)

#: Folder under tests/samples -> function writing it there.
SAMPLES = {
    # every one of the 35 words has its folder, as the preparation requires
    "Google-speech-commands": lambda root: mini_datasets.make_speech_commands(
        root, clips_per_word=3, seconds=0.15
    ),
    "ESC50": lambda root: mini_datasets.make_esc50(root, classes=2, clips_per_class=5, seconds=0.25),
    "UrbanSound8k": lambda root: mini_datasets.make_urbansound8k(
        root, classes=2, clips_per_class=10, seconds=0.15
    ),
    "fluent-speech-commands": lambda root: mini_datasets.make_fluent_speech_commands(
        root, intents=2, speakers=(1, 1, 1), repeats=1
    ),
    "IEMOCAP": lambda root: mini_datasets.make_iemocap(
        root, dialogs_per_session=1, turns_per_dialog=10, turn_seconds=(0.15, 0.3)
    ),
    "tiny_ast": lambda root: tiny_ast_config().save_pretrained(root),
    "tiny_w2v2": lambda root: tiny_w2v2_config().save_pretrained(root),
    "tiny_hubert": lambda root: tiny_hubert_config().save_pretrained(root),
    "tiny_wavlm": lambda root: tiny_wavlm_config().save_pretrained(root),
    "tiny_whisper": lambda root: tiny_whisper_config().save_pretrained(root),
}


def main():
    """(Re)writes every sample folder."""
    for name, make in SAMPLES.items():
        folder = HERE / name
        if folder.exists():
            shutil.rmtree(folder)
        make(folder)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder}: {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
