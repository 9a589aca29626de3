"""The import contracts hold, an arrow back up breaks them, and no module imports itself in a circle.

The contracts live in pyproject.toml ([tool.importlinter]); `.ci/run` runs `lint-imports` too. These
tests use the same tool (import-linter, and grimp, the graph it is built on), so what CI checks and
what the tests check cannot drift apart.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.helpers import REPO_ROOT

PACKAGES = ("agent", "tools", "sandbox", "traces", "images")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at `root` (its own pyproject.toml and packages)."""
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root)})


def test_contracts_are_kept() -> None:
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def _copy_tree(dest: Path) -> Path:
    for name in (*PACKAGES, "pyproject.toml"):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "examples", "static"))
        else:
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.parametrize(("module", "upward", "contract"), [
    ("traces/upward.py", "import agent.episode.solve", "stack"),  # the bottom reaching for the top
    ("tools/upward.py", "from agent.protocol import prompts", "stack"),
    ("sandbox/upward.py", "import tools.parser", "stack"),
    ("agent/episode/upward.py", "import agent.batch.run", "agent-layers"),  # episode above batch
    ("agent/models/upward.py", "import agent.cli.main", "agent-layers"),  # the library importing the CLI
    ("agent/viewer/upward.py", "import agent.batch.state", "agent-layers"),  # viewer independent of batch
    ("agent/serve/upward.py", "import agent.episode.loop", "agent-layers"),  # siblings stay independent
])
def test_an_arrow_back_up_breaks_a_contract(tmp_path: Path, module: str, upward: str, contract: str) -> None:
    tree = _copy_tree(tmp_path)
    (tree / module).write_text(f'"""A temporary module importing upward."""\n\n{upward}\n')
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout
    assert "BROKEN" in done.stdout and "1 broken" in done.stdout
    assert module.removesuffix(".py").replace("/", ".") in done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_anywhere() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The check above cannot pass vacuously: a planted circle is found."""
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle import b\n")
    (package / "b.py").write_text("from circle import c\n")
    (package / "c.py").write_text("import circle.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("circle", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert _cycles(graph) == [["circle.a", "circle.b", "circle.c"]]


def _top(module: str) -> str:
    return "/".join(module.split(".")[:2]) if module.startswith("agent.") else module.split(".")[0]


def test_the_architecture_page_shows_the_import_graph_as_it_is() -> None:
    """docs/architecture.md's table of arrows is the graph grimp builds, row for row."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    actual: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if _top(module) != _top(imported):
                actual.setdefault(_top(module), set()).add(_top(imported))
    documented: dict[str, set[str]] = {}
    page = (REPO_ROOT / "docs" / "architecture.md").read_text()
    for row in page.split("| package | imports |", 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]:
        names, imports = (cell.strip() for cell in row.strip("|").split("|"))
        listed = {name.strip() for name in imports.split("(")[0].split(",") if name.strip() != "nothing of ours"}
        for name in names.split(", "):
            if listed:
                documented[name] = listed
    assert documented == actual
