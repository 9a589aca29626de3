"""What the Docker backend locks down: network, capabilities, resource limits, mounts, labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.base import Limits, SandboxConfig, SandboxError
from sandbox.docker import CAP_ADD, DockerSandbox, connect
from sandbox.reaper import LABEL, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_RUN_ID, process_start_time

pytestmark = pytest.mark.docker

# Bit numbers from linux/capability.h.
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3}


@pytest.fixture(scope="module")
def sandbox(base_image: str, run_id: str, docker_api) -> DockerSandbox:
    sb = DockerSandbox(SandboxConfig(image=base_image, run_id=run_id))
    yield sb
    sb.close()


def status_field(sandbox: DockerSandbox, field: str) -> str:
    return sandbox.run(f"grep '^{field}:' /proc/self/status | cut -f2").output.strip()


def test_no_network_inside(sandbox: DockerSandbox) -> None:
    assert sandbox.run("ls /sys/class/net").output.split() == ["lo"]
    probe = (
        "python3 - <<'EOF'\n"
        "import socket\n"
        "s = socket.socket(); s.settimeout(10)\n"
        "try:\n"
        "    s.connect(('1.1.1.1', 53)); print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno)\n"
        "EOF"
    )
    result = sandbox.run(probe, timeout_s=30)
    # ENETUNREACH at once; a filtered-but-routed network would time out (TimeoutError None) instead.
    assert result.output == "OSError 101\n"


def test_capabilities_are_dropped(sandbox: DockerSandbox) -> None:
    expected = sum(1 << CAP_BITS[name] for name in CAP_ADD)
    assert expected == 0b1011
    assert int(status_field(sandbox, "CapEff"), 16) == expected
    assert int(status_field(sandbox, "CapBnd"), 16) == expected
    assert int(status_field(sandbox, "CapPrm"), 16) == expected
    assert status_field(sandbox, "NoNewPrivs") == "1"
    # Things that need capabilities we do not grant.
    raw = sandbox.run("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1 | tail -1")
    assert "Operation not permitted" in raw.output
    assert sandbox.run("mknod /tmp/dev c 1 3").exit_code != 0
    assert sandbox.run("mount -t tmpfs none /mnt").exit_code != 0
    assert sandbox.run("hostname other").exit_code != 0


def test_granted_capabilities_are_the_ones_repository_work_needs(sandbox: DockerSandbox) -> None:
    # DAC_OVERRIDE: root removes a read-only tree (build dirs, copied git objects, test fixtures).
    result = sandbox.run(
        "mkdir -p /tmp/ro/d && echo x > /tmp/ro/d/f && chmod 444 /tmp/ro/d/f && chmod 555 /tmp/ro/d"
        " && rm -rf /tmp/ro && echo removed"
    )
    assert result.output == "removed\n"
    # CHOWN: GNU tar as root restores archived owners and fails without it.
    result = sandbox.run(
        "mkdir -p /tmp/t/x && cd /tmp/t && echo hi > f && tar --owner=1000 --group=1000 -cf a.tar f"
        " && tar -C x -xf a.tar && stat -c %u x/f; cd /testbed"
    )
    assert result.output == "1000\n" and result.exit_code == 0
    # FOWNER: chmod/touch a file someone else owns.
    assert sandbox.run("chmod 600 /tmp/t/x/f && touch -d @0 /tmp/t/x/f && echo ok").output == "ok\n"


def test_container_configuration(sandbox: DockerSandbox, docker_api, run_id: str) -> None:
    info = docker_api.inspect_container(sandbox.container_id)
    host = info["HostConfig"]
    limits = sandbox.config.limits
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == sorted(CAP_ADD)
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["Memory"] == limits.memory_bytes == host["MemorySwap"]
    assert host["NanoCpus"] == int(limits.cpus * 1e9)
    assert host["PidsLimit"] == limits.pids
    assert not host.get("Binds") and not info["Mounts"]
    labels = info["Config"]["Labels"]
    assert labels[LABEL] == "1" and labels[LABEL_RUN_ID] == run_id
    assert labels[LABEL_OWNER_PID] == str(os.getpid())
    assert labels[LABEL_OWNER_START] == process_start_time(os.getpid())
    assert labels[LABEL_OWNER_HOST].endswith(Path("/proc/sys/kernel/random/boot_id").read_text().strip())


def test_pid_one_is_the_keeper_and_survives_kills(sandbox: DockerSandbox) -> None:
    assert "while :; do read" in sandbox.run("cat /proc/1/cmdline | tr '\\0' ' '").output
    sandbox.restart_session()
    assert sandbox.run("echo up").output == "up\n"


def test_fork_bomb_is_contained(base_image: str, run_id: str, sandbox: DockerSandbox) -> None:
    bombed = DockerSandbox(SandboxConfig(image=base_image, run_id=run_id, limits=Limits(pids=64)))
    try:
        # The classic bomb returns at once and keeps forking in the background; the follow-up
        # command then competes with it for pids. Either may time out; we get control back.
        result = bombed.run(":(){ :|:& };:", timeout_s=5)
        assert result.timed_out or result.exit_code is not None
        busy = bombed.run("sleep 1; ps -e --no-headers | wc -l", timeout_s=4)
        assert busy.timed_out or int(busy.output.split()[-1]) <= 64
        assert sandbox.run("echo other sandbox fine").output == "other sandbox fine\n"
        bombed.restart_session()  # whatever it left behind is killed here
        assert bombed.run("echo recovered").output == "recovered\n"
        count = bombed.run("ps -e --no-headers -o stat | grep -vc '^Z'").output.strip()
        assert int(count) <= 5  # keeper, bash, ps, grep (and the pipeline's subshell)
        # The kernel did refuse forks at the limit (cgroup v1 path, then v2).
        events = bombed.run(
            "cat /sys/fs/cgroup/pids/pids.events 2>/dev/null || cat /sys/fs/cgroup/pids.events"
        ).output.split()
        assert events[0] == "max" and int(events[1]) > 0
    finally:
        bombed.close()


def test_memory_hog_is_killed_and_sandbox_survives(base_image: str, run_id: str) -> None:
    small = DockerSandbox(SandboxConfig(image=base_image, run_id=run_id, limits=Limits(memory_bytes=256 * 1024**2)))
    try:
        result = small.run("python3 -c \"x = b'a' * (1024**3); print('got', len(x))\"", timeout_s=60)
        assert "got 1073741824" not in result.output
        assert result.exit_code in (137, 1)  # OOM-killed, or MemoryError
        assert not result.failed_session
        assert small.run("echo still here").output == "still here\n"
    finally:
        small.close()


def test_mounts(base_image: str, run_id: str, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "given.txt").write_text("from host\n")
    config = SandboxConfig(
        image=base_image, run_id=run_id, mounts={str(ro): ("/mnt/ro", "ro"), str(rw): ("/mnt/rw", "rw")}
    )
    with DockerSandbox(config) as sb:
        assert sb.run("cat /mnt/ro/given.txt").output == "from host\n"
        assert sb.run("touch /mnt/ro/nope").exit_code != 0
        assert sb.run("echo back > /mnt/rw/out.txt").exit_code == 0
    assert (rw / "out.txt").read_text() == "back\n"


def test_docker_socket_is_never_mounted(base_image: str, run_id: str) -> None:
    sock = Path("/var/run/docker.sock")
    if not sock.exists():
        pytest.skip("no local Docker socket here")
    for source in (str(sock), "/var/run"):
        config = SandboxConfig(image=base_image, run_id=run_id, mounts={source: ("/x", "ro")})
        with pytest.raises(SandboxError, match="Docker socket"):
            DockerSandbox(config)


def test_missing_image_says_what_to_do(run_id: str, docker_api) -> None:
    with pytest.raises(SandboxError, match="agent images build"):
        DockerSandbox(SandboxConfig(image="cwm-runner/does-not-exist:nope", run_id=run_id))


def test_unreachable_daemon_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    with pytest.raises(SandboxError, match="cannot reach the Docker daemon"):
        connect()
