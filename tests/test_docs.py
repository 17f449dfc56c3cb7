"""README.md and docs/: the README's size, every relative link resolves,
every command shown runs as written (its ``--help``, its files), also from
a non-editable install outside the checkout."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from speechbrain_petl.perf.bench import recipe_yamls as bench_yamls
from docs_commands import PAGES, REPO, commands, package_modules

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: Lines that need what the tests do not have: a SpeechBrain checkout
#: (docs/recipes.md names it $SB) or a shell variable assignment.
NOT_RUN_HERE = ("PYTHONPATH=$SB",)


def anchors(page):
    """GitHub's anchors of a markdown page's headings."""
    slugs = set()
    for line in page.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_readme_is_at_most_15_kb_and_setup_ships_it():
    assert len((REPO / "README.md").read_bytes()) <= 15 * 1024
    assert '(HERE / "README.md").read_text()' in (REPO / "setup.py").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, broken


def test_anchors_follow_github():
    page = REPO / "docs" / "architecture.md"
    assert "wiring-a-petl-method" in anchors(page)


def _help(args, cwd, env=None):
    done = subprocess.run([sys.executable, *args, "--help"], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(args)} --help in {cwd}:\n{done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower(), done.stdout[:500]


def test_every_documented_command_runs_as_written():
    """Package commands answer --help; scripts and the yamls they are given
    exist where the page runs them; scripts run by python answer --help."""
    helped = set()
    for page, folder, words in commands():
        where = f"{page.relative_to(REPO)}: {' '.join(words)}"
        if words[0].startswith(NOT_RUN_HERE) or re.match(r"^\w+=", words[0]):
            continue
        for word in words:
            if word.endswith(".yaml") and "/" in word and not word.startswith(("$", "<")):
                assert (folder / word).is_file(), f"{where}: no {folder / word}"
        if words[0] in ("torchrun", "srun"):
            script = next(w for w in words if w.endswith(".py"))
            assert (folder / script).is_file(), f"{where}: no {folder / script}"
        elif words[0] == "pip":
            assert (folder / words[words.index("-r") + 1]).is_file(), where
        elif words[0] == "python":
            target = words[1:3] if words[1] == "-m" else words[1:2]
            if target != ["-m", "pytest"] and (str(folder), *target) not in helped:
                if target[0] != "-m":
                    assert (folder / target[0]).is_file(), f"{where}: no {folder / target[0]}"
                _help(target, folder)
                helped.add((str(folder), *target))
        else:
            raise AssertionError(f"{where}: a command this test does not know how to check")
    assert len(helped) >= 8


def test_installed_package_answers_help_outside_the_checkout(tmp_path):
    """The documented package commands from a non-editable install, run
    from a folder outside the checkout (the benchmark finds its yamls there)."""
    source = tmp_path / "source"  # a copy: building writes build/ beside setup.py
    source.mkdir()
    for name in ("setup.py", "requirements.txt", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "speechbrain_petl", source / "speechbrain_petl", ignore=shutil.ignore_patterns("__pycache__"))
    hparams = pathlib.Path("recipes", "Google-speech-commands", "PETL", "hparams")
    shutil.copytree(REPO / hparams, source / hparams)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import json, speechbrain_petl.perf.bench as b; "
         "print(json.dumps([b.__file__, str(b.DEFAULT_HPARAMS), sorted(b.recipe_yamls(b.DEFAULT_HPARAMS))]))"],
        cwd=outside, env=env, capture_output=True, text=True, check=True,
    )
    module_file, hparams, methods = json.loads(where.stdout)
    assert module_file.startswith(str(site)) and hparams.startswith(str(site))
    # the paper's 11 rows and the two mixtures of adapters: every AST yaml of the checkout's folder is shipped
    assert methods == sorted(bench_yamls(REPO / "recipes" / "Google-speech-commands" / "PETL" / "hparams"))
    assert len(methods) == 13
    modules = package_modules()
    assert "speechbrain_petl.export" in modules and len(modules) >= 6
    for module in modules:
        _help(["-m", module], outside, env)
