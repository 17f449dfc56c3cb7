"""Every method, on every lobe, can train: each trainable tensor receives a
non-zero gradient within two optimizer steps on random data.

A method whose initialisation zeroes both projections of a block (or that
cuts a tensor off the graph) trains nothing, silently: the loss still falls
through the head. This guards every method, present and future, against it
(every PETL method class the package exports must have an entry in
``method_zoo.ALL_METHODS``)."""

import inspect

import pytest
import torch

import speechbrain_petl.methods as methods
from method_zoo import ALL_METHODS

KINDS = ["ast", "w2v2", "hubert", "wavlm", "whisper"]


def test_every_exported_method_is_in_the_zoo():
    exported = {
        cls for cls in (getattr(methods, name) for name in methods.__all__)
        if inspect.isclass(cls) and issubclass(cls, methods.PETLMethod) and not inspect.isabstract(cls)
    }  # fmt: skip
    covered = {type(factory()) for factory in ALL_METHODS.values()}
    assert not exported - covered, f"add {sorted(c.__name__ for c in exported - covered)} to tests/method_zoo.py"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_every_trainable_tensor_gets_a_gradient_within_two_steps(method, kind, tiny_lobe):
    torch.manual_seed(0)
    lobe = tiny_lobe(kind, petl=ALL_METHODS[method]())
    head = torch.nn.Linear(lobe.hidden_size, 3)
    params = dict(lobe.named_parameters(prefix="backbone"))
    params.update(head.named_parameters(prefix="head"))
    trainable = {name: p for name, p in params.items() if p.requires_grad}
    assert trainable
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=0.01)
    generator = torch.Generator().manual_seed(1)
    wavs = torch.randn(3, 8000, generator=generator)
    wav_lens = torch.tensor([1.0, 0.8, 0.6])
    labels = torch.tensor([0, 1, 2])
    lobe.train()
    reached = set()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        logits = head(lobe(wavs, wav_lens))
        torch.nn.functional.cross_entropy(logits, labels).backward()
        reached |= {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
    missing = sorted(set(trainable) - reached)
    assert not missing, f"{method} on {kind}: no gradient in two steps for {missing[:8]} ({len(missing)} tensors)"
