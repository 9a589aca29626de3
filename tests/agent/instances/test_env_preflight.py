"""Environments from install specs, and the check before any episode: a row's `install_config` becomes
an environment image (built for real, then graded), and an instance whose environment cannot work
(`python` where only python3 exists, a Python the offline base lacks, conda, an unknown env) is refused
with one line before anything runs."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import docker
import pytest

from agent.instances.envs import EnvError, load_registry, spec_from_install
from agent.instances.preflight import check_environments, programs_of
from agent.instances.records import Instance
from agent.instances.sources import load_instances
from images.build import build_dockerfile, docker_client
from tests.agent.instances.dataset_rows import write_jsonl
from tests.helpers import REPO_ROOT

PYPI = REPO_ROOT / "tests" / "fixtures" / "pypi"
docker_test = pytest.mark.docker


def pypi_row(name: str, **fields: object) -> dict[str, object]:
    """A PyPI fixture row (a real repository with a real fix), its bundle path made absolute."""
    for line in (PYPI / "instances.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["instance_id"] == name:
            return {**row, "repo_path": str(PYPI / row["repo_path"]), **fields}
    raise KeyError(name)


def instance(install_config: dict | None = None, **fields: object) -> Instance:
    defaults: dict[str, object] = {"instance_id": "owner__project-1", "repo": "owner/project", "problem_statement": "p"}
    return Instance.model_validate({**defaults, "install_config": install_config, **fields})


# -- install specs -----------------------------------------------------------------------------------


def test_an_install_spec_with_an_image_builds_nothing_and_gives_the_test_command() -> None:
    registry = load_registry()
    spec = registry.for_instance(instance({"python": "3.9", "packages": "environment.yml", "test_cmd": "pytest -rA"},
                                          image="swerebench/sweb.eval.x86_64.owner_1776_project-1"))
    assert (spec.image, spec.install, spec.setup) == ("swerebench/sweb.eval.x86_64.owner_1776_project-1", [], [])
    assert spec.command_for(["tests/test_a.py::test_x", "tests/test_a.py::test_y"]) == "pytest -rA tests/test_a.py"


def test_an_install_spec_without_an_image_becomes_build_and_setup_steps() -> None:
    config = {"python": "3.11.4", "packages": "numpy=1.26 scipy", "pip_packages": ["pytest-timeout==2.3.1"],
              "pre_install": ["apt-get update && apt-get install -y libxml2-dev", "sed -i 's/a/b/' setup.cfg"],
              "install": "pip install -e .", "test_cmd": "pytest -rA {tests} -x"}
    spec = load_registry().for_instance(instance(config))
    assert spec.install == ["apt-get update && apt-get install -y libxml2-dev",
                            "python3 -m pip install --no-cache-dir 'numpy==1.26.*' scipy",
                            "python3 -m pip install --no-cache-dir pytest-timeout==2.3.1"]
    assert spec.setup == ["sed -i 's/a/b/' setup.cfg", "pip install -e ."]
    assert (spec.python, spec.image, spec.test_command) == ("system", None, "pytest -rA {tests} -x")
    assert spec.name.startswith("owner-project-") and spec == spec_from_install(instance(config), spec)


@pytest.mark.parametrize(("config", "reason"), [
    ({"python": "3.9", "test_cmd": "pytest"},
     "install_config.python: Python 3.9 is not available offline (the base image has only Debian bookworm's python3 "
     "3.11); give the row an image that has it (docker_image or image), pulled or built where a registry is "
     "reachable"),
    ({"packages": "environment.yml", "environment": "name: testbed\n"},
     "install_config.packages: environment.yml needs conda, which the offline base image does not have; give the row "
     "an image (docker_image or image)"),
    ({"packages": "requirements.txt"},
     "install_config.packages is requirements.txt but the row carries no requirements text (SWE-rebench's "
     "`requirements` column)"),
])
def test_install_specs_the_offline_base_cannot_provide_are_one_line(config: dict, reason: str) -> None:
    with pytest.raises(EnvError) as caught:
        load_registry().for_instance(instance(config))
    assert str(caught.value) == f"owner__project-1: {reason}"
    report = check_environments([instance(config), instance(env="nope", instance_id="b")], docker=False)
    assert [p.line() for p in report.problems] == [
        f"owner__project-1: environment: {reason}",
        "b: environment: unknown env 'nope'; known: pypi-pure, python-pytest"]


def test_programs_of_a_command_line() -> None:
    assert programs_of("PYTHONWARNINGS=ignore python -m pytest -rA {tests} && ./tests/runtests.py; "
                       "cd docs && tox -e py | tee log || exit 1") == ["python", "tox", "tee"]
    assert programs_of("source /opt/env/bin/activate; $PYTHON -m pytest") == []


# -- the check, with Docker -----------------------------------------------------------------------------


@docker_test
def test_python_on_the_base_image_is_refused_with_one_line(tmp_path: Path, base_image: str) -> None:
    """The reproduction: rows whose test command is `python -m pytest` graded 0/N with `python: command not
    found`. Now each is refused before anything runs; the python3 row passes."""
    rows = [pypi_row("six-1.14.0", test_command="python -m pytest -rA -p no:cacheprovider {tests}"),
            pypi_row("idna-3.4", test_command="python3 -m pytest -rA -p no:cacheprovider {tests}")]
    report = check_environments(load_instances(write_jsonl(tmp_path / "rows.jsonl", rows)))
    image = load_registry().envs["pypi-pure"]
    (problem,) = report.problems
    assert problem.line().startswith("six-1.14.0: environment: the test command runs `python`, which image "
                                     "cwm-runner/env-pypi-pure:")
    assert problem.line().endswith(" does not have (it has python3); change the test_command, or give the row an "
                                   "image that has `python`")
    assert image.name == "pypi-pure" and list(report.images) == ["idna-3.4"]


@pytest.fixture(scope="module")
def bashrc_python_image(base_image: str) -> str:
    """Like the official images: `python` is on PATH only once ~/.bashrc has run."""
    tag = "cwm-runner-test/bashrc-python:1"
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "Dockerfile").write_text(
            f"FROM {base_image}\nRUN mkdir -p /opt/venv/bin && ln -s /usr/bin/python3 /opt/venv/bin/python && "
            "echo 'export PATH=/opt/venv/bin:$PATH' > /root/.bashrc\n")
        build_dockerfile(docker_client(), Path(scratch), tag)
    return tag


@docker_test
def test_a_spec_whose_interpreter_the_image_has_is_accepted(bashrc_python_image: str) -> None:
    good = instance(image=bashrc_python_image, test_command="python -m pytest {tests}")
    bad = instance(image=bashrc_python_image, test_command="tox -e py -- {tests}", instance_id="b")
    report = check_environments([good, bad])
    assert report.images == {"owner__project-1": bashrc_python_image}
    assert [p.line() for p in report.problems] == [
        f"b: environment: the test command runs `tox`, which image {bashrc_python_image} does not have; change the "
        "test_command, or give the row an image that has `tox`"]


@docker_test
def test_an_install_config_row_gets_an_environment_image_and_grades(tmp_path: Path, base_image: str) -> None:
    """A SWE-rebench-style row with no image: its install spec is built into an environment image
    (requirements text and pip packages installed at build time), checked, and graded with its own
    test command: resolved."""
    config = {"python": "3.11", "packages": "requirements.txt", "pip_packages": ["tomli-w==1.0.0"],
              "test_cmd": "python3 -m pytest -rA -p no:cacheprovider"}
    row = pypi_row("idna-3.4", install_config=config, requirements="text-unidecode==1.3\n")
    del row["env"]  # a named env would win over the row's own spec
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    (loaded,) = load_instances(path)
    assert loaded.dataset == "swe-rebench" and loaded.install_config is not None
    report = check_environments([loaded])
    assert report.problems == []
    image = report.images["idna-3.4"]
    assert image.startswith("cwm-runner/env-kjd-idna-")
    client = docker.from_env()
    try:
        output = client.containers.run(image, ["python3", "-c", "import tomli_w, text_unidecode; print('ok')"],
                                       remove=True)
    finally:
        client.close()
    assert output.decode().strip() == "ok"
    done = subprocess.run(["agent", "eval", "--gold", "--instances", str(path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resolved 1/1" in done.stdout


# -- in a batch: before any episode ---------------------------------------------------------------------


@docker_test
def test_a_batch_refuses_a_bad_environment_before_its_episode(tmp_path: Path, base_image: str) -> None:
    """`agent batch` checks every selected instance first: the one whose test command needs `python` is an
    error with its reason and never starts an episode (no sandbox, no trajectory); the other one runs."""
    from structlog.testing import capture_logs

    from agent.batch.run import BatchRequest, run_batch
    from tests.agent.batch.test_run import make_instances, make_replays, quiet, read_manifest, status_events

    good, bad = make_instances(2, prefix="pre")
    bad = bad.model_copy(update={"test_command": "python -m pytest -rA {tests}"})
    spec = make_replays(tmp_path / "replays", [good, bad])
    with capture_logs() as logs:
        result = run_batch(BatchRequest(instances=[good, bad], output=tmp_path / "run", model=spec, workers=2),
                           progress=quiet())
    assert (result.done, result.errored, result.ran) == (1, 1, 1)
    reason = next(e["detail"] for e in logs if e["event"] == "batch.environment_refused")
    assert reason.startswith("pre-01: environment: the test command runs `python`, which image ")
    records = {r.instance_id: r.samples[0] for r in read_manifest(tmp_path / "run").instances}
    assert (records["pre-01"].status, records["pre-01"].error) == ("error", reason)
    assert records["pre-00"].status == "done"
    assert [e["event"] for e in status_events(tmp_path / "run") if e.get("instance_id") == "pre-01"] == [
        "start", "error"]
    assert not (tmp_path / "run" / "trajectories" / "pre-01").exists()
