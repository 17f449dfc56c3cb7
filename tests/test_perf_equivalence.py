"""Speed-ups change no result: the frozen blocks below the lowest trained
one run without autograd, with the same outputs and gradients."""

import pytest
import torch

from speechbrain_petl.backbones import AST, Wav2Vec2
from speechbrain_petl.methods import BitFit, FullFineTuning, LinearProbing, LoRA, PromptTuning
from method_zoo import ALL_METHODS, conformer, perturb_petl_

RESTRICTED = {
    "lora_top": lambda: LoRA(rank=2, layers=[1]),
    "conformer_top": lambda: _layers(conformer(), [1]),
    "full_top": lambda: FullFineTuning(layers=[-1]),
    "bitfit_top": lambda: BitFit(layers=[1]),
    "prompt_shallow_block1": lambda: PromptTuning(length=3, layers=[1]),
    "none": lambda: None,
}


#: Every kind of site a method uses, in all blocks and restricted to the top.
CASES = ["full", "linear", "bitfit", "lora", "conformer_houlsby_sequential", "prompt_deep", "prefix"] + list(RESTRICTED)


def _layers(method, layers):
    method.layer_selection = layers
    return method


def _lobe(kind, tiny_ast_dir, tiny_w2v2_dir, petl):
    if kind == "ast":
        return AST(tiny_ast_dir, max_frames=64, petl=petl)
    return Wav2Vec2(tiny_w2v2_dir, petl=petl)


def _outputs_and_grads(lobe, head, wavs, wav_lens, fast):
    lobe.frozen_prefix_without_autograd = fast
    lobe.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks (full fine-tuning trains with dropout on)
    out = head(lobe(wavs, wav_lens))
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in list(lobe.named_parameters()) + list(head.named_parameters())
             if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("kind, method", [("ast", m) for m in CASES] + [
    ("w2v2", m) for m in ("linear", "lora_top", "full_top", "prompt_shallow_block1")
])
def test_blocks_without_autograd_give_the_same_outputs_and_gradients(method, kind, tiny_ast_dir, tiny_w2v2_dir):
    torch.manual_seed(0)
    make = {**ALL_METHODS, **RESTRICTED}[method]
    lobe = _lobe(kind, tiny_ast_dir, tiny_w2v2_dir, make())
    perturb_petl_(lobe)
    lobe.train()
    head = torch.nn.Linear(32, 3)
    wavs, wav_lens = torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    plain_out, plain_grads = _outputs_and_grads(lobe, head, wavs, wav_lens, fast=False)
    fast_out, fast_grads = _outputs_and_grads(lobe, head, wavs, wav_lens, fast=True)
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-6, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("make, ast_first, w2v2_first", [
    (lambda: None, 2, 2),                       # nothing trains in the blocks
    (LinearProbing, 2, 1),                      # AST: final LayerNorm; W2V2-base: last block's ffn_norm
    (lambda: LoRA(rank=2, layers=[1]), 1, 1),
    (lambda: PromptTuning(length=3), 0, 0),     # shallow prompts enter before block 0
    (BitFit, 0, 0),
    (FullFineTuning, 0, 0),                     # embeddings train
    (lambda: FullFineTuning(layers=[1]), 1, 1),
])
def test_first_trained_block(make, ast_first, w2v2_first, tiny_ast_dir, tiny_w2v2_dir):
    assert _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, make()).first_trained_block() == ast_first
    assert _lobe("w2v2", tiny_ast_dir, tiny_w2v2_dir, make()).first_trained_block() == w2v2_first


def test_inputs_or_augmentations_that_train_keep_autograd_everywhere(tiny_ast_dir, tiny_w2v2_dir):
    lobe = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LoRA(rank=2, layers=[1]))
    assert lobe.first_trained_block() == 1
    assert lobe.first_trained_block(torch.randn(1, 8000, requires_grad=True)) == 0
    assert lobe.first_trained_block(augment=torch.nn.Linear(128, 128)) == 0
    assert lobe.first_trained_block(augment=torch.nn.Linear(128, 128).requires_grad_(False)) == 1


def test_inactive_and_merged_methods_do_not_count(tiny_ast_dir, tiny_w2v2_dir):
    lobe = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LoRA(rank=2))
    lobe.attach(LoRA(rank=2, layers=[1]), "top")
    assert lobe.first_trained_block() == 0
    lobe.set_active(["top"])
    assert lobe.first_trained_block() == 1
    lobe.merge("top")  # its update is in the frozen weights now: nothing trains
    assert lobe.first_trained_block() == 2
