"""Frozen backbone lobes with named insertion sites for PETL methods."""

from speechbrain_petl.backbones.ast import AST, DEFAULT_AST
from speechbrain_petl.backbones.base import Backbone
from speechbrain_petl.backbones.hubert import DEFAULT_HUBERT, HuBERT
from speechbrain_petl.backbones.tiny import tiny_config
from speechbrain_petl.backbones.wav2vec2 import DEFAULT_WAV2VEC2, Wav2Vec2
from speechbrain_petl.backbones.wavlm import DEFAULT_WAVLM, WavLM
from speechbrain_petl.backbones.whisper import DEFAULT_WHISPER, WhisperEncoder

__all__ = [
    "AST",
    "Backbone",
    "HuBERT",
    "Wav2Vec2",
    "WavLM",
    "WhisperEncoder",
    "DEFAULT_AST",
    "DEFAULT_HUBERT",
    "DEFAULT_WAV2VEC2",
    "DEFAULT_WAVLM",
    "DEFAULT_WHISPER",
    "tiny_config",
]
