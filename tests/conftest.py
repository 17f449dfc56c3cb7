"""Shared pytest fixtures. Test helpers live in plain modules next to this
file (``tiny.py``: tiny backbones; ``mini_datasets.py``: miniature datasets)."""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from tiny import save_tiny_ast, save_tiny_w2v2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ast_dir(tmp_path_factory):
    """A randomised 2-layer AST saved with save_pretrained (64 frames)."""
    return save_tiny_ast(tmp_path_factory.mktemp("tiny_ast"))


@pytest.fixture(scope="session")
def tiny_w2v2_dir(tmp_path_factory):
    """A randomised 2-layer Wav2Vec2-base-like model saved with save_pretrained."""
    return save_tiny_w2v2(tmp_path_factory.mktemp("tiny_w2v2"))
