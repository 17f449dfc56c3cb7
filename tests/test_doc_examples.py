"""The README's and docs/inference.md's inference examples run as written:
their code blocks are executed in a folder laid out as the quickstart
leaves it (``results/quickstart/1986/...``), with inference folders of a
tiny AST in place of the trained ones."""

import pathlib
import re

import numpy as np
import soundfile as sf
import torch

from method_zoo import ALL_METHODS, perturb_petl_
from speechbrain_petl.backbones import AST
from speechbrain_petl.inference import label_encoder, write_inference_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = pathlib.Path("results/quickstart/1986")
#: The quickstart's target tasks the examples name, and the method each stands for here.
TARGETS = {"linear": "linear", "lora": "lora", "bottleneck": "bottleneck_pfeiffer_parallel",
           "conformer": "conformer_pfeiffer_parallel"}


def python_block(markdown, marker):
    """The one ```python block of ``markdown`` that contains ``marker``."""
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", markdown, re.DOTALL | re.MULTILINE) if marker in b]
    assert len(blocks) == 1, f"expected one python block with {marker!r}, found {len(blocks)}"
    return blocks[0]


def lay_out_quickstart_results(root, tiny_ast_dir):
    """Inference folders where the quickstart writes them, and its new clip."""
    for seed, (name, method) in enumerate(TARGETS.items()):
        lobe = AST(str(tiny_ast_dir), max_frames=64, petl=ALL_METHODS[method]())
        perturb_petl_(lobe, seed=seed)
        torch.manual_seed(seed)
        head = torch.nn.Linear(lobe.hidden_size, 10)
        write_inference_folder(root / RUNS / "target" / f"target_{name}" / "inference", lobe, head,
                               label_encoder([f"class{i}" for i in range(10)]))
    lobe = AST(str(tiny_ast_dir), max_frames=48, petl=ALL_METHODS["lora"]())
    write_inference_folder(root / "results/esc50/1986/inference", lobe, torch.nn.Linear(lobe.hidden_size, 5),
                           label_encoder([f"sound{i}" for i in range(5)]))
    clip = 0.1 * np.random.default_rng(0).standard_normal(16000).astype("float32")
    sf.write(root / RUNS / "new_clip.wav", clip, 16000)


def test_the_readme_and_many_tasks_examples_run_as_written(tmp_path, tiny_ast_dir, monkeypatch):
    lay_out_quickstart_results(tmp_path, tiny_ast_dir)
    monkeypatch.chdir(tmp_path)
    readme = python_block((REPO / "README.md").read_text(), "AudioClassifier.from_hparams")
    namespace = {}
    exec(compile(readme, "README.md", "exec"), namespace)
    assert namespace["labels"][0] in {f"class{i}" for i in range(10)}

    inference = (REPO / "docs/inference.md").read_text()
    many = python_block(inference, "MultiTaskClassifier.from_folders({")
    namespace = {}
    exec(compile(many, "docs/inference.md", "exec"), namespace)
    server, labels = namespace["server"], namespace["labels"]
    assert sorted(server.tasks) == sorted(TARGETS) and len(labels) == 4
    assert namespace["files"][3][0] in {f"class{i}" for i in range(10)}

    swap = python_block(inference, "server.add_task(")
    exec(compile(swap, "docs/inference.md", "exec"), namespace)
    assert sorted(server.tasks) == sorted({"esc50", *TARGETS} - {"lora"})
    _, _, _, labels = server.classify_batch(torch.randn(2, 16000), tasks=["esc50", "conformer"])
    assert labels[0].startswith("sound") and labels[1].startswith("class")
