"""PETL methods on both lobes: identity at init, masks, training, errors."""

import functools
import shutil

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_petl.backbones import AST, Wav2Vec2
from speechbrain_petl.training.brain import ClassificationBrain
from speechbrain_petl.methods import (
    Adapters,
    BitFit,
    BottleneckAdapter,
    ConformerAdapter,
    FullFineTuning,
    LoRA,
    PrefixTuning,
    PromptTuning,
)
from speechbrain_petl.methods.masked_batch_norm import MaskedBatchNorm1d
from method_zoo import ALL_METHODS, IDENTITY_AT_INIT, bottleneck, conformer, perturb_petl_
from tiny import save_tiny_ast


#: Every lobe kind (conftest's ``tiny_lobe``).
KINDS = ["ast", "w2v2", "hubert", "wavlm", "whisper"]
#: The kinds with a padding mask (AST pads in the fbank domain and attends to all).
MASKED_KINDS = ["w2v2", "hubert", "wavlm", "whisper"]


@pytest.fixture(params=KINDS)
def make_lobe(request, tiny_lobe):
    def make(petl=None, pooling="mean"):
        return tiny_lobe(request.param, petl=petl, pooling=pooling)

    return make


# ------------------------------------------------------------ identity at init
@pytest.mark.parametrize("method", list(IDENTITY_AT_INIT))
def test_identity_at_initialisation(method, make_lobe):
    torch.manual_seed(0)
    wavs = torch.randn(3, 8000)
    wav_lens = torch.tensor([1.0, 0.7, 0.4])
    plain = make_lobe(pooling=None).eval()
    adapted = make_lobe(IDENTITY_AT_INIT[method](), pooling=None)
    with torch.no_grad():
        expected = plain(wavs, wav_lens)
        torch.testing.assert_close(adapted.eval()(wavs, wav_lens), expected, rtol=0, atol=1e-6)
        if method != "full":  # full fine-tuning trains with the backbone's dropout on
            torch.testing.assert_close(adapted.train()(wavs, wav_lens), expected, rtol=0, atol=1e-6)
    perturb_petl_(adapted)
    if any(True for _ in adapted.petl.parameters()):
        with torch.no_grad():
            assert not torch.allclose(adapted.eval()(wavs, wav_lens), expected, atol=1e-4)


# ------------------------------------------------------------- padding masks
@pytest.mark.parametrize("kind", MASKED_KINDS)
@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_padding_never_changes_a_clip_output(method, kind, tiny_lobe):
    """A clip's embedding is the same alone or padded in a batch, for every
    method: prompts/prefixes extend the mask, adapters zero the padding."""
    lobe = tiny_lobe(kind, petl=ALL_METHODS[method]())
    perturb_petl_(lobe)
    lobe.eval()
    clip = torch.randn(4700)
    padded = torch.randn(2, 8000)
    padded[0, :4700] = clip
    with torch.no_grad():
        alone = lobe(clip.unsqueeze(0))
        batched = lobe(padded, torch.tensor([4700 / 8000, 1.0]))
    torch.testing.assert_close(batched[:1], alone, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------- prompts, prefixes
def test_shallow_prompts_are_inserted_after_the_special_tokens(tiny_ast_dir):
    plain = AST(tiny_ast_dir, max_frames=64, pooling=None).eval()
    prompted = AST(tiny_ast_dir, max_frames=64, pooling=None, petl=PromptTuning(length=5)).eval()
    wavs = torch.randn(2, 8000)
    seen = {}
    prompted.layers[0].tokens.register_forward_hook(lambda m, i, o: seen.update(x=o[0]))
    with torch.no_grad():
        base = plain(wavs)
        prompted(wavs)
    x = seen["x"]
    assert x.shape[1] == base.shape[1] + 5
    prompts = prompted.petl["prompts"].layers["0"]["tokens"].prompts
    torch.testing.assert_close(x[0, 2:7], prompts)
    assert not torch.allclose(x[0, :2], prompts[:2])


def test_deep_prompts_are_overwritten_before_every_layer(tiny_w2v2_dir):
    lobe = Wav2Vec2(tiny_w2v2_dir, pooling=None, petl=PromptTuning(length=4, deep=True)).eval()
    seen = {}
    for i, block in enumerate(lobe.layers):
        block.tokens.register_forward_hook(lambda m, inp, out, i=i: seen.update({i: out}))
    wav_lens = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        out = lobe(torch.randn(2, 8000), wav_lens)
    plain_frames = int(lobe.output_lengths(torch.tensor(8000)))
    assert out.shape[1] == plain_frames + 4  # inserted once, overwritten after
    for i in range(2):
        x, mask = seen[i]
        prompts = lobe.petl["prompts"].layers[str(i)]["tokens"].prompts
        torch.testing.assert_close(x[1, :4], prompts)
        assert mask[:, :4].all()  # prompts are real tokens, even for the padded clip
        assert not mask[1, 4:].all()


def test_prefix_adds_key_value_pairs_and_leaves_queries(tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, pooling=None, petl=PrefixTuning(length=6))
    seen = {}
    lobe.layers[1].attention.keys_values.register_forward_hook(lambda m, i, o: seen.update(k=o[0], q=i[0]))
    with torch.no_grad():
        out = lobe(torch.randn(2, 8000))
    assert seen["k"].shape[1] == seen["q"].shape[1] + 3
    assert out.shape[1] == seen["q"].shape[1]  # sequence length unchanged
    torch.testing.assert_close(seen["k"][0, :3], lobe.petl["prefix"].layers["1"]["attention"]["keys_values"].key)


# ---------------------------------------------------------------- training
def make_brain(lobe, n_classes=3, lr=0.05):
    classifier = torch.nn.Linear(lobe.hidden_size, n_classes)
    return ClassificationBrain(
        modules={"backbone": lobe, "classifier": classifier},
        opt_class=lambda params: torch.optim.AdamW(params, lr=lr),
        hparams={},
        run_opts={"device": "cpu"},
    )


def make_batch(n=4, samples=8000, n_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = [
        {
            "id": f"utt{i}",
            "sig": torch.randn(samples - 1000 * i, generator=generator),
            "label_encoded": torch.tensor([i % n_classes]),
        }
        for i in range(n)
    ]
    return PaddedBatch(examples)


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_training_step_updates_only_petl_and_head(method, make_lobe):
    torch.manual_seed(0)
    lobe = make_lobe(ALL_METHODS[method]())
    brain = make_brain(lobe)
    brain.on_fit_start()
    modes = {}

    def record_mode(name, module, args):
        modes.setdefault(name, module.training)

    for name, module in lobe.named_modules():
        module.register_forward_pre_hook(functools.partial(record_mode, name))
    before = {name: p.detach().clone() for name, p in brain.modules.named_parameters()}
    trainable = {name for name, p in brain.modules.named_parameters() if p.requires_grad}
    optimized = {id(p) for group in brain.optimizer.param_groups for p in group["params"]}
    named = dict(brain.modules.named_parameters())

    # The optimizer holds exactly the PETL tensors and the head.
    assert optimized == {id(named[n]) for n in trainable}
    if method != "full":
        assert all(n.startswith(("backbone.petl.", "classifier.")) for n in trainable)

    brain.modules.train()
    brain.on_stage_start(sb.Stage.TRAIN)
    batch = make_batch()

    # Gradients reach the PETL modules of the first block through the frozen ones above.
    if method not in ("full", "linear"):
        outputs = brain.compute_forward(batch, sb.Stage.TRAIN)
        brain.compute_objectives(outputs, batch, sb.Stage.TRAIN).backward()
        first = [p for n, p in named.items() if ".layers.0." in n and p.requires_grad]
        assert first and any(p.grad is not None and p.grad.abs().sum() > 0 for p in first)
        assert all(p.grad is None for p in named.values() if not p.requires_grad)
        brain.optimizer.zero_grad(set_to_none=True)

    loss = brain.fit_batch(batch)
    assert torch.isfinite(loss)

    for name, param in brain.modules.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if name not in trainable:
            assert not changed, f"frozen {name} changed"
    assert any(not torch.equal(before[n], named[n].detach()) for n in trainable if "petl" in n or method == "full")

    # Frozen modules ran in eval mode, PETL modules in train mode.
    for name, training in modes.items():
        if name.startswith("petl."):
            assert training, name
        elif method != "full" and name:
            assert not training, f"frozen module {name} ran in train mode"


@pytest.mark.parametrize("kind", ["ast", "wavlm", "whisper"])
def test_bf16_autocast_step_on_cpu(kind, tiny_lobe):
    """Mixed precision: AST's fbank, WavLM's float position bias and
    Whisper's log-mel meet bf16 activations."""
    lobe = tiny_lobe(kind, petl=[conformer(), PrefixTuning(length=4)])
    brain = ClassificationBrain(
        modules={"backbone": lobe, "classifier": torch.nn.Linear(32, 3)},
        opt_class=lambda params: torch.optim.AdamW(params, lr=0.05),
        hparams={},
        run_opts={"device": "cpu", "precision": "bf16"},
    )
    brain.on_fit_start()
    brain.modules.train()
    brain.on_stage_start(sb.Stage.TRAIN)
    assert torch.isfinite(brain.fit_batch(make_batch()))


# ------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["ast", "hubert", "wavlm", "whisper"])
@pytest.mark.parametrize("method", ["lora", "conformer_pfeiffer_parallel", "prompt_deep", "bitfit", "full"])
def test_checkpoint_holds_only_trainable_state_and_restores_it(method, kind, tmp_path, tiny_lobe):
    wavs = torch.randn(2, 8000)
    lobe = tiny_lobe(kind, petl=ALL_METHODS[method]())
    perturb_petl_(lobe)
    if method == "full":
        with torch.no_grad():
            lobe.layers[0].mlp.fc1.linear.weight.add_(1.0)
    checkpointer = Checkpointer(tmp_path, {"backbone": lobe})
    checkpointer.save_checkpoint()
    state = torch.load(next(tmp_path.glob("CKPT*/backbone.ckpt")), weights_only=True)["state"]
    total = sum(p.numel() for p in lobe.parameters())
    trainable = sum(p.numel() for p in lobe.parameters() if p.requires_grad)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == trainable
    if method != "full":
        assert all(key.startswith("petl.") for key in state)
        assert trainable < total / 10

    fresh = tiny_lobe(kind, petl=ALL_METHODS[method]())
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(wavs), lobe.eval()(wavs))
    Checkpointer(tmp_path, {"backbone": fresh}).recover_if_possible()
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(wavs), lobe.eval()(wavs))


def test_checkpoint_of_another_method_is_refused(tmp_path, tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    Checkpointer(tmp_path, {"backbone": lobe}).save_checkpoint()
    other = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=3))
    with pytest.raises(RuntimeError, match="does not match|shape"):
        Checkpointer(tmp_path, {"backbone": other}).recover_if_possible()


def test_checkpoint_restored_onto_another_backbone_is_refused(tmp_path, tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2))
    Checkpointer(tmp_path / "ckpt", {"backbone": lobe}).save_checkpoint()
    other_weights = save_tiny_ast(tmp_path / "other", seed=1)
    candidates = [
        ("frozen weights differ", AST(other_weights, max_frames=64, petl=LoRA(rank=2))),
        ("architecture", AST(tiny_ast_dir, max_frames=32, petl=LoRA(rank=2))),
        ("frozen weights differ", AST(tiny_ast_dir, max_frames=64, pretrained=False, petl=LoRA(rank=2))),
    ]
    for reason, backbone in candidates:
        with pytest.raises(RuntimeError, match=f"another backbone(.|\\n)*{reason}"):
            Checkpointer(tmp_path / "ckpt", {"backbone": backbone}).recover_if_possible()
    # The same weights reached through another folder are the same backbone.
    copy = shutil.copytree(tiny_ast_dir, tmp_path / "copy_of_the_weights")
    Checkpointer(tmp_path / "ckpt", {"backbone": AST(str(copy), max_frames=64, petl=LoRA(rank=2))}).recover_if_possible()


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "whisper"])
def test_checkpoint_of_the_speech_encoders_is_tied_to_their_weights(kind, tmp_path, tiny_lobe):
    """The fingerprint round trip: a checkpoint restores onto the same
    weights from another folder, and is refused on other weights."""
    from tiny import save_tiny

    lobe = tiny_lobe(kind, petl=LoRA(rank=2))
    Checkpointer(tmp_path / "ckpt", {"backbone": lobe}).save_checkpoint()
    lobe_class = type(lobe)
    other = lobe_class(save_tiny(kind, tmp_path / "other", seed=1), petl=LoRA(rank=2))
    with pytest.raises(RuntimeError, match="another backbone(.|\\n)*frozen weights differ"):
        Checkpointer(tmp_path / "ckpt", {"backbone": other}).recover_if_possible()
    copy = shutil.copytree(lobe.source, tmp_path / "copy")
    Checkpointer(tmp_path / "ckpt", {"backbone": lobe_class(str(copy), petl=LoRA(rank=2))}).recover_if_possible()


# ---------------------------------------------------------- composition
def test_methods_compose_at_shared_sites(tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl={"lora": LoRA(rank=2), "adapters": conformer()})
    assert lobe.site(0, "attention.query").hook_names() == ["lora"]
    assert lobe.site(0, "ffn").hook_names() == ["adapters"]
    alone = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2)).petl["lora"].num_trainable()
    assert lobe.petl["lora"].num_trainable() == alone
    plain = AST(tiny_ast_dir, max_frames=64).eval()
    wavs = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(lobe.eval()(wavs), plain(wavs), rtol=0, atol=1e-6)


def test_methods_restricted_to_layers(tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl=LoRA(rank=2, layers=[-1]))
    assert list(lobe.petl["lora"].layers) == ["1"]
    assert lobe.site(0, "attention.query").hook_names() == []
    full = AST(tiny_ast_dir, max_frames=64, petl=FullFineTuning(layers=[1]))
    assert all(p.requires_grad for p in full.layers[1].parameters())
    assert not any(p.requires_grad for p in full.layers[0].parameters())
    assert not full.pos_embed.requires_grad


def test_full_finetuning_keeps_wav2vec2_feature_encoder_frozen(tiny_w2v2_dir):
    lobe = Wav2Vec2(tiny_w2v2_dir, petl=FullFineTuning())
    assert not any(p.requires_grad for p in lobe.feature_encoder.parameters())
    assert all(p.requires_grad for p in lobe.feature_projection.parameters())
    assert all(p.requires_grad for p in lobe.layers.parameters())


# -------------------------------------------------------- bad configuration
def test_bad_configuration_raises_clear_errors(tiny_ast_dir):
    make = functools.partial(AST, tiny_ast_dir, max_frames=64)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LoRA(rank=0)
    with pytest.raises(ValueError, match="bottleneck must be an integer >= 1"):
        make(petl=Adapters(functools.partial(BottleneckAdapter, bottleneck=0)))
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1"):
        make(petl=conformer(kernel_size=0))
    with pytest.raises(ValueError, match="exceeds the limit"):
        PromptTuning(length=PromptTuning.MAX_LENGTH + 1)
    with pytest.raises(ValueError, match="must be even"):
        PrefixTuning(length=5)
    with pytest.raises(ValueError, match="shallow prompts enter before one block"):
        PromptTuning(length=4, layers=[0, 1])
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        make(petl=LoRA(rank=2, layers=[7]))
    with pytest.raises(KeyError, match="Unknown site 'attention.qury'"):
        make(petl=LoRA(rank=2, targets=["attention.qury"]))
    with pytest.raises(ValueError, match="not a linear site"):
        make(petl=LoRA(rank=2, targets=["mhsa"]))
    with pytest.raises(ValueError, match="placement must be one of"):
        Adapters(BottleneckAdapter, placement="middle")
    with pytest.raises(ValueError, match="mode must be one of"):
        Adapters(BottleneckAdapter, mode="serial")
    with pytest.raises(TypeError, match="PETL method"):
        make(petl="lora")
    with pytest.raises(RuntimeError, match="'bitfit' and 'adapters' both replace 'bias'"):
        make(petl=[BitFit(), bottleneck()])
    method = LoRA(rank=2)
    make(petl=method)
    with pytest.raises(RuntimeError, match="already attached"):
        make(petl=method)
    lobe = make(petl=LoRA(rank=2))
    with pytest.raises(ValueError, match="already attached"):
        lobe.attach(LoRA(rank=2))


def test_unknown_method_in_yaml_names_it(tiny_ast_dir):
    text = f"""
backbone: !new:speechbrain_petl.backbones.AST
    source: {tiny_ast_dir}
    max_frames: 64
    petl: !new:speechbrain_petl.methods.LoRAA
        rank: 2
"""
    with pytest.raises((ImportError, AttributeError), match="LoRAA"):
        load_hyperpyyaml(text)


def test_even_kernel_keeps_sequence_length():
    adapter = ConformerAdapter(16, bottleneck=4, kernel_size=8)
    torch.nn.init.normal_(adapter.pointwise_out.weight)
    assert adapter(torch.randn(2, 37, 16)).shape == (2, 37, 16)



# ------------------------------------------------ Conformer BatchNorm padding
def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, (torch.nn.BatchNorm1d, MaskedBatchNorm1d))]


def _running_stats(module):
    return [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in _batch_norms(module)]


def _assert_same_stats(a, b):
    assert len(a) == len(b) > 0
    for (mean_a, var_a, n_a), (mean_b, var_b, n_b) in zip(a, b):
        torch.testing.assert_close(mean_a, mean_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_a, var_b, rtol=1e-5, atol=1e-6)
        assert n_a == n_b


@pytest.mark.parametrize("kernel_size", [1, 5])
def test_conformer_batch_norm_trains_on_real_frames_only(kernel_size):
    """A padded batch gives the running statistics and (train-mode) outputs
    of its clips without padding; the padding's values do not matter."""
    torch.manual_seed(0)
    adapter = ConformerAdapter(16, bottleneck=4, kernel_size=kernel_size)
    torch.nn.init.normal_(adapter.pointwise_out.weight)
    lengths = [30, 20] if kernel_size == 1 else [20, 20]
    clips = [torch.randn(1, n, 16) for n in lengths]
    padded = torch.randn(2, 37, 16) * 50  # loud padding
    for i, clip in enumerate(clips):
        padded[i, : lengths[i]] = clip[0]
    mask = torch.arange(37)[None, :] < torch.tensor(lengths)[:, None]
    if kernel_size == 1:  # no time context: the clips one after the other are one unpadded clip
        unpadded, pieces = torch.cat(clips, dim=1), lambda out: torch.split(out[0], lengths)
    else:  # a depthwise kernel: clips of one length, batched without padding
        unpadded, pieces = torch.cat(clips, dim=0), lambda out: list(out)
    reference = ConformerAdapter(16, bottleneck=4, kernel_size=kernel_size)
    reference.load_state_dict(adapter.state_dict())
    adapter.train(), reference.train()
    for _ in range(2):  # twice: the momentum update of running statistics too
        out = adapter(padded, mask)
        expected = reference(unpadded)
    _assert_same_stats(_running_stats(adapter), _running_stats(reference))
    for i, piece in enumerate(pieces(expected)):
        torch.testing.assert_close(out[i, : lengths[i]], piece, rtol=1e-4, atol=1e-5)
    # eval mode: the running statistics, as torch's BatchNorm1d
    adapter.eval(), reference.eval()
    with torch.no_grad():
        out, expected = adapter(padded, mask), reference(unpadded)
    for i, piece in enumerate(pieces(expected)):
        torch.testing.assert_close(out[i, : lengths[i]], piece, rtol=1e-4, atol=1e-5)


def test_conformer_batch_norm_keeps_torch_semantics_and_state():
    """Without padding it is torch's BatchNorm1d (outputs, running statistics
    with a momentum or a cumulative average, gradients); same state_dict keys."""
    torch.manual_seed(0)
    for momentum in (0.1, None):
        ours, torch_bn = MaskedBatchNorm1d(3, momentum=momentum), torch.nn.BatchNorm1d(3, momentum=momentum)
        torch.nn.init.normal_(ours.weight), torch.nn.init.normal_(ours.bias)
        torch_bn.load_state_dict(ours.state_dict())
        for _ in range(3):
            x = torch.randn(4, 3, 9, requires_grad=True)
            full = torch.ones(4, 9, dtype=torch.bool)
            out = ours(x, full)
            torch.testing.assert_close(out, torch_bn(x), rtol=1e-5, atol=1e-6)
        _assert_same_stats(_running_stats(ours), _running_stats(torch_bn))
        grad = torch.autograd.grad(out.square().sum(), ours.weight)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(torch_bn(x).square().sum(), torch_bn.weight)[0])
    adapter = ConformerAdapter(16, bottleneck=4, kernel_size=3)
    assert sorted(k for k in adapter.state_dict() if k.startswith("batch_norm.")) == [
        "batch_norm.bias", "batch_norm.num_batches_tracked", "batch_norm.running_mean",
        "batch_norm.running_var", "batch_norm.weight",
    ]
    with pytest.raises(ValueError, match="more than 1 real frame"):
        MaskedBatchNorm1d(3)(torch.randn(2, 3, 4), torch.tensor([[True, False, False, False]] + [[False] * 4]))


def test_conformer_batch_norm_takes_half_precision_statistics_in_float32():
    """Under bf16 autocast the statistics are those of the bf16 activations
    computed in float32, and the output is bf16, as from torch's BatchNorm."""
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 50) * 3 + 100).bfloat16()
    mask = torch.ones(4, 50, dtype=torch.bool)
    ours, torch_bn = MaskedBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = ours(x, mask), torch_bn(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    _assert_same_stats(_running_stats(ours), _running_stats(torch_bn))
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=2e-2)  # bf16 rounding


def test_conformer_batch_norm_ignores_padding_in_the_wav2vec2_lobe(tiny_w2v2_dir):
    """Two clips of one length, padded or not: the adapters' BatchNorms (in
    training mode) keep the same statistics and give the same embeddings."""
    torch.manual_seed(0)
    lobe = Wav2Vec2(tiny_w2v2_dir, petl=conformer(), pooling="mean")
    perturb_petl_(lobe)
    twin = Wav2Vec2(tiny_w2v2_dir, petl=conformer(), pooling="mean")
    twin.load_state_dict(lobe.state_dict())
    for model in (lobe, twin):
        model.eval()
        for norm in _batch_norms(model):
            norm.train()
    clips = torch.randn(2, 4700)
    padded = torch.randn(2, 8000)
    padded[:, :4700] = clips
    with torch.no_grad():
        batched = lobe(padded, torch.tensor([4700 / 8000, 4700 / 8000]))
        alone = twin(clips)
    _assert_same_stats(_running_stats(lobe), _running_stats(twin))
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_conformer_batch_norm_syncs_real_frames_across_processes(tmp_path):
    """Two gloo processes, each with its own padded batch, normalise with the
    statistics of all their real frames (as SyncBatchNorm over all frames),
    which equal one process's on the real frames put together; SpeechBrain's
    SyncBatchNorm conversion leaves the masked norm in place."""
    import socket

    import torch.multiprocessing as mp
    from masked_bn_worker import run_rank

    torch.manual_seed(0)
    lengths = [[9, 4], [6, 7]]  # per process, per clip
    batches = []
    for clip_lengths in lengths:
        x = torch.randn(2, 3, 9) * 2 + 1
        mask = torch.arange(9)[None, :] < torch.tensor(clip_lengths)[:, None]
        batches.append((x.masked_fill(~mask.unsqueeze(1), 100.0), mask))  # loud padding
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(run_rank, args=(port, batches, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    alone = MaskedBatchNorm1d(3)
    torch.nn.init.normal_(alone.weight)
    frames = torch.cat([x[i, :, :n] for (x, _), ns in zip(batches, lengths) for i, n in enumerate(ns)], dim=1)
    frames.requires_grad_()
    out = alone(frames.unsqueeze(0))
    out.square().sum().backward()
    for rank in ranks:
        torch.testing.assert_close(rank["running_mean"], alone.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rank["running_var"], alone.running_var, rtol=1e-5, atol=1e-6)
    real = [rank["out"][i, :, :n] for rank, ns in zip(ranks, lengths) for i, n in enumerate(ns)]
    torch.testing.assert_close(torch.cat(real, dim=1), out[0].detach(), rtol=1e-5, atol=1e-5)
    # gradients flow back through the shared statistics to every process's frames
    grads = [rank["x_grad"][i, :, :n] for rank, ns in zip(ranks, lengths) for i, n in enumerate(ns)]
    torch.testing.assert_close(torch.cat(grads, dim=1), frames.grad, rtol=1e-4, atol=1e-5)
    adapter = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ConformerAdapter(16, bottleneck=4, kernel_size=3))
    assert type(adapter.batch_norm) is MaskedBatchNorm1d
