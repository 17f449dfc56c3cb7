"""Leaving our stack: merged transformers folders and PEFT adapters compute
what our model computes; what they cannot compute is refused."""

import csv
import json
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from speechbrain.nnet.linear import Linear
from transformers import (
    ASTFeatureExtractor,
    ASTForAudioClassification,
    ASTModel,
    AutoFeatureExtractor,
    Wav2Vec2ForSequenceClassification,
    HubertModel,
    WavLMModel,
    WhisperModel,
    pipeline,
)

from method_zoo import conformer, perturb_petl_
from recipe_utils import train_tiny_lora_run
from speechbrain_petl.export import cli as export
from speechbrain_petl.export import merged as merged_export
from speechbrain_petl.export import peft as peft_export
from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder
from speechbrain_petl.backbones.wav2vec2 import normalize
from speechbrain_petl.data.audio import load_audio
from speechbrain_petl.inference import write_inference_folder
from speechbrain_petl.inference import AudioClassifier, label_encoder
from speechbrain_petl.methods import BitFit, LinearProbing, LoRA, PromptTuning
from tiny import save_tiny_ast

LABELS = ["dog", "rain", "siren"]
OUTPUTS = LABELS + ["<unused output 3>"]  # the heads have one output more than labels
CLIPS = [torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1 for n in (8000, 2500, 12000)]
ENCODER = label_encoder(LABELS)


def hf_shaped_head(eps=1e-12, seed=0):
    """LayerNorm + linear (ASTForAudioClassification's classifier), random."""
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.LayerNorm(32, eps=eps), Linear(input_size=32, n_neurons=4))
    with torch.no_grad():
        head[0].weight.add_(torch.randn(32) * 0.3)
        head[0].bias.add_(torch.randn(32) * 0.3)
    return head.eval()


def linear_head(seed=0):
    """The recipes' head: a linear layer on the pooled embedding."""
    torch.manual_seed(seed)
    return Linear(input_size=32, n_neurons=4).eval()


def trained(lobe, seed=0):
    """``lobe`` with random values in every PETL tensor, in eval mode."""
    perturb_petl_(lobe, seed)
    return lobe.eval()


def our_probs(lobe, head, wav):
    """Our model's probabilities for one clip."""
    with torch.no_grad():
        return torch.softmax(head(lobe(wav[None])), dim=-1)[0]


def pipeline_gap(folder, lobe, head):
    """Largest difference between the pipeline's probabilities and ours over CLIPS."""
    classify = pipeline("audio-classification", model=str(folder))
    gap = 0.0
    for wav in CLIPS:
        scores = {r["label"]: r["score"] for r in classify(wav.numpy(), top_k=None)}
        assert sorted(scores) == sorted(OUTPUTS)
        ours = our_probs(lobe, head, wav)
        gap = max(gap, max(abs(scores[label] - ours[i].item()) for i, label in enumerate(OUTPUTS)))
    return gap


def snapshot(lobe):
    with torch.no_grad():
        return [lobe(wav[None]) for wav in CLIPS]


def test_merged_ast_folder_classifies_as_our_model_through_the_pipeline(tiny_ast_dir, tmp_path):
    # max_frames 48 differs from the checkpoint's 64: the resized positions must travel.
    lobe = trained(AST(tiny_ast_dir, max_frames=48, pooling="cls_dist",
                       petl={"lora": LoRA(rank=4, alpha=0.5), "bitfit": BitFit()}))
    head = hf_shaped_head()
    before = snapshot(lobe)
    dest = merged_export.write_merged_model(tmp_path / "merged", lobe, head, ENCODER)
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"
    ]
    # The live lobe is unmerged again, bit for bit.
    assert not lobe.merged and all(torch.equal(a, b) for a, b in zip(snapshot(lobe), before))
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == ["ASTForAudioClassification"] and config["max_length"] == 48
    assert config["id2label"] == {str(i): label for i, label in enumerate(OUTPUTS)}
    assert config["label2id"] == {label: i for i, label in enumerate(OUTPUTS)}
    # Nothing of ours is left in it: the tensors of a plain model of that config.
    plain = ASTForAudioClassification(ASTForAudioClassification.config_class.from_pretrained(dest))
    stored = load_file(str(dest / "model.safetensors"))
    shapes = sorted(tuple(v.shape) for v in plain.state_dict().values())
    assert sorted(tuple(v.shape) for v in stored.values()) == shapes  # (saved under transformers 4.x names)
    # The pipeline's features are ours: same fbank, length and normalisation.
    extractor = AutoFeatureExtractor.from_pretrained(dest)
    assert isinstance(extractor, ASTFeatureExtractor)
    assert (extractor.max_length, extractor.mean, extractor.std) == (48, lobe.features.mean, lobe.features.std)
    for wav in CLIPS:
        theirs = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"]
        assert torch.allclose(theirs, lobe.features(wav[None]), atol=1e-6)
    assert pipeline_gap(dest, lobe, head) < 1e-6
    # ... and our inference interface gives the same probabilities.
    interface = AudioClassifier.from_modules(lobe, head, ENCODER)
    log_probs = interface.classify_batch(CLIPS[0][None])[0]
    assert torch.allclose(log_probs.exp()[0], our_probs(lobe, head, CLIPS[0]), atol=1e-7)


def test_merged_wav2vec2_folder_classifies_as_our_model_through_the_pipeline(tiny_w2v2_dir, tmp_path):
    lobe = trained(Wav2Vec2(tiny_w2v2_dir, petl={
        "lora": LoRA(rank=4, alpha=0.5, targets=["attention.query", "attention.value", "mlp.fc1"]),
        "linear": LinearProbing(),
    }))
    head = linear_head()
    dest = merged_export.write_merged_model(tmp_path / "merged", lobe, head, ENCODER)
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    assert config["classifier_proj_size"] == 4 and not config["use_weighted_layer_sum"]
    assert json.loads((dest / "preprocessor_config.json").read_text())["do_normalize"] is True
    assert pipeline_gap(dest, lobe, head) < 1e-6


def test_merged_export_refuses_what_transformers_cannot_compute(tiny_ast_dir, tiny_w2v2_dir, tmp_path):
    recipe_like = trained(AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=6, alpha=0.75)))
    with pytest.raises(merged_export.NotRepresentable) as err:
        merged_export.write_merged_model(tmp_path / "a", recipe_like, linear_head(), ENCODER)
    assert "pooling: the run pools 'mean'" in str(err.value)
    assert "(CLS + distillation token) / 2 (pooling: cls_dist)" in str(err.value)
    assert "LayerNorm + Linear" in str(err.value) and "eps=1e-12" in str(err.value)
    cls_pooled = AST(tiny_ast_dir, max_frames=64, pooling="cls", petl=LoRA(rank=2))
    with pytest.raises(merged_export.NotRepresentable, match="pooling: the run pools 'cls'"):
        merged_export.write_merged_model(tmp_path / "a", cls_pooled, hf_shaped_head(), ENCODER)
    cls_dist = AST(tiny_ast_dir, max_frames=64, pooling="cls_dist", petl=LoRA(rank=2))
    with pytest.raises(merged_export.NotRepresentable, match=r"eps 1e-05.*eps 1e-12"):
        merged_export.write_merged_model(tmp_path / "a", cls_dist, hf_shaped_head(eps=1e-5), ENCODER)
    with pytest.raises(ValueError, match="Wav2Vec2 has no CLS and distillation tokens"):
        Wav2Vec2(tiny_w2v2_dir, pooling="cls_dist")
    # Methods that do not become plain weights: named, and the lobe is left as it was.
    adapted = trained(Wav2Vec2(tiny_w2v2_dir, petl={"adapter": conformer()}))
    before = snapshot(adapted)
    with pytest.raises(merged_export.NotRepresentable, match=r"still run .*'adapter'"):
        merged_export.write_merged_model(tmp_path / "a", adapted, linear_head(), ENCODER)
    assert not adapted.merged and all(torch.equal(a, b) for a, b in zip(snapshot(adapted), before))
    prompted = AST(tiny_ast_dir, max_frames=64, pooling="cls_dist", petl={"prompt": PromptTuning(length=2)})
    with pytest.raises(merged_export.NotRepresentable, match=r"'prompt' \(PromptTuning\) cannot be written"):
        merged_export.write_merged_model(tmp_path / "a", prompted, hf_shaped_head(), ENCODER)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".*partial"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken already exists"):
        merged_export.write_merged_model(tmp_path / "taken", cls_dist, hf_shaped_head(), ENCODER)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["ast", "w2v2"])
def test_peft_adapter_on_the_classification_model_equals_ours(kind, tiny_ast_dir, tiny_w2v2_dir, tmp_path):
    lora = LoRA(rank=6, alpha=0.75, targets=["attention.query", "attention.value", "mlp.fc2"], layers=[1])
    if kind == "ast":
        lobe, head = trained(AST(tiny_ast_dir, max_frames=64, pooling="cls_dist", petl=lora)), hf_shaped_head()
        base = ASTForAudioClassification.from_pretrained(tiny_ast_dir, num_labels=4)
        inputs = [ASTFeatureExtractor(max_length=64)(w.numpy(), sampling_rate=16000, return_tensors="pt")
                  ["input_values"] for w in CLIPS]
    else:
        lobe, head = trained(Wav2Vec2(tiny_w2v2_dir, petl=lora)), linear_head()
        base = Wav2Vec2ForSequenceClassification.from_pretrained(tiny_w2v2_dir, num_labels=4, classifier_proj_size=4)
        inputs = [normalize(w[None]) for w in CLIPS]
    dest = peft_export.write_peft_adapter(tmp_path / "adapter", lobe, head, ENCODER)
    config = json.loads((dest / "adapter_config.json").read_text())
    # Scaling: ours alpha / rank = 0.125 is PEFT's lora_alpha / r, without rsLoRA.
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (6, 0.75, False)
    assert config["base_model_name_or_path"] == lobe.source
    module_names = {name for name, _ in base.named_modules()}
    assert len(config["target_modules"]) == 3 and set(config["target_modules"]) <= module_names
    assert all(".1." in name for name in config["target_modules"])
    assert json.loads((dest / "labels.json").read_text()) == OUTPUTS
    model = PeftModel.from_pretrained(base, str(dest)).eval()
    scalings = [m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A")]
    assert scalings == [0.125] * 3 and lora.scaling == 0.125
    for wav, x in zip(CLIPS, inputs):
        with torch.no_grad():
            theirs = torch.softmax(model(x).logits, dim=-1)[0]
        assert torch.allclose(theirs, our_probs(lobe, head, wav), atol=1e-6)


def test_a_recipe_like_ast_adapter_goes_on_ASTModel_with_the_head_beside_it(tiny_ast_dir, tmp_path):
    lobe, head = trained(AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=6, alpha=0.75))), linear_head()
    dest = peft_export.write_peft_adapter(tmp_path / "adapter", lobe, head, ENCODER)
    config = json.loads((dest / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None
    assert sorted(config["target_modules"])[0] == "layers.0.attention.q_proj"
    model = PeftModel.from_pretrained(ASTModel.from_pretrained(tiny_ast_dir), str(dest)).eval()
    stored = load_file(str(dest / "head.safetensors"))
    extractor = AutoFeatureExtractor.from_pretrained(dest)  # the run's input settings travel
    for wav in CLIPS:
        x = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"]
        with torch.no_grad():
            hidden = model(x).last_hidden_state
            tokens, _ = lobe.encode(wav[None])
            logits = torch.nn.functional.linear(hidden.mean(dim=1), stored["weight"], stored["bias"])
        assert torch.allclose(hidden, tokens, atol=1e-6)
        assert torch.allclose(torch.softmax(logits, -1)[0], our_probs(lobe, head, wav), atol=1e-6)
    # The README's snippet names the pooling the head needs.
    assert "pooled = hidden.mean(dim=1)" in (dest / "README.md").read_text()


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "whisper"])
def test_peft_adapter_on_the_speech_encoders_equals_ours(kind, tmp_path, request):
    """A LoRA on WavLM's feed-forward goes on WavLMModel (one on its
    attention is refused: transformers' WavLM attention reads the projection
    weights directly, PEFT would change nothing); on Whisper's encoder, on
    WhisperModel, when the run used transformers' 30 s windows
    (``crop_positions: False``; a cropped run is refused, naming the
    option). Neither has a merged classification export (a clear error)."""
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    if kind == "hubert":
        lobe, model_class = HuBERT(folder, petl=LoRA(rank=2)), HubertModel
    elif kind == "wavlm":
        on_attention = trained(WavLM(folder, petl=LoRA(rank=2)))
        bypassed = r"never apply a LoRA on \['attention.query', 'attention.value'\]"
        with pytest.raises(merged_export.NotRepresentable, match=bypassed):
            peft_export.write_peft_adapter(tmp_path / "attention", on_attention, linear_head(), ENCODER)
        lobe, model_class = WavLM(folder, petl=LoRA(rank=2, targets=["mlp.fc1", "mlp.fc2"])), WavLMModel
    else:
        cropped = trained(WhisperEncoder(folder, petl=LoRA(rank=2)))
        with pytest.raises(merged_export.NotRepresentable, match="crop_positions: False"):
            peft_export.write_peft_adapter(tmp_path / "cropped", cropped, linear_head(), ENCODER)
        lobe, model_class = WhisperEncoder(folder, petl=LoRA(rank=2), crop_positions=False), WhisperModel
    lobe, head = trained(lobe), linear_head()
    dest = peft_export.write_peft_adapter(tmp_path / "adapter", lobe, head, ENCODER)
    model = PeftModel.from_pretrained(model_class.from_pretrained(folder), str(dest)).eval()
    extractor = AutoFeatureExtractor.from_pretrained(dest)
    for wav in CLIPS[:2]:
        with torch.no_grad():
            if kind != "whisper":
                hidden = model(extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"])
            else:
                features = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")["input_features"]
                hidden = model.base_model.model.encoder(features)
            tokens, _ = lobe.encode(wav[None])
        torch.testing.assert_close(hidden.last_hidden_state, tokens, rtol=0, atol=1e-5)
    with pytest.raises(merged_export.NotRepresentable, match="has no transformers classification model here"):
        merged_export.write_merged_model(tmp_path / "merged", lobe, head, ENCODER)


def test_peft_round_trip_gives_back_our_lora(tiny_ast_dir, tmp_path):
    lora = LoRA(rank=6, alpha=0.75, targets=["attention.query", "attention.value"], dropout=0.1, layers=[0])
    lobe, head = trained(AST(tiny_ast_dir, max_frames=64, petl={"task": lora})), linear_head()
    dest = peft_export.write_peft_adapter(tmp_path / "adapter", lobe, head, ENCODER)
    fresh = AST(tiny_ast_dir, max_frames=64).eval()
    imported, others = peft_export.lora_from_peft(dest, fresh, name="task")
    assert others == {}
    assert imported.constructor_args() == lora.constructor_args()
    assert imported.scaling == lora.scaling == 0.125
    assert fresh.trainable_state_dict().keys() == lobe.trainable_state_dict().keys()
    assert all(torch.equal(v, lobe.trainable_state_dict()[k]) for k, v in fresh.trainable_state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(snapshot(fresh.eval()), snapshot(lobe)))


def test_an_adapter_made_by_peft_imports_as_our_lora(tiny_ast_dir, tmp_path):
    # rsLoRA scaling (lora_alpha / sqrt(r)), short target names, one layer only.
    config = LoraConfig(r=4, lora_alpha=3.0, use_rslora=True, target_modules=["q_proj", "fc1"],
                        layers_to_transform=[1], modules_to_save=["classifier"])
    model = get_peft_model(ASTForAudioClassification.from_pretrained(tiny_ast_dir, num_labels=2), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "peft")
    model.eval()
    lobe = AST(tiny_ast_dir, max_frames=64, pooling=None).eval()
    lora, others = peft_export.lora_from_peft(tmp_path / "peft", lobe)
    assert (lora.rank, lora.targets, lora.layer_selection) == (4, ["attention.query", "mlp.fc1"], [1])
    assert lora.scaling == pytest.approx(3.0 / 2.0, rel=1e-15)
    assert sorted(others) == ["classifier.dense.bias", "classifier.dense.weight",
                              "classifier.layernorm.bias", "classifier.layernorm.weight"]
    x = ASTFeatureExtractor(max_length=64)(CLIPS[0].numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        theirs = model.base_model.model.audio_spectrogram_transformer(x["input_values"]).last_hidden_state
        ours = lobe(CLIPS[0][None])
    assert torch.allclose(theirs, ours, atol=1e-5)
    # transformers 4.x module names (encoder.layer.N.attention.attention.query) map too.
    state = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    old = {k.replace(".layers.1.attention.q_proj.", ".encoder.layer.1.attention.attention.query.")
            .replace(".layers.1.mlp.fc1.", ".encoder.layer.1.intermediate.dense."): v for k, v in state.items()}
    assert old.keys() != state.keys()
    save_file(old, str(tmp_path / "peft" / "adapter_model.safetensors"))
    again = AST(tiny_ast_dir, max_frames=64, pooling=None).eval()
    peft_export.lora_from_peft(tmp_path / "peft", again)
    assert all(torch.equal(v, lobe.trainable_state_dict()[k]) for k, v in again.trainable_state_dict().items())
    # What our LoRA has no place for is refused, by name.
    config_file = tmp_path / "peft" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_dora": True}))
    with pytest.raises(merged_export.NotRepresentable, match="'use_dora': True"):
        peft_export.lora_from_peft(tmp_path / "peft", AST(tiny_ast_dir, max_frames=64))


def test_peft_export_refuses_what_an_adapter_cannot_hold(tiny_ast_dir, tmp_path):
    with pytest.raises(merged_export.NotRepresentable, match=r"\{'bitfit': 'BitFit'\}"):
        peft_export.write_peft_adapter(tmp_path / "a", AST(tiny_ast_dir, max_frames=64, petl=BitFit()),
                                     linear_head(), ENCODER)
    shorter = AST(tiny_ast_dir, max_frames=48, petl=LoRA(rank=2))
    with pytest.raises(merged_export.NotRepresentable, match="max_frames=48.*max_length=64"):
        peft_export.write_peft_adapter(tmp_path / "a", shorter, linear_head(), ENCODER)
    other = save_tiny_ast(tmp_path / "other_weights", seed=1, max_length=48)
    with pytest.raises(merged_export.NotRepresentable, match="is not the run's backbone"):
        peft_export.write_peft_adapter(tmp_path / "a", shorter, linear_head(), ENCODER, base_model=other)


def test_an_hf_shaped_head_travels_in_inference_folders(tiny_ast_dir, tmp_path):
    lobe = trained(AST(tiny_ast_dir, max_frames=64, pooling="cls_dist", petl=LoRA(rank=2)))
    lobe.source, lobe.pretrained = tiny_ast_dir, True
    head = hf_shaped_head()
    folder = write_inference_folder(tmp_path / "task", lobe, head, ENCODER)
    loaded = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "cache"))
    log_probs = loaded.classify_batch(CLIPS[0][None])[0]
    assert torch.allclose(log_probs.exp()[0], our_probs(lobe, head, CLIPS[0]), atol=1e-6)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA Speech Commands run (debug epochs) on a tiny AST: the recipes'
    mean pooling and linear head, max_frames 100 on a 64-frame checkpoint."""
    run = train_tiny_lora_run(tmp_path_factory.mktemp("lora_run"))
    out, backbone = run["out"], run["backbone"]
    with open(out / "save" / "test.csv", newline="") as fin:
        wav = next(csv.DictReader(fin))["wav"]
    return {"out": out, "backbone": backbone, "wav": wav}


def test_export_command_on_a_recipe_run(lora_run, tmp_path, capsys):
    out = str(lora_run["out"])
    with pytest.raises(SystemExit):
        export.main(["--merged", out, str(tmp_path / "merged")])
    assert re.search(r"not exported.*pooling: the run pools 'mean'", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        export.main(["--peft", out, str(tmp_path / "adapter")])
    assert re.search(r"max_frames=100.*max_length=64", capsys.readouterr().err)
    # The base at the run's length, as the message says: same weights, 100 frames.
    base = tmp_path / "base_100"
    AST(lora_run["backbone"], max_frames=100).save_pretrained(base)
    dest = export.main(["--peft", out, str(tmp_path / "adapter"), f"--backbone_source={base}"])
    assert "Wrote" in capsys.readouterr().out
    ours = AudioClassifier.from_experiment(out)
    log_probs, _, _, labels = ours.classify_file(lora_run["wav"])
    model = PeftModel.from_pretrained(ASTModel.from_pretrained(base), str(dest)).eval()
    head = load_file(str(dest / "head.safetensors"))
    clip = load_audio(lora_run["wav"], 16000)
    x = ASTFeatureExtractor(max_length=100)(clip.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = torch.nn.functional.linear(
            model(x["input_values"]).last_hidden_state.mean(dim=1), head["weight"], head["bias"]
        )
    assert torch.allclose(torch.log_softmax(logits, -1), log_probs, atol=1e-5)
    names = json.loads((dest / "labels.json").read_text())
    assert names[int(logits.argmax())] == labels[0]
    with pytest.raises(SystemExit):
        export.main(["--peft", "--merged", out, str(tmp_path / "x")])
    assert "argument --merged: not allowed with argument --peft" in capsys.readouterr().err
