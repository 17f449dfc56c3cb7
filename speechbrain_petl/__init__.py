"""speechbrain_petl: parameter-efficient transfer learning of frozen audio
transformers (AST, Wav2Vec2) for SpeechBrain."""

__version__ = "0.1.0"
