"""speechbrain_petl: parameter-efficient transfer learning of frozen audio
transformers (AST, Wav2Vec2, HuBERT, WavLM, Whisper's encoder) for SpeechBrain."""

__version__ = "0.1.0"
