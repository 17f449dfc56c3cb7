"""A recipe under torchrun: 2 CPU processes with the gloo backend, chosen
automatically on a machine without CUDA (docs/distributed.md's command as is)."""

import os
import shutil
import socket
import subprocess
import sys

import torch

from mini_datasets import make_speech_commands
from recipe_utils import REPO

TESTS = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run(tmp_path, tiny_ast_dir):
    data = make_speech_commands(tmp_path / "speech_commands_v0.02")
    out, probe = tmp_path / "out", tmp_path / "probe"
    probe.mkdir()
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    # docs/distributed.md's CPU command as written (train.py run through the probe,
    # which calls the same main and saves each rank's tensors), plus the
    # test's data, backbone and output folders.
    readme = (REPO / "docs" / "distributed.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("torchrun --nproc_per_node=2 train.py"))
    _, nproc, script, yaml, data_arg = line.split()
    assert (script, data_arg) == ("train.py", "--data_folder=$GSC")
    cmd = [
        torchrun, nproc, "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        os.path.join(TESTS, "ddp_probe.py"),
        "Google-speech-commands", str(probe),
        str(REPO / "recipes" / "Google-speech-commands" / "PETL" / yaml),
        f"--data_folder={data}", f"--backbone_source={tiny_ast_dir}", f"--output_folder={out}",
        "--num_workers=0", "--number_of_epochs=2", "--batch_size=8",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # a CPU-only machine
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    # Both ranks trained the same PETL tensors (gradients are averaged) and
    # hold the same BatchNorm statistics (taken over both ranks' frames) ...
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and any(".batch_norm.running_mean" in k for k in rank0)
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    # ... which moved away from their zero initialisation.
    assert any(v.abs().sum() > 0 for k, v in rank0.items() if "pointwise_out.weight" in k)

    # Only rank 0 wrote logs and checkpoints: each epoch once, one checkpoint set.
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1 and log.count("test acc") == 1
    checkpoints = list((out / "save").glob("CKPT*"))
    assert 1 <= len(checkpoints) <= 2  # best and latest
    assert (out / "test_predictions.csv").is_file()
