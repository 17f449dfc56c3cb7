"""The benchmark command runs end to end on a tiny backbone and its report
is consistent with itself; the analytic FLOP count matches PyTorch's."""

import functools
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from speechbrain_petl.perf import bench
from speechbrain_petl.backbones import AST
from speechbrain_petl.methods import Adapters, BottleneckAdapter, ConformerAdapter, FullFineTuning, LinearProbing, LoRA, PromptTuning
from speechbrain_petl.perf.flops import count_step_flops
from speechbrain_petl.perf.measure import SavedTensors, isa, isa_text
from tiny import tiny_ast_config

TINY = "tests/samples/tiny_ast"


@pytest.mark.parametrize("make", [
    FullFineTuning, LinearProbing, lambda: LoRA(rank=2), lambda: LoRA(rank=2, layers=[1]),
    lambda: Adapters(functools.partial(BottleneckAdapter, bottleneck=4), placement="houlsby"),
    lambda: PromptTuning(length=3, deep=True),
], ids=["full", "linear", "lora", "lora_top1", "bottleneck_houlsby", "prompt_deep"])
def test_analytic_flops_equal_pytorch_flop_counter(make):
    """PyTorch's counter sees every product of a step but CPU's fused
    attention; adding the formula's attention term (and leaving out the
    fbank, which the formula does not count) gives the same total."""
    torch.manual_seed(0)
    ast = AST(tiny_ast_config(), pretrained=False, max_frames=100, petl=make())
    head = torch.nn.Linear(32, 5)
    wavs = torch.randn(2, 16000)
    mine = count_step_flops(ast, head, wavs)
    with FlopCounterMode(display=False) as features:
        ast.features(wavs)
    with FlopCounterMode(display=False) as step:
        head(ast(wavs)).sum().backward()
    attention = mine["by_kind"]["attention"]
    expected = step.get_total_flops() - features.get_total_flops() + attention["forward"] + attention["backward"]
    assert mine["step"] == expected
    assert mine["forward"] + mine["backward"] == mine["step"]


def test_analytic_flops_of_grouped_convolutions():
    """The Conformer adapter's depthwise convolution: PyTorch's counter
    agrees on the forward pass (its backward formula multiplies grouped
    convolutions by the number of groups, so the step is checked by hand)."""
    torch.manual_seed(0)
    block = functools.partial(ConformerAdapter, bottleneck=4, kernel_size=5)
    ast = AST(tiny_ast_config(), pretrained=False, max_frames=100, petl=Adapters(block))
    head, wavs = torch.nn.Linear(32, 5), torch.randn(2, 16000)
    mine = count_step_flops(ast, head, wavs)
    with torch.no_grad(), FlopCounterMode(display=False) as features:
        ast.features(wavs)
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        head(ast(wavs))
    attention = mine["by_kind"]["attention"]["forward"]
    assert mine["forward"] == forward.get_total_flops() - features.get_total_flops() + attention
    rows = 2 * 50  # clips x tokens, in each of the 2 blocks
    pointwise_in, depthwise, pointwise_out = 2 * rows * 32 * 8, 2 * rows * 4 * 5, 2 * rows * 4 * 32
    petl = mine["by_kind"]["petl"]
    assert petl["forward"] == 2 * (pointwise_in + depthwise + pointwise_out)
    assert petl["backward"] == 2 * petl["forward"]  # inputs (the trained LayerNorm copy) and weights


def test_saved_tensors_count_each_storage_once_and_skip_parameters():
    weight = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16)
    with SavedTensors(exclude=[weight]) as saved:
        h = x @ weight          # saves x (weight excluded)
        y = (h * h).sum()       # saves h (twice, one storage)
    assert saved.bytes == x.numel() * 4 + h.numel() * 4
    y.backward()


def _rows(report, method):
    return [row for row in report["rows"] if row["method"] == method]


def test_bench_runs_every_kind_of_row_and_ratios_come_from_its_own_rows(tmp_path):
    json_path, md_path = tmp_path / "bench.json", tmp_path / "bench.md"
    bench.main([
        "--methods", "full,lora,lora:top1,linear,lora:recompute=ffn", "--frames", "64", "--batch-size", "2",
        "--steps", "1", "--warmup", "0", "--inference-repeats", "1", "--no-isolate",
        "--backbone-source", TINY, "--json", str(json_path), "--markdown", str(md_path),
        "--embedding-cache", "--cache-batches", "2",
    ])
    report = json.loads(json_path.read_text())
    assert [row["method"] for row in report["rows"]] == [
        "full", "lora", "lora:top1", "linear", "lora:recompute=ffn", "plain"
    ]
    assert set(report["machine"]["matmul_gflops"]) == {"fp32", "bf16", "int8"}
    assert all(rate > 0 for rate in report["machine"]["matmul_gflops"].values())
    assert report["machine"]["isa"] == isa()
    full = _rows(report, "full")[0]
    for row in report["rows"][:4]:
        assert row["step_s"] > 0 and row["clips_per_s"] == pytest.approx(2 / row["step_s"])
        assert row["step_s_ratio"] == pytest.approx(row["step_s"] / full["step_s"])
        assert row["saved_bytes_ratio"] == pytest.approx(row["saved_bytes"] / full["saved_bytes"])
        assert row["tensor_peak_bytes_ratio"] == pytest.approx(row["tensor_peak_bytes"] / full["tensor_peak_bytes"])
        assert row["trainable_ratio"] == pytest.approx(row["trainable"] / full["trainable"])
        assert row["matmul_fraction"] == pytest.approx(
            row["flops_step"] / row["step_s"] / (report["machine"]["matmul_gflops"]["fp32"] * 1e9)
        )
        assert 0 < row["features_fraction"] < 1 and 0 < row["data_fraction"] < 1
        assert row["infer_ms_per_clip"] > 0
    lora, top1, linear = (_rows(report, m)[0] for m in ("lora", "lora:top1", "linear"))
    # The PETL rows train less, compute less and keep less for backward than full FT.
    assert linear["trainable"] < top1["trainable"] < lora["trainable"] < full["trainable"]
    assert linear["flops_step"] < top1["flops_step"] < lora["flops_step"] < full["flops_step"]
    assert linear["saved_bytes"] < top1["saved_bytes"] < lora["saved_bytes"] < full["saved_bytes"]
    # Tensor peaks: at least the weights; full FT adds gradients and AdamW's two moments.
    weights = sum(p.numel() for p in AST(TINY, pretrained=False, max_frames=64).parameters()) * 4
    assert weights < linear["tensor_peak_bytes"] < lora["tensor_peak_bytes"]
    assert full["tensor_peak_bytes"] > 3 * weights
    recomputed = _rows(report, "lora:recompute=ffn")[0]
    assert recomputed["saved_bytes"] < lora["saved_bytes"] and recomputed["trainable"] == lora["trainable"]
    assert lora["merged_ms_per_clip"] > 0 and full["merged_ms_per_clip"] is None
    plain = _rows(report, "plain")[0]
    assert plain.get("step_s") is None
    assert plain["trainable"] == 0 and plain["infer_ms_per_clip"] > 0
    (cache,) = report["embedding_cache"]
    assert (cache["misses"], cache["hits"]) == (4, 8)  # 4 clips, then two epochs from the cache
    assert cache["speedup"] == pytest.approx(cache["first_epoch_s"] / cache["later_epoch_s"])
    text = md_path.read_text()
    assert text.startswith("Machine: ") and "**64 frames**" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(report["rows"])  # header and one line per row
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "embedding cache, 64 frames, 2 batches of 2" in text
    assert f"| lora | {lora['trainable']:,} | {lora['step_s']:,.2f} | {lora['step_s_ratio']:,.2f} |" in text


def test_isolated_worker_reports_its_own_peak_memory(tmp_path):
    report = bench.main([
        "--methods", "linear", "--frames", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--inference-repeats", "1", "--no-plain", "--backbone-source", TINY,
    ])
    (row,) = report["rows"]
    assert report["settings"]["isolated"]
    assert row["peak_bytes"] >= row["build_peak_bytes"] > 50e6  # torch alone is more than that


def test_cuda_options_fail_clearly_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--dtype", "bf16"])
    assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--compile"])
    assert "--compile is for --device cuda" in capsys.readouterr().err


def test_method_options_parse_and_label_back():
    for spec in ("lora", "lora:top3", "conformer:recompute=blocks", "lora:top6:recompute=ffn"):
        name, options = bench.parse_method(spec)
        assert bench.method_label(name, options) == spec
    assert bench.parse_method("lora:recompute=ffn:top2") == ("lora", {"top": 2, "recompute": "ffn", "attention": None})
    assert bench.parse_method("lora:attention=fp32") == ("lora", {"top": None, "recompute": None, "attention": "fp32"})
    assert bench.method_label(*bench.parse_method("lora:top2:attention=fp32")) == "lora:top2:attention=fp32"


def test_unknown_method_and_bad_options_are_named():
    with pytest.raises(ValueError, match="top"):
        bench.parse_method("lora:first3")
    with pytest.raises(ValueError, match=r"recompute=MODE.*\['ffn', 'blocks'\]"):
        bench.parse_method("lora:recompute=attention")
    with pytest.raises(ValueError, match=r"attention=DTYPE.*\['fp32'\]"):
        bench.parse_method("lora:attention=bf16")
    args = bench.parse_args(["--methods", "dora", "--frames", "64", "--no-isolate"])
    with pytest.raises(ValueError, match="dora"):
        bench.run(args)


@pytest.mark.parametrize("make, recorded", [
    (lambda: LoRA(rank=2, layers=[1]), [False, True]),
    (LinearProbing, [False, False]),
    (lambda: PromptTuning(length=3), [True, True]),
])
def test_autograd_records_nothing_below_the_lowest_trained_block(make, recorded):
    """Why no explicit ``no_grad`` is needed for top-K methods: the frozen
    blocks below the lowest trained one see no tensor that requires grad,
    so autograd keeps nothing for them (the bench's saved bytes and FLOPs
    fall with K)."""
    ast = AST(tiny_ast_config(), pretrained=False, max_frames=64, petl=make())
    seen = []
    for block in ast.layers:
        block.register_forward_hook(lambda module, args, output: seen.append(output[0].requires_grad))
    ast(torch.randn(1, 8000))
    assert seen == recorded


def test_bench_measures_dtypes_side_by_side_against_their_own_matmul_rate(tmp_path):
    md_path = tmp_path / "bench.md"
    report = bench.main([
        "--methods", "full,lora", "--frames", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--inference-repeats", "1", "--no-isolate", "--no-plain", "--backbone-source", TINY,
        "--dtype", "fp32,bf16", "--markdown", str(md_path),
    ])
    rows = {(row["method"], row["dtype"]): row for row in report["rows"]}
    assert list(rows) == [("full", "fp32"), ("full", "bf16"), ("lora", "fp32"), ("lora", "bf16")]
    rates = report["machine"]["matmul_gflops"]
    for (method, dtype), row in rows.items():
        assert row["matmul_fraction"] == pytest.approx(row["flops_step"] / row["step_s"] / (rates[dtype] * 1e9))
        assert row["step_s_ratio"] == pytest.approx(row["step_s"] / rows[("full", dtype)]["step_s"])
        if dtype == "bf16":
            fp32 = rows[(method, "fp32")]
            assert row["step_s_vs_fp32"] == pytest.approx(row["step_s"] / fp32["step_s"])
            assert row["infer_ms_per_clip_vs_fp32"] == pytest.approx(row["infer_ms_per_clip"] / fp32["infer_ms_per_clip"])
            assert row["flops_step"] == fp32["flops_step"] and row["trainable"] == fp32["trainable"]
    # LoRA's frozen linears were stored in bf16: its tensor peak is below fp32's; full FT stores nothing in bf16.
    assert rows[("lora", "bf16")]["tensor_peak_bytes"] < rows[("lora", "fp32")]["tensor_peak_bytes"]
    text = md_path.read_text()
    assert isa_text(report["machine"]["isa"]) in text
    assert "**64 frames, fp32**" in text and "**64 frames, bf16**" in text
    side = text.split("**64 frames: bf16 against fp32**")[1].strip().splitlines()
    lora = rows[("lora", "bf16")]
    assert side[0].startswith("| method | fp32 step (s) | bf16 step (s) | bf16 / fp32 |")
    assert any(line.startswith(f"| lora | {rows[('lora', 'fp32')]['step_s']:,.2f} | {lora['step_s']:,.2f} | "
                               f"{lora['step_s_vs_fp32']:,.2f} |") for line in side)


def test_dtype_settings_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--dtype", "fp32,fp8"])
    assert "--dtype takes distinct comma-separated settings" in capsys.readouterr().err
