"""benchmarks/multitask_serving.py (table and load modes) and
benchmarks/compile_report.py run on a tiny AST and report consistent
fields. Nothing here times anything, and the load test's goals (no wrong
result, no error) are not asserted: they are what the tool measures."""

import importlib.util
import json
import pathlib
import threading

import pytest
import torch

from speechbrain_petl.backbones import tiny_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serving = _load_script("multitask_serving")
compile_report = _load_script("compile_report")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def test_load_mode_report_is_consistent(tmp_path):
    """3 threads for 2 s on tiny tasks: the counts add up and latencies are
    ordered (wrong results are reported, not asserted absent)."""
    md, js = tmp_path / "load.md", tmp_path / "load.json"
    report = serving.main([
        "--threads", "3", "--duration", "2", "--backbone", "tiny", "--pool", "8", "--max_batch", "4",
        "--markdown", str(md), "--json", str(js),
    ])
    assert report["requests"] > 0
    assert report["requests"] == report["requests_correct"] + report["requests_wrong"] + report["requests_failed"]
    assert report["clips"] == report["clips_correct"] + report["clips_wrong"] + report["clips_failed"]
    assert report["requests_wrong"] <= report["clips_wrong"] <= 4 * report["requests_wrong"]
    assert report["requests_failed"] <= report["clips_failed"] <= 4 * report["requests_failed"]
    assert report["errors"] == report["requests_failed"] >= sum(report["error_messages"].values())
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["elapsed_s"] >= 2
    answered = report["clips_correct"] + report["clips_wrong"]
    assert report["clips_per_s"] == pytest.approx(answered / report["elapsed_s"])
    assert report["stuck_threads"] == 0
    assert report["repeat_mismatches"] == 0, "single-threaded answers must repeat within --atol"
    assert report["max_difference_of_correct"] <= report["atol"]
    assert report["rss_start_bytes"] > 0 and report["rss_end_bytes"] > 0
    assert report["rss_growth"] == pytest.approx(
        (report["rss_end_bytes"] - report["rss_start_bytes"]) / report["rss_start_bytes"])
    assert report["tasks"] == serving.YAMLS
    text = md.read_text()
    assert text.startswith("Measured ") and "`python benchmarks/multitask_serving.py --threads 3" in text
    assert f"| 3 | {report['elapsed_s']:.1f} | {report['requests']} | {report['clips']} |" in text
    for goal, measured, met in serving.goals(report):
        assert f"* {goal}: {measured} ({'met' if met else 'NOT met'})" in text
    assert json.loads(js.read_text())["load"]["clips_wrong"] == report["clips_wrong"]


class _FlakyServer:
    """Answers right on the main thread; from other threads, every third
    call fails, every third gives another label, every third is right."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def classify_batch(self, wavs, wav_lens, tasks):
        log_probs = [torch.log_softmax(wav[:3], dim=0) for wav in wavs]
        labels = [f"{task}_{int(lp.argmax())}" for lp, task in zip(log_probs, tasks)]
        if threading.current_thread() is not threading.main_thread():
            with self.lock:
                self.calls += 1
                turn = self.calls % 3
            if turn == 1:
                raise RuntimeError("routes of another call")
            if turn == 2:
                labels = ["nonsense"] * len(labels)
        return log_probs, None, None, labels


def test_load_test_counts_wrong_results_and_errors():
    """A server that is right single-threaded but not under threads is caught."""
    requests = serving.make_requests(["a", "b"], count=4, max_batch=3, samples=100)
    report = serving.load_test(_FlakyServer(), requests, threads=2, duration=0.3, atol=1e-6)
    assert report["requests_wrong"] > 0 and report["clips_wrong"] >= report["requests_wrong"]
    assert report["errors"] > 0 and report["error_messages"]
    assert all(message.startswith("RuntimeError: routes of another call") for message in report["error_messages"])
    assert report["requests_correct"] > 0 and report["repeat_mismatches"] == 0
    assert not serving.goals(report)[0][2] and not serving.goals(report)[1][2]


def test_load_test_warms_up_under_the_same_checks():
    requests = serving.make_requests(["a", "b"], count=4, max_batch=3, samples=100)
    report = serving.load_test(_FlakyServer(), requests, threads=2, duration=0.2, atol=1e-6, warmup=0.2)
    assert report["warmup_requests"] > 0 and report["warmup_errors"] > 0 and report["warmup_clips_wrong"] > 0
    assert report["rss_before_threads_bytes"] > 0 and report["rss_start_bytes"] > 0


def test_hot_path_mode_reports_both_goals(tmp_path):
    md, js = tmp_path / "hot.md", tmp_path / "hot.json"
    rows = serving.main(["--hot_path", "--backbones", "tiny", "--tiny_rounds", "2", "--seconds", "0.5",
                         "--markdown", str(md), "--json", str(js)])
    (row,) = rows
    assert row["backbone"] == "tiny" and row["rounds"] == 2 and all(row[f"{name}_s"] > 0 for name in (
        "plain_1", "linear_1", "lora_1", "single_1", "mixed_8", "one_task_8", "single_8"))
    text = md.read_text()
    assert text.startswith("Measured ") and "per-call overhead at batch 1" in text and "mixed batch of 8" in text
    overhead = 100 * (row["linear_1_s"] / row["plain_1_s"] - 1)
    assert f"{overhead:+.1f} %" in text
    assert json.loads(js.read_text())["hot_path"][0]["mixed_8_s"] == row["mixed_8_s"]


def test_clip_differences_flag_labels_and_tolerance():
    reference = ([torch.tensor([-0.1, -2.0]), torch.tensor([-1.0, -0.5])], ["a", "b"])
    close = ([torch.tensor([-0.1, -2.0 + 1e-7]), torch.tensor([-1.0, -0.5])], ["a", "b"])
    relabelled = ([torch.tensor([-0.1, -2.0]), torch.tensor([-1.0, -0.5])], ["a", "a"])
    assert max(serving.clip_differences(close, reference)) < 1e-6
    assert serving.clip_differences(relabelled, reference)[1] == float("inf")
    assert serving.clip_differences(([reference[0][0]], ["a"]), reference) == [float("inf")] * 2


def test_table_mode_still_runs(tmp_path):
    md = tmp_path / "table.md"
    rows = serving.main(["--tasks", "1,2", "--backbone", "tiny", "--repeats", "1", "--clips_per_task", "1",
                         "--markdown", str(md)])
    assert [row["tasks"] for row in rows] == [1, 2]
    assert rows[1]["shared_bytes"] < rows[1]["separate_bytes"]
    assert md.read_text().startswith("Measured ") and "| 2 |" in md.read_text()


@pytest.mark.parametrize("argv", [
    ["--threads", "0"], ["--threads", "2", "--load_tasks", "9"], ["--threads", "2", "--duration", "0"],
    ["--tasks", "0,2"], ["--threads", "2", "--warmup", "-1"], ["--hot_path", "--threads", "2"],
    ["--hot_path", "--backbones", "huge"],
])
def test_serving_refuses_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serving.parse_args(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_counting_backend_sees_a_recompilation():
    """The counter behind the compile report: one graph on the first call,
    none on a repeat, one more (with its guard failure) for a new constant."""
    torch._dynamo.reset()
    backend = compile_report.CountingBackend("eager")
    compiled = torch.compile(lambda x, n: x.sin() * n, backend=backend)
    x = torch.randn(3)
    with compile_report.RecompileReasons() as reasons:
        rows = compile_report.graphs_per_call(compiled, [(0, (x, 2), {}), (1, (x, 2), {}), (2, (x, 3), {})],
                                              backend, reasons)
    torch._dynamo.reset()
    assert [row["graphs"] for row in rows] == [1, 0, 1]
    assert rows[0]["recompile_reasons"] == [] and rows[1]["recompile_reasons"] == []
    assert any("n == 2" in reason for reason in rows[2]["recompile_reasons"])


def test_recompile_limit_hits_are_reported():
    """Past dynamo's recompile limit a function runs eagerly (no more graphs): the report names it."""
    torch._dynamo.reset()
    backend = compile_report.CountingBackend("eager")

    def doubled(x):
        return 2 * x

    compiled = torch.compile(doubled, backend=backend, dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=2), compile_report.RecompileReasons() as reasons:
        rows = compile_report.graphs_per_call(
            compiled, [(n, (torch.randn(n),), {}) for n in (1, 2, 3, 4)], backend, reasons)
    torch._dynamo.reset()
    assert [row["graphs"] for row in rows] == [1, 1, 0, 0]
    assert [len(row["recompile_limit_hits"]) for row in rows] == [0, 0, 1, 0]
    assert "doubled" in rows[2]["recompile_limit_hits"][0]


def test_compile_report_on_tiny_ast(tmp_path):
    """One entry per block, integer counts, in both parts and both scopes."""
    md, js = tmp_path / "compile.md", tmp_path / "compile.json"
    report = compile_report.main([
        "--backbone", "tiny", "--single", "lora", "--tasks", "lora,bitfit", "--mixes", "0", "--calls", "2",
        "--markdown", str(md), "--json", str(js),
    ])
    layers = list(range(tiny_config("ast").num_hidden_layers))
    single, many = report["single"], report["multitask"]
    for blocks in (single["blocks"], many["blocks"]):
        assert [row["block"] for row in blocks] == layers
        for row in blocks:
            assert all(_is_count(row[key]) for key in ("passes", "graphs", "breaks"))
            assert row["passes"] >= 1 and row["graphs"] >= row["passes"]
            assert all(_is_count(count) and count > 0 for count in row["reasons"].values())
    assert _is_count(single["whole_lobe"]["graphs"]) and _is_count(single["whole_lobe"]["breaks"])
    assert len(single["calls"]) == 2 and single["calls"][0]["graphs"] >= 1
    assert set(many["scopes"]) == {"classify_batch", "blocks"}
    mixes = compile_report.task_mixes(["lora", "bitfit"], 4, 0)
    for scope in many["scopes"].values():
        calls = scope["calls"]
        assert [row["call"] for row in calls] == [" ".join(mix) for mix in mixes]
        assert all(_is_count(row["graphs"]) and _is_count(row["unique_graphs"]) for row in calls)
        assert scope["first_call_graphs"] == calls[0]["graphs"] >= 1
        assert scope["later_graphs"] == sum(row["graphs"] for row in calls[1:])
        assert scope["recompiles_after_first_call"] == sum(row["graphs"] > 0 for row in calls[1:])
        assert scope["recompile_limit_hits"] == sum(len(row["recompile_limit_hits"]) for row in calls)
    text = md.read_text()
    assert text.startswith("Measured ") and "`python benchmarks/compile_report.py --backbone tiny" in text
    assert text.count("| 0 | ") >= 2 and text.count("| 1 | ") >= 2  # a row per block, in both parts
    assert json.loads(js.read_text())["multitask"]["scopes"]["blocks"]["later_graphs"] == \
        many["scopes"]["blocks"]["later_graphs"]


def test_compile_report_refuses_bad_arguments(capsys):
    for argv in (["--tasks", "lora,nope"], ["--single", "", "--tasks", ""], ["--scopes", "heads"]):
        with pytest.raises(SystemExit) as exit_info:
            compile_report.parse_args(argv)
        assert exit_info.value.code == 2
    assert "unknown recipe yamls ['nope']" in capsys.readouterr().err
