"""Reports that match the outputs (issue 20): ``set_active`` and ``active``
on every method and every lobe, and a MaskedBatchNorm1d that never reads a
device value in its forward."""

import importlib

import pytest
import torch

from method_zoo import ALL_METHODS, perturb_petl_
from speechbrain_petl.methods import FullFineTuning, LoRA
from speechbrain_petl.methods.masked_batch_norm import MaskedBatchNorm1d

WAVS = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
WAV_LENS = torch.tensor([1.0, 0.7, 0.45])
KINDS = ["ast", "w2v2", "hubert", "wavlm", "whisper"]
REFUSAL = "train the backbone's own weights"


def outputs(lobe):
    with torch.no_grad():
        return lobe.eval()(WAVS, WAV_LENS)


def train_a_step(lobe, seed=0):
    """One SGD step on every trainable tensor (the lobe's and its methods')."""
    torch.manual_seed(seed)
    params = [p for p in lobe.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    lobe.train()
    lobe(WAVS, WAV_LENS).square().mean().backward()
    optimizer.step()
    lobe.eval()


# --------------------------------------------------------- set_active([]), every method
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", [name for name in ALL_METHODS if name != "full"])
def test_no_active_method_gives_the_plain_backbone(method, kind, tiny_lobe):
    """After a training step (on non-zero tensors), ``set_active([])`` gives
    exactly the outputs of a lobe without the method (same weights), and
    activating it again gives the trained outputs back, bit for bit."""
    plain = outputs(tiny_lobe(kind, pooling=None))
    lobe = tiny_lobe(kind, pooling=None)
    lobe.attach(ALL_METHODS[method](), "task")
    perturb_petl_(lobe)
    train_a_step(lobe)
    trained = outputs(lobe)
    assert not torch.equal(trained, plain)
    lobe.set_active([])
    assert lobe.active == []
    assert torch.equal(outputs(lobe), plain)
    lobe.set_active(["task"])
    assert lobe.active == ["task"]
    assert torch.equal(outputs(lobe), trained)


# ------------------------------------------------------------ full fine-tuning
@pytest.mark.parametrize("kind", KINDS)
def test_full_fine_tuning_cannot_be_deactivated(kind, tiny_lobe):
    """Its state is the backbone's weights: leaving it out of the active set
    is refused (naming why and what to do), alone or beside LoRA, and
    ``active`` and the outputs stay as they were."""
    plain = outputs(tiny_lobe(kind, pooling=None))
    lobe = tiny_lobe(kind, pooling=None)
    lobe.attach(FullFineTuning())
    lobe.attach(LoRA(rank=2))
    perturb_petl_(lobe)
    train_a_step(lobe)
    tuned = outputs(lobe)
    assert not torch.equal(tuned, plain)
    for names in ([], ["lora"]):
        with pytest.raises(RuntimeError, match=REFUSAL) as refusal:
            lobe.set_active(names)
        assert "build the backbone again from its source" in str(refusal.value)
        assert lobe.active == ["full", "lora"]
        assert torch.equal(outputs(lobe), tuned)
    lobe.set_active(["full"])  # LoRA off: the fine-tuned backbone alone
    assert lobe.active == ["full"]
    alone = outputs(lobe)
    assert not torch.equal(alone, tuned) and not torch.equal(alone, plain)


@pytest.mark.parametrize("kind", ["ast", "whisper"])
def test_full_fine_tuning_attached_inactive_is_reported_active(kind, tiny_lobe):
    """Attached with ``active=False``, full fine-tuning still trains the
    weights every forward pass uses: ``active`` lists it."""
    plain = outputs(tiny_lobe(kind, pooling=None))
    lobe = tiny_lobe(kind, pooling=None)
    lobe.attach(FullFineTuning(), active=False)
    train_a_step(lobe)
    assert not torch.equal(outputs(lobe), plain)
    assert lobe.active == ["full"]


# ------------------------------------------------- MaskedBatchNorm1d, no host sync
def _previous_forward(norm, x, mask):
    """The training forward of MaskedBatchNorm1d before issue 20 (single
    process), which branched on ``count < 2`` and read ``num_batches_tracked``."""
    real = mask.unsqueeze(1).to(x.dtype)
    sums = torch.cat([real.sum().reshape(1), (x * real).sum(dim=(0, 2))])
    count, total = sums[0], sums[1:]
    if count < 2:
        raise ValueError(
            f"MaskedBatchNorm1d: expected more than 1 real frame per channel when training, got {int(count)}"
        )
    mean = total / count
    centred = x - mean[None, :, None]
    var = (centred.square() * real).sum(dim=(0, 2)) / count
    norm.num_batches_tracked.add_(1)
    factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    with torch.no_grad():
        norm.running_mean.mul_(1 - factor).add_(factor * mean.detach())
        norm.running_var.mul_(1 - factor).add_(factor * var.detach() * count / (count - 1))
    out = centred * torch.rsqrt(var + norm.eps)[None, :, None]
    return out * norm.weight[None, :, None] + norm.bias[None, :, None]


#: Real frames per clip of padded batches of 3 clips of 6 frames: some
#: clips empty, and batches of 1 and 0 real frames in all.
LENGTHS = [[6, 4, 1], [0, 6, 2], [1, 0, 0], [3, 3, 3], [0, 0, 0], [0, 1, 0], [2, 0, 5]]


def _state(norm):
    return [t.clone() for t in (norm.running_mean, norm.running_var, norm.num_batches_tracked)]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("path", ["cpu", "accelerator"])
def test_masked_batch_norm_equals_the_previous_implementation(path, momentum, monkeypatch):
    """On padded batches, outputs, gradients and running statistics equal the
    previous implementation's bit for bit. A batch of 0 or 1 real frames:
    on CPU (count on the host) the same ValueError; on an accelerator
    (simulated: the host check off) NaN outputs; in both the running
    statistics and ``num_batches_tracked`` stay as they were."""
    if path == "accelerator":
        module = importlib.import_module("speechbrain_petl.methods.masked_batch_norm")
        monkeypatch.setattr(module, "_refuse_too_few", lambda count: None, raising=False)
    torch.manual_seed(0)
    ours, previous = MaskedBatchNorm1d(4, momentum=momentum), MaskedBatchNorm1d(4, momentum=momentum)
    torch.nn.init.normal_(ours.weight), torch.nn.init.normal_(ours.bias)
    previous.load_state_dict(ours.state_dict())
    for lengths in LENGTHS:
        x = (torch.randn(3, 4, 6) * 3 + 1).requires_grad_()
        mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
        before = _state(ours)
        if sum(lengths) < 2:
            if path == "cpu":
                with pytest.raises(ValueError, match=f"more than 1 real frame.*got {sum(lengths)}$"):
                    ours(x, mask)
                with pytest.raises(ValueError, match="more than 1 real frame"):
                    _previous_forward(previous, x, mask)
            else:
                assert ours(x, mask).isnan().all()
            assert all(torch.equal(a, b) for a, b in zip(_state(ours), before))
            continue
        out, expected = ours(x, mask), _previous_forward(previous, x, mask)
        assert torch.equal(out, expected)
        grads = torch.autograd.grad(out.square().sum(), [x, ours.weight, ours.bias])
        expected_grads = torch.autograd.grad(expected.square().sum(), [x, previous.weight, previous.bias])
        assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
        assert all(torch.equal(a, b) for a, b in zip(_state(ours), _state(previous)))
    assert int(ours.num_batches_tracked) == sum(sum(n) >= 2 for n in LENGTHS)


def _refuse_reads(monkeypatch):
    """Every way Python reads a tensor's value (a GPU-to-CPU sync on CUDA) fails."""
    def read(*args, **kwargs):
        raise AssertionError("the forward read a tensor's value (a host sync on an accelerator)")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, read)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batch_norm_forward_reads_no_device_value(momentum, monkeypatch):
    """On a device other than the CPU ('meta' here: every read of a value
    fails) the training forward and its running-statistics update run
    without ``bool(tensor)``, ``.item()`` or any other read of a value."""
    norm = MaskedBatchNorm1d(4, momentum=momentum).to("meta").train()
    x = torch.empty(3, 4, 6, device="meta")
    mask = torch.empty(3, 6, dtype=torch.bool, device="meta")
    _refuse_reads(monkeypatch)
    for _ in range(2):
        assert norm(x, mask).shape == (3, 4, 6)
        assert norm(x).shape == (3, 4, 6)
