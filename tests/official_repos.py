"""Three small repositories in the shapes the official eval scripts expect, for the grading conformance tests.

Each pretends to be a SWE-bench repository at a version swebench 4.1.0 has a specification for, so
that the official eval script for it (test command, directives, install step) runs unchanged:

- `calc` as pytest-dev/pytest 5.4: `pytest -rA <test files>`, read by parse_log_pytest. Its tests
  include a parametrised test whose id holds a space, so the official parser cuts it, as 676 ids of
  SWE-bench Verified are cut.
- `django` as django/django 3.0: `./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1
  <module labels>`. The runner here is a small unittest driver that prints Django's verbose format
  (`test_x (module.Class) ... ok`, `FAIL: ...`, `... skipped 'why'`), read by parse_log_django; a
  skipped test is among its PASS_TO_PASS.
- `sympy` as sympy/sympy 1.5: `bin/test -C --verbose <files>`, a small driver printing sympy's format
  (`test_x ok`, `test_y F`, `____ path.py:test_y ____` headers), read by parse_log_sympy.

Each repository has a setup.py without pyproject.toml, so the scripts' `python -m pip install -e .`
works offline. `Case` holds one instance's fields; the tests make SWE-bench 4.x and 5 rows of them.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from pydantic import BaseModel

from tests.official_images import git

SETUP_PY = "from setuptools import setup, find_packages\n\nsetup(name={name!r}, version='1.0', packages=find_packages())\n"


class Case(BaseModel):
    """What the tests need of one repository: its instance fields and the image built from it."""

    name: str
    repo: str
    version: str
    path: Path
    base_commit: str
    patch: str
    test_patch: str
    wrong_patch: str
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        if name in ("tests/runtests.py", "bin/test"):
            target.chmod(0o755)


def _diff(repo: Path, files: dict[str, str], paths: list[str]) -> str:
    """The diff that `files` make to the committed tree, limited to `paths`; the tree is reset after."""
    _write(repo, files)
    diff = git(repo, "diff", "--", *paths) + "\n"
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--", "."], check=True)
    return diff


def _commit(repo: Path, files: dict[str, str]) -> str:
    _write(repo, files)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return git(repo, "rev-parse", "HEAD")


CALC_BASE = {
    "setup.py": SETUP_PY.format(name="calc"),
    ".gitignore": "calc/_version.py\n__pycache__/\n*.egg-info/\n",
    "calc/__init__.py": """\
        from calc._version import version as __version__


        def add(*numbers):
            total = numbers[0]
            for n in numbers[1:]:
                total -= n
            return total
        """,
    "tests/test_calc.py": """\
        import pytest

        from calc import __version__, add


        def test_version():
            assert __version__ == "1.0"


        @pytest.mark.skip(reason="needs a network")
        def test_remote():
            assert add(1) == 1
        """,
}
CALC_TESTS = """\
    import pytest

    from calc import __version__, add


    def test_version():
        assert __version__ == "1.0"


    @pytest.mark.skip(reason="needs a network")
    def test_remote():
        assert add(1) == 1


    def test_add():
        assert add(2, 3) == 5


    @pytest.mark.parametrize("numbers", ["1 2 3"])
    def test_add_many(numbers):
        assert add(*map(int, numbers.split())) == 6
    """


def calc_case(root: Path) -> Case:
    repo = root / "calc"
    base = _commit(repo, CALC_BASE)
    fixed = CALC_BASE["calc/__init__.py"].replace("total -= n", "total += n")
    wrong = CALC_BASE["calc/__init__.py"].replace("total -= n", "total *= n")
    return Case(
        name="calc", repo="pytest-dev/pytest", version="5.4", path=repo, base_commit=base,
        patch=_diff(repo, {"calc/__init__.py": fixed}, ["calc"]),
        test_patch=_diff(repo, {"tests/test_calc.py": CALC_TESTS}, ["tests"]),
        wrong_patch=_diff(repo, {"calc/__init__.py": wrong}, ["calc"]),
        # The parametrised id is cut at its space, as the official parser reads `PASSED <id>` lines.
        FAIL_TO_PASS=["tests/test_calc.py::test_add", "tests/test_calc.py::test_add_many[1"],
        PASS_TO_PASS=["tests/test_calc.py::test_version"],
    )


DJANGO_RUNNER = '''\
    #!/usr/bin/env python
    """Django's test runner, reduced to its verbose output: `./tests/runtests.py --verbosity 2 LABEL...`."""
    import os
    import sys
    import unittest

    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [HERE, os.path.dirname(HERE)]


    class Result(unittest.TextTestResult):
        def getDescription(self, test):
            return f"{test._testMethodName} ({unittest.util.strclass(test.__class__)})"


    labels = [a for a in sys.argv[1:] if not a.startswith("-") and a not in ("2", "1")]
    print("Testing against Django installed in", os.path.dirname(HERE))
    suite = unittest.defaultTestLoader.loadTestsFromNames(labels)
    outcome = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Result).run(suite)
    sys.exit(not outcome.wasSuccessful())
    '''
DJANGO_BASE = {
    "setup.py": SETUP_PY.format(name="django"),
    ".gitignore": "django/_version.py\n__pycache__/\n*.egg-info/\n",
    "django/__init__.py": "",
    "django/utils/__init__.py": "",
    "django/utils/text.py": """\
        def slugify(value):
            return value.strip().lower()
        """,
    "tests/runtests.py": DJANGO_RUNNER,
    "tests/test_sqlite.py": "DATABASES = {}\n",
    "tests/utils_tests/__init__.py": "",
    "tests/utils_tests/test_text.py": """\
        import unittest

        from django.utils.text import slugify


        class TestUtilsText(unittest.TestCase):
            def test_lower(self):
                self.assertEqual(slugify("ABC"), "abc")

            @unittest.skip("needs a network")
            def test_remote(self):
                self.assertEqual(slugify("x"), "x")
        """,
}


def django_case(root: Path) -> Case:
    repo = root / "django"
    base = _commit(repo, DJANGO_BASE)
    source = DJANGO_BASE["django/utils/text.py"]
    tests = textwrap.dedent(DJANGO_BASE["tests/utils_tests/test_text.py"]) + textwrap.indent(textwrap.dedent("""
        def test_spaces(self):
            self.assertEqual(slugify(" a b "), "a-b")
        """), "    ")
    return Case(
        name="django", repo="django/django", version="3.0", path=repo, base_commit=base,
        patch=_diff(repo, {"django/utils/text.py": source.replace(".lower()", ".lower().replace(' ', '-')")},
                    ["django"]),
        test_patch=_diff(repo, {"tests/utils_tests/test_text.py": tests}, ["tests"]),
        wrong_patch=_diff(repo, {"django/utils/text.py": source.replace(".lower()", ".upper()")}, ["django"]),
        FAIL_TO_PASS=["test_spaces (utils_tests.test_text.TestUtilsText)"],
        # A skipped PASS_TO_PASS test: Django's runner names it (`... skipped 'reason'`), and the official
        # rules count a skipped PASS_TO_PASS test as kept.
        PASS_TO_PASS=["test_lower (utils_tests.test_text.TestUtilsText)",
                      "test_remote (utils_tests.test_text.TestUtilsText)"],
    )


SYMPY_RUNNER = '''\
    #!/usr/bin/env python
    """sympy's bin/test, reduced to its verbose output: `bin/test -C --verbose FILE...`."""
    import importlib.util
    import os
    import sys
    import traceback

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    failed, passed, reports = 0, 0, []
    for path in [a for a in sys.argv[1:] if a.endswith(".py")]:
        spec = importlib.util.spec_from_file_location("t", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tests = [n for n in vars(module) if n.startswith("test_")]
        print(f"{path}[{len(tests)}] ")
        for name in tests:
            try:
                getattr(module, name)()
                print(f"{name} ok")
                passed += 1
            except AssertionError:
                print(f"{name} F")
                failed += 1
                reports.append((path, name, traceback.format_exc()))
    for path, name, text in reports:
        print("_" * 80)
        print(f"{'_' * 12} {path}:{name} {'_' * 12}")
        print(text)
    print(f"== tests finished: {passed} passed, {failed} failed ==")
    sys.exit(1 if failed else 0)
    '''
SYMPY_BASE = {
    "setup.py": SETUP_PY.format(name="sympy"),
    ".gitignore": "sympy/_version.py\n__pycache__/\n*.egg-info/\n",
    "bin/test": SYMPY_RUNNER,
    "sympy/__init__.py": "",
    "sympy/core/__init__.py": "",
    "sympy/core/numbers.py": """\
        def igcd(a, b):
            while b:
                a, b = b, a % b
            return a
        """,
    "sympy/core/tests/__init__.py": "",
    "sympy/core/tests/test_numbers.py": """\
        from sympy.core.numbers import igcd


        def test_igcd():
            assert igcd(12, 18) == 6
        """,
}


def sympy_case(root: Path) -> Case:
    repo = root / "sympy"
    base = _commit(repo, SYMPY_BASE)
    source = SYMPY_BASE["sympy/core/numbers.py"]
    tests = textwrap.dedent(SYMPY_BASE["sympy/core/tests/test_numbers.py"]) + "\n\ndef test_igcd_negative():\n" \
        "    assert igcd(12, -18) == 6\n"
    return Case(
        name="sympy", repo="sympy/sympy", version="1.5", path=repo, base_commit=base,
        patch=_diff(repo, {"sympy/core/numbers.py": source.replace("return a", "return abs(a)")}, ["sympy"]),
        test_patch=_diff(repo, {"sympy/core/tests/test_numbers.py": tests}, ["sympy/core/tests"]),
        wrong_patch=_diff(repo, {"sympy/core/numbers.py": source.replace("return a", "return -a")}, ["sympy"]),
        FAIL_TO_PASS=["test_igcd_negative"],
        PASS_TO_PASS=["test_igcd"],
    )


def forged_conftest(tests: list[str], exit_code: int) -> str:
    """A model patch adding tests/conftest.py that, once the tests are collected, prints `PASSED <id>` for
    every test through pytest's own terminal reporter and exits with `exit_code` before any test runs."""
    lines = ["import os", "", "", "def pytest_collection_modifyitems(config, items):",
             "    reporter = config.pluginmanager.get_plugin('terminalreporter')",
             *[f"    reporter.write_line('PASSED {t}')" for t in tests],
             "    reporter._tw.flush()", f"    os._exit({exit_code})"]
    body = "".join(f"+{line}\n" for line in lines)
    return ("diff --git a/tests/conftest.py b/tests/conftest.py\nnew file mode 100644\n--- /dev/null\n"
            f"+++ b/tests/conftest.py\n@@ -0,0 +1,{len(lines)} @@\n{body}")
