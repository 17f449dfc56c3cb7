"""``python -m speechbrain_petl.perf.bench --profile``: where a training
step's time goes (speechbrain_petl/perf/profile.py), on the tiny AST."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.profiler_util import FunctionEvent

from speechbrain_petl.perf import bench
from speechbrain_petl.perf.profile import KINDS, MARKER, PHASES, StepProfiler, attribute, op_kind

TINY = "tests/samples/tiny_ast"
#: How far the parts of the step may be from its wall time: they are
#: differences of the same numbers, so only float rounding is allowed.
TOLERANCE_S = 1e-9


def _profiled_recipe_step(method, dtype):
    """One step of a recipe's tiny model (the bench's step: fbank, forward
    under the setting's autocast, backward, the yaml's AdamW) under
    StepProfiler; returns the profiler after two unprofiled steps."""
    torch.manual_seed(0)
    yaml = bench.recipe_yamls(bench.DEFAULT_HPARAMS)[method]
    hparams = bench.load_recipe(yaml, {"pretrained": False, "max_frames": 64, "batch_size": 2,
                                       "backbone_source": TINY})
    backbone, head = hparams["modules"]["backbone"], hparams["modules"]["classifier"]
    autocast_dtype, stored = bench.DTYPES[dtype]
    if stored != "fp32":
        backbone.store_frozen(stored)
    wavs, lens, labels = bench.make_batch(2, 64, hparams["n_classes"])
    optimizer = hparams["opt_class"]([p for m in (backbone, head) for p in m.parameters() if p.requires_grad])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None)
    backbone.train()
    head.train()

    def loss_fn():
        with autocast:
            return F.cross_entropy(head(backbone(wavs, lens)).float(), labels)

    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
    with StepProfiler(backbone.features) as profiler:
        optimizer.zero_grad(set_to_none=True)
        with profiler.phase("forward"):
            loss = loss_fn()
        with profiler.phase("backward"):
            loss.backward()
        with profiler.phase("optimizer"):
            optimizer.step()
    return profiler


@pytest.fixture(scope="module")
def real_steps():
    """Profilers of a real step of full fine-tuning in fp32 (the patch
    embedding's convolution trains) and of the Conformer adapters in bf16
    (autocast's casts, the depthwise convolution, GLU and SiLU)."""
    return {(m, d): _profiled_recipe_step(m, d) for m, d in (("full", "fp32"), ("conformer", "bf16"))}


def _op_names(profiler):
    return {e.name for e in profiler.events if not e.is_user_annotation and not e.name.startswith(MARKER)}


def test_every_op_of_a_real_step_has_a_kind(real_steps):
    names = set().union(*(_op_names(p) for p in real_steps.values()))
    assert len(names) > 50  # the fbank, the blocks, autograd and AdamW
    unknown = sorted(name for name in names if op_kind(name) == "other")
    assert not unknown, f"ops of a real step fall into 'other': add them to profile.py's table: {unknown}"
    seen = {op_kind(name) for name in names}
    # AdamW on CPU runs single-tensor ops (lerp_, addcdiv_...): they count as
    # the optimizer by the phase they run in, not by name.
    assert seen == set(KINDS) - {"optimizer", "other"}, seen


def test_real_op_names_land_in_the_kind_they_are(real_steps):
    names = set().union(*(_op_names(p) for p in real_steps.values()))

    def kinds_of(pattern, exclude=r"Backward\d|autograd"):
        found = [n for n in names if re.search(pattern, n) and not re.search(exclude, n)]
        assert found, f"no op matching {pattern!r} in a real step"
        return {op_kind(n) for n in found}

    assert kinds_of(r"^aten::(mm|addmm)$") == {"matmul"}
    assert kinds_of(r"scaled_dot_product") == {"attention"}
    assert kinds_of(r"conv") == {"conv"}
    assert kinds_of(r"^aten::(_to_copy|copy_|to)$") == {"casts"}
    assert kinds_of(r"layer_norm") == {"norm"}
    assert kinds_of(r"softmax") == {"softmax"}
    assert kinds_of(r"gelu|silu|glu") == {"activation"}
    assert kinds_of(r"^aten::(add|mul|sub|div|sqrt)_?$") == {"elementwise"}
    assert kinds_of(r"^aten::(view|reshape|transpose|t|linear|cat)$") == {"layout"}
    assert kinds_of(r"fft") == {"fft"}
    assert kinds_of(r"Backward\d|AccumulateGrad", exclude=r"^aten::") == {"autograd"}


def test_a_real_step_splits_by_phase_and_kind(real_steps):
    for (method, dtype), profiler in real_steps.items():
        result = profiler.result
        assert all(s >= 0 for s in result["kinds"].values()), result["kinds"]
        assert 0 <= result["ops_s"] <= result["wall_s"]  # self times: nothing counted twice
        assert result["phases"]["other"] >= 0 and all(s > 0 for p, s in result["phases"].items() if p != "other")
        # AdamW's ops, and only they, run in the optimizer phase.
        assert result["kinds"]["optimizer"] > 0
        assert set(result["by_phase"]["optimizer"]) == {"optimizer"}
        assert "optimizer" not in {k for p, ks in result["by_phase"].items() if p != "optimizer" for k in ks}
        # The fbank runs in the features phase, not in the forward pass around it.
        assert result["by_phase"]["features"].get("fft", 0) > 0
        assert result["by_phase"]["forward"].get("fft", 0) == 0
        assert result["matmul_kernel_s"] == pytest.approx(sum(
            s for p, ks in result["by_phase"].items() if p != "features"
            for k, s in ks.items() if k in ("matmul", "attention")))
    fp32, bf16 = real_steps[("full", "fp32")].result, real_steps[("conformer", "bf16")].result
    assert bf16["kind_calls"]["casts"] > fp32["kind_calls"]["casts"]  # autocast's casts


def _event(ident, name, start, end, parent=None, annotation=False):
    event = FunctionEvent(ident, name, 1, start, end, is_user_annotation=annotation)
    if parent is not None:
        event.set_cpu_parent(parent)
        parent.append_cpu_child(event)
    return event


def test_attribution_of_hand_made_events():
    """Phases nest (the fbank inside the forward pass), self times exclude
    the ops called, and every op under the optimizer's marker is the optimizer's."""
    forward = _event(0, MARKER + "forward", 0, 100, annotation=True)
    features = _event(1, MARKER + "features", 10, 40, forward, annotation=True)
    fbank_mm = _event(2, "aten::mm", 12, 30, features)
    addmm = _event(3, "aten::addmm", 50, 90, forward)
    cast = _event(4, "aten::_to_copy", 60, 70, addmm)
    backward = _event(5, MARKER + "backward", 100, 180, annotation=True)
    node = _event(6, "autograd::engine::evaluate_function: MmBackward0", 105, 175, backward)
    grad_mm = _event(7, "aten::mm", 110, 170, node)
    optimizer = _event(8, MARKER + "optimizer", 180, 200, annotation=True)
    step = _event(9, "Optimizer.step#AdamW.step", 181, 199, optimizer, annotation=True)
    lerp = _event(10, "aten::lerp_", 182, 190, step)
    zero = _event(11, "aten::zero_", 200, 205)
    novel = _event(12, "aten::brand_new_op", 205, 208)
    events = [forward, features, fbank_mm, addmm, cast, backward, node, grad_mm, optimizer, step, lerp, zero, novel]
    result = attribute(events, wall_s=210e-6, top=3)
    us = lambda seconds: round(seconds * 1e6, 6)  # noqa: E731
    assert {p: us(s) for p, s in result["phases"].items()} == {
        "features": 30, "forward": 70, "backward": 80, "optimizer": 20, "other": 10}
    assert {k: us(s) for k, s in result["kinds"].items() if s} == {
        "matmul": 18 + 30 + 60, "casts": 10, "autograd": 10, "optimizer": 8, "elementwise": 5, "other": 3}
    assert us(result["ops_s"]) == 144 and us(result["outside_ops_s"]) == 210 - 144
    assert us(result["matmul_kernel_s"]) == 30 + 60  # not the fbank's product
    assert [(op["name"], op["calls"], us(op["s"])) for op in result["top_ops"]] == [
        ("aten::mm", 2, 78), ("aten::addmm", 1, 30), ("aten::_to_copy", 1, 10)]
    assert [op["name"] for op in result["other_ops"]] == ["aten::brand_new_op"]
    assert result["kind_calls"]["matmul"] == 3 and result["kind_calls"]["optimizer"] == 1


def test_unknown_phase_is_named():
    with pytest.raises(ValueError, match=r"'fwd'.*\['features', 'forward', 'backward', 'optimizer'\]"):
        StepProfiler().phase("fwd")


def test_profile_is_for_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--profile"])
    assert "--profile attributes CPU time" in capsys.readouterr().err


@pytest.mark.parametrize("isolate", ["--isolate", "--no-isolate"])
def test_bench_profile_says_where_the_step_goes(tmp_path, isolate):
    """Isolated (each measurement in its own worker, the CPU default: the
    profile travels through the worker's JSON) and in process."""
    json_path, md_path = tmp_path / "bench.json", tmp_path / "bench.md"
    methods, dtypes = ("full,lora", "fp32,bf16") if isolate == "--no-isolate" else ("lora", "fp32")
    report = bench.main([
        "--methods", methods, "--frames", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--inference-repeats", "1", "--threads", "1", "--no-plain", "--backbone-source", TINY,
        "--dtype", dtypes, "--profile", isolate, "--json", str(json_path), "--markdown", str(md_path),
    ])
    assert report == json.loads(json_path.read_text())
    assert report["settings"]["profile"] is True
    rates = report["machine"]["matmul_gflops"]
    for row in report["rows"]:
        prof, wall = row["profile"], row["profile"]["wall_s"]
        assert set(prof["kinds"]) == set(KINDS) and set(prof["phases"]) == set(PHASES)
        assert all(s >= 0 for s in prof["kinds"].values())
        assert 0 <= prof["outside_ops_s"] <= wall
        assert abs(sum(prof["kinds"].values()) + prof["outside_ops_s"] - wall) <= TOLERANCE_S
        assert abs(sum(prof["phases"].values()) - wall) <= TOLERANCE_S
        assert prof["ops_s"] > 0.25 * wall  # the ops are found (a tiny model spends the rest in Python)
        assert prof["kinds"]["matmul"] > 0 and prof["kinds"]["optimizer"] > 0  # both methods train
        assert prof["phases"]["features"] > 0 and prof["phases"]["backward"] > 0
        assert prof["matmul_kernel_s"] <= wall
        assert prof["matmul_kernel_flops_per_s"] == pytest.approx(row["flops_step"] / prof["matmul_kernel_s"])
        rate = rates[bench.rate_dtype(row["dtype"])] * 1e9
        assert prof["matmul_kernel_fraction"] == pytest.approx(prof["matmul_kernel_flops_per_s"] / rate)
        assert len(prof["top_ops"]) == 8
        assert [op["s"] for op in prof["top_ops"]] == sorted((op["s"] for op in prof["top_ops"]), reverse=True)
    text = md_path.read_text()
    where = text.split("**Where the step goes**")[1]
    table = [line for line in where.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | frames | dtype | step (s) | profiled (s) | matmul | attention |")
    assert len(table) == 1 + len(report["rows"]) and all(line.count("|") == table[0].count("|") for line in table)
    for row, line in zip(report["rows"], table[1:]):
        prof = row["profile"]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [row["method"], "64", row["dtype"]]
        assert cells[5] == f"{100 * prof['kinds']['matmul'] / prof['wall_s']:.1f}%"
        assert f"`{prof['top_ops'][0]['name']}`" in where
    bullets = [line for line in where.splitlines() if line.startswith("* ")]
    assert len(bullets) == len(report["rows"]) and all("backward" in b and "top: `" in b for b in bullets)
    if isolate == "--no-isolate":
        rows = {(row["method"], row["dtype"]): row["profile"] for row in report["rows"]}
        # LoRA's bf16 step casts its frozen bf16 weights' inputs and its fp32 factors.
        assert rows[("lora", "bf16")]["kind_calls"]["casts"] > rows[("lora", "fp32")]["kind_calls"]["casts"]
        # Without --profile the report is the same but for the new section.
        plain = {**report, "settings": {k: v for k, v in report["settings"].items() if k != "profile"},
                 "rows": [{k: v for k, v in row.items() if k != "profile"} for row in report["rows"]]}
        assert bench.markdown(plain) == text.split("\n**Where the step goes**")[0]
