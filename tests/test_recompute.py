"""Recomputation (``Backbone.recompute``): the same outputs and gradients as
the plain path for every method on every lobe, less kept for backward, and
real recomputation in the backward pass."""

import pytest
import torch

from speechbrain_petl.backbones.blocks import RECOMPUTE_MODES
from speechbrain_petl.methods import LoRA
from speechbrain_petl.perf.measure import SavedTensors
from method_zoo import ALL_METHODS, perturb_petl_

LOBES = ["ast", "w2v2", "hubert", "wavlm", "whisper"]
#: Every method on AST; on the other lobes, one of each kind of site.
CASES = [("ast", method) for method in ALL_METHODS] + [
    (kind, method) for kind in LOBES[1:] for method in ("full", "lora", "conformer_houlsby_sequential", "prefix")
]


def _step(lobe, head, wavs, wav_lens):
    """Loss, outputs and every trainable tensor's gradient of one step."""
    lobe.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks on every path
    out = head(lobe(wavs, wav_lens))
    loss = out.square().mean()
    loss.backward()
    named = list(lobe.named_parameters()) + list(head.named_parameters())
    grads = {name: p.grad.clone() for name, p in named if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("kind,method", CASES)
def test_outputs_and_gradients_equal_the_plain_path(kind, method, tiny_lobe):
    torch.manual_seed(0)
    lobe = tiny_lobe(kind, ALL_METHODS[method]()).train()
    perturb_petl_(lobe)
    head = torch.nn.Linear(lobe.hidden_size, 3)
    wavs, wav_lens = 0.1 * torch.randn(3, 8000), torch.tensor([1.0, 0.7, 0.45])
    expected_out, expected_grads = _step(lobe, head, wavs, wav_lens)
    assert expected_grads and all(g.abs().sum() > 0 for g in expected_grads.values())
    for mode in ("ffn", "blocks"):
        lobe.recompute = mode
        out, grads = _step(lobe, head, wavs, wav_lens)
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6, msg=mode)
        assert grads.keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")
    lobe.recompute = None
    out, _ = _step(lobe, head, wavs, wav_lens)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)


def _saved_bytes(lobe, wavs):
    with SavedTensors(exclude=list(lobe.parameters())) as saved:
        lobe(wavs).sum()
    return saved.bytes


def test_ffn_keeps_the_input_instead_of_the_hidden_activations(tiny_lobe):
    lobe = tiny_lobe("ast", LoRA(rank=2)).train()
    wavs = torch.randn(2, 8000)
    plain = _saved_bytes(lobe, wavs)
    lobe.recompute = "ffn"
    ffn = _saved_bytes(lobe, wavs)
    lobe.recompute = "blocks"
    blocks = _saved_bytes(lobe, wavs)
    tokens = lobe.embed(wavs)[0].shape[1]
    width, hidden = lobe.hidden_size, lobe.config.intermediate_size
    # per block: the activation's input (batch, tokens, hidden) is no longer
    # kept; the feed-forward input (batch, tokens, width) is, once (fp32)
    assert plain - ffn == lobe.num_layers * 2 * tokens * (hidden - width) * 4
    assert blocks < ffn < plain


def test_the_backward_pass_runs_fc1_again(tiny_lobe):
    lobe = tiny_lobe("ast", LoRA(rank=2)).train()
    calls = {mode: [] for mode in RECOMPUTE_MODES}
    fc1 = lobe.site(0, "mlp.fc1")
    mode_now = []
    fc1.register_forward_hook(lambda module, args, output: calls[mode_now[-1]].append(1))
    for mode in RECOMPUTE_MODES:
        lobe.recompute = mode
        mode_now.append(mode)
        lobe(torch.randn(2, 8000)).sum().backward()
    assert {mode: len(c) for mode, c in calls.items()} == {None: 1, "ffn": 2, "blocks": 2}


def test_inference_and_frozen_inputs_do_not_recompute(tiny_lobe):
    lobe = tiny_lobe("ast", LoRA(rank=2), recompute="blocks")
    calls = []
    lobe.site(0, "mlp.fc1").register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = lobe(torch.randn(2, 8000))
    assert len(calls) == 1 and not out.requires_grad


@pytest.mark.parametrize("kind", LOBES)
def test_every_lobe_takes_recompute_as_a_constructor_argument(kind, tiny_lobe):
    lobe = tiny_lobe(kind, recompute="ffn")
    assert lobe.recompute == "ffn"
    assert all(block.mlp.recompute for block in lobe.layers)
    lobe.recompute = "blocks"
    assert not any(block.mlp.recompute for block in lobe.layers)


def test_an_unknown_mode_is_refused_by_name(tiny_lobe):
    with pytest.raises(ValueError, match=r"recompute must be one of \(None, 'ffn', 'blocks'\), got 'attention'"):
        tiny_lobe("ast", recompute="attention")
    lobe = tiny_lobe("ast")
    with pytest.raises(ValueError, match="got 'all'"):
        lobe.recompute = "all"
    assert lobe.recompute is None
