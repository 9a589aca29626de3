"""How one instance is graded: the image, the eval script, the log parser and the evaluation type.

Three kinds of rows, one code path (agent.grading.sandboxed runs whatever this module returns, and the
official report logic reads the log):

- SWE-bench 5 rows carry `eval_script`, `log_parser` and `eval_type` (and `image`): used as they are.
- SWE-bench 4.x rows carry none of them, and swebench 5's `make_test_spec` fails on them. They are
  derived from the per-repository, per-version specifications swebench 4.1.0 publishes, kept as data
  in swebench4_specs.json (tests/fixtures/extract_swebench4_specs.py wrote it; the conformance tests
  check the scripts made here against swebench 4.1.0's own, byte for byte): the test command and the
  commands before it, the install step, the test directives taken from the test patch (Django's as
  module labels), the log parser, and the image name `<namespace>/sweb.eval.x86_64.<id>:latest`.
- Instances of our own (local repositories, the PyPI fixtures, anything an environment spec of
  agent.instances.envs serves) get an eval script of the same shape from that spec: its setup
  commands, the test-file reset, the test patch, the markers, its pytest command, and the official
  pytest parser. There is no second grader.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.instances.envs import EnvRegistry, EnvSpec
from agent.instances.images import repo_in_image
from agent.instances.records import Instance

SPECS_FILE = Path(__file__).with_name("swebench4_specs.json")
DEFAULT_NAMESPACE = "swebench"
ENV_NAME = "testbed"
REPO_DIR = "/testbed"
TEST_PATCH_DELIMITER = "EOF_114329324912"  # the heredoc delimiter of the official eval scripts
START_MARKER = ">>>>> Start Test Output"  # also swebench.harness.constants.START_TEST_OUTPUT (pinned by a test)
END_MARKER = ">>>>> End Test Output"
OFFICIAL_TIMEOUT_S = 1800.0  # swebench's default per-instance timeout
LOCAL_PARSER = "parse_log_pytest"
PASS_AND_FAIL = "pass_and_fail"
CONDA_ACTIVATION = ("source /opt/miniconda3/bin/activate", f"conda activate {ENV_NAME}")
# Test files by extension that the official directive rule leaves out (swebench.harness.constants.NON_TEST_EXTS).
NON_TEST_EXTS = (".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml")

SpecSource = Literal["row", "swebench4", "env"]


class SpecError(ValueError):
    """An instance cannot be graded as given; the message names the instance and what is missing."""


class SuiteSpec(BaseModel):
    """The repository's whole test suite without the test patch: the command with no directives, and
    what the eval script runs before it."""

    command: str
    before: list[str] = Field(default_factory=list)
    install: str | None = None
    activation: tuple[str, ...] = ()

    def script(self, base_commit: str) -> str:
        return eval_script(base_commit=base_commit, test_patch="", test_command=self.command, before=self.before,
                           install=self.install, activation=self.activation)


class GradingSpec(BaseModel):
    """Everything the sandboxed run and the official report need for one instance."""

    instance_id: str
    source: SpecSource = Field(description="row: the SWE-bench 5 row's own; swebench4: derived from the 4.x "
                               "specifications; env: from an environment spec of ours")
    image: str | None = Field(description="image to grade in; None: the environment spec's image, built on use")
    in_image: bool = Field(description="the repository is already at /testbed in the image (official images)")
    eval_script: str
    log_parser: str
    eval_type: str = PASS_AND_FAIL
    test_command: str = Field(description="the command between the markers (rule `test-runner`, regression runs)")
    test_files: list[str] = Field(default_factory=list, description="files the test patch touches")
    timeout_s: float = OFFICIAL_TIMEOUT_S
    env: EnvSpec | None = None
    suite: SuiteSpec | None = Field(default=None, description="how to run the repository's existing tests (the "
                                    "regression selection); None: not known for this instance")

    def row(self, instance: Instance, image: str) -> dict[str, Any]:
        """The SWE-bench 5 row swebench's make_test_spec reads."""
        return {"instance_id": instance.instance_id, "repo": instance.repo, "version": instance.version,
                "image": image, "eval_script": self.eval_script, "log_parser": self.log_parser,
                "eval_type": self.eval_type, "FAIL_TO_PASS": instance.FAIL_TO_PASS,
                "PASS_TO_PASS": instance.PASS_TO_PASS}


# -- patches -------------------------------------------------------------------------------------


def patch_files(patch: str) -> list[str]:
    """Paths a unified diff touches: the b/ side of `diff --git` lines, else the `+++` lines."""
    lines = patch.splitlines()
    headers = [re.match(r"diff --git a/(.+?) b/(.+)$", line) for line in lines if line.startswith("diff --git ")]
    if headers:
        files = [m[2] for m in headers if m]
    else:
        names = [line[4:].split("\t")[0].strip() for line in lines if line.startswith("+++ ")]
        files = [n[2:] if n.startswith("b/") else n for n in names if n != "/dev/null"]
    return list(dict.fromkeys(files))


def existing_files(patch: str) -> list[str]:
    """Files the patch changes that exist before it (the `--- a/` side), which the reset restores."""
    names = [line[4:].split("\t")[0].rstrip() for line in patch.splitlines() if line.startswith("--- ")]
    return [n[2:] for n in names if n.startswith("a/")]


def test_directives(repo: str, test_patch: str) -> list[str]:
    """What the 4.x test command is given: the test patch's files, minus data files; Django's as modules."""
    found = re.findall(r"diff --git a/.* b/(.*)", test_patch)
    found = [f for f in found if not any(f.endswith(ext) for ext in NON_TEST_EXTS)]
    if repo != "django/django":
        return found
    labels = []
    for name in found:
        name = name[: -len(".py")] if name.endswith(".py") else name
        name = name[len("tests/"):] if name.startswith("tests/") else name
        labels.append(name.replace("/", "."))
    return labels


# -- the script -----------------------------------------------------------------------------------


def eval_script(*, base_commit: str, test_patch: str, test_command: str, before: list[str],
                install: str | None, activation: tuple[str, ...]) -> str:
    """An eval script in the official shape: activate, prepare, reset the test files, apply the test
    patch, run the tests between the markers, reset again (`set -uxo pipefail`, no -e: the reset at
    the end must run whatever the tests did)."""
    reset = f"git checkout {base_commit} {' '.join(existing_files(test_patch))}"
    commands = [*activation, f"cd {REPO_DIR}", *before,
                f"git config --global --add safe.directory {REPO_DIR}", f"cd {REPO_DIR}",
                "git status", "git show", f"git -c core.fileMode=false diff {base_commit}", *activation]
    if install:
        commands.append(install)
    if test_patch.strip():
        commands += [reset, f"git apply -v - <<'{TEST_PATCH_DELIMITER}'\n{test_patch}\n{TEST_PATCH_DELIMITER}"]
    commands += [f": '{START_MARKER}'", test_command, f": '{END_MARKER}'"]
    if test_patch.strip():
        commands.append(reset)
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *commands]) + "\n"


def command_between_markers(script: str) -> str:
    """The test command of an eval script (the lines between the start and end markers)."""
    inside = script.split(START_MARKER, 1)[-1].split(END_MARKER, 1)[0].splitlines()
    return "\n".join(line for line in inside[1:-1] if line.strip()) if len(inside) > 2 else ""


# -- the three sources ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def swebench4_specs() -> dict[str, Any]:
    return json.loads(SPECS_FILE.read_text(encoding="utf-8"))


def official_image_name(instance_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """SWE-bench's instance image: `<namespace>/sweb.eval.x86_64.<id>:latest`, `__` as `_1776_`, lower case."""
    return f"{namespace}/sweb.eval.x86_64.{instance_id.lower()}:latest".replace("__", "_1776_")


def from_row(instance: Instance, namespace: str) -> GradingSpec:
    """A SWE-bench 5 row grades as it says."""
    missing = [f for f in ("log_parser", "eval_type") if not getattr(instance, f)]
    if missing:
        raise SpecError(f"{instance.instance_id}: has eval_script but no {' or '.join(missing)}")
    script = instance.eval_script or ""
    return GradingSpec(instance_id=instance.instance_id, source="row", in_image=True, suite=_swebench4_suite(instance),
                       image=instance.image or official_image_name(instance.instance_id, namespace),
                       eval_script=script, log_parser=instance.log_parser or "", eval_type=instance.eval_type or "",
                       test_command=command_between_markers(script), test_files=patch_files(instance.test_patch))


def from_swebench4(instance: Instance, namespace: str) -> GradingSpec:
    """A 4.x row: script, parser and image from the 4.x specifications of its repository and version."""
    repo = swebench4_specs()["repos"][instance.repo]
    spec = repo["versions"].get(instance.version)
    if spec is None:
        known = ", ".join(sorted(repo["versions"]))
        raise SpecError(f"{instance.instance_id}: version: {instance.version!r} of {instance.repo} has no SWE-bench "
                        f"4.x specification (known: {known})")
    if not instance.base_commit or not instance.test_patch.strip():
        raise SpecError(f"{instance.instance_id}: a SWE-bench 4.x row needs base_commit and test_patch")
    suite = _swebench4_suite(instance)
    assert suite is not None
    command = " ".join([suite.command, *test_directives(instance.repo, instance.test_patch)])
    script = eval_script(base_commit=instance.base_commit, test_patch=instance.test_patch, test_command=command,
                         before=suite.before, install=suite.install, activation=suite.activation)
    return GradingSpec(instance_id=instance.instance_id, source="swebench4", in_image=True, suite=suite,
                       image=instance.image or official_image_name(instance.instance_id, namespace),
                       eval_script=script, log_parser=repo["log_parser"], test_command=command,
                       test_files=patch_files(instance.test_patch))


def _swebench4_suite(instance: Instance) -> SuiteSpec | None:
    spec = swebench4_specs()["repos"].get(instance.repo, {}).get("versions", {}).get(instance.version)
    if spec is None:
        return None
    return SuiteSpec(command=spec["test_cmd"], before=list(spec.get("eval_commands", [])),
                     install=spec.get("install"), activation=CONDA_ACTIVATION)


def from_env(instance: Instance, env: EnvSpec) -> GradingSpec:
    """An instance of ours: the environment spec's setup and pytest command, the official pytest parser."""
    tests = list(dict.fromkeys(instance.FAIL_TO_PASS + instance.PASS_TO_PASS))
    command = env.command_for(tests)
    script = eval_script(base_commit=instance.base_commit or "HEAD", test_patch=instance.test_patch,
                         test_command=command, before=list(env.setup), install=None, activation=())
    suite = SuiteSpec(command=env.command_for([]).rstrip(), before=list(env.setup))
    return GradingSpec(instance_id=instance.instance_id, source="env", image=env.image, suite=suite,
                       in_image=repo_in_image(instance),
                       eval_script=script, log_parser=LOCAL_PARSER, test_command=command,
                       test_files=patch_files(instance.test_patch), timeout_s=env.timeout_s, env=env)


def is_swebench4_row(instance: Instance) -> bool:
    return instance.repo in swebench4_specs()["repos"]


def grading_spec(instance: Instance, registry: EnvRegistry, namespace: str = DEFAULT_NAMESPACE) -> GradingSpec:
    """Which of the three an instance is (module docstring): its own eval script first; then an
    environment of ours if the instance names one or brings its repository; then the 4.x specs."""
    if instance.eval_script:
        return from_row(instance, namespace)
    local = instance.env or instance.test_command or instance.repo_path
    if not local and is_swebench4_row(instance):
        return from_swebench4(instance, namespace)
    return from_env(instance, registry.for_instance(instance))
