"""The life of a PETL method on a backbone: attach, detach, activate, merge."""

import ast as python_ast
import pathlib

import pytest
import torch

from method_zoo import ALL_METHODS, MERGEABLE, perturb_petl_
from speechbrain_petl.backbones import AST
from speechbrain_petl.methods import BitFit, FullFineTuning, LoRA, PrefixTuning, PromptTuning

WAVS = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
WAV_LENS = torch.tensor([1.0, 0.7, 0.45])


@pytest.fixture(params=["ast", "w2v2", "wavlm", "whisper"])
def lobe(request, tiny_lobe):
    """A plain tiny backbone of each kind, in eval mode (HuBERT is Wav2Vec2's
    code on other weights; WavLM adds an attention bias, Whisper its own
    front end and a key projection without bias)."""
    made = tiny_lobe(request.param, pooling=None).eval()
    made.__dict__["_remake"] = lambda: tiny_lobe(request.param, pooling=None).eval()
    return made


def outputs(lobe):
    with torch.no_grad():
        return lobe(WAVS, WAV_LENS)


def backbone_tensors(lobe):
    return {k: v.detach().clone() for k, v in lobe.state_dict().items() if not k.startswith("petl.")}


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_detach_restores_the_backbone_bit_for_bit(method, lobe):
    before, tensors = outputs(lobe), backbone_tensors(lobe)
    fingerprint = lobe.fingerprint()
    lobe.attach(ALL_METHODS[method](), "task")
    perturb_petl_(lobe)
    if any(True for _ in lobe.petl.parameters()) and method != "full":
        assert not torch.equal(outputs(lobe.eval()), before)
    lobe.detach("task")
    assert list(lobe.petl) == [] and lobe.state_dict().keys() == tensors.keys()
    assert all(not site.owners() for site in lobe.sites())
    assert not any(p.requires_grad for p in lobe.parameters())
    assert torch.equal(outputs(lobe.eval()), before)
    assert all(torch.equal(v, tensors[k]) for k, v in lobe.state_dict().items())
    assert lobe.fingerprint() == fingerprint


def test_detach_refuses_what_it_cannot_undo(lobe):
    lobe.attach(FullFineTuning())
    with torch.no_grad():
        lobe.layers[0].mlp.fc1.linear.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="cannot restore them"):
        lobe.detach("full")
    with pytest.raises(KeyError, match="No PETL method named 'lora'"):
        lobe.detach("lora")


def test_petl_dict_changes_only_through_attach_and_detach(lobe):
    lobe.attach(LoRA(rank=2))
    with pytest.raises(TypeError, match="backbone.detach"):
        del lobe.petl["lora"]
    with pytest.raises(TypeError, match="backbone.attach"):
        lobe.petl["other"] = LoRA(rank=2)
    assert lobe.site(0, "attention.query").hook_names() == ["lora"]
    method = lobe.petl["lora"]
    lobe.detach("lora")
    with pytest.raises(RuntimeError, match="create one instance per attachment"):
        lobe.attach(method)


def test_active_set_switches_between_independent_tasks(lobe):
    plain = outputs(lobe)
    lobe.attach(LoRA(rank=2), "task_a")
    lobe.attach(BitFit(), "task_b", active=False)
    perturb_petl_(lobe)
    assert lobe.active == ["task_a"]
    only_a = outputs(lobe)
    lobe.set_active(["task_b"])
    only_b = outputs(lobe)
    lobe.set_active([])
    assert torch.equal(outputs(lobe), plain)
    lobe.set_active(["task_a", "task_b"])
    both = outputs(lobe)
    # Each task alone equals a backbone that only ever had that task.
    for name, expected in (("task_a", only_a), ("task_b", only_b)):
        alone = lobe._remake()
        alone.attach(type(lobe.petl[name])(**lobe.petl[name].constructor_args()), name)
        alone.petl[name].load_state_dict(lobe.petl[name].state_dict())
        torch.testing.assert_close(outputs(alone), expected, rtol=0, atol=0)
    assert not torch.allclose(both, only_a) and not torch.allclose(both, only_b)
    with pytest.raises(KeyError, match="task_c"):
        lobe.set_active(["task_c"])


def test_methods_that_would_clash_cannot_be_active_together(lobe):
    lobe.attach(PromptTuning(length=2), "prompts_a")
    with pytest.raises(RuntimeError, match="insert tokens"):
        lobe.attach(PromptTuning(length=3, deep=True), "prompts_b")
    assert list(lobe.petl) == ["prompts_a"]  # a refused attach leaves nothing behind
    lobe.attach(PromptTuning(length=3, deep=True), "prompts_b", active=False)
    with pytest.raises(RuntimeError, match="insert tokens"):
        lobe.set_active(["prompts_a", "prompts_b"])
    assert lobe.active == ["prompts_a"]
    lobe.set_active(["prompts_b"])
    lobe.attach(PrefixTuning(length=4))  # prefixes do not move tokens
    lobe.attach(BitFit(), "bitfit_a")
    with pytest.raises(RuntimeError, match="both replace 'bias'"):
        lobe.attach(BitFit(), "bitfit_b")
    lobe.attach(BitFit(), "bitfit_b", active=False)
    with pytest.raises(RuntimeError, match="'bitfit_a' and 'bitfit_b' both replace 'bias'"):
        lobe.set_active(["bitfit_a", "bitfit_b"])


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_keeps_outputs_and_unmerge_restores_weights_exactly(method, lobe):
    lobe.attach(ALL_METHODS[method](), "task")
    perturb_petl_(lobe, seed=1)
    lobe.eval()
    unmerged, tensors = outputs(lobe), backbone_tensors(lobe)
    plain_fingerprint = lobe.fingerprint()
    lobe.merge("task")
    assert lobe.merged == {"task"}
    merged = outputs(lobe)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert (merged - unmerged).abs().max() < 1e-5
    assert any(not torch.equal(v, tensors[k]) for k, v in backbone_tensors(lobe).items())
    # A merged backbone is another backbone: its trained state is not
    # mistaken for the plain one's.
    assert lobe.fingerprint()["frozen_sha256"] != plain_fingerprint["frozen_sha256"]
    with pytest.raises(RuntimeError, match="frozen weights differ"):
        lobe.check_fingerprint(plain_fingerprint)
    with pytest.raises(RuntimeError, match="unmerge"):
        lobe.detach("task")
    with pytest.raises(RuntimeError, match="unmerge"):
        lobe.set_active([])
    with pytest.raises(RuntimeError, match="unmerge"):
        lobe.trained_state()
    lobe.unmerge("task")
    assert lobe.merged == set()
    assert all(torch.equal(v, tensors[k]) for k, v in backbone_tensors(lobe).items())
    assert torch.equal(outputs(lobe), unmerged)
    assert lobe.fingerprint() == plain_fingerprint


def test_merges_undo_last_in_first_out(lobe):
    lobe.attach(LoRA(rank=2), "a")
    lobe.attach(LoRA(rank=2), "b")
    perturb_petl_(lobe)
    before, tensors = outputs(lobe.eval()), backbone_tensors(lobe)
    lobe.merge("a")
    lobe.merge("b")
    torch.testing.assert_close(outputs(lobe), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge 'b' first"):
        lobe.unmerge("a")
    lobe.unmerge("b")
    lobe.unmerge("a")
    assert all(torch.equal(v, tensors[k]) for k, v in backbone_tensors(lobe).items())


@pytest.mark.parametrize("method", ["prompt_deep", "prefix", "full"])
def test_methods_without_a_weight_form_refuse_to_merge(method, lobe):
    lobe.attach(ALL_METHODS[method](), "task")
    with pytest.raises(TypeError, match="nothing that folds"):
        lobe.merge("task")
    assert lobe.merged == set()


def test_save_pretrained_leaves_the_live_model_as_it_was(tmp_path, tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=32, pooling=None).eval()  # positions cropped from 64
    hf = lobe.__dict__["_hf_model"]
    positions, max_length = hf.embeddings.position_embeddings, hf.config.max_length
    expected = outputs(lobe)
    lobe.save_pretrained(tmp_path / "saved")
    assert hf.embeddings.position_embeddings is positions and hf.config.max_length == max_length == 64
    assert torch.equal(outputs(lobe), expected)
    reloaded = AST(str(tmp_path / "saved"), max_frames=32, pooling=None).eval()
    assert reloaded.config.max_length == 32
    assert torch.equal(outputs(reloaded), expected)


def test_methods_do_not_import_the_backbones():
    """Dependencies point downward: sites <- methods <- backbones."""
    package = pathlib.Path(__file__).resolve().parent.parent / "speechbrain_petl"
    for path in [package / "sites.py", *(package / "methods").glob("*.py")]:
        tree = python_ast.parse(path.read_text())
        imported = [
            node.module for node in python_ast.walk(tree)
            if isinstance(node, python_ast.ImportFrom) and node.module
        ] + [alias.name for node in python_ast.walk(tree) if isinstance(node, python_ast.Import) for alias in node.names]
        assert not [m for m in imported if m.startswith("speechbrain_petl.backbones")], path.name
