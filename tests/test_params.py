"""`python -m speechbrain_petl.params` reproduces the paper's exact budgets."""

import json
import os
import subprocess
import sys

import pytest

from speechbrain_petl.params import load_modules, report

HPARAMS = os.path.join(os.path.dirname(__file__), "hparams")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: AST-base, paper settings (NOTES.md section 2): trainable PETL parameters.
PAPER_BUDGETS = {
    "bitfit": 102_144,
    "prompt_shallow": 230_400,
    "prompt_deep": 230_400,
    "prefix": 221_184,
    "lora": 221_184,
    "bottleneck": 248_976,
    "bottleneck_houlsby": 497_952,
    "conformer": 270_720,
    "conformer_houlsby": 541_440,
}


@pytest.mark.parametrize("config", sorted(PAPER_BUDGETS))
def test_paper_budgets(config, capsys):
    modules = load_modules([os.path.join(HPARAMS, f"{config}.yaml"), "--pretrained=False"])
    summary = report(modules)
    assert summary["petl"] == PAPER_BUDGETS[config]
    assert summary["head"] == 768 * 35 + 35
    assert summary["frozen"] == 85_339_392  # AST-base at 100 frames
    assert summary["total"] == summary["petl"] + summary["head"] + summary["frozen"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


@pytest.mark.parametrize("n_classes, expected", [(10, 9_226), (50, 39_986)])
def test_linear_probing_budget_from_the_command_line(n_classes, expected):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechbrain_petl.params",
            os.path.join(HPARAMS, "linear.yaml"),
            "--pretrained=False",
            f"--n_classes={n_classes}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["petl"] + summary["head"] == expected
    assert summary["petl"] == 1_536
    assert "petl 'linear': LinearProbing" in result.stdout


def test_full_finetuning_trains_the_whole_backbone():
    summary = report(load_modules([os.path.join(HPARAMS, "full.yaml"), "--pretrained=False"]))
    assert summary["frozen"] == 0
    assert summary["petl"] == 85_339_392


def test_yaml_without_modules_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_classes: 3\n")
    with pytest.raises(KeyError, match="no 'modules' key"):
        load_modules([str(bad)])
