"""Which files the made SWE-smith base leaves out: the FAIL_TO_PASS node ids' paths, as SWE-smith's
Python profile derives its F2P test files, and never a path outside the repository (the list reaches a
shell that removes files)."""

from __future__ import annotations

from agent.episode.base_patch import base_commit_script, f2p_test_files


def test_the_files_are_the_node_ids_paths_once_each_sorted() -> None:
    assert f2p_test_files([
        "tests/test_b.py::TestX::test_y[a::b]", "tests/test_a.py::test_z", "tests/test_b.py::test_w",
        "tests/test_c.py",
    ]) == ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]


def test_ids_naming_no_path_inside_the_repository_are_dropped() -> None:
    assert f2p_test_files(["/etc/passwd::x", "../outside.py::t", "tests/../../x.py::t", "::t", ".::t", " "]) == []


def test_without_hidden_files_the_script_removes_nothing() -> None:
    assert "update-index" not in base_commit_script("/testbed")
    script = base_commit_script("/testbed", ["tests/it's.py"])
    assert "--force-remove" in script and "'tests/it'\"'\"'s.py'" in script  # quoted for the shell
