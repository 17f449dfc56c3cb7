"""The package's layout (docs/layout.md): rooms grouped by job, each room
importing only from the rooms below it, no import cycle, a one-line purpose
at the top of every subpackage, and few modules at the root."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "speechbrain_petl"

#: Rooms from the top down (docs/layout.md); rooms on one floor do not import each other.
FLOORS = [
    ["perf"],
    ["training", "export"],
    ["inference"],
    ["studies"],
    ["backbones"],
    ["methods"],
    ["data", "hyperyaml", "sites"],
]
FLOOR = {room: level for level, rooms in enumerate(reversed(FLOORS)) for room in rooms}


def module_name(path):
    """``speechbrain_petl/a/b.py`` -> ``speechbrain_petl.a.b`` (``__init__`` -> the package)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules():
    """``{module name: path}`` of every module of the package."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path, known):
    """The package modules ``path`` imports, at any depth of its code
    (``from a import b`` counts as ``a.b`` when that is a module)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known}


def graph():
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def room(module):
    """The room of a module: its first-level subpackage or root module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(edges):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_every_room_imports_only_from_rooms_below_it():
    upward = []
    for module, targets in graph().items():
        here = room(module)
        if here is None:  # speechbrain_petl/__init__.py
            assert not targets, targets
            continue
        assert here in FLOOR, f"{module}: room '{here}' is not in docs/layout.md's floors"
        for target in targets:
            there = room(target)
            if there != here and not FLOOR[there] < FLOOR[here]:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def test_the_floors_are_the_ones_docs_layout_draws():
    text = (PACKAGE.parent / "docs" / "layout.md").read_text()
    drawn = [line for line in text.splitlines() if line.split("|")[1:2] and line.split("|")[1].strip().isdigit()]
    rooms = [[cell.strip(" `/").removesuffix(".py") for cell in line.split("|")[2].split(",")] for line in drawn]
    assert [sorted(r) for r in rooms] == [sorted(r) for r in FLOORS]


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_subpackage_says_in_one_line_what_it_is_for(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc, package
    first = doc.splitlines()[0]
    assert first.endswith(".") and len(first) <= 140, first


def test_the_root_keeps_a_handful_of_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "hyperyaml.py", "sites.py"]
