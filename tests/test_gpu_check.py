"""benchmarks/gpu_check.sh runs end to end on CPU with --dry-run and writes
one markdown report holding every part it runs."""

import os
import subprocess
import sys


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    assert "with `benchmarks/gpu_check.sh --dry-run " in report and "no GPU (dry run on CPU)" in report
    assert "## Bench, 64 frames, batch 2, bf16" in report
    for method in ("full", "lora", "bottleneck", "conformer"):
        assert f"| {method} | " in report
    assert "## One epoch of the Speech Commands LoRA recipe" in report and "test acc" in report
    assert "## Multi-task serving" in report and "| 8 | " in report
    assert report.count("Wall time: ") == 3


def test_gpu_check_refuses_a_missing_output_folder():
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: benchmarks/gpu_check.sh" in done.stderr
