"""The model's `$?` behaves as in a plain bash, whatever the runner runs in the session between."""

from __future__ import annotations

import pytest


@pytest.fixture
def box(sandbox_factory):
    return sandbox_factory()


def test_exit_status_carries_to_the_next_command(box) -> None:
    assert box.run("false").exit_code == 1
    assert box.run("echo $?").output == "1\n"
    assert box.run("(exit 7)").exit_code == 7
    assert box.run("echo $?").output == "7\n"


def test_runner_commands_do_not_change_the_models_exit_status(box) -> None:
    box.run("mkdir -p /tmp/st && cd /tmp/st && echo hi > f.txt")
    assert box.run("(exit 5)").exit_code == 5
    assert box.read_file("f.txt") == b"hi\n"
    box.write_file("g.txt", b"x")
    aside = box.run("true; git --version >/dev/null 2>&1; exit_code_of_aside=3; (exit 4)", aside=True)
    assert aside.exit_code == 4
    assert box.run("echo $?").output == "5\n"
