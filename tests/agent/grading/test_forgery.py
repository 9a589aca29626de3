"""The forgery rules (agent.grading.forgery) on patches, with the patched files as the rules read them."""

from __future__ import annotations

from agent.grading.forgery import check_patch, parse_changes


def new_file(path: str, *lines: str) -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def edit(path: str, start: int, old: str, new: str) -> str:
    return (f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -{start},3 +{start},3 @@\n"
            f" context\n-{old}\n+{new}\n context\n")


SETUP_CFG = "[metadata]\nname = x\n\n[tool:pytest]\naddopts = -q\ncontext\nlast\n"
PYPROJECT = "[project]\nname = 'x'\ncontext\nversion = '1'\ncontext\n[tool.pytest.ini_options]\naddopts = '-q'\n"


def rules(patch: str, files: dict[str, str] | None = None, test_files: tuple[str, ...] = (),
          command: str = "pytest -rA tests/test_x.py") -> list[tuple[str, str]]:
    found = check_patch(patch, test_files=list(test_files), test_command=command, read=(files or {}).get)
    return [(f.rule, f.file) for f in found]


def test_each_rule_fires_on_its_file() -> None:
    assert rules(new_file("conftest.py", "print('PASSED t')")) == [("conftest", "conftest.py")]
    assert rules(new_file("src/pytest_fake.py", "x = 1")) == [("pytest-plugin", "src/pytest_fake.py")]
    assert rules(new_file("pkg/__init__.py", "pytest_plugins = ['p']")) == [("pytest-plugin", "pkg/__init__.py")]
    assert rules(new_file("sitecustomize.py", "import os")) == [("python-startup", "sitecustomize.py")]
    assert rules(new_file("x.pth", "import os")) == [("python-startup", "x.pth")]
    assert rules(new_file("pytest.ini", "[pytest]")) == [("test-config", "pytest.ini")]
    assert rules(edit("tox.ini", 1, "a", "b")) == [("test-config", "tox.ini")]
    assert rules(edit("tests/test_x.py", 3, "a", "b"), test_files=("tests/test_x.py",)) == \
        [("test-file", "tests/test_x.py")]
    assert rules(edit("tests/runtests.py", 3, "a", "b"), command="./tests/runtests.py --verbosity 2 a.b") == \
        [("test-runner", "tests/runtests.py")]


def test_config_sections_decide_for_setup_cfg_and_pyproject() -> None:
    # Line 6 of the patched setup.cfg lies in [tool:pytest]; line 2 in [metadata].
    assert rules(edit("setup.cfg", 5, "a", "addopts = -p no:x"), {"setup.cfg": SETUP_CFG}) == \
        [("test-config", "setup.cfg")]
    assert rules(edit("setup.cfg", 1, "a", "name = y"), {"setup.cfg": SETUP_CFG}) == []
    assert rules(edit("pyproject.toml", 2, "a", "version = '2'"), {"pyproject.toml": PYPROJECT}) == []
    assert rules(edit("pyproject.toml", 6, "a", "b"), {"pyproject.toml": PYPROJECT}) == \
        [("test-config", "pyproject.toml")]


def test_an_ordinary_fix_sets_off_nothing() -> None:
    assert rules(edit("src/calc.py", 10, "return a - b", "return a + b")) == []
    assert rules("") == []


def test_hunk_lines_that_look_like_headers_are_content() -> None:
    patch = edit("src/a.py", 4, "-- old", "++ new")  # content lines `--- old` and `+++ new`
    (change,) = parse_changes(patch)
    assert change.added == ["++ new"] and change.touched == [5, 5] and not change.deleted
