"""Inference folders written by the flat package (before it was grouped by
job) load through every interface and give the probabilities they gave then
(``tests/samples/legacy_inference``, see its README)."""

import json
import pathlib

import pytest
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.interfaces import foreign_class
from transformers import ASTConfig

from speechbrain_petl.backbones import AST
from speechbrain_petl.inference import AudioClassifier, MultiTaskClassifier

SAMPLES = pathlib.Path(__file__).resolve().parent / "samples"
LEGACY = SAMPLES / "legacy_inference"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


def fill(module, scale):
    """Parameter k (sorted by name) <- scale * sin(0.37 * i + k), i its flat index."""
    with torch.no_grad():
        for k, (_, param) in enumerate(sorted(module.named_parameters())):
            i = torch.arange(param.numel(), dtype=torch.float64)
            param.copy_((scale * torch.sin(0.37 * i + k)).reshape(param.shape).to(param.dtype))


def clip():
    """The synthetic clip the expected probabilities were computed on."""
    t = torch.arange(12000)
    return (0.1 * torch.sin(t * 0.05) * torch.cos(t * 0.0031)).float()


@pytest.fixture(scope="module")
def legacy_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy") / "backbone"
    backbone = AST(ASTConfig.from_pretrained(SAMPLES / "tiny_ast"), pretrained=False, max_frames=64)
    fill(backbone, 0.05)
    backbone.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("task", ["lora", "conformer"])
def test_audio_classifier_and_stock_interfaces_give_the_recorded_probabilities(task, legacy_backbone, tmp_path):
    expected = torch.tensor(EXPECTED[task])
    overrides = {"backbone_source": legacy_backbone}
    ours = AudioClassifier.from_hparams(source=str(LEGACY / task), savedir=str(tmp_path / "a"), overrides=overrides)
    stock = EncoderClassifier.from_hparams(source=str(LEGACY / task), savedir=str(tmp_path / "b"), overrides=overrides)
    foreign = foreign_class(
        source=str(LEGACY / task), savedir=str(tmp_path / "c"), pymodule_file="custom_interface.py",
        classname="AudioClassifier", overrides=overrides,
    )
    for interface in (ours, stock, foreign):
        with torch.no_grad():
            log_probs = interface.classify_batch(clip().unsqueeze(0))[0][0]
        torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)
    assert type(foreign).__name__ == "AudioClassifier"


def test_multitask_classifier_gives_the_recorded_probabilities(legacy_backbone):
    classifier = MultiTaskClassifier.from_folders(
        {"lora": LEGACY / "lora", "conformer": LEGACY / "conformer"}, backbone_source=legacy_backbone
    )
    log_probs, _, _, labels = classifier.classify_batch(torch.stack([clip(), clip()]), tasks=["lora", "conformer"])
    for task, row in zip(["lora", "conformer"], log_probs):
        torch.testing.assert_close(row, torch.tensor(EXPECTED["multitask"][task]), atol=1e-5, rtol=0)
    assert set(labels) <= {"dog", "rain", "siren"}


def test_another_backbone_is_refused(tmp_path):
    other = tmp_path / "other"
    backbone = AST(ASTConfig.from_pretrained(SAMPLES / "tiny_ast"), pretrained=False, max_frames=64)
    fill(backbone, 0.06)
    backbone.save_pretrained(other)
    with pytest.raises(RuntimeError, match="sha256"):
        AudioClassifier.from_hparams(
            source=str(LEGACY / "lora"), savedir=str(tmp_path / "cache"), overrides={"backbone_source": str(other)}
        )
