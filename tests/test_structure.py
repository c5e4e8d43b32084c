"""The shape of the package: data flows one way, modules stay readable, shipped files speak of the project.

Imports are read from the source (function-level ones included), so a cycle hidden inside a function
fails here as surely as one at the top of a module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dyntrain"
# Lowest first: a module may import only modules of lower layers (and the package, for __version__).
LAYERS = [
    {"sampling", "augment"},
    {"config", "sampler"},
    {"data", "runs", "model"},
    {"engine", "tables", "spaces"},
    {"figures", "bench", "claims"},
    {"page"},
    {"live", "console"},
    {"tune"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def imports(path: Path) -> set[str]:
    """dyntrain modules `path` imports, anywhere in the file ("" for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dyntrain":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from dyntrain import x: x is a module or a name of the package
                found |= {a.name if (PACKAGE / f"{a.name}.py").exists() else "" for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "dyntrain":
                    found.add(parts[1] if len(parts) > 1 else "")
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    return {("" if p.stem == "__init__" else p.stem): imports(p) for p in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer():
    assert set(graph()) - {""} == set(LAYER)


def test_modules_import_only_downwards():
    upward = [(m, d) for m, deps in graph().items() if m for d in deps
              if d and LAYER[d] >= LAYER[m]]
    assert not upward, f"imports that do not flow down the layers: {upward}"


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(dep):], dep]) if dep in path
                            else f"import cycle through {dep}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_the_engine_knows_nothing_of_its_users():
    g = graph()
    below = {d for d in g["engine"]}
    assert below <= {"augment", "config", "data", "model", "runs", "sampling"}, below
    assert not g["runs"] - {"config"} and not g["sampling"]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_stay_readable(path):
    assert len(path.read_text().splitlines()) <= 400


def test_benchmarks_stay_small():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "benchmarks").glob("*.py"))
    assert lines < 500, f"benchmarks/ holds {lines} lines of Python"


SHIPPED = ["dyntrain", "benchmarks", "tune_scripts", "docs", "results", "README.md"]
OFF_TOPIC = re.compile(r"\b[Ii]ssues? #?\d+|#\d{1,3}\b(?![0-9a-fA-F])|\blent\b|\blends?\b|\bdevice tool\b|\bfiles_at\b")


def test_shipped_files_speak_of_the_project_alone():
    offenders = []
    for top in SHIPPED:
        root = ROOT / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            if p.suffix not in (".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".css", ".js", ".csv"):
                continue
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                if OFF_TOPIC.search(line) and "#" + "{" not in line:
                    offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


def test_shipped_files_are_files_not_links():
    """`ray up` copies the checkout without results/ and data/: a link into them dangles on the nodes (and
    Ray's autoscaler fails hashing it)."""
    links = [str(p.relative_to(ROOT)) for top in SHIPPED for p in [ROOT / top, *(ROOT / top).rglob("*")] if p.is_symlink()]
    assert not links, links
