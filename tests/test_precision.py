"""A frozen backbone stored in bf16 (training and inference) or int8
(inference): every method and lobe against fp32, within stated tolerances;
trained tensors, checkpoints and fingerprints stay those of fp32.

Tolerances (tiny 2-block models, one batch): the loss within 1 % of fp32's
and the gradient of every trained tensor together within 8 % of fp32's in
L2 norm (bf16 keeps 8 significant bits, about 0.4 % per product); int8
inference: class probabilities within 0.05 of fp32's."""

import copy

import pytest
import torch
import torch.nn.functional as F

from method_zoo import ALL_METHODS, perturb_petl_
from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder, tiny_config
from speechbrain_petl.backbones.precision import Int8Weight, frozen_linears
from speechbrain_petl.inference import AudioClassifier, label_encoder, write_inference_folder
from speechbrain_petl.methods import BitFit, FullFineTuning, LoRA
from speechbrain_petl.perf.measure import tensor_bytes

LOSS_TOLERANCE = 0.01
GRADIENT_TOLERANCE = 0.08
PROBABILITY_TOLERANCE = 0.05
LOBES = {"ast": AST, "wav2vec2": Wav2Vec2, "hubert": HuBERT, "wavlm": WavLM, "whisper": WhisperEncoder}


def build(kind, make, backbone_dtype, seed=0):
    """A tiny lobe with non-trivial PETL tensors and a head, same values for any dtype."""
    torch.manual_seed(seed)
    options = {"max_frames": 64} if kind == "ast" else {}
    lobe = LOBES[kind](tiny_config(kind), pretrained=False, petl=make(), backbone_dtype=backbone_dtype, **options)
    perturb_petl_(lobe, seed)
    head = torch.nn.Linear(lobe.hidden_size, 3)
    return lobe.train(), head


def loss_and_gradients(lobe, head):
    """The loss of one fixed batch and the gradients of every trained tensor, flattened."""
    wavs = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(1))
    loss = F.cross_entropy(head(lobe(wavs)), torch.tensor([0, 1, 2]))
    loss.backward()
    trained = [p for p in [*lobe.parameters(), *head.parameters()] if p.requires_grad]
    return loss.item(), torch.cat([p.grad.flatten() for p in trained])


CASES = [("ast", name) for name in ALL_METHODS] + [
    (kind, name) for kind in ("wav2vec2", "hubert", "wavlm", "whisper") for name in ("lora", "conformer_pfeiffer_parallel")
] + [("whisper", "full"), ("wav2vec2", "bitfit"), ("hubert", "prefix")]


@pytest.mark.parametrize("kind,method", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_bf16_storage_trains_like_fp32(kind, method):
    loss32, grads32 = loss_and_gradients(*build(kind, ALL_METHODS[method], "fp32"))
    lobe, head = build(kind, ALL_METHODS[method], "bf16")
    loss16, grads16 = loss_and_gradients(lobe, head)
    assert abs(loss16 - loss32) <= LOSS_TOLERANCE * abs(loss32)
    assert (grads16 - grads32).norm() <= GRADIENT_TOLERANCE * grads32.norm()
    # What trains is fp32, its gradients too; frozen linears are bf16 unless a method trains them.
    for name, param in [*lobe.named_parameters(), *head.named_parameters()]:
        if param.requires_grad:
            assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
    stored = {linear.weight.dtype for _, linear in frozen_linears(lobe.layers)}
    assert stored == ({torch.bfloat16} if method != "full" else set())


def test_bf16_storage_halves_the_frozen_weights_and_keeps_the_rest():
    fp32, _ = build("ast", lambda: LoRA(rank=2), "fp32")
    bf16, _ = build("ast", lambda: LoRA(rank=2), "bf16")
    linears32 = [p for _, m in frozen_linears(fp32.layers) for p in m.parameters()]
    linears16 = [p for _, m in frozen_linears(bf16.layers) for p in m.parameters()]
    assert tensor_bytes(linears16) * 2 == tensor_bytes(linears32)
    others = lambda lobe: {  # noqa: E731
        n: p for n, p in lobe.named_parameters() if p.dtype == torch.float32
    }
    assert set(others(fp32)) - set(others(bf16)) == {
        n for n, p in fp32.named_parameters() if n.startswith("layers.") and not p.requires_grad
        and any(n.startswith(f"layers.{path}.") for path, _ in frozen_linears(fp32.layers))
    }
    assert tensor_bytes(bf16.resident_tensors()) == tensor_bytes(fp32.resident_tensors()) - tensor_bytes(linears16)


def test_checkpoints_are_fp32_and_load_across_storage():
    fp32, _ = build("ast", ALL_METHODS["conformer_pfeiffer_parallel"], "fp32")
    bf16, _ = build("ast", ALL_METHODS["conformer_pfeiffer_parallel"], "bf16")
    assert bf16.fingerprint() == fp32.fingerprint()
    saved = bf16.trained_state()
    assert {t.dtype for t in saved["state"].values() if t.is_floating_point()} == {torch.float32}
    for key, value in fp32.trained_state()["state"].items():
        assert torch.equal(saved["state"][key], value)
    other, _ = build("ast", ALL_METHODS["conformer_pfeiffer_parallel"], "fp32")
    perturb_petl_(other, seed=5)  # the same backbone, other PETL values
    other.load_trained_state(saved, source="bf16 run")
    bf16.load_trained_state(other.trained_state(), source="fp32 run")
    # Another backbone is still told apart, and a merge changes the fingerprint until unmerged.
    stranger = AST(tiny_config("ast"), pretrained=False, max_frames=64, backbone_dtype="bf16")
    assert stranger.fingerprint()["frozen_sha256"] != fp32.fingerprint()["frozen_sha256"]
    lora, _ = build("ast", lambda: LoRA(rank=2), "bf16")
    before = lora.fingerprint()
    lora.merge("lora")
    assert lora.frozen_sha256() != before["frozen_sha256"]
    lora.unmerge("lora")
    assert lora.fingerprint() == before


def _train(lobe, head, optimizer, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout in the methods: same draws in a resumed run
    for _ in range(steps):
        wavs = 0.1 * torch.randn(2, 12000, generator=generator)
        labels = torch.randint(0, 3, (2,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(head(lobe(wavs)), labels).backward()
        optimizer.step()


def test_a_bf16_run_resumes_exactly():
    make = lambda: LoRA(rank=2)  # noqa: E731
    lobe, head = build("ast", make, "bf16")
    trained = lambda lobe, head: [p for p in [*lobe.parameters(), *head.parameters()] if p.requires_grad]  # noqa: E731
    optimizer = torch.optim.AdamW(trained(lobe, head), lr=1e-2)
    _train(lobe, head, optimizer, 2, seed=1)
    saved = copy.deepcopy((lobe.trained_state(), head.state_dict(), optimizer.state_dict()))  # a checkpoint
    _train(lobe, head, optimizer, 2, seed=2)
    resumed, resumed_head = build("ast", make, "bf16")
    perturb_petl_(resumed, seed=9)  # overwritten by the checkpoint
    resumed.load_trained_state(saved[0])
    resumed_head.load_state_dict(saved[1])
    resumed_optimizer = torch.optim.AdamW(trained(resumed, resumed_head), lr=1e-2)
    resumed_optimizer.load_state_dict(saved[2])
    _train(resumed, resumed_head, resumed_optimizer, 2, seed=2)
    for key, value in lobe.trained_state()["state"].items():
        assert torch.equal(resumed.trained_state()["state"][key], value), key
    assert all(v.dtype == torch.float32 for s in resumed_optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point())


def test_weights_that_train_stay_fp32():
    full, _ = build("ast", FullFineTuning, "bf16")
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    lobe, _ = build("ast", lambda: LoRA(rank=2), "bf16")
    with pytest.raises(ValueError, match="attach it when building the lobe"):
        lobe.attach(FullFineTuning(), "full")
    assert list(lobe.petl) == ["lora"]
    with pytest.raises(ValueError, match="int8 is for inference only"):
        AST(tiny_config("ast"), pretrained=False, max_frames=64, backbone_dtype="int8")


def _classifier(method, backbone_dtype):
    lobe, head = build("ast", method, "fp32")
    return AudioClassifier.from_modules(lobe.eval(), head, label_encoder(["a", "b", "c"]), backbone_dtype=backbone_dtype)


@pytest.mark.parametrize("method", ["lora", "conformer_pfeiffer_parallel", "prefix"])
@pytest.mark.parametrize("backbone_dtype", ["bf16", "int8"])
def test_low_precision_inference_agrees_with_fp32(method, backbone_dtype):
    wavs = 0.1 * torch.randn(6, 10000, generator=torch.Generator().manual_seed(3))
    reference = _classifier(ALL_METHODS[method], "fp32").classify_batch(wavs)[0].exp()
    fast = _classifier(ALL_METHODS[method], backbone_dtype)
    lobe = fast.mods.embedding_model
    assert lobe.backbone_dtype == backbone_dtype
    probabilities = fast.classify_batch(wavs)[0].exp()
    assert probabilities.dtype == torch.float32
    assert (probabilities - reference).abs().max() <= PROBABILITY_TOLERANCE
    if backbone_dtype == "int8":
        linears = frozen_linears(lobe.layers)
        assert linears and all(isinstance(linear.weight, Int8Weight) for _, linear in linears)
        assert len(lobe.int8_weights()) == len(linears)
    # The method still runs on top of the low-precision weights.
    lobe.set_active([])
    plain = fast.classify_batch(wavs)[0].exp()
    assert (plain - probabilities).abs().max() > 1e-3


def test_int8_refuses_methods_that_override_weights():
    with pytest.raises(ValueError, match="int8 keeps no fp32 weight or bias to override"):
        _classifier(BitFit, "int8")


def test_inference_folder_runs_in_bf16_with_speechbrains_precision_option(tiny_ast_dir, tmp_path):
    torch.manual_seed(0)
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    perturb_petl_(lobe)
    folder = write_inference_folder(tmp_path / "task", lobe, torch.nn.Linear(32, 3), label_encoder(["a", "b", "c"]))
    fp32 = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "a"))
    bf16 = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "b"),
                                        run_opts={"precision": "bf16"})
    int8 = AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "c"), backbone_dtype="int8")
    assert [c.mods.embedding_model.backbone_dtype for c in (fp32, bf16, int8)] == ["fp32", "bf16", "int8"]
    wavs = 0.1 * torch.randn(4, 10000, generator=torch.Generator().manual_seed(4))
    reference = fp32.classify_batch(wavs)[0].exp()
    for fast in (bf16, int8):
        assert (fast.classify_batch(wavs)[0].exp() - reference).abs().max() <= PROBABILITY_TOLERANCE
    with pytest.raises(ValueError, match="backbone_dtype must be one of"):
        AudioClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "d"), backbone_dtype="fp8")


def test_an_interface_keeps_a_bf16_lobe_as_built_and_names_what_it_cannot_undo():
    """A lobe a run stored in bf16 (from_experiment, from_modules) is served as
    it was trained unless asked otherwise; fp32 or int8 would need the fp32
    weights, which it no longer has: the error says so and where to get them."""
    lobe, head = build("ast", lambda: LoRA(rank=2), "bf16")
    encoder = label_encoder(["a", "b", "c"])
    interface = AudioClassifier.from_modules(lobe, head, encoder)
    assert interface.mods.embedding_model.backbone_dtype == "bf16"
    for dtype in ("fp32", "int8"):
        with pytest.raises(ValueError, match=f"stored in bf16 .*; {dtype} needs them from fp32.*from_hparams"):
            AudioClassifier.from_modules(lobe, head, encoder, backbone_dtype=dtype)
    # An fp32 lobe still follows the interface's precision.
    fp32, fp32_head = build("ast", lambda: LoRA(rank=2), "fp32")
    served = AudioClassifier.from_modules(fp32, fp32_head, encoder, run_opts={"device": "cpu", "precision": "bf16"})
    assert served.mods.embedding_model.backbone_dtype == "bf16"


@pytest.mark.parametrize("kind", sorted(LOBES))
def test_attention_in_fp32_under_bf16_runs_fp32_products_and_trains_like_fp32(kind, monkeypatch):
    """``attention_dtype: fp32`` (what a CPU whose bf16 attention kernel is slow
    wants): attention gets fp32 q, k and v while the projections stay bf16;
    loss and gradients match fp32 within the bf16 tolerances."""
    import speechbrain_petl.backbones.blocks as blocks

    seen = []
    sdpa = blocks.F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled(q.device.type)))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(blocks.F, "scaled_dot_product_attention", recording)
    lobe, head = build(kind, lambda: LoRA(rank=2), "bf16")
    loss_and_gradients(lobe, head)
    assert seen and {s[:3] for s in seen} == {(torch.bfloat16,) * 3}
    seen.clear()
    lobe.attention_dtype = "fp32"
    for param in [*lobe.parameters(), *head.parameters()]:
        param.grad = None
    loss, grads = loss_and_gradients(lobe, head)
    assert seen and set(seen) == {(torch.float32, torch.float32, torch.float32, False)}
    reference, reference_head = build(kind, lambda: LoRA(rank=2), "fp32")
    expected_loss, expected_grads = loss_and_gradients(reference, reference_head)
    assert abs(loss - expected_loss) <= LOSS_TOLERANCE * abs(expected_loss)
    assert (grads - expected_grads).norm() <= GRADIENT_TOLERANCE * expected_grads.norm()
    # The setting is the lobe's: back to None, attention follows the blocks' dtype again.
    lobe.attention_dtype = None
    seen.clear()
    loss_and_gradients(lobe, head)
    assert {s[:3] for s in seen} == {(torch.bfloat16,) * 3}
    with pytest.raises(ValueError, match=r"attention_dtype must be None or one of \['fp32'\], got 'bf16'"):
        lobe.attention_dtype = "bf16"
