"""Installs speechbrain_petl: PETL of frozen audio transformers for SpeechBrain."""

import pathlib
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).parent

#: The recipe yamls the benchmark (``python -m speechbrain_petl.perf.bench``)
#: builds its models from, shipped beside it so that an installed package
#: runs it outside this checkout.
BENCH_YAMLS = HERE / "recipes" / "Google-speech-commands" / "PETL" / "hparams"
BENCH_YAMLS_IN_PACKAGE = pathlib.Path("speechbrain_petl", "perf", "recipe_hparams")


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


class BuildWithRecipeYamls(build_py):
    """``build_py`` that also copies the Speech Commands AST yamls into the
    built package (the recipes stay their only copy in the repository)."""

    def run(self):
        """Builds the package, then adds the benchmark's yamls to it."""
        super().run()
        yamls = sorted(p for p in BENCH_YAMLS.glob("*_gsc.yaml") if not p.name.startswith("w2v2_"))
        if not yamls:
            raise FileNotFoundError(f"No AST recipe yaml in {BENCH_YAMLS}: the benchmark needs them.")
        dest = pathlib.Path(self.build_lib) / BENCH_YAMLS_IN_PACKAGE
        dest.mkdir(parents=True, exist_ok=True)
        for path in yamls:
            shutil.copyfile(path, dest / path.name)


setup(
    name="speechbrain_petl",
    version="0.1.0",
    description=(
        "Parameter-efficient transfer learning (LoRA, adapters, prompts, "
        "prefixes, BitFit) of frozen audio transformers for SpeechBrain"
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["speechbrain_petl", "speechbrain_petl.*"]),
    package_data={"speechbrain_petl": ["backbones/configs/*.json"]},
    cmdclass={"build_py": BuildWithRecipeYamls},
    python_requires=">=3.9",
    install_requires=requirements(),
)
