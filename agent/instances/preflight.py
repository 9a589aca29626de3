"""Before any episode: can the runner provide each instance's environment?

An instance whose environment cannot work used to fail silently: its episode ran, and grading
reported 0/N with `python: command not found` deep in a log. This check runs first, over every
selected instance, and gives each bad one ONE line saying why and what to do:

- its spec cannot be made (an unknown env name; an install spec asking for a Python the offline base
  image lacks, or for conda), no image can be named for it (a dataset row without an image column,
  of a family with no naming rule), or its environment image cannot be built;
- a program its test command or setup commands run (`python`, `tox`...) is not in its image. The
  check runs in a throwaway container of that image, after `~/.bashrc` as the session's start
  script does (official images activate their environment there), once per image.

Rows graded by their dataset's own harness (a SWE-bench v5 `eval_script`, or SWE-bench-family rows
that carry no command of ours) are not checked for programs: their commands are not ours to run.
A prebuilt image not on this machine is not checked either (it is pulled later); that is logged.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from pydantic import BaseModel, Field

from agent.instances.envs import EnvError, EnvRegistry, EnvSpec, ensure_env_image, load_registry
from agent.instances.images import ImageError, ImageOptions, official_image, repo_in_image
from agent.instances.records import Instance

log = structlog.get_logger()

CHECK_WORKERS = 4
CHECK_TIMEOUT_S = 120
OWN_HARNESS = frozenset({"swe-bench", "swe-gym", "multimodal"})
_SHELL_WORDS = frozenset({
    ".", ":", "[", "[[", "alias", "break", "case", "cd", "continue", "do", "done", "echo", "elif", "else",
    "esac", "eval", "exec", "exit", "export", "false", "fi", "for", "function", "if", "local", "printf",
    "pwd", "read", "return", "set", "shift", "source", "test", "then", "true", "ulimit", "umask", "unset",
    "until", "while",
})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PROBE = ('[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc" >/dev/null 2>&1; '
          'for p in "$@"; do command -v "$p" >/dev/null 2>&1 || echo "$p"; done')


class EnvProblem(BaseModel):
    """Why the runner cannot provide one instance's environment, and what to do."""

    instance_id: str
    reason: str

    def line(self) -> str:
        return f"{self.instance_id}: environment: {self.reason}"


class Preflight(BaseModel):
    """The outcome for a set of instances: each good one's image (when images were made), the bad ones."""

    images: dict[str, str] = Field(default_factory=dict, description="instance_id -> image")
    problems: list[EnvProblem] = Field(default_factory=list)

    def refused(self) -> set[str]:
        return {p.instance_id for p in self.problems}


def programs_of(command: str) -> list[str]:
    """The programs a shell command line starts: the first word of each simple command.

    Shell keywords and builtins, variable assignments, paths (`./tests/runtests.py`, relative to the
    repository) and words built from variables are not programs to look up.
    """
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: the shell will say so itself
        return []
    found: list[str] = []
    expecting = True
    for token in tokens:
        if token and set(token) <= set(";&|()"):
            expecting = True
        elif expecting and _ASSIGNMENT.match(token):
            continue
        elif expecting:
            expecting = False
            if token not in _SHELL_WORDS and not any(c in token for c in "/$`{"):
                found.append(token)
    return list(dict.fromkeys(found))


def _needs_program_check(instance: Instance) -> bool:
    if instance.eval_script:
        return False
    ours = instance.test_command or instance.env or instance.install_config is not None
    return bool(ours) or instance.dataset not in OWN_HARNESS


def _commands(spec: EnvSpec) -> list[tuple[str, str]]:
    """(what, command) pairs the runner itself will run in the image."""
    return [("the test command", spec.test_command)] + [(f"setup command `{c}`", c) for c in spec.setup]


def _missing_in(image: str, programs: Sequence[str]) -> set[str] | str:
    """The programs `image` lacks (a string: why the image could not be checked)."""
    from docker.errors import DockerException, ImageNotFound

    from images.build import docker_client

    client = docker_client()
    try:
        client.images.get(image)
    except ImageNotFound:
        return f"not checked: {image} is not on this machine"
    container = None
    try:
        container = client.containers.create(image, ["-c", _PROBE, "preflight", *programs], entrypoint=["bash"],
                                             network_disabled=True, labels={"cwm-runner.preflight": "1"})
        container.start()
        status = container.wait(timeout=CHECK_TIMEOUT_S)
        output = container.logs(stdout=True, stderr=False).decode(errors="replace")
    except DockerException as error:
        return f"cannot run bash in {image}: {str(error).splitlines()[0][:200]}"
    finally:
        if container is not None:
            container.remove(force=True)
        client.close()
    if status.get("StatusCode", 0) not in (0, 1):
        return f"bash in {image} failed (exit {status.get('StatusCode')})"
    return {line.strip() for line in output.splitlines() if line.strip()}


def _program_reason(instance: Instance, spec: EnvSpec, image: str, missing: set[str]) -> str | None:
    for what, command in _commands(spec):
        for program in programs_of(command):
            if program in missing:
                hint = " (it has python3)" if program == "python" and "python3" not in missing else ""
                where = "install_config.test_cmd or " if instance.install_config else ""
                return (f"{what} runs `{program}`, which image {image} does not have{hint}; change the "
                        f"{where}test_command, or give the row an image that has `{program}`")
    return None


def _spec_problem(instance: Instance, registry: EnvRegistry) -> EnvSpec | str:
    try:
        return registry.for_instance(instance)
    except EnvError as error:
        return str(error).removeprefix(f"{instance.instance_id}: ")


def _images(instances: Sequence[Instance], specs: dict[str, EnvSpec], options: ImageOptions | None,
            problems: dict[str, str]) -> dict[str, str]:
    """Each instance's image: its official image's name (pulled later, by the episode or `agent images
    pull`), or its environment image, built once per spec; a failure is a problem of each instance."""
    from images.build import ImageBuildError

    images: dict[str, str] = {}
    built: dict[str, str | Exception] = {}
    for instance in instances:
        spec = specs.get(instance.instance_id)
        if spec is None:
            continue
        try:
            if repo_in_image(instance):
                images[instance.instance_id] = official_image(instance, options)
                continue
        except ImageError as error:
            problems[instance.instance_id] = str(error).removeprefix(f"{instance.instance_id}: ")
            continue
        key = spec.model_dump_json()
        if key not in built:
            try:
                built[key] = ensure_env_image(spec)
            except (ImageBuildError, EnvError) as error:
                built[key] = error
        if isinstance(built[key], Exception):
            problems[instance.instance_id] = f"its image cannot be built: {str(built[key]).splitlines()[0]}"
        else:
            images[instance.instance_id] = str(built[key])
    return images


def check_environments(instances: Sequence[Instance], registry: EnvRegistry | None = None,
                       options: ImageOptions | None = None, docker: bool = True) -> Preflight:
    """Check every instance's environment; with `docker`, build the images and look the programs up.

    `options` say where official images come from (`agent batch --registry/--image-prefix`). Without
    `docker` (instances run on other hosts, e.g. Ray workers) only the specs are checked.
    """
    registry = registry or load_registry()
    problems: dict[str, str] = {}
    specs: dict[str, EnvSpec] = {}
    for instance in instances:
        outcome = _spec_problem(instance, registry)
        if isinstance(outcome, str):
            problems[instance.instance_id] = outcome
        else:
            specs[instance.instance_id] = outcome
    images = _images(instances, specs, options, problems) if docker else {}
    checked = [i for i in instances if i.instance_id in images and _needs_program_check(i)]
    wanted: dict[str, set[str]] = {}
    for instance in checked:
        programs = {p for _, c in _commands(specs[instance.instance_id]) for p in programs_of(c)}
        wanted.setdefault(images[instance.instance_id], set()).update(programs)
    with ThreadPoolExecutor(max_workers=CHECK_WORKERS) as pool:  # python3 too: a hint when `python` is missing
        missing = dict(zip(wanted, pool.map(lambda image: _missing_in(image, sorted(wanted[image] | {"python3"})),
                                            wanted)))
    for instance in checked:
        image = images[instance.instance_id]
        if isinstance(missing.get(image), str):
            log.info("preflight.unchecked", instance_id=instance.instance_id, detail=missing[image])
            continue
        reason = _program_reason(instance, specs[instance.instance_id], image, missing.get(image) or set())
        if reason:
            problems[instance.instance_id] = reason
    found = [EnvProblem(instance_id=i.instance_id, reason=problems[i.instance_id])
             for i in instances if i.instance_id in problems]
    return Preflight(images={k: v for k, v in images.items() if k not in problems}, problems=found)
