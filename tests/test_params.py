"""`python -m speechbrain_petl.studies.params` on every recipe yaml, with the paper's
exact budgets for AST-base."""

import json
import os
import subprocess
import sys

import pytest

from method_zoo import PAPER_METHODS
from recipe_table import PARAMS, TRAIN_ROWS, backbone_kind, row_id
from speechbrain_petl.studies.params import load_modules, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: AST-base with the paper's settings (NOTES.md section 2): trainable PETL
#: parameters, LayerNorms trained with each adapter included.
PAPER_BUDGETS = {
    "bitfit_gsc.yaml": 102_144,
    "prompt_shallow_gsc.yaml": 230_400,
    "prompt_deep_gsc.yaml": 230_400,
    "prefix_gsc.yaml": 221_184,
    "lora_gsc.yaml": 221_184,
    "bottleneck_gsc.yaml": 248_976,
    "bottleneck_houlsby_gsc.yaml": 497_952,
    "conformer_gsc.yaml": 270_720,
    "conformer_houlsby_gsc.yaml": 541_440,
}


def recipe_yaml(row):
    return os.path.join(ROOT, row["Hparam_file"])


@pytest.mark.parametrize("row", TRAIN_ROWS, ids=[row_id(r) for r in TRAIN_ROWS])
def test_params_report_of_every_recipe(row, capsys, tiny_ast_dir):
    argv = [recipe_yaml(row), "--pretrained=False"]
    if "backbone_source: !PLACEHOLDER" in open(recipe_yaml(row)).read():
        argv.append(f"--backbone_source={tiny_ast_dir}")  # quickstart: the stage-1 AST
    summary = report(load_modules(argv))
    name = row_id(row)
    budget = PARAMS[row["Hparam_file"]]
    if name in PAPER_BUDGETS:
        assert summary["petl"] == PAPER_BUDGETS[name]
    if budget["Petl_params"]:
        assert summary["petl"] == int(budget["Petl_params"])
        assert summary["head"] == int(budget["Head_params"])
    else:
        assert summary["petl"] > 0 and summary["head"] > 0
    assert summary["total"] == summary["petl"] + summary["head"] + summary["frozen"]
    if "full" in name.split("_"):
        # AST: nothing; the waveform encoders: their CNN; Whisper: its fixed sinusoidal positions
        assert summary["frozen"] == {"ast": 0, "whisper": 1500 * 512}.get(backbone_kind(row), 4_200_448)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


@pytest.mark.parametrize(
    "hparams, n_classes, expected",
    [("Google-speech-commands/PETL/hparams/linear_gsc.yaml", 10, 9_226), ("ESC50/PETL/hparams/linear_esc50.yaml", 50, 39_986)],
)
def test_linear_probing_budget_from_the_command_line(hparams, n_classes, expected, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechbrain_petl.studies.params",
            os.path.join(ROOT, "recipes", hparams),
            "--pretrained=False",
            f"--n_classes={n_classes}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["petl"] + summary["head"] == expected
    assert summary["petl"] == 1_536
    assert "petl 'linear': LinearProbing" in result.stdout
    assert not list(tmp_path.iterdir())  # nothing written


def test_yaml_without_modules_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_classes: 3\n")
    with pytest.raises(KeyError, match="no 'modules' key"):
        load_modules([str(bad)])


def test_readme_method_by_backbone_table_is_what_each_lobe_trains():
    """docs/architecture.md's method x backbone table: every method on every
    lobe (built on the meta device from the shipped configs), no empty cell."""
    import re

    import torch

    from speechbrain_petl.backbones import AST, HuBERT, Wav2Vec2, WavLM, WhisperEncoder

    lobes = [
        lambda: AST(pretrained=False, max_frames=100),
        lambda: Wav2Vec2(pretrained=False),
        lambda: HuBERT(pretrained=False),
        lambda: WavLM(pretrained=False),
        lambda: WhisperEncoder(pretrained=False),
    ]
    readme = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    table = {}
    for name in PAPER_METHODS:
        (line,) = [line for line in readme.splitlines() if line.startswith(f"| {name} | ") and line.count("|") == 7]
        table[name] = [int(cell.replace(",", "")) for cell in re.findall(r"\| ([\d,]+)", line)]
        assert len(table[name]) == len(lobes), line
    for column, make in enumerate(lobes):
        with torch.device("meta"):
            lobe = make()
        for name, method in PAPER_METHODS.items():
            lobe.attach(method(), "task")
            assert sum(p.numel() for p in lobe.parameters() if p.requires_grad) == table[name][column], (name, column)
            lobe.detach("task")
