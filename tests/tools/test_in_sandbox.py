"""The four tools on real files in a real sandbox (the Docker backend), through `tools.registry`.

Each test works in its own directory under /tmp and `cd`s there with the bash tool first, so that
relative paths in edit, create and submit exercise resolution against the session's cwd.
Needs the Docker daemon and a base image (`CWM_TEST_IMAGE=cwm-test:base`, see tests/conftest.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from sandbox.base import Sandbox, SandboxConfig
from tools.base import ToolResult
from tools.registry import run_tool

docker_backend = pytest.importorskip("sandbox.docker", reason="the Docker sandbox backend is not written yet")

pytestmark = pytest.mark.docker

_dirs = itertools.count()


@pytest.fixture(scope="module")
def sandbox(base_image: str) -> Iterator[Sandbox]:
    with docker_backend.DockerSandbox(SandboxConfig(image=base_image, run_id="test-tools")) as box:
        yield box


@pytest.fixture
def workdir(sandbox: Sandbox) -> str:
    """A fresh directory that the session has `cd`-ed into."""
    path = f"/tmp/tools-{next(_dirs)}"
    result = run_tool("bash", sandbox, f"mkdir -p {path}/sub && cd {path}")
    assert result.feedback == "" and result.exit_code == 0
    assert sandbox.cwd == path
    return path


def bash(sandbox: Sandbox, command: str) -> ToolResult:
    return run_tool("bash", sandbox, command)


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


# --- bash ------------------------------------------------------------------------------------


def test_bash_output_is_passed_through_unstripped(sandbox: Sandbox, workdir: str) -> None:
    result = bash(sandbox, "printf '  a  \\n\\n'; echo err >&2; printf tail")
    assert result.feedback == "  a  \n\nerr\ntail"
    assert result.output == result.feedback
    assert result.exit_code == 0 and result.success
    assert not (result.timed_out or result.overflowed or result.session_died)


def test_bash_exit_code_is_recorded_not_shown(sandbox: Sandbox, workdir: str) -> None:
    result = bash(sandbox, "echo before\nfalse")
    assert result.feedback == "before\n"
    assert result.exit_code == 1


def test_bash_session_is_persistent(sandbox: Sandbox, workdir: str) -> None:
    bash(sandbox, "export TOOLS_TEST_VAR=kept\ncd sub")
    assert bash(sandbox, 'echo "$TOOLS_TEST_VAR $PWD"').feedback == f"kept {workdir}/sub\n"


@pytest.fixture(scope="module")
def small_sandbox(base_image: str) -> Iterator[Sandbox]:
    """A sandbox with a 2 s timeout and a 10 kB output limit, for the session-failure messages."""
    config = SandboxConfig(
        image=base_image, timeout_s=2, output_limit_bytes=10_000, run_id="test-tools-small"
    )
    with docker_backend.DockerSandbox(config) as box:
        yield box


def test_bash_timeout_message(small_sandbox: Sandbox) -> None:
    bash(small_sandbox, "mkdir -p /tmp/elsewhere && cd /tmp/elsewhere")
    result = bash(small_sandbox, "echo partial; sleep 30")
    assert result.feedback == (
        "The current session has terminated due to timeout. A fresh session has started with "
        "the current working directory reset to default."
    )
    assert result.timed_out and not result.success
    # A fresh session, back in the default directory.
    assert bash(small_sandbox, "pwd").feedback == f"{small_sandbox.config.workdir}\n"


def test_bash_overflow_message(small_sandbox: Sandbox) -> None:
    result = bash(small_sandbox, "head -c 100000 /dev/zero | tr '\\0' x")
    assert result.feedback == (
        "The current session has terminated because your previous command produced too much output. "
        "A fresh session has started with the current working directory reset to default."
    )
    assert result.overflowed and not result.success
    assert bash(small_sandbox, "echo alive").feedback == "alive\n"


def test_bash_session_death_message(small_sandbox: Sandbox) -> None:
    result = bash(small_sandbox, "exit 3")
    assert result.feedback == (
        "The current session has terminated unexpectedly. A fresh session has started with the "
        "current working directory reset to default."
    )
    assert result.session_died and not result.success
    assert bash(small_sandbox, "echo alive").feedback == "alive\n"


# --- edit ------------------------------------------------------------------------------------


def test_edit_relative_path_after_cd(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/sub/mod.py", b"def f():\n    return 1\n")
    bash(sandbox, "cd sub")
    result = run_tool("edit", sandbox, "mod.py\n" + block("    return 1", "    return 2"))
    assert result.feedback == (
        "File mod.py has been successfully updated at line 2 and now contains 3 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\tdef f():\n"
        "     2\t    return 2\n"
        "     3\t\n"
        "Review the changes and make sure they are as expected.\n"
    )
    assert result.success and result.exit_code == 0
    assert sandbox.read_file(f"{workdir}/sub/mod.py") == b"def f():\n    return 2\n"


def test_edit_failure_leaves_file_untouched(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/a.py", b"x = 1\nx = 1\n")
    result = run_tool("edit", sandbox, "a.py\n" + block("x = 1", "x = 2"))
    assert result.feedback == (
        "No replacement was performed. Multiple occurrences of the search text in lines [1, 2] of "
        "a.py. Please ensure it is unique.\n"
    )
    assert not result.success and result.exit_code == 1
    assert sandbox.read_file(f"{workdir}/a.py") == b"x = 1\nx = 1\n"


def test_edit_missing_path(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("edit", sandbox, "sub/missing.py\n" + block("a", "b"))
    assert result.feedback == "The path sub/missing.py does not exist. Please provide a valid path.\n"
    empty = run_tool("edit", sandbox, "\n" + block("a", "b"))
    assert empty.feedback == "The path  does not exist. Please provide a valid path.\n"


def test_edit_parse_failure_comes_before_missing_path(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("edit", sandbox, "missing.py\nno block here")
    assert result.feedback.startswith("Failed to parse the edit tool call.")


def test_edit_directory_path(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("edit", sandbox, "sub\n" + block("a", "b"))
    assert result.feedback.startswith("The path sub could not be read as a file (")
    assert result.feedback.endswith("). Please provide a valid path.\n")


def test_edit_keeps_permissions_and_other_bytes(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/run.sh", b"#!/bin/sh\necho caf\xe9\necho old\n", mode=0o755)
    result = run_tool("edit", sandbox, "run.sh\n" + block("echo old", "echo new"))
    assert result.success
    assert sandbox.read_file(f"{workdir}/run.sh") == b"#!/bin/sh\necho caf\xe9\necho new\n"
    assert bash(sandbox, "stat -c %a run.sh").feedback == "755\n"


# --- create ----------------------------------------------------------------------------------


def test_create_relative_path_after_cd(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("create", sandbox, "sub/new.py\nimport os\nprint(os.sep)")
    assert result.feedback == "File created successfully at: sub/new.py (2 lines).\n"
    assert result.success and result.exit_code == 0
    # Written exactly as given: no newline added.
    assert sandbox.read_file(f"{workdir}/sub/new.py") == b"import os\nprint(os.sep)"


def test_create_existing_path(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/there.txt", b"old")
    result = run_tool("create", sandbox, "there.txt\nnew")
    assert result.feedback == "there.txt already exists. Cannot create a new file at an existing path.\n"
    assert sandbox.read_file(f"{workdir}/there.txt") == b"old"
    directory = run_tool("create", sandbox, "sub\nnew")
    assert directory.feedback == "sub already exists. Cannot create a new file at an existing path.\n"


def test_create_missing_parent(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("create", sandbox, "nope/deeper/x.py\nx")
    assert result.feedback == (
        f"File creation failed. The parent directory {workdir}/nope/deeper does not exist.\n"
    )
    assert not result.success
    assert bash(sandbox, "test -e nope; echo $?").feedback == "1\n"


def test_create_empty_path(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("create", sandbox, "\ncontent")
    assert result.feedback == "Path is empty. Please provide a valid path.\n"


def test_create_then_edit_then_submit_in_a_repository(sandbox: Sandbox, workdir: str) -> None:
    setup = bash(
        sandbox,
        "git init -q repo && cd repo && printf 'a = 1\\n' > m.py && git add m.py && "
        "git -c user.name=t -c user.email=t@example.com commit -qm init && echo ok",
    )
    assert setup.feedback == "ok\n"
    assert run_tool("edit", sandbox, "m.py\n" + block("a = 1", "a = 2")).success
    assert run_tool("create", sandbox, "n.py\nb = 3\n").feedback == (
        "File created successfully at: n.py (2 lines).\n"
    )
    bash(sandbox, "git add -N n.py && git diff > ../fix.diff")
    result = run_tool("submit", sandbox, "../fix.diff\n")
    patch = sandbox.read_file(f"{workdir}/fix.diff").decode()
    assert patch.startswith("diff --git a/m.py b/m.py\n")
    assert result.feedback == (
        "The following patch content is marked as your final submission:\n\n<submission>\n"
        + patch
        + "\n</submission>\n\nReview the patch content and ensure it correctly resolves the issue. "
        "If necessary, you can continue refining the patch and submit an updated version."
    )
    assert result.submission == patch and result.success


# --- submit ----------------------------------------------------------------------------------


def test_submit_missing_file(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("submit", sandbox, "missing.diff")
    assert result.feedback == "Failed to submit missing.diff. Make sure it exists and is readable."
    assert result.submission is None and not result.success


def test_submit_directory(sandbox: Sandbox, workdir: str) -> None:
    result = run_tool("submit", sandbox, "sub")
    assert result.feedback == "Failed to submit sub. Make sure it exists and is readable."


def test_submit_empty_file(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/empty.diff", b"\n  \n")
    result = run_tool("submit", sandbox, " empty.diff ")
    assert result.feedback == "Failed to submit empty.diff. It is an empty file."


def test_submit_not_a_diff(sandbox: Sandbox, workdir: str) -> None:
    sandbox.write_file(f"{workdir}/sub/p.patch", b"--- a/x\n+++ b/x\n")
    bash(sandbox, "cd sub")
    result = run_tool("submit", sandbox, "p.patch")
    assert result.feedback == "Failed to submit p.patch. It is not a valid diff file."
    assert result.submission is None
