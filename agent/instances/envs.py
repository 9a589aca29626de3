"""Environment images: which image runs an instance's repository, and how its tests are run.

An environment is a small spec (`EnvSpec`) read from data files in images/envs/ (TOML or JSON, no
YAML): the Python to use, the commands that install dependencies at build time (network allowed,
host CA bundle trusted), the commands that prepare the checkout inside each sandbox (offline), and
the test command template. Instances pick one by name (`Instance.env`) or by repository and version;
otherwise the registry's default applies. The image is built once per spec through
`images.build.ensure_repo_image` (tagged by a hash of base image + install commands), so every
instance of a repository and version shares it and a changed recipe gets a new tag.

Python versions: only "system" (the base image's python3, 3.11 on Debian bookworm) is supported
offline. Another interpreter needs a download that the package mirrors here do not offer, so such a
spec is refused with a message; where a registry is reachable, give the spec a prebuilt `image`.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from agent.instances.records import Instance
from images.build import IMAGES_DIR

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: only the JSON data files can be read
    tomllib = None  # type: ignore[assignment]

log = structlog.get_logger()

ENVS_DIR = IMAGES_DIR / "envs"
BASE_PYTHON = "3.11"  # python3 of the base image (Debian bookworm)
TESTS_PLACEHOLDER = "{tests}"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class EnvError(ValueError):
    """An environment spec is invalid or cannot be built; the message says what to do."""


class EnvSpec(BaseModel):
    """One environment: how to build its image and how to run tests in it."""

    name: str = Field(description="lower-case name; also names the image (cwm-runner/env-<name>)")
    python: str = Field(default="system", description="'system' (the base image's python3) or a version")
    install: list[str] = Field(default_factory=list, description="build-time shell commands (network on)")
    setup: list[str] = Field(default_factory=list,
                             description="commands run in /testbed before the tests, offline (e.g. pip install -e .)")
    test_command: str = Field(default="python3 -m pytest -rA -p no:cacheprovider {tests}",
                              description="{tests} becomes the shell-quoted test targets")
    targets: Literal["files", "ids"] = Field(
        default="files", description="pass test files (node ids up to '::') or the full test ids to {tests}")
    timeout_s: float = Field(default=1800.0, gt=0, description="limit for one test run")
    image: str | None = Field(default=None, description="a prebuilt image to use as is (nothing is built)")
    repos: list[str] = Field(default_factory=list, description="repositories (owner/name) this spec serves")
    versions: list[str] = Field(default_factory=list, description="their versions; empty: every version")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower-case letters, digits, '.', '_' or '-' (it names a Docker image)")
        return value

    @model_validator(mode="after")
    def _known_python(self) -> "EnvSpec":
        if self.image is None and self.python not in ("system", BASE_PYTHON):
            raise ValueError(
                f"python {self.python!r} is not available offline (the base image has python {BASE_PYTHON}); "
                "use python = \"system\" or give a prebuilt `image`"
            )
        return self

    def serves(self, repo: str, version: str) -> bool:
        return repo in self.repos and (not self.versions or version in self.versions)

    def command_for(self, tests: Iterable[str]) -> str:
        """The test command with `{tests}` replaced (str.replace: shell `${X}` stays untouched)."""
        chosen = list(dict.fromkeys(self._target(t) for t in tests))
        return self.test_command.replace(TESTS_PLACEHOLDER, " ".join(shlex.quote(t) for t in chosen))

    def _target(self, test_id: str) -> str:
        # pytest node ids are FILE::CLASS::NAME[PARAMS]; running whole files is robust to ids the shell
        # or pytest's -k would mangle, and the log parser then picks the named tests out.
        return test_id.split("::", 1)[0] if self.targets == "files" else test_id


class EnvRegistry(BaseModel):
    """Every spec loaded from the data files, and which one applies when nothing matches."""

    envs: dict[str, EnvSpec]
    default: str

    @model_validator(mode="after")
    def _default_exists(self) -> "EnvRegistry":
        if self.default not in self.envs:
            raise ValueError(f"default environment {self.default!r} is not defined")
        return self

    def for_instance(self, instance: Instance) -> EnvSpec:
        """The spec for an instance: by name, else by repository and version, else the default.

        An instance's own `test_command` or `image` override the spec's.
        """
        if instance.env:
            if instance.env not in self.envs:
                known = ", ".join(sorted(self.envs))
                raise EnvError(f"{instance.instance_id}: unknown env {instance.env!r}; known: {known}")
            spec = self.envs[instance.env]
        else:
            exact = [s for s in self.envs.values() if s.serves(instance.repo, instance.version) and s.versions]
            loose = [s for s in self.envs.values() if s.serves(instance.repo, instance.version)]
            spec = (exact or loose or [self.envs[self.default]])[0]
        overrides: dict[str, Any] = {}
        if instance.test_command:
            overrides["test_command"] = instance.test_command
        if instance.image:
            overrides["image"] = instance.image
        return spec.model_copy(update=overrides) if overrides else spec


class _EnvFile(BaseModel):
    """One data file: `[[env]]` tables (TOML) or {"env": [...]} (JSON), and optionally `default`."""

    env: list[dict[str, Any]] = Field(default_factory=list)
    default: str | None = None


def _read_data_file(path: Path) -> _EnvFile:
    if path.suffix == ".toml" and tomllib is None:
        raise EnvError(f"{path}: reading TOML needs Python 3.11+; run on 3.11 or convert the file to JSON")
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as error:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise EnvError(f"{path}: cannot read environment specs: {error}") from None
    if isinstance(data, list):
        data = {"env": data}
    try:
        return _EnvFile.model_validate(data)
    except ValidationError:
        raise EnvError(f"{path}: expected `env` as a list of tables and an optional `default` name") from None


def load_registry(paths: Iterable[Path] | None = None) -> EnvRegistry:
    """Load every images/envs/*.toml and *.json (or the given files); a name may be defined only once."""
    files = sorted(ENVS_DIR.glob("*.toml")) + sorted(ENVS_DIR.glob("*.json")) if paths is None else list(paths)
    envs: dict[str, EnvSpec] = {}
    default: str | None = None
    for path in files:
        data = _read_data_file(path)
        default = data.default or default
        for index, raw in enumerate(data.env):
            try:
                spec = EnvSpec.model_validate(raw)
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "env"
                raise EnvError(f"{path}: env[{index}]: {field}: {first['msg']}") from None
            if spec.name in envs:
                raise EnvError(f"{path}: env[{index}]: name: {spec.name!r} is defined twice")
            envs[spec.name] = spec
    if not envs:
        raise EnvError(f"no environment specs found in {ENVS_DIR}; add a .toml file with [[env]] tables")
    try:
        return EnvRegistry(envs=envs, default=default or next(iter(envs)))
    except ValidationError as error:
        raise EnvError(f"environment specs: {error.errors()[0]['msg']}") from None


_built: dict[str, str] = {}
_built_lock = threading.Lock()


def ensure_env_image(spec: EnvSpec) -> str:
    """The image tag for a spec, built on first use (once per machine, memoised per process)."""
    if spec.image:
        return spec.image
    from images.build import RepoImageSpec, ensure_repo_image

    key = json.dumps([spec.name, spec.install])
    with _built_lock:  # one build at a time per process; images.build locks between processes
        if key not in _built:
            log.info("envs.ensure_image", env=spec.name)
            _built[key] = ensure_repo_image(RepoImageSpec(name=spec.name, install=spec.install))
        return _built[key]


def image_for(instance: Instance, registry: EnvRegistry | None = None) -> str:
    """Shortcut for callers that only need the image (e.g. `agent batch` choosing a sandbox image)."""
    return ensure_env_image((registry or load_registry()).for_instance(instance))
