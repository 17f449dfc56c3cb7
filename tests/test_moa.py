"""Soft-MoA and Dense-MoA (issue 23): the maths against a direct statement
of the authors' formulas, the padding rule, per-sample independence,
refusals with their reasons, and the AST-base budgets. Identity at init,
training on every lobe, padded-batch equality, inference folders,
lifecycle and mixed-batch routing are covered for every method of
``method_zoo.ALL_METHODS``, the mixtures included."""

import functools

import pytest
import torch

from method_zoo import ALL_METHODS, MOA_METHODS, dense_moa, perturb_petl_, soft_moa
from speechbrain_petl.backbones import AST, WavLM
from speechbrain_petl.backbones.lifecycle import NotMergeable
from speechbrain_petl.methods import BottleneckAdapter, ConformerAdapter, DenseMoA, SoftMoA
from speechbrain_petl.methods.moa import DenseMixture, SoftMixture


def reference_soft_moe(x, phi, experts):
    """Soft MoE as written in the paper (no padding, no normalisation)."""
    b, m, _ = x.shape
    logits = torch.einsum("bmd,dnp->bmnp", x, phi)
    dispatch = torch.softmax(logits, dim=1)
    combine = torch.softmax(logits.reshape(b, m, -1), dim=-1).reshape(logits.shape)
    slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
    outputs = torch.stack([e(slots[:, i]) for i, e in enumerate(experts)], dim=1)
    return torch.einsum("bnpd,bmnp->bmd", outputs, combine)


def random_experts(n, d=16, r=3):
    experts = [BottleneckAdapter(d, bottleneck=r, activation=torch.nn.GELU) for _ in range(n)]
    for expert in experts:
        torch.nn.init.normal_(expert.up.weight)
    return experts


def test_soft_mixture_is_the_papers_soft_moe():
    torch.manual_seed(0)
    mixture = SoftMixture(16, random_experts(4), slots=2)
    x = torch.randn(3, 9, 16)
    expected = reference_soft_moe(x, mixture.slots, mixture.experts)
    torch.testing.assert_close(mixture(x), expected)
    assert mixture._batchable()  # one batched product per projection ...
    uneven = SoftMixture(16, [BottleneckAdapter(16, bottleneck=r) for r in (2, 3)], slots=2)
    for expert in uneven.experts:
        torch.nn.init.normal_(expert.up.weight)
    assert not uneven._batchable()  # ... or one expert after the other
    torch.testing.assert_close(uneven(x), reference_soft_moe(x, uneven.slots, uneven.experts))
    dispatch, combine = mixture.weights(x)
    torch.testing.assert_close(dispatch.sum(1), torch.ones(3, 4, 2))
    torch.testing.assert_close(combine.sum((2, 3)), torch.ones(3, 9))


def test_soft_mixture_normalisation_uses_a_learned_scale():
    torch.manual_seed(0)
    mixture = SoftMixture(16, random_experts(2), normalize=True)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        mixture.scale.fill_(3.0)
    dispatch, _ = mixture.weights(x)
    unit = torch.nn.functional.normalize(x, dim=-1, eps=1e-6)
    phi = torch.nn.functional.normalize(mixture.slots, dim=0) * 3.0
    torch.testing.assert_close(dispatch, torch.softmax(torch.einsum("bmd,dnp->bmnp", unit, phi), dim=1), atol=1e-5, rtol=0)
    # ... and the scale trains
    mixture(x).sum().backward()
    assert mixture.scale.grad is not None and mixture.scale.grad != 0


@pytest.mark.parametrize("mixture_of", [
    lambda: SoftMixture(16, random_experts(3), slots=2),
    lambda: DenseMixture(16, random_experts(3)),
    lambda: DenseMixture(16, [ConformerAdapter(16, bottleneck=3, kernel_size=5) for _ in range(3)]),
])
def test_padding_gets_no_dispatch_weight_and_no_output(mixture_of):
    torch.manual_seed(0)
    mixture = mixture_of().eval()
    for module in mixture.modules():
        if isinstance(module, torch.nn.Conv1d) and module.out_channels == 16:
            torch.nn.init.normal_(module.weight)
    clip = torch.randn(1, 6, 16)
    padded = torch.cat([clip, 1e4 * torch.randn(1, 4, 16)], dim=1)  # loud garbage in the padding
    padded = torch.cat([padded, torch.randn(1, 10, 16)])  # a second, full-length sample
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.no_grad():
        alone = mixture(clip)
        batched = mixture(padded, mask)
    torch.testing.assert_close(batched[:1, :6], alone, rtol=1e-5, atol=1e-6)
    assert batched[0, 6:].abs().max() == 0
    assert alone.abs().max() > 0
    if isinstance(mixture, SoftMixture):
        dispatch, _ = mixture.weights(padded, mask)
        assert dispatch[0, 6:].abs().max() == 0


@pytest.mark.parametrize("mixture_of", [
    lambda: SoftMixture(16, random_experts(3), slots=2),
    lambda: DenseMixture(16, random_experts(3)),
])
def test_each_sample_is_mixed_on_its_own(mixture_of):
    """Nothing mixes samples: a sample's output is the same whatever its
    batch neighbours (what per-sample routing relies on)."""
    torch.manual_seed(0)
    mixture = mixture_of()
    x = torch.randn(4, 7, 16)
    with torch.no_grad():
        together = mixture(x)
        apart = torch.cat([mixture(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-6)


def test_conformer_experts_are_refused_in_soft_moa_saying_why(tiny_ast_dir):
    conformer = functools.partial(ConformerAdapter, bottleneck=4, kernel_size=5)
    with pytest.raises(ValueError, match="a slot is a weighted average .* no time axis"):
        SoftMoA(conformer)
    with pytest.raises(ValueError, match="no time axis"):
        SoftMoA(ConformerAdapter)
    hidden = SoftMoA(lambda input_size: ConformerAdapter(input_size, bottleneck=4))  # not visible until built
    lobe = AST(tiny_ast_dir, max_frames=64)
    with pytest.raises(ValueError, match="DenseMoA, whose experts see the whole sequence"):
        lobe.attach(hidden)
    assert not lobe.petl
    DenseMoA(conformer)  # Dense-MoA takes them


def test_experts_start_as_the_identity_contribution_set_by_the_method(tiny_ast_dir):
    def noisy(input_size):
        expert = BottleneckAdapter(input_size, bottleneck=4)
        torch.nn.init.normal_(expert.up.weight)
        torch.nn.init.normal_(expert.up.bias)
        return expert

    for method in (SoftMoA(noisy, experts=2), DenseMoA(noisy, experts=2)):
        lobe = AST(tiny_ast_dir, max_frames=64, petl=method)
        for name, param in lobe.petl.named_parameters():
            if ".up." in name:
                assert param.abs().max() == 0, name
            if ".down.weight" in name:
                assert param.abs().max() > 0, name
    with pytest.raises(TypeError, match="BottleneckAdapter or ConformerAdapter"):
        AST(tiny_ast_dir, max_frames=64, petl=DenseMoA(lambda input_size: torch.nn.Linear(input_size, input_size)))


@pytest.mark.parametrize("method", ["soft_moa", "dense_moa_conformer"])
def test_merge_is_refused_with_the_reason(method, tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl={"task": ALL_METHODS[method]()})
    with pytest.raises(TypeError, match="input-dependent weights"):
        lobe.merge("task")
    assert lobe.merged == set()
    with pytest.raises(NotMergeable, match="cannot be written into plain weights: .*router or slots"):
        with lobe.merged_weights():
            pass
    assert lobe.merged == set()


def test_placements_and_sites(tiny_ast_dir):
    lobe = AST(tiny_ast_dir, max_frames=64, petl={"soft": soft_moa()})
    lobe.attach(soft_moa(placement="houlsby"), "houlsby", active=False)  # both train a copy of the same LayerNorm
    lobe.attach(dense_moa(location="ffn"), "ffn")
    assert set(lobe.petl["soft"].layers["0"]) == {"mhsa", "mhsa_norm"}
    assert set(lobe.petl["houlsby"].layers["0"]) == {"mhsa", "mhsa_norm", "ffn", "ffn_norm"}
    assert set(lobe.petl["ffn"].layers["0"]) == {"ffn", "ffn_norm"}
    assert lobe.site(0, "mhsa").owners() == {"soft", "houlsby"}
    assert tuple(lobe.petl["soft"].layers["1"]["mhsa"].slots.shape) == (32, 3, 2)
    with pytest.raises(ValueError, match="location must be one of"):
        SoftMoA(location="cls")
    with pytest.raises(ValueError, match="slots must be an integer >= 1"):
        SoftMoA(slots=0)


def test_a_mixed_batch_of_mixture_tasks_equals_each_task_alone(tiny_wavlm_dir):
    """Two mixtures on one WavLM (padding masks),
    routed per sample: each sample gets what its task alone gives."""
    lobe = WavLM(tiny_wavlm_dir, petl={"soft": soft_moa()})
    lobe.attach(dense_moa(conformer_experts=True), "dense", active=False)
    perturb_petl_(lobe)
    lobe.eval()
    torch.manual_seed(0)
    wavs = torch.randn(4, 8000)
    lens = torch.tensor([1.0, 0.6, 0.8, 0.5])
    rows = {"soft": torch.tensor([0, 2]), "dense": torch.tensor([1, 3])}
    with torch.no_grad():
        with lobe.routed(rows):
            mixed = lobe(wavs, lens)
        for name, index in rows.items():
            lobe.set_active([name])
            for i in index.tolist():
                alone = lobe(wavs[i : i + 1, : int(8000 * lens[i])])
                torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_budgets_at_the_authors_defaults_on_ast_base():
    """7 experts of width 768 / 128 = 6, 1 slot, the pre-attention LayerNorm
    trained, 12 blocks of AST-base (docs/moa.md's table is written by
    ``python -m speechbrain_petl.studies.params --markdown``)."""
    expert = 768 * 6 + 6 + 6 * 768 + 768
    soft = 12 * (7 * expert + 768 * 7 * 1 + 1536)
    dense = 12 * (7 * expert + 768 * 7 + 7 + 1536)
    with torch.device("meta"):
        lobe = AST(pretrained=False, max_frames=100)
    for (name, method), expected in zip(MOA_METHODS.items(), (soft, dense)):
        lobe.attach(method(), "task")
        assert sum(p.numel() for p in lobe.parameters() if p.requires_grad) == expected, name
        lobe.detach("task")
    assert (soft, dense) == (922_104, 922_188)


def test_docs_parameter_table_is_what_the_params_command_writes(capsys):
    """docs/moa.md's counts are the output of its params command, not typed."""
    import pathlib
    import shlex

    from speechbrain_petl.studies import params

    repo = pathlib.Path(__file__).resolve().parent.parent
    page = (repo / "docs" / "moa.md").read_text()
    command = next(line for line in page.splitlines() if line.startswith("python -m speechbrain_petl.studies.params --markdown"))
    block = page.split("<!-- params --markdown -->\n", 1)[1].split("<!-- end of params --markdown -->", 1)[0]
    import os

    cwd = os.getcwd()
    os.chdir(repo)
    try:
        params.main(shlex.split(command)[3:])
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out == block
