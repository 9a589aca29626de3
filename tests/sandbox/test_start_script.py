"""The session starts as CWM's does (SESSION_START_SCRIPT_BASE): UTF-8 locale, ~/.bashrc, CWM's ulimits,
before the first command and invisibly to it; images without a ~/.bashrc and our own images too."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.base import CWM_MEMORY_LIMIT_KIB, CWM_PROCESS_LIMIT, SandboxConfig
from sandbox.docker import DockerSandbox
from sandbox.session import startup_script
from tests.official_images import (
    build_from,
    build_official_image,
    host_can_compile_locale,
    make_repository,
    remove_image,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[str]:
    """An official-style image with SWE-bench's conda-in-bashrc environment and, where this host can
    compile it, the en_US.UTF-8 locale the official images install."""
    repo, base, _ = make_repository(tmp_path_factory.mktemp("start"))
    tag = build_official_image(base_image, repo, base, f"cwm-test/start-{secrets.token_hex(4)}:latest",
                               locale=host_can_compile_locale())
    yield tag
    remove_image(tag)


def sandbox_in(image: str, run_id: str) -> DockerSandbox:
    return DockerSandbox(SandboxConfig(image=image, run_id=run_id))


def test_first_command_sees_the_images_environment_locale_and_limits(official: str, run_id: str) -> None:
    with sandbox_in(official, run_id) as sandbox:
        first = sandbox.run('echo "$CONDA_DEFAULT_ENV"; command -v python3; echo "$LANG $LC_ALL"; '
                            "ulimit -v; ulimit -d; ulimit -u; pwd")
        locale = "en_US.UTF-8" if host_can_compile_locale() else "C.UTF-8"
        assert first.output == (f"testbed\n/opt/miniconda3/envs/testbed/bin/python3\n{locale} {locale}\n"
                                f"{CWM_MEMORY_LIMIT_KIB}\n{CWM_MEMORY_LIMIT_KIB}\n{CWM_PROCESS_LIMIT}\n/testbed\n")
        assert first.exit_code == 0
        # The environment is the image's: its package imports with the install-generated file.
        assert sandbox.run("python3 -c 'import calc; print(calc.__version__)'").output == "1.0\n"


def test_every_new_session_runs_it_again(official: str, run_id: str) -> None:
    with sandbox_in(official, run_id) as sandbox:
        sandbox.run("conda deactivate; cd /tmp")
        assert sandbox.run('echo "${CONDA_DEFAULT_ENV:-none}"').output == "none\n"
        sandbox.restart_session()
        assert sandbox.run('echo "$CONDA_DEFAULT_ENV"; pwd').output == "testbed\n/testbed\n"


def test_what_the_bashrc_prints_or_fails_is_never_shown(base_image: str, run_id: str) -> None:
    noisy = build_from(base_image, f"cwm-test/noisy-bashrc-{secrets.token_hex(4)}:latest",
                       "printf 'echo hello from bashrc\\necho to stderr >&2\\nexport FROM_BASHRC=yes\\nfalse\\n' "
                       ">> /root/.bashrc")
    try:
        with sandbox_in(noisy, run_id) as sandbox:
            first = sandbox.run('echo "$?|$FROM_BASHRC"')
            assert first.output == "0|yes\n" and first.exit_code == 0
    finally:
        remove_image(noisy)


def test_an_image_without_a_bashrc_starts_the_same(base_image: str, run_id: str) -> None:
    bare = build_from(base_image, f"cwm-test/no-bashrc-{secrets.token_hex(4)}:latest", "rm -f /root/.bashrc")
    try:
        with sandbox_in(bare, run_id) as sandbox:
            assert sandbox.run("ls -a ~ | grep -c bashrc; echo $LANG; ulimit -u").output == \
                f"0\nC.UTF-8\n{CWM_PROCESS_LIMIT}\n"
    finally:
        remove_image(bare)


def test_our_own_base_image_keeps_working(base_image: str, run_id: str) -> None:
    with sandbox_in(base_image, run_id) as sandbox:
        assert sandbox.run("echo $LANG; python3 -c 'import pytest; print(1)'").output == "C.UTF-8\n1\n"


def test_the_script_is_cwms_line_then_ours() -> None:
    script = startup_script(SandboxConfig(image="x", env={"A": "b c"}, startup_extra="alias ll='ls -l'",
                                          workdir="/srv/w"))
    first, *rest = script.splitlines()
    assert first.endswith(f"; if [ -f ~/.bashrc ]; then source ~/.bashrc; fi; ulimit -v {CWM_MEMORY_LIMIT_KIB}; "
                          f"ulimit -d {CWM_MEMORY_LIMIT_KIB}; ulimit -u {CWM_PROCESS_LIMIT}")
    assert first.index("export LC_ALL=") < first.index("source ~/.bashrc")  # CWM's order
    assert rest == ["export A='b c'", "alias ll='ls -l'", "cd -- /srv/w"]
    assert (CWM_MEMORY_LIMIT_KIB, CWM_PROCESS_LIMIT) == (12 * 1024 * 1024, 65536)  # default_configs.py


def test_bash_line_numbers_after_the_start_are_those_of_a_two_line_script(base_image: str, run_id: str) -> None:
    """bash numbers every line the session reads, and its errors show the number: the start-up script
    must stay two lines (CWM's line, then `cd`) or recorded errors like this one no longer replay."""
    with sandbox_in(base_image, run_id) as sandbox:  # 12: what the runner's earlier one-line script gave
        assert sandbox.run("if true; then").output == "/bin/bash: eval: line 12: syntax error: unexpected end of file\n"


def test_the_trajectory_format_documents_the_field() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "trajectory-format.md").read_text()
    assert "`start_script`" in doc and "`repo_in_image`" in doc
