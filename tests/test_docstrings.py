"""Every module, class and public function of the package and the recipes has
a docstring (the rule SpeechBrain's docstring check enforces upstream)."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path for folder in ("speechbrain_petl", "recipes") for path in (REPO / folder).rglob("*.py")
    if not path.is_symlink() and "results" not in path.parts
)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_public_code_has_docstrings(path):
    tree = ast.parse(path.read_text())
    missing = [] if ast.get_docstring(tree) else ["<module>"]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # SpeechBrain's check skips private functions, never a class
            private = node.name.startswith("_") and not isinstance(node, ast.ClassDef)
            if not private and not ast.get_docstring(node):
                missing.append(f"{node.name} (line {node.lineno})")
    assert not missing, f"{path.relative_to(REPO)}: no docstring for {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_docstrings_open_with_a_summary_line(path):
    """SpeechBrain's line-based check skips lines holding ``...`` or ``>>>``: a
    docstring whose first line holds one reads as missing there."""
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and ("..." in doc.split("\n")[0] or ">>>" in doc.split("\n")[0]):
                bad.append(getattr(node, "name", "<module>"))
    assert not bad, f"{path.relative_to(REPO)}: first docstring line holds '...' or '>>>' in {bad}"
