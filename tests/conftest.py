"""Shared pytest fixtures. Test helpers live in plain modules next to this
file (``tiny.py``: tiny backbones; ``mini_datasets.py``: miniature datasets)."""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from tiny import save_tiny, save_tiny_ast, save_tiny_w2v2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ast_dir(tmp_path_factory):
    """A randomised 2-layer AST saved with save_pretrained (64 frames)."""
    return save_tiny_ast(tmp_path_factory.mktemp("tiny_ast"))


@pytest.fixture(scope="session")
def tiny_w2v2_dir(tmp_path_factory):
    """A randomised 2-layer Wav2Vec2-base-like model saved with save_pretrained."""
    return save_tiny_w2v2(tmp_path_factory.mktemp("tiny_w2v2"))


@pytest.fixture(scope="session")
def tiny_hubert_dir(tmp_path_factory):
    """A randomised 2-layer HuBERT-base-like model saved with save_pretrained."""
    return save_tiny("hubert", tmp_path_factory.mktemp("tiny_hubert"))


@pytest.fixture(scope="session")
def tiny_wavlm_dir(tmp_path_factory):
    """A randomised 2-layer WavLM-base-like model saved with save_pretrained."""
    return save_tiny("wavlm", tmp_path_factory.mktemp("tiny_wavlm"))


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A randomised width-32 Whisper (2 encoder layers) saved with save_pretrained."""
    return save_tiny("whisper", tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture
def tiny_lobe(request, tiny_ast_dir, tiny_w2v2_dir, tiny_hubert_dir, tiny_wavlm_dir, tiny_whisper_dir):
    """``tiny_lobe(kind, petl=None, pooling="mean")``: a tiny lobe of any kind
    (``ast``, ``w2v2``, ``hubert``, ``wavlm``, ``whisper``)."""
    from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder

    def make(kind, petl=None, pooling="mean", **options):
        if kind == "ast":
            return AST(tiny_ast_dir, max_frames=64, petl=petl, pooling=pooling, **options)
        lobe_class, folder = {
            "w2v2": (Wav2Vec2, tiny_w2v2_dir),
            "hubert": (HuBERT, tiny_hubert_dir),
            "wavlm": (WavLM, tiny_wavlm_dir),
            "whisper": (WhisperEncoder, tiny_whisper_dir),
        }[kind]
        return lobe_class(folder, petl=petl, pooling=pooling, **options)

    return make
