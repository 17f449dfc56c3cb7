"""benchmarks/reference_step.py without the reference repository: its
argument checks, the mapping of our methods onto the reference's classes,
and the table it prints."""

import importlib.util
import pathlib

import pytest
import torch

from speechbrain_petl.perf import bench

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "samples" / "tiny_ast")


def _load_script():
    spec = importlib.util.spec_from_file_location("reference_step", REPO / "benchmarks" / "reference_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_script()


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        ref.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_reference_dir_is_named(tmp_path, capsys):
    missing = tmp_path / "PETL_AST"
    err = _error(capsys, ["--reference-dir", str(missing)])
    assert f"--reference-dir {missing}: no such folder" in err
    assert "--reference-dir is required" in _error(capsys, ["--methods", "lora"])


def test_reference_dir_without_their_files_names_them(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "AST.py").write_text("")
    err = _error(capsys, ["--reference-dir", str(tmp_path), "--methods", "full,lora,conformer"])
    assert str(tmp_path) in err
    assert "['src/AST_LoRA.py', 'src/AST_adapters.py']" in err
    args = ref.parse_args(["--reference-dir", str(tmp_path), "--methods", "full,bitfit", "--threads", "1"])
    assert args.methods == ["full", "bitfit"] and args.reference_dir == str(tmp_path.resolve())
    assert args.sittings == 3 and args.threads == 1 and args.ours_dtypes == ["fp32", "bf16"]
    assert "--ours-dtypes takes fp32 and/or bf16" in _error(
        capsys, ["--reference-dir", str(tmp_path), "--methods", "full", "--ours-dtypes", "fp16"])


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lora,dora"], "--methods: unknown ['dora']"),
    (["--sittings", "0"], "--sittings must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--reference-python", "/no/such/python"], "--reference-python /no/such/python: no such executable"),
])
def test_bad_options_are_named(tmp_path, capsys, argv, message):
    (tmp_path / "src").mkdir()
    for name in ("AST.py", "AST_LoRA.py"):
        (tmp_path / "src" / name).write_text("")
    assert message in _error(capsys, ["--reference-dir", str(tmp_path), "--methods", "lora", *argv])


def test_every_paper_row_has_a_reference_class():
    assert list(ref.METHODS) == bench.PAPER_METHODS
    assert {module for module, _, _ in ref.METHODS.values()} == {
        "src.AST", "src.AST_LoRA", "src.AST_adapters", "src.AST_prompt_tuning"}


def test_reference_sizes_are_reduction_rates():
    lora = ref.reference_model("lora", {"rank": 6, "alpha": 0.75, "layers": None})
    assert (lora["module"], lora["class"]) == ("src.AST_LoRA", "AST_LoRA")
    rate, alpha = lora["kwargs"]["rank"], lora["kwargs"]["alpha"]
    assert (rate, round(768 / rate)) == (128, 6)
    assert alpha / rate == pytest.approx(0.75 / 6)  # same scaling as ours
    houlsby = ref.reference_model("conformer_houlsby", {
        "block": "ConformerAdapter", "bottleneck": 8, "kernel_size": 31, "placement": "houlsby", "mode": "parallel"})
    assert houlsby["kwargs"] == {
        "final_output": "ALL", "reduction_rate": 96, "adapter_type": "Houlsby", "seq_or_par": "parallel",
        "apply_residual": False, "adapter_block": "conformer", "kernel_size": 31}
    pfeiffer = ref.reference_model("bottleneck", {
        "block": "BottleneckAdapter", "bottleneck": 12, "placement": "pfeiffer", "mode": "parallel"})
    assert (pfeiffer["kwargs"]["reduction_rate"], pfeiffer["kwargs"]["adapter_type"]) == (64, "Pfeiffer")
    shallow = ref.reference_model("prompt_shallow", {"length": 300, "deep": False, "layers": [0]})
    assert shallow["prompt_config"] == {"NUM_TOKENS": 300, "DEEP": False, "FINAL_OUTPUT": "ALL"}
    assert ref.reference_model("prefix", {"length": 24})["kwargs"]["num_tokens"] == 24
    assert [ref.reference_model(m, {})["trainable"] for m in ("full", "linear", "bitfit")] == [
        "all", "linear", "bitfit"]


@pytest.mark.parametrize("method, settings, message", [
    ("bottleneck", {"block": "BottleneckAdapter", "bottleneck": 500, "placement": "pfeiffer", "mode": "parallel"},
     "no k gives 500"),
    ("lora", {"rank": 6, "alpha": 0.75, "layers": [9, 10, 11]}, "restricts it to layers [9, 10, 11]"),
    ("lora", {"alpha": 0.75}, "no 'rank'"),
    ("dora", {}, "no counterpart of 'dora'"),
])
def test_mapping_errors_name_the_problem(method, settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ref.reference_model(method, settings)


def test_every_gsc_yaml_maps_onto_the_reference(tmp_path):
    """The settings read from our yamls (tiny backbone: the sizes are the
    yamls') all have a reference build; the reference's input is our fbank."""
    yamls = bench.recipe_yamls(bench.DEFAULT_HPARAMS)
    builds = {}
    for method in ref.METHODS:
        path = tmp_path / f"{method}.pt"
        recipe = ref.recipe_settings(yamls[method], 100, 2, 0, path, backbone_source=TINY)
        builds[method] = ref.reference_model(method, recipe["settings"])
        assert recipe["n_classes"] == 35 and recipe["optimizer"]["betas"] == [0.9, 0.98]
    saved = torch.load(path)
    assert saved["features"].shape == (2, 100, 128) and saved["labels"].shape == (2,)
    assert builds["lora"]["kwargs"]["rank"] == 128
    assert builds["conformer"]["kwargs"]["reduction_rate"] == 96
    assert builds["bottleneck_houlsby"]["kwargs"]["reduction_rate"] == 64
    assert builds["prompt_deep"]["prompt_config"]["NUM_TOKENS"] == 25


def _side(step, features=0.0, trainable=10, peak=1e9):
    return {"step_s": step, "features_s": features, "net_s": step - features, "trainable": trainable,
            "peak_bytes": peak}


def test_summary_takes_medians_over_sittings():
    sittings = [
        {"ours": _side(2.0, 0.2, peak=1.0e9), "theirs": _side(4.0, trainable=12, peak=2e9)},
        {"ours": _side(9.0, 0.3, peak=1.5e9), "theirs": _side(3.0, trainable=12, peak=2e9)},
        {"ours": _side(2.5, 0.1, peak=1.2e9), "theirs": _side(5.0, trainable=12, peak=2e9)},
    ]
    row = ref.summarise("lora", sittings)
    assert (row["ours_step_s"], row["theirs_step_s"], row["ours_features_s"]) == (2.5, 4.0, 0.2)
    assert row["ours_net_s"] == pytest.approx(2.4)  # median of 1.8, 8.7, 2.4 (per sitting)
    assert row["ratio"] == pytest.approx(2.5 / 4.0) and row["net_ratio"] == pytest.approx(2.4 / 4.0)
    assert (row["ours_peak_bytes"], row["theirs_trainable"], row["faster"]) == (1.5e9, 12, "yes")
    assert ref.summarise("full", [{"ours": _side(4.2, 0.4), "theirs": _side(4.0)}])["faster"] == "net only"
    assert ref.summarise("full", [{"ours": _side(5.0, 0.4), "theirs": _side(4.0)}])["faster"] == "no"


def test_markdown_table():
    rows = [
        ref.summarise("lora", [{"ours": _side(1.5, 0.05, 248099, 1.8e9), "theirs": _side(2.0, 0, 249635, 1.9e9)}]),
        ref.summarise("lora", [{"ours": _side(0.9, 0.05, 248099, 1.1e9), "theirs": _side(2.0, 0, 249635, 1.9e9)}],
                      "bf16"),
        ref.summarise("full", [{"ours": _side(15.0, 0.02, 85366307, 2.3e9),
                                "theirs": _side(14.0, 0, 85366307, 2.3e9)}]),
    ]
    report = {
        "machine": {"cpu": "Test CPU", "torch": "2.x", "transformers": "5.x"},
        "settings": {"batch": 8, "frames": 100, "steps": 5, "warmup": 2, "sittings": 3, "threads": 2,
                     "ours_dtypes": ["fp32", "bf16"]},
        "reference": {"dir": "/ref", "commit": "0123456789abcdef", "python": "/venv/bin/python",
                      "torch": "2.x", "transformers": "4.28.1"},
        "rows": rows,
    }
    lines = ref.markdown(report).splitlines()
    assert lines[0].startswith("Machine: Test CPU, 2 torch threads;") and "transformers 4.28.1" in lines[0]
    assert "at 0123456789." in lines[0]
    header = lines.index(ref.COLUMNS)
    assert lines[header + 1] == "|" + "---|" * 14
    assert lines[header + 2] == (
        "| lora | fp32 | AST_LoRA | 248,099 | 249,635 | 1.500 | 0.050 | 1.450 | 2.000 | 0.75 | 0.72 | 1,800 | 1,900 | yes |")
    assert lines[header + 3].startswith("| lora | bf16 | AST_LoRA |") and "| 0.45 | 0.42 |" in lines[header + 3]
    assert lines[header + 4].endswith("| 15.000 | 0.020 | 14.980 | 14.000 | 1.07 | 1.07 | 2,300 | 2,300 | no |")
    assert "theirs in fp32 (their code has no other mode), ours in fp32 and bf16" in lines[1]
    # With the bench's machine facts (what run() records), the ISA and matmul rates are named.
    report["machine"].update(isa={"flags": {"avx512_bf16": True, "amx_bf16": False}, "capability": "AVX512"},
                             matmul_gflops={"fp32": 214.2, "bf16": 884.4, "int8": 1935.0})
    assert ref.markdown(report).splitlines()[0].startswith(
        "Machine: Test CPU (avx512_bf16; torch CPU kernels: AVX512; matmul GFLOP/s: fp32 214, bf16 884), 2 torch threads;")


def test_the_reference_worker_imports_nothing_that_needs_transformers_5():
    """The reference's side runs this script under transformers 4.x, which the
    lobes (``speechbrain_petl.backbones``, e.g. Whisper's fbank) cannot import:
    the script's module-level imports must not pull them in."""
    import subprocess
    import sys

    code = (
        "import sys, runpy; sys.argv = ['reference_step.py']; "
        f"runpy.run_path({str(REPO / 'benchmarks' / 'reference_step.py')!r}, run_name='not_main'); "
        "loaded = sorted(m for m in sys.modules if m == 'transformers' or m.startswith('speechbrain_petl.backbones')); "
        "print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
