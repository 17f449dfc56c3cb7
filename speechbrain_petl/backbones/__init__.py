"""Frozen backbone lobes with named insertion sites for PETL methods."""

from speechbrain_petl.backbones.ast import AST, DEFAULT_AST
from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.wav2vec2 import DEFAULT_WAV2VEC2, Wav2Vec2

__all__ = ["AST", "Backbone", "Wav2Vec2", "DEFAULT_AST", "DEFAULT_WAV2VEC2"]
