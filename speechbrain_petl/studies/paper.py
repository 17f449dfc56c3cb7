"""The paper's published accuracies (%), for reports to show beside ours.

Cappellazzo et al., "Parameter-efficient transfer learning of Audio
Spectrogram Transformers" (2024): Table 1 (AST), Table 2 (few-shot, Pfeiffer
adapters), Table 3 (Wav2Vec2). Keys are recipe method names and recipe
folder names.
"""

TABLE1 = {  # method -> dataset -> accuracy
    "full": {"ESC50": 87.48, "UrbanSound8k": 84.31, "Google-speech-commands": 97.31, "fluent-speech-commands": 93.29},
    "linear": {"ESC50": 75.85, "UrbanSound8k": 77.93, "Google-speech-commands": 41.78, "fluent-speech-commands": 27.52},
    "bitfit": {"ESC50": 86.05, "UrbanSound8k": 82.17, "Google-speech-commands": 85.51, "fluent-speech-commands": 63.85},
    "prompt_shallow": {"ESC50": 84.30, "UrbanSound8k": 79.73, "Google-speech-commands": 75.28, "fluent-speech-commands": 40.85},
    "prompt_deep": {"ESC50": 86.52, "UrbanSound8k": 83.67, "Google-speech-commands": 89.18, "fluent-speech-commands": 68.60},
    "prefix": {"ESC50": 82.93, "UrbanSound8k": 81.39, "Google-speech-commands": 83.46, "fluent-speech-commands": 55.75},
    "lora": {"ESC50": 86.45, "UrbanSound8k": 83.83, "Google-speech-commands": 93.61, "fluent-speech-commands": 76.00},
    "bottleneck": {"ESC50": 88.38, "UrbanSound8k": 83.44, "Google-speech-commands": 91.33, "fluent-speech-commands": 73.19},
    "bottleneck_houlsby": {"ESC50": 88.00, "UrbanSound8k": 82.80, "Google-speech-commands": 91.75, "fluent-speech-commands": 78.71},
    "conformer": {"ESC50": 88.30, "UrbanSound8k": 84.57, "Google-speech-commands": 96.28, "fluent-speech-commands": 95.48},
    "conformer_houlsby": {"ESC50": 85.97, "UrbanSound8k": 83.59, "Google-speech-commands": 96.16, "fluent-speech-commands": 96.34},
}

TABLE2 = {  # method -> (dataset, examples per class) -> accuracy
    "prompt_deep": {("ESC50", 1): 32.7, ("ESC50", 2): 44.3, ("ESC50", 4): 57.0, ("ESC50", 8): 71.9,
                    ("Google-speech-commands", 2): 9.4, ("Google-speech-commands", 8): 18.7, ("Google-speech-commands", 32): 43.1, ("Google-speech-commands", 64): 57.1},
    "lora": {("ESC50", 1): 31.8, ("ESC50", 2): 42.2, ("ESC50", 4): 58.8, ("ESC50", 8): 70.7,
             ("Google-speech-commands", 2): 6.8, ("Google-speech-commands", 8): 15.2, ("Google-speech-commands", 32): 41.8, ("Google-speech-commands", 64): 59.8},
    "bottleneck": {("ESC50", 1): 33.0, ("ESC50", 2): 45.5, ("ESC50", 4): 60.2, ("ESC50", 8): 72.8,
                   ("Google-speech-commands", 2): 7.2, ("Google-speech-commands", 8): 16.0, ("Google-speech-commands", 32): 47.9, ("Google-speech-commands", 64): 66.6},
    "conformer": {("ESC50", 1): 30.7, ("ESC50", 2): 41.0, ("ESC50", 4): 56.2, ("ESC50", 8): 71.1,
                  ("Google-speech-commands", 2): 5.9, ("Google-speech-commands", 8): 15.5, ("Google-speech-commands", 32): 58.7, ("Google-speech-commands", 64): 77.5},
}

TABLE3 = {  # Wav2Vec2 method -> dataset -> accuracy
    "w2v2_full": {"Google-speech-commands": 98.16, "fluent-speech-commands": 99.58, "IEMOCAP": 70.05},
    "w2v2_linear": {"Google-speech-commands": 84.93, "fluent-speech-commands": 30.95, "IEMOCAP": 36.82},
    "w2v2_bottleneck": {"Google-speech-commands": 94.96, "fluent-speech-commands": 96.41, "IEMOCAP": 48.32},
    "w2v2_conformer": {"Google-speech-commands": 95.24, "fluent-speech-commands": 98.33, "IEMOCAP": 55.81},
}

#: The suffix of each recipe's yaml names (``<method>_<suffix>.yaml``).
SUFFIXES = {
    "ESC50": "esc50",
    "UrbanSound8k": "us8k",
    "Google-speech-commands": "gsc",
    "fluent-speech-commands": "fsc",
    "IEMOCAP": "iemocap",
}


#: Method-name prefixes of the recipes on backbones the paper did not
#: evaluate (HuBERT, WavLM, Whisper's encoder), and of the mixtures of
#: adapters of the authors' follow-up paper (Soft-MoA, Dense-MoA, issue 23;
#: its accuracies are not transcribed here): no published number here.
BEYOND_THE_PAPER = (
    "hubert_", "wavlm_", "whisper_", "soft_moa", "dense_moa", "w2v2_soft_moa", "w2v2_dense_moa",
)


def paper_accuracy(method, dataset):
    """Table 1 or 3 accuracy for a recipe method name, or None."""
    return (TABLE3 if method.startswith("w2v2_") else TABLE1).get(method, {}).get(dataset)
