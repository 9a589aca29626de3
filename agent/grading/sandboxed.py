"""One prediction in one fresh sandbox, step for step as the official harness's `run_instance` does it.

1. A fresh sandbox from the instance's image. Official images hold the repository at /testbed
   already (a SWE-smith instance is put at its bug with the FAIL_TO_PASS test files present, which
   its episode did not see: `tests_commit`, or the image's HEAD plus its bug patch); an
   instance of ours gets it placed there (`place_repository`, the one call to change when images
   carry every repository).
2. The model patch at /tmp/patch.diff, written as given, applied by the first command of swebench's
   chain that succeeds (`git apply --verbose`, `--3way`, `--reject`, then `patch --batch --forward
   --fuzz=5 -p1 -i`), the tree reset with `git checkout -- . ; git clean -fd` before each retry; if
   all fail, `git apply --check --reverse` decides whether the patch is in fact applied.
3. The forgery rules (agent.grading.forgery) read the patched files.
4. The eval script of swebench's test spec (which records the test command's exit code after the end
   marker) at /eval.sh, run with `/bin/bash /eval.sh`; its output is test_output.txt.

Differences, all outside what the grade reads: the sandbox has no network; commands run through the
runner's bash session (so LANG is C.UTF-8 unless the eval script sets it); output goes through a
file, not a Docker stream.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

import structlog
from pydantic import BaseModel, Field

from agent.episode.failures import classify
from agent.episode.repo import RepoError, place_in_sandbox, prepare_repo, reach_tests_base
from agent.grading import official
from agent.grading.forgery import Finding, check_patch
from agent.grading.specs import GradingSpec
from agent.instances.records import Instance
from agent.instances.sources import repo_source
from sandbox.base import DEFAULT_WORKDIR, Sandbox, SandboxConfig, SandboxError

log = structlog.get_logger()

SCRATCH = "/tmp/cwm-eval"
EVAL_SCRIPT_PATH = "/eval.sh"
RESET_BETWEEN_ATTEMPTS = "git checkout -- . ; git clean -fd"
SandboxFactory = Callable[[SandboxConfig], Sandbox]


class TestRun(BaseModel):
    """What happened in one grading sandbox."""

    patch_applied: bool = False
    apply_method: str | None = Field(default=None, description="the command of swebench's chain that applied it")
    test_output: str = Field(default="", description="the eval script's output (the official test_output.txt)")
    eval_script: str = ""
    timed_out: bool = False
    error: str | None = None
    infra: bool = Field(default=False, description="the error was the sandbox's or the daemon's, not the patch's")
    findings: list[Finding] = Field(default_factory=list)
    statuses: dict[str, str] = Field(default_factory=dict, description="filled by callers that parse the output")
    log: str = Field(default="", description="the whole transcript: apply attempts, findings, test output")


def docker_factory(config: SandboxConfig) -> Sandbox:
    from sandbox.docker import DockerSandbox

    return DockerSandbox(config)


def place_repository(sandbox: Sandbox, instance: Instance, spec: GradingSpec) -> None:
    """Put the repository at /testbed at the base commit: nothing to do in an official image, except for
    a SWE-smith instance (it has a bug patch), graded where SWE-smith's harness grades: its bug with the
    FAIL_TO_PASS test files the episode did not see (agent.episode.repo.reach_tests_base: `tests_commit`
    if the image has the task branch, else the episode's base made again with those files in it)."""
    if spec.in_image:
        if instance.bug_patch.strip():
            reach_tests_base(sandbox, instance.base_commit or None, instance.tests_commit, instance.bug_patch)
        return
    prepared = prepare_repo(repo_source(instance, mirror=True), instance.base_commit or None)
    try:
        place_in_sandbox(prepared, sandbox)
    finally:
        prepared.cleanup()


def apply_patch(sandbox: Sandbox, path: str, workdir: str = DEFAULT_WORKDIR) -> tuple[str | None, str]:
    """swebench's apply chain on the patch file at `path`; returns (the command that worked, transcript)."""
    transcript = []
    for attempt, command in enumerate(official.harness().apply_commands):
        if attempt:
            sandbox.run(f"cd {workdir} && {{ {RESET_BETWEEN_ATTEMPTS} ; }}", aside=True)
        done = sandbox.run(f"cd {workdir} && {command} {shlex.quote(path)}")
        transcript.append(f">>> {command}\n{done.output}")
        if done.exit_code == 0:
            return command, "\n".join(transcript)
    check = sandbox.run(f"cd {workdir} && git apply --check --reverse {shlex.quote(path)}")
    if check.exit_code == 0:
        return "already applied (git apply --check --reverse)", "\n".join(transcript)
    return None, "\n".join(transcript)


def _read_patched(sandbox: Sandbox) -> Callable[[str], "str | None"]:
    def read(path: str) -> str | None:
        try:
            return sandbox.read_file(f"{DEFAULT_WORKDIR}/{path}").decode("utf-8", errors="replace")
        except (FileNotFoundError, SandboxError, IsADirectoryError):
            return None
    return read


def _run_eval_script(sandbox: Sandbox, script: str, timeout_s: float, run: TestRun) -> None:
    """/eval.sh as the harness runs it; its output through a file (no session output limit)."""
    sandbox.write_file(EVAL_SCRIPT_PATH, script.encode())
    done = sandbox.run(f"/bin/bash {EVAL_SCRIPT_PATH} > {SCRATCH}/test_output.txt 2>&1", timeout_s=timeout_s)
    run.timed_out = done.timed_out
    try:
        run.test_output = sandbox.read_file(f"{SCRATCH}/test_output.txt").decode("utf-8", errors="replace")
    except (FileNotFoundError, SandboxError):
        run.test_output = ""
    if run.timed_out:
        # The official harness appends this line and gives no report (the instance is an error).
        run.test_output += f"\n\nTimeout error: {timeout_s:g} seconds exceeded."
        run.error = f"the tests timed out after {timeout_s:g} s"


def _grade_in(sandbox: Sandbox, instance: Instance, patch: str, spec: GradingSpec, script: str,
              run: TestRun, transcript: list[str]) -> None:
    """Steps 2 to 4 of the module docstring; each may stop the run, saying why in `run`."""
    sandbox.run(f"mkdir -p {SCRATCH}", aside=True)
    if patch:
        patch_file = official.markers().patch_file
        sandbox.write_file(patch_file, patch.encode())
        run.apply_method, output = apply_patch(sandbox, patch_file)
        transcript.append(output)
        run.patch_applied = run.apply_method is not None
        if not run.patch_applied:
            transcript.append(official.markers().apply_fail)
            return
        transcript.append(f"{official.markers().apply_pass} ({run.apply_method})")
        run.findings = check_patch(patch, test_files=spec.test_files, test_command=spec.test_command,
                                   read=_read_patched(sandbox))
        transcript += [f">>> forgery rule {f.line()}" for f in run.findings]
    else:
        run.patch_applied = True  # the base commit as it is (regression baselines, fixture building)
    run.eval_script = script
    _run_eval_script(sandbox, script, spec.timeout_s, run)
    transcript.append(f">>> /bin/bash {EVAL_SCRIPT_PATH}\n{run.test_output}")


def run_prediction(instance: Instance, patch: str, spec: GradingSpec, image: str, script: str,
                   open_sandbox: SandboxFactory | None = None) -> TestRun:
    """Grade-run `patch` (may be empty) with eval script `script` in a fresh sandbox of `image`."""
    run = TestRun()
    transcript: list[str] = []
    config = SandboxConfig(image=image, workdir=DEFAULT_WORKDIR, run_id=f"eval-{instance.instance_id}"[:60])
    try:
        with (open_sandbox or docker_factory)(config) as sandbox:
            place_repository(sandbox, instance, spec)
            _grade_in(sandbox, instance, patch, spec, script, run, transcript)
    except (SandboxError, RepoError, ValueError) as error:
        run.error = f"sandbox: {error}" if isinstance(error, SandboxError) else f"repository: {error}"
        run.infra = classify(error).kind == "infra"
    run.log = "\n".join(transcript)
    return run
