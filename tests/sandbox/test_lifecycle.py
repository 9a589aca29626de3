"""Sandboxes go away however their runner ends: normal exit, Ctrl-C, SIGTERM, SIGKILL (reaper).

Each case runs a real child Python process that starts a Docker sandbox, so the signal handling and
atexit paths are the production ones. A pool and the prune semantics are covered here too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from docker.errors import NotFound

from sandbox.base import SandboxConfig, SandboxError
from sandbox.docker import DockerSandbox
from sandbox.pool import WarmPool
from sandbox.reaper import LABEL_OWNER_HOST, LABEL_RUN_ID, owner_labels, prune, reap_orphans

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_WAIT_S = 120  # a hang guard, not a timing assertion


def exists(api, container_id: str) -> bool:
    try:
        api.inspect_container(container_id)
    except NotFound:
        return False
    return True


def spawn_child(image: str, run_id: str, body: str) -> tuple[subprocess.Popen, str]:
    """Start a Python child that creates a sandbox, prints its container id, then runs `body`."""
    code = textwrap.dedent(
        f"""
        import sys
        from sandbox.base import SandboxConfig
        from sandbox.docker import DockerSandbox
        sb = DockerSandbox(SandboxConfig(image={image!r}, run_id={run_id!r}))
        print("CID", sb.container_id, flush=True)
        """
    ) + textwrap.dedent(body)
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # our signals only, never the terminal's
    )
    assert child.stdout is not None
    container_id = ""
    for line in child.stdout:  # skip log lines (structlog writes to stdout by default)
        if line.startswith("CID "):
            container_id = line.split()[1]
            break
    if not container_id:
        child.kill()
        raise AssertionError(f"child failed to start a sandbox: {child.communicate()[1]}")
    return child, container_id


def wait_for_process(api, container_id: str, needle: str) -> None:
    """Until `needle` runs in the container (so a signal surely lands mid-command)."""
    for _ in range(1000):
        if any(needle in " ".join(p) for p in api.top(container_id)["Processes"]):
            return
        time.sleep(0.01)
    raise AssertionError(f"{needle!r} never started in {container_id[:12]}")


def test_normal_exit_removes_unclosed_sandboxes(base_image, run_id, docker_api) -> None:
    body = f"""
        more = [DockerSandbox(SandboxConfig(image={base_image!r}, run_id={run_id!r})) for _ in range(2)]
        print("CIDS", *[s.container_id for s in more], flush=True)
        sb.run('echo hi')
        """
    child, cid = spawn_child(base_image, run_id, body)
    out, err = child.communicate(timeout=CHILD_WAIT_S)
    assert child.returncode == 0, err
    others = next(line.split()[1:] for line in out.splitlines() if line.startswith("CIDS "))
    assert "Traceback" not in err and "Exception ignored" not in err, err
    for container_id in [cid, *others]:  # closed in parallel at exit
        assert not exists(docker_api, container_id)


@pytest.mark.parametrize(
    ("sig", "expected"),
    [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, "")],
    ids=["ctrl-c", "sigterm"],
)
def test_signal_mid_command_removes_container(base_image, run_id, docker_api, sig, expected) -> None:
    child, cid = spawn_child(base_image, run_id, "sb.run('sleep 300', timeout_s=600)\nprint('not reached')\n")
    wait_for_process(docker_api, cid, "sleep 300")
    child.send_signal(sig)
    out, err = child.communicate(timeout=CHILD_WAIT_S)
    assert "not reached" not in out
    assert child.returncode != 0
    if sig == signal.SIGTERM:
        assert child.returncode == 128 + signal.SIGTERM  # SystemExit(143), so atexit ran
    assert expected in err
    assert not exists(docker_api, cid)


def test_sigkill_orphan_is_reaped(base_image, run_id, docker_api) -> None:
    child, cid = spawn_child(base_image, run_id, "import time; time.sleep(600)\n")
    child.kill()
    child.wait(CHILD_WAIT_S)
    assert exists(docker_api, cid)  # nothing could clean up after SIGKILL
    removed = reap_orphans(docker_api)
    assert cid in removed
    assert not exists(docker_api, cid)


def test_first_sandbox_of_a_process_reaps_orphans(base_image, run_id, docker_api) -> None:
    victim, orphan = spawn_child(base_image, run_id, "import time; time.sleep(600)\n")
    victim.kill()
    victim.wait(CHILD_WAIT_S)
    assert exists(docker_api, orphan)
    # A fresh runner process: its first DockerSandbox reaps before starting.
    runner, own = spawn_child(base_image, run_id, "sb.close()\n")
    assert runner.wait(CHILD_WAIT_S) == 0
    assert not exists(docker_api, orphan)
    assert not exists(docker_api, own)


def test_reaper_spares_live_and_foreign_owners(base_image, run_id, docker_api) -> None:
    live = DockerSandbox(SandboxConfig(image=base_image, run_id=run_id))
    # A container (never started) that claims an owner on another host: not ours to judge.
    labels = owner_labels(run_id) | {LABEL_OWNER_HOST: "some-other-host/boot"}
    foreign = docker_api.create_container(base_image, command=["true"], labels=labels)["Id"]
    try:
        assert live.container_id not in reap_orphans(docker_api)
        assert foreign not in reap_orphans(docker_api)
        assert exists(docker_api, foreign)
        removed = prune(docker_api, all=True, run_id=run_id)
        assert foreign in removed and live.container_id not in removed
        assert live.run("echo alive").output == "alive\n"
    finally:
        live.close()
        if exists(docker_api, foreign):
            docker_api.remove_container(foreign, force=True)


def test_signal_handlers_only_from_main_thread(tmp_path) -> None:
    code = textwrap.dedent(
        """
        import signal, threading
        from sandbox import lifecycle
        results = []
        t = threading.Thread(target=lambda: results.append(lifecycle.install_signal_handlers()))
        t.start(); t.join()
        assert results == [False], results
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert lifecycle.install_signal_handlers() is True
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout == "ok\n", done.stderr


def test_close_is_idempotent_and_final(base_image, run_id, docker_api) -> None:
    sandbox = DockerSandbox(SandboxConfig(image=base_image, run_id=run_id))
    cid = sandbox.container_id
    sandbox.close()
    sandbox.close()
    assert not exists(docker_api, cid)
    with pytest.raises(SandboxError, match="closed"):
        sandbox.run("true")


def test_context_manager_closes(base_image, run_id, docker_api) -> None:
    with DockerSandbox(SandboxConfig(image=base_image, run_id=run_id)) as sandbox:
        cid = sandbox.container_id
        assert sandbox.run("echo in").output == "in\n"
    assert not exists(docker_api, cid)


def pool_containers(api, run_id: str) -> set[str]:
    return {c["Id"] for c in api.containers(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"})}


def test_warm_pool_acquire_refill_and_close(base_image, docker_api) -> None:
    pool_run = f"pytest-pool-{os.getpid()}"
    pool = WarmPool(SandboxConfig(image=base_image, run_id=pool_run), size=2)
    try:
        assert pool.wait_ready(timeout=CHILD_WAIT_S)
        first = pool.acquire()
        assert first.run("echo warm; pwd").output == "warm\n/testbed\n"
        assert pool.wait_ready(timeout=CHILD_WAIT_S)  # refilled behind our back
        assert len(pool_containers(docker_api, pool_run)) == 3
    finally:
        pool.close()
    assert pool_containers(docker_api, pool_run) == {first.container_id}  # acquired one stays
    first.close()
    assert pool_containers(docker_api, pool_run) == set()
    with pytest.raises(RuntimeError):
        pool.acquire()


def test_empty_pool_starts_synchronously(base_image, run_id) -> None:
    with WarmPool(SandboxConfig(image=base_image, run_id=run_id), size=0) as pool:
        sandbox = pool.acquire()
        try:
            assert sandbox.run("echo cold").output == "cold\n"
        finally:
            sandbox.close()
