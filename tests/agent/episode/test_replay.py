"""`agent.episode.replay.verify` against real Docker sandboxes and real git, and the normalisers it uses.

The episodes are re-run for real: the bundled example, a run recorded moments ago through the
command line, a run whose output is volatile by design, a repository changed under a recording, and
a recording torn mid-line. Only the normaliser tests run without Docker.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest

from agent.episode.loop import LoopConfig
from agent.episode.replay import CannotReplay, verify
from agent.episode.solve import SolveRequest, solve
from agent.models.replay import ReplayModel
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import REPO_ROOT, write_replies
from traces import normalize as norm
from traces.recorder import read_trajectory, write_trajectory
from traces.schema import Header, ModelInfo, Step, Trajectory

ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"
EXAMPLE_TRAJECTORY = EXAMPLE / "trajectory.jsonl"

docker = pytest.mark.docker


def image_override(base_image: str, trajectory: Path = EXAMPLE_TRAJECTORY) -> str | None:
    """None (use the header's image) when the machine's base image is the recorded one."""
    return None if read_trajectory(trajectory).header.image == base_image else base_image


# -- whole episodes ---------------------------------------------------------------------------


@docker
def test_bundled_example_verifies(base_image: str) -> None:
    report = verify(EXAMPLE_TRAJECTORY, image=image_override(base_image))
    assert report.ok, report.render(all_diffs=True)
    assert report.exit_code == 0
    assert (report.steps_recorded, report.steps_replayed, report.steps_compared) == (7, 7, 7)
    assert report.steps_identical + report.steps_normalized == 7
    assert report.ending_checked and report.recorded_status == report.replayed_status == "submitted"
    assert report.repo == str(EXAMPLE / "repo")  # `repo` in the header is relative to the file
    assert report.replayed_commit == report.recorded_commit and report.repo_warning is None
    assert "IDENTICAL" in report.render()


@docker
def test_freshly_recorded_run_verifies(tmp_path: Path, base_image: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "solve", "--example", "intervals", "--output", str(tmp_path),
         "--image", base_image],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = tmp_path / "intervals.traj.jsonl"
    kept = tmp_path / "replayed"
    report = verify(recorded, output=kept)
    assert report.ok, report.render(all_diffs=True)
    assert report.steps_compared == 7 and report.steps_diverged == 0
    assert report.image == base_image
    # The replayed run is kept where asked, and is itself a complete recording.
    assert report.replay_path == kept / "intervals.traj.jsonl"
    again = read_trajectory(report.replay_path)
    assert again.ending is not None and again.ending.status == "submitted"


@docker
def test_gpu_episode_verifies_in_docker(base_image: str) -> None:
    """The episode recorded on the GPU host (traces/examples/gpu-e2e/README.md) replays here."""
    path = ROOT / "traces" / "examples" / "gpu-e2e" / "trajectory.jsonl"
    recorded = read_trajectory(path)
    header = recorded.header
    assert (header.sandbox_backend, header.model.kind, header.model.name, header.model.constrained) == (
        "bwrap", "completions", "cwm-tiny", True)
    # Served by vLLM with prefix caching: every turn after the first reused the previous turns.
    assert all((step.cached_tokens or 0) > 0 for step in recorded.steps[1:])
    report = verify(path)
    assert report.ok, report.render(all_diffs=True)
    assert report.steps_compared == len(recorded.steps) == 12 and report.steps_diverged == 0
    assert report.recorded_status == report.replayed_status == "max_turns"


@docker
@pytest.mark.bwrap
def test_bubblewrap_recording_verifies_in_docker(tmp_path: Path, base_image: str) -> None:
    """The GPU host's path: record with bubblewrap over the base image's exported tree, replay in Docker."""
    from sandbox.bwrap import bwrap_info
    from sandbox.rootfs import cached_image_rootfs

    try:
        bwrap_info()
    except Exception as error:  # noqa: BLE001 - any reason bubblewrap is unusable here
        pytest.skip(str(error))
    tree = cached_image_rootfs(base_image)
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "solve", "--example", "intervals", "--output", str(tmp_path),
         "--sandbox", "bwrap", "--image", str(tree)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = read_trajectory(tmp_path / "intervals.traj.jsonl").header
    assert (header.sandbox_backend, header.image, header.image_source) == ("bwrap", str(tree), base_image)
    assert header.image_digest.startswith("sha256:")
    report = verify(tmp_path / "intervals.traj.jsonl")
    assert report.ok, report.render(all_diffs=True)
    assert report.image == base_image and report.steps_compared == 7 and report.steps_diverged == 0

    # What a random-weight model does on the GPU host: files that cannot be created, unknown commands
    # (bash numbers their lines), a file created and then edited. Each backend must tell the model
    # the same thing.
    long_name = "x" * 300
    replies = write_replies(tmp_path / "scripted.jsonl", [
        f"Go.\n</think>\n\n<tool: create>\n{long_name}\nnever written\n</tool>",
        "Go.\n</think>\n\n<tool: create>\nnotes.txt\nfirst line\n</tool>",
        "Go.\n</think>\n\n<tool: bash>\nno_such_command_here; echo after\n</tool>",
        "Go.\n</think>\n\n<tool: edit>\nnotes.txt\n<<<<<<< SEARCH\nfirst line\n=======\nsecond line\n>>>>>>> REPLACE\n</tool>",
        "Go.\n</think>\n\n<tool: bash>\ncat notes.txt; also_missing\n</tool>",
        "Done.\n</think>\nnothing more",
    ])
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "solve", "--repo", str(EXAMPLE / "repo"), "--issue", "Scripted.",
         "--model", f"replay:{replies}", "--output", str(tmp_path / "scripted"), "--instance-id", "scripted",
         "--sandbox", "bwrap", "--image", str(tree), "--max-turns", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    recorded = read_trajectory(tmp_path / "scripted" / "scripted.traj.jsonl")
    assert recorded.ending is not None, done.stdout + done.stderr
    first, _, third = recorded.steps[:3]
    assert first.observation is not None and "File creation failed. File name too long" in first.observation
    assert third.output is not None and "line " in third.output and "after" in third.output
    report = verify(tmp_path / "scripted" / "scripted.traj.jsonl")
    assert report.ok, report.render(all_diffs=True)
    assert report.steps_compared == 6 and report.steps_diverged == 0


VOLATILE_REPLIES = [
    "Print some things that change on every run.\n</think>\n\n<tool: bash>\n"
    "python3 -c \"import datetime, tempfile; print(datetime.datetime.now().isoformat()); "
    "print(tempfile.mkdtemp()); print(object())\"\n</tool>",
    "And a random nonce.\n</think>\n\n<tool: bash>\n"
    "python3 -c \"import secrets; print('nonce', secrets.token_hex(8))\"\n</tool>",
    "Make a patch.\n</think>\n\n<tool: bash>\necho '# touched' >> README.md && git diff > /tmp/p.diff\n</tool>",
    "Submit it.\n</think>\n\n<tool: submit>\n/tmp/p.diff\n</tool>",
    "Done.\n</think>\n\n## Summary\n\nTouched the README.",
]


def record_episode(tmp_path: Path, base_image: str, replies: list[str], repo: Path) -> Path:
    """Run hand-written replies through the real pipeline and return the trajectory it recorded."""
    script = Trajectory(
        header=Header(run_id="script", instance_id="volatile", model=ModelInfo(kind="replay", name="script")),
        steps=[Step(index=i, raw_reply=text) for i, text in enumerate(replies, start=1)],
    )
    request = SolveRequest(repo=str(repo), issue="Touch the README.", image=base_image, output=tmp_path / "run",
                           instance_id="volatile", loop=LoopConfig(),
                           sandbox=SandboxConfig(image=base_image, run_id="volatile"))
    result = solve(request, lambda: ReplayModel(script), DockerSandbox)
    assert result.ending.status == "submitted"
    return result.trajectory


@docker
def test_volatile_output_is_normalised_and_strict_mode_shows_it(tmp_path: Path, base_image: str) -> None:
    recorded = record_episode(tmp_path, base_image, VOLATILE_REPLIES, EXAMPLE / "repo")
    nonce = r"nonce [0-9a-f]{16}"

    default = verify(recorded)
    assert not default.ok
    assert (default.first.step, default.first.field) == (2, "observation")  # the nonce: no default hides it
    assert default.steps_normalized >= 1  # step 1: timestamp, temporary directory, address

    with_nonce = verify(recorded, normalizers=norm.select(patterns=[nonce]))
    assert with_nonce.ok, with_nonce.render(all_diffs=True)
    assert with_nonce.normalizers[-1] == "custom1"

    strict = verify(recorded, normalizers=norm.select(strict=True, patterns=[nonce]))
    assert not strict.ok and strict.exit_code == 1
    assert (strict.first.step, strict.first.field) == (1, "observation")
    removed = [line for line in strict.first.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in strict.first.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("/tmp/tmp" in line for line in removed) and any("/tmp/tmp" in line for line in added)
    assert "DIVERGED at step 1 observation" in strict.render()


@docker
def test_changed_repository_diverges_at_the_step_that_reveals_it(tmp_path: Path, base_image: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "repo", copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    test_file = copy / "tests" / "test_core.py"
    line = "    assert merge([(1, 3), (3, 5)]) == [(1, 5)]\n"
    assert line in test_file.read_text()
    # Step 1 only lists the tests and prints intervals/core.py; step 2's failing pytest run prints this line.
    test_file.write_text(test_file.read_text().replace(line, line.rstrip("\n") + "  # closed intervals\n"))

    report = verify(EXAMPLE_TRAJECTORY, repo=str(copy), image=image_override(base_image))
    assert not report.ok and report.exit_code == 1
    assert (report.first.step, report.first.field) == (2, "observation")
    assert report.steps_identical + report.steps_normalized >= 1  # step 1 still matched
    plus = [line for line in report.first.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("# closed intervals" in line for line in plus), report.first.diff
    assert report.first.diff.startswith("--- recorded step 2 observation\n+++ replayed step 2 observation\n")
    assert report.repo_warning is not None and "plain directory" in report.repo_warning
    rendered = report.render()
    assert "DIVERGED at step 2 observation" in rendered and "# closed intervals" in rendered


@docker
def test_torn_trajectory_verifies_its_complete_steps(tmp_path: Path, base_image: str) -> None:
    lines = EXAMPLE_TRAJECTORY.read_text().splitlines(keepends=True)
    torn = tmp_path / "torn.traj.jsonl"
    # Header and steps 1-4 whole, step 5 cut in the middle of its line (a runner killed mid-write).
    torn.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    assert read_trajectory(torn).torn_tail

    report = verify(torn, repo=str(EXAMPLE / "repo"), image=image_override(base_image))
    assert report.ok, report.render(all_diffs=True)
    assert (report.steps_recorded, report.steps_compared) == (4, 4)
    assert not report.ending_checked and report.recorded_status is None
    assert any("partial line" in note and "4 complete steps" in note for note in report.notes)
    assert "ending      not verified" in report.render()


@docker
def test_changed_prompt_is_a_divergence(tmp_path: Path, base_image: str) -> None:
    recorded = read_trajectory(EXAMPLE_TRAJECTORY)
    recorded.header.user_prompt = recorded.header.user_prompt.replace("merge", "fuse", 1)
    changed = write_trajectory(recorded, tmp_path / "changed.traj.jsonl")
    report = verify(changed, repo=str(EXAMPLE / "repo"), image=image_override(base_image))
    assert not report.ok
    assert report.first.step is None and report.first.field == "header.user_prompt"
    assert "fuse" in report.first.diff
    assert report.steps_diverged == 0  # the steps themselves still replay identically


# -- what cannot be replayed (exit code 2) ----------------------------------------------------


def test_unreadable_or_empty_trajectories_cannot_be_replayed(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"type": "header", "run_id"\n')
    with pytest.raises(CannotReplay, match="cannot read the trajectory: .*garbage.jsonl:1: .*Invalid JSON"):
        verify(garbage)
    torn_header = tmp_path / "torn-header.jsonl"
    torn_header.write_text(EXAMPLE_TRAJECTORY.read_text()[:200])
    with pytest.raises(CannotReplay, match="no header line"):
        verify(torn_header)
    with pytest.raises(CannotReplay, match="no such trajectory file"):
        verify(tmp_path / "missing.jsonl")
    header_only = tmp_path / "header-only.jsonl"
    header_only.write_text(EXAMPLE_TRAJECTORY.read_text().splitlines(keepends=True)[0])
    with pytest.raises(CannotReplay, match="no complete step"):
        verify(header_only)


def test_missing_repository_cannot_be_replayed(tmp_path: Path) -> None:
    copy = tmp_path / "alone.traj.jsonl"
    shutil.copy(EXAMPLE_TRAJECTORY, copy)  # `repo` is relative and there is no repo next to the copy
    with pytest.raises(CannotReplay, match="repository 'repo' not found.*--repo"):
        verify(copy)
    with pytest.raises(CannotReplay, match="not found"):
        verify(EXAMPLE_TRAJECTORY, repo=str(tmp_path / "nowhere"))


def test_git_repository_without_the_commit_cannot_be_replayed(tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(EXAMPLE / "repo", other)
    repo = git.Repo.init(other, initial_branch="main")
    repo.git.add(A=True)
    repo.git.commit("-q", "-m", "another history", "--no-gpg-sign",
                    env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                         "GIT_COMMITTER_EMAIL": "t@t"})
    with pytest.raises(CannotReplay, match="does not match the recording.*has no commit"):
        verify(EXAMPLE_TRAJECTORY, repo=str(other))


@docker
def test_missing_image_cannot_be_replayed() -> None:
    with pytest.raises(CannotReplay, match="cwm-runner/no-such-image:0 not found"):
        verify(EXAMPLE_TRAJECTORY, image="cwm-runner/no-such-image:0")


# -- normalisers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("normalizer", "before", "after"), [
    (norm.PYTEST_DURATION, "5 passed in 0.02s", "5 passed in <duration>"),
    (norm.PYTEST_DURATION, "=== 1 failed, 4 passed, 2 warnings in 61.31s (0:01:01) ===",
     "=== 1 failed, 4 passed, 2 warnings in <duration> ==="),
    (norm.PYTEST_DURATION, "no tests ran in 0.01s", "no tests ran in <duration>"),
    (norm.PYTEST_DURATION, "the job starts in 3s", "the job starts in 3s"),
    (norm.UNITTEST_DURATION, "Ran 3 tests in 0.001s\n\nOK", "Ran 3 tests in <duration>\n\nOK"),
    (norm.UNITTEST_DURATION, "Ran 1 test in 12.5s", "Ran 1 test in <duration>"),
    (norm.SHELL_TIME, "\nreal\t0m0.010s\nuser\t0m0.002s\nsys\t0m0.000s\n",
     "\nreal\t<duration>\nuser\t<duration>\nsys\t<duration>\n"),
    (norm.SHELL_TIME, "the real 0m0.010s", "the real 0m0.010s"),
    (norm.SHELL_LINE, "/bin/bash: line 61: sson: command not found\n", "/bin/bash: line <n>: sson: command not found\n"),
    (norm.SHELL_LINE, "x\nbash: line 7: syntax error near unexpected token `)'", "x\nbash: line <n>: syntax error near unexpected token `)'"),
    (norm.SHELL_LINE, "no newline/bin/bash: line 46: x: command not found", "no newline/bin/bash: line <n>: x: command not found"),
    (norm.SHELL_LINE, "mybash: line 7: is another program", "mybash: line 7: is another program"),
    (norm.PYTEST_TMP_PATH, "/tmp/pytest-of-root/pytest-12/test_io0/out.txt",
     "/tmp/pytest-of-<user>/pytest-<n>/test_io0/out.txt"),
    (norm.TEMP_PATH, "wrote /tmp/tmpa1b2_c3d/data.json", "wrote /tmp/<tmp>/data.json"),
    (norm.TEMP_PATH, "/tmp/tmp.Ab12Cd34Ef and /var/tmp/tmpzz99yy88", "/tmp/<tmp> and /var/tmp/<tmp>"),
    (norm.TEMP_PATH, "/tmp/tmpfile.txt /tmp/fix.patch", "/tmp/tmpfile.txt /tmp/fix.patch"),
    (norm.HEX_ADDRESS, "<object object at 0x7f3a2c1b4d60>", "<object object at 0x<addr>>"),
    (norm.HEX_ADDRESS, "mask = 0xff", "mask = 0xff"),
    (norm.ISO_TIMESTAMP, "at 2024-05-01T12:34:56.789012+00:00.", "at <timestamp>."),
    (norm.ISO_TIMESTAMP, "2024-05-01 12:34:56Z", "<timestamp>"),
    (norm.ISO_DATE, "released 2024-05-01", "released <date>"),
    (norm.BUDGET_TOKENS, "<budget>\n* Remaining turns: 12\n* Remaining tokens: 128856\n</budget>",
     "<budget>\n* Remaining turns: 12\n* Remaining tokens: <n>\n</budget>"),
])
def test_each_default_normaliser(normalizer: norm.Normalizer, before: str, after: str) -> None:
    assert normalizer in norm.DEFAULT
    assert normalizer.apply(before) == after
    assert normalizer.apply(after) == after  # idempotent


def test_defaults_together_and_in_order() -> None:
    text = ("2024-05-01T10:00:00 started\n5 passed in 0.20s\n/tmp/tmpabcdefgh\n<Foo at 0x7ffde3a0b2c0>\n"
            "* Remaining turns: 3\n* Remaining tokens: 99\n")
    assert norm.normalize(text) == ("<timestamp> started\n5 passed in <duration>\n/tmp/<tmp>\n<Foo at 0x<addr>>\n"
                                    "* Remaining turns: 3\n* Remaining tokens: <n>\n")
    assert norm.normalize(text, norm.STRICT) == text
    # A timestamp is not half-eaten by the date normaliser that runs after it.
    assert norm.normalize("2024-05-01 12:00:00") == "<timestamp>"
    assert [n.name for n in norm.DEFAULT] == list(norm.BY_NAME)


def test_user_normalisers() -> None:
    mine = norm.custom(r"nonce [0-9a-f]+")
    assert mine.apply("a nonce 1f2e b") == "a <normalized> b"
    chosen = norm.select(strict=True, patterns=[r"nonce [0-9a-f]+", r"^pid \d+$"])
    assert [n.name for n in chosen] == ["custom1", "custom2"]
    assert norm.normalize("pid 42\nok", chosen) == "<normalized>\nok"  # custom patterns are multi-line
    assert [n.name for n in norm.select(patterns=["x+"])][-1] == "custom1"
    assert len(norm.select(patterns=["x+"])) == len(norm.DEFAULT) + 1
    with pytest.raises(norm.NormalizerError, match="not a valid regular expression"):
        norm.custom("(unclosed")
    with pytest.raises(norm.NormalizerError, match="matches the empty string"):
        norm.custom("a*")
