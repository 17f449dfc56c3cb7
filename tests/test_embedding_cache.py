"""The linear-probing embedding cache: same outputs and gradients as the
backbone, later epochs skip it, keys follow weights and settings, and it
refuses to turn on where it would be wrong."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_petl.backbones import AST, Wav2Vec2
from speechbrain_petl.training.embedding_cache import EmbeddingCache, enable_if
from speechbrain_petl.methods import LinearProbing, LoRA
from method_zoo import perturb_petl_


def _lobe(kind, tiny_ast_dir, tiny_w2v2_dir, petl=None, **kwargs):
    if kind == "ast":
        return AST(tiny_ast_dir, max_frames=64, petl=petl, **kwargs)
    return Wav2Vec2(tiny_w2v2_dir, petl=petl, **kwargs)


def _step(lobe, head, wavs, wav_lens):
    lobe.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    out = head(lobe(wavs, wav_lens))
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in list(lobe.petl.named_parameters()) + list(head.named_parameters())}
    return out.detach(), grads


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("kind", ["ast", "w2v2"])
def test_cached_outputs_and_gradients_equal_the_backbone(kind, pooling, tiny_ast_dir, tiny_w2v2_dir):
    if kind == "w2v2" and pooling == "cls":
        pooling = "mean"  # Wav2Vec2 has no CLS token
    torch.manual_seed(0)
    lobe = _lobe(kind, tiny_ast_dir, tiny_w2v2_dir, LinearProbing(), pooling=pooling).train()
    perturb_petl_(lobe)
    head = torch.nn.Linear(32, 3)
    wavs, wav_lens = torch.randn(3, 8000), torch.tensor([1.0, 0.7, 0.4])
    expected_out, expected_grads = _step(lobe, head, wavs, wav_lens)
    cache = EmbeddingCache().enable(lobe)
    for epoch in range(2):  # filling, then from the cache
        out, grads = _step(lobe, head, wavs, wav_lens)
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert (cache.misses, cache.hits, len(cache)) == (3, 3, 3)


def test_later_epochs_skip_the_backbone(tiny_ast_dir, tiny_w2v2_dir, monkeypatch):
    lobe = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LinearProbing())
    cache = EmbeddingCache().enable(lobe)
    calls = []
    encode = lobe.encode
    monkeypatch.setattr(lobe, "encode", lambda *args, **kw: calls.append(1) or encode(*args, **kw))
    clips = torch.randn(6, 4000)
    batches = [(clips[:4], torch.ones(4)), (clips[4:], torch.tensor([1.0, 0.5]))]
    for wavs, lens in batches:
        lobe(wavs, lens)
    assert len(calls) == 2  # the first epoch: one backbone pass per batch
    for wavs, lens in reversed(batches):  # another epoch, reshuffled into other batches
        lobe(torch.cat([wavs[1:], wavs[:1]]), torch.cat([lens[1:], lens[:1]]))
    assert len(calls) == 2 and cache.hits == 6
    lobe(torch.cat([clips[:1], torch.randn(1, 4000)]), torch.ones(2))  # one new clip
    assert len(calls) == 3 and cache.misses == 7


def test_keys_follow_weights_settings_and_clip_content(tiny_ast_dir, tiny_w2v2_dir):
    cache = EmbeddingCache()
    lobe = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LinearProbing())
    cache.enable(lobe)
    wavs = torch.randn(2, 4000)
    lobe(wavs)
    lobe(wavs)
    assert cache.misses == 2
    other_frames = AST(tiny_ast_dir, max_frames=48, petl=LinearProbing())
    cache.enable(other_frames)
    other_frames(wavs)
    assert cache.misses == 4  # another feature setting: other entries
    with torch.no_grad():
        lobe.layers[0].attention.query.linear.weight.add_(0.01)  # other frozen weights
    plain = lobe.__class__.forward
    out = lobe(wavs)
    assert cache.misses == 6
    EmbeddingCache.disable(lobe)
    torch.testing.assert_close(out, plain(lobe, wavs), rtol=1e-5, atol=1e-5)
    cache.enable(lobe)
    lobe(wavs[:, :3000])  # same ids, other content
    assert cache.misses == 8


def test_refuses_augmentation_and_other_trained_tensors(tiny_ast_dir, tiny_w2v2_dir):
    lobe = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LinearProbing())
    with pytest.raises(ValueError, match="augmentation"):
        EmbeddingCache().enable(lobe, augmentation=torch.nn.Identity())
    assert lobe.embedding_cache is None
    lora = _lobe("w2v2", tiny_ast_dir, tiny_w2v2_dir, LoRA(rank=2))
    with pytest.raises(ValueError, match="linear probing"):
        EmbeddingCache().enable(lora)
    tokens = _lobe("ast", tiny_ast_dir, tiny_w2v2_dir, LinearProbing(), pooling=None)
    with pytest.raises(ValueError, match="pooled"):
        EmbeddingCache().enable(tokens)
    EmbeddingCache().enable(lobe)
    with pytest.raises(RuntimeError, match="augmentation"):
        lobe(torch.randn(1, 4000), augment=lambda feats: feats)
    lobe.attach(LoRA(rank=2), "late")  # a method attached after the cache went on
    with pytest.raises(ValueError, match="linear probing"):
        lobe(torch.randn(1, 4000))


YAML = """
augmentation: null
embedding_cache: False
backbone: !new:speechbrain_petl.backbones.AST
    source: {source}
    pretrained: False
    max_frames: 64
    petl: !new:speechbrain_petl.methods.LinearProbing
__embedding_cache: !apply:speechbrain_petl.training.embedding_cache.enable_if
    enabled: !ref <embedding_cache>
    backbone: !ref <backbone>
    augmentation: !ref <augmentation>
"""


def test_yaml_switch(tiny_ast_dir):
    text = YAML.format(source=tiny_ast_dir)
    assert load_hyperpyyaml(text)["backbone"].embedding_cache is None
    hparams = load_hyperpyyaml(text, {"embedding_cache": True})
    assert isinstance(hparams["backbone"].embedding_cache, EmbeddingCache)
    with pytest.raises(ValueError, match="augmentation"):
        load_hyperpyyaml(text.replace("augmentation: null", "augmentation: !new:torch.nn.Identity"),
                         {"embedding_cache": True})
    with pytest.raises(ValueError, match="True or False"):
        enable_if("yes", hparams["backbone"])
