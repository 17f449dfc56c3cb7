"""Installs speechbrain_petl: PETL of frozen audio transformers for SpeechBrain."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def requirements():
    """Runtime requirements (the test-only ones are left to requirements.txt)."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    runtime = []
    for line in lines:
        line = line.strip()
        if line.startswith("# Tests"):
            break
        if line and not line.startswith("#"):
            runtime.append(line)
    return runtime


setup(
    name="speechbrain_petl",
    version="0.1.0",
    description=(
        "Parameter-efficient transfer learning (LoRA, adapters, prompts, "
        "prefixes, BitFit) of frozen AST and Wav2Vec2 for SpeechBrain"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["speechbrain_petl", "speechbrain_petl.*"]),
    package_data={"speechbrain_petl": ["backbones/configs/*.json"]},
    python_requires=">=3.9",
    install_requires=requirements(),
)
