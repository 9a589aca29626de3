"""Environment images: which image runs an instance's repository, and how its tests are run.

An environment is a small spec (`EnvSpec`) read from data files in images/envs/ (TOML or JSON, no
YAML): the Python to use, the commands that install dependencies at build time (network allowed,
host CA bundle trusted), the commands that prepare the checkout inside each sandbox (offline), and
the test command template. Instances pick one by name (`Instance.env`) or by repository and version;
otherwise the registry's default applies. The image is built once per spec through
`images.build.ensure_repo_image` (tagged by a hash of base image + install commands), so every
instance of a repository and version shares it and a changed recipe gets a new tag.

A row may carry its own install spec instead (SWE-rebench's `install_config`: Python version,
packages, test command): `spec_from_install` turns it into a spec of the same kind, so such rows get
an environment image through the same build path.

Python versions: only "system" (the base image's python3, 3.11 on Debian bookworm) is supported
offline. Another interpreter needs a download that the package mirrors here do not offer, so such a
spec is refused with a message; where a registry is reachable, give the spec a prebuilt `image`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from agent.instances.records import InstallConfig, Instance
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
        """The spec for an instance: by name, else from the row's install spec, else by repository and
        version, else the default.

        An instance's own `test_command` or `image` override the spec's.
        """
        if instance.install_config is not None and not instance.env:
            spec = spec_from_install(instance, self.envs[self.default])
        elif instance.env:
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


# -- install specs carried by rows (SWE-rebench's install_config) ------------------------------------

_APT = re.compile(r"^\s*(sudo\s+)?(apt-get|apt)\s")
_CONDA_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)=([^=<>!].*)$")


def _pip_requirement(conda_spec: str) -> str:
    """A conda package spec as pip reads it: `numpy=1.19` (conda: any 1.19.x) becomes `numpy==1.19.*`."""
    pinned = _CONDA_PIN.match(conda_spec)
    return f"{pinned.group(1)}=={pinned.group(2)}.*" if pinned else conda_spec


def _pip_install(requirements: Iterable[str]) -> str:
    return "python3 -m pip install --no-cache-dir " + " ".join(shlex.quote(r) for r in requirements)


def _requirements_file(text: str) -> str:
    """A build step writing requirements.txt from the row's text (base64: no quoting to get wrong)."""
    encoded = base64.b64encode(text.encode()).decode()
    return (f"echo {encoded} | base64 -d > /tmp/cwm-requirements.txt && "
            "python3 -m pip install --no-cache-dir -r /tmp/cwm-requirements.txt && rm /tmp/cwm-requirements.txt")


def _with_tests(command: str) -> str:
    """Install specs name the command only; the harness appends the test files, as `{tests}` does here."""
    return command if TESTS_PLACEHOLDER in command else f"{command} {TESTS_PLACEHOLDER}"


def _offline_python(version: str | None, instance_id: str) -> str:
    if version is None or version == "system" or version.split(".")[:2] == BASE_PYTHON.split("."):
        return "system"
    raise EnvError(f"{instance_id}: install_config.python: Python {version} is not available offline (the base "
                   f"image has only Debian bookworm's python3 {BASE_PYTHON}); give the row an image that has it "
                   "(docker_image or image), pulled or built where a registry is reachable")


def _build_steps(config: InstallConfig, instance_id: str) -> tuple[list[str], list[str]]:
    """(commands run when the image is built, with network; commands run in /testbed before the tests).

    apt-get lines of pre_install need the network and no repository, so they run at build time; other
    pre_install lines and `install` (e.g. `pip install -e .`) need the repository, so they run in the
    sandbox, offline, as the spec's `setup`.
    """
    install = [c for c in config.pre_install if _APT.match(c)]
    setup = [c for c in config.pre_install if not _APT.match(c)]
    packages = (config.packages or "").strip()
    if packages == "environment.yml":
        raise EnvError(f"{instance_id}: install_config.packages: environment.yml needs conda, which the offline "
                       "base image does not have; give the row an image (docker_image or image)")
    if packages == "requirements.txt":
        if not (config.requirements or "").strip():
            raise EnvError(f"{instance_id}: install_config.packages is requirements.txt but the row carries no "
                           "requirements text (SWE-rebench's `requirements` column)")
        install.append(_requirements_file(config.requirements or ""))
    elif packages:
        install.append(_pip_install(_pip_requirement(p) for p in packages.split()))
    if config.pip_packages:
        install.append(_pip_install(config.pip_packages))
    if config.install:
        setup.append(config.install)
    return install, setup


def _spec_name(instance: Instance, steps: list[str]) -> str:
    """Readable and shared: instances of one repository with the same steps build one image."""
    slug = re.sub(r"[^a-z0-9]+", "-", instance.repo.lower()).strip("-")[-40:].strip("-") or "row"
    digest = hashlib.sha256(json.dumps(steps).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def spec_from_install(instance: Instance, base: EnvSpec) -> EnvSpec:
    """The environment a row's install spec asks for (`base` gives what the spec leaves out).

    With an image (SWE-rebench's docker_image) nothing is built: the image already holds what the spec
    installs, and only its test command is read.
    """
    config = instance.install_config
    assert config is not None
    update: dict[str, Any] = {"test_command": _with_tests(config.test_cmd)} if config.test_cmd else {}
    if instance.image:
        return base.model_copy(update={**update, "image": instance.image, "install": [], "setup": []})
    python = _offline_python(config.python, instance.instance_id)
    install, setup = _build_steps(config, instance.instance_id)
    return base.model_copy(update={**update, "name": _spec_name(instance, install + setup), "python": python,
                                   "install": install, "setup": setup, "image": None, "repos": [],
                                   "versions": []})


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
