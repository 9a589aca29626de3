"""Pulling and pruning instance images against a real registry (Debian's docker-registry on 127.0.0.1),
a closed port, a registry that answers 503 and one that accepts connections and never answers."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest

from images.registry import (
    PullError,
    PullOptions,
    PullProgress,
    classify,
    ensure_image,
    image_present,
    prune_images,
    split_reference,
    with_registry,
)
from tests.helpers import REPO_ROOT
from tests.local_registry import closed_port, remove_local
from tests.official_images import build_from

pytestmark = pytest.mark.docker


def build_blob_image(base_image: str, tag: str, megabytes: int = 4) -> str:
    """An image of the base plus one layer of random data of its own (so pulling it downloads bytes)."""
    return build_from(base_image, tag, f"head -c {megabytes * 1000 * 1000} /dev/urandom > /blob && echo {tag} > /tag")


@pytest.fixture(scope="module")
def pushed(base_image: str, local_registry) -> Iterator[str]:
    """An image that is in the local registry and (after each test's `remove_local`) not on this machine."""
    local = build_blob_image(base_image, f"cwm-test/blob-{secrets.token_hex(4)}:v1")
    reference = local_registry.push(local, f"swebench/sweb.eval.x86_64.blob_1776_blob-{secrets.token_hex(3)}:latest")
    remove_local(local, reference)
    yield reference
    remove_local(reference)


def test_a_missing_image_is_pulled_with_progress_and_then_found(pushed: str) -> None:
    assert not image_present(pushed)
    seen: list[PullProgress] = []
    assert ensure_image(pushed, PullOptions(), lambda p: seen.append(p.model_copy(deep=True))) is True
    assert image_present(pushed)
    assert seen and seen[-1].total >= 4_000_000 and seen[-1].done == seen[-1].total
    assert any(0 < p.done < p.total for p in seen)  # the bar moved through the download
    assert ensure_image(pushed, PullOptions()) is False  # present: no second pull
    remove_local(pushed)


def test_workers_needing_the_same_image_pull_it_once(pushed: str) -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_image(pushed, PullOptions())))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]
    remove_local(pushed)


def test_an_image_the_registry_lacks_is_one_no_such_image_line_without_retries(local_registry) -> None:
    name = f"{local_registry.host}/swebench/sweb.eval.x86_64.nope_1776_nope-{secrets.token_hex(3)}:latest"
    started = time.monotonic()
    with pytest.raises(PullError) as raised:
        ensure_image(name, PullOptions(attempts=3, backoff_s=5))
    assert raised.value.kind == "not_found" and raised.value.attempts == 1
    assert time.monotonic() - started < 5  # not retried: no backoff was waited
    line = str(raised.value)
    assert line.startswith(f"no such image {name}") and "manifest unknown" in line and "\n" not in line


def test_a_closed_port_is_registry_unreachable_after_bounded_retries() -> None:
    name = f"127.0.0.1:{closed_port()}/swebench/sweb.eval.x86_64.a_1776_b-1:latest"
    started = time.monotonic()
    with pytest.raises(PullError) as raised:
        ensure_image(name, PullOptions(attempts=3, backoff_s=0.2))
    elapsed = time.monotonic() - started
    assert raised.value.kind == "unreachable" and raised.value.attempts == 3
    assert 0.2 + 0.4 <= elapsed < 20  # two backoff waits, then it gave up
    line = str(raised.value)
    assert line.startswith(f"registry unreachable for {name} (after 3 attempts)") and "connection refused" in line


class _Failing(BaseHTTPRequestHandler):
    """A registry that answers every request with 503, counting the API's version checks."""

    pings: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/v2/":
            self.pings.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("attempts", [1, 3])
def test_retries_stop_at_the_bound_the_registry_sees(attempts: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Failing.pings.clear()
    try:
        with pytest.raises(PullError) as raised:
            ensure_image(f"127.0.0.1:{server.server_address[1]}/a/b:latest",
                         PullOptions(attempts=attempts, backoff_s=0.05))
    finally:
        server.shutdown()
    assert raised.value.kind == "failed" and raised.value.attempts == attempts
    assert len(_Failing.pings) == attempts  # each attempt is one pull the daemon really sent
    assert "503" in str(raised.value)


def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections and never answers; the list holds what is currently connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def test_a_registry_that_never_answers_times_out() -> None:
    server, _ = _silent_server()
    name = f"127.0.0.1:{server.getsockname()[1]}/a/b:latest"
    started = time.monotonic()
    try:
        with pytest.raises(PullError) as raised:
            ensure_image(name, PullOptions(attempts=1, timeout_s=2, stall_s=2))
    finally:
        server.close()
    assert raised.value.kind == "timeout" and 2 <= time.monotonic() - started < 10
    assert str(raised.value).startswith(f"pulling {name} timed out")


def test_concurrent_pulls_are_bounded() -> None:
    """Four images from a registry that never answers, two pulls at a time: two rounds of the stall."""
    server, _ = _silent_server()
    names = [f"127.0.0.1:{server.getsockname()[1]}/a/image{n}:latest" for n in range(4)]
    options = PullOptions(attempts=1, timeout_s=2, stall_s=2, concurrency=2)
    errors: list[str] = []

    def pull(name: str) -> None:
        try:
            ensure_image(name, options)
        except PullError as error:
            errors.append(error.kind)

    started = time.monotonic()
    threads = [threading.Thread(target=pull, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    server.close()
    assert errors == ["timeout"] * 4
    assert 4 <= elapsed < 8, elapsed  # unbounded, all four would have timed out together after 2 s


def test_daemon_messages_are_classified() -> None:
    assert classify("failed to register layer: write /usr/lib/x: no space left on device") == "disk_full"
    assert classify('Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: '
                    "no such host") == "unreachable"
    assert classify("pull access denied for swebench/nope, repository does not exist or may require "
                    "'docker login': denied: requested access to the resource is denied") == "not_found"
    assert classify("manifest for x:latest not found: manifest unknown: manifest unknown") == "not_found"
    assert classify("received unexpected HTTP status: 502 Bad Gateway") == "failed"
    full = PullError("swebench/x:latest", "disk_full", "no space left on device")
    assert not full.retryable and "agent images prune" in str(full)


def test_references_and_mirrors() -> None:
    assert split_reference("swebench/x") == ("swebench/x", "latest")
    assert split_reference("127.0.0.1:5000/swebench/x:v1") == ("127.0.0.1:5000/swebench/x", "v1")
    assert split_reference("a/b@sha256:abc") == ("a/b", "sha256:abc")
    assert with_registry("swebench/x:latest", "mirror:5000") == "mirror:5000/swebench/x:latest"
    assert with_registry("docker.io/swebench/x:latest", "mirror:5000/hub") == "mirror:5000/hub/swebench/x:latest"
    assert with_registry("swebench/x:latest", None) == "swebench/x:latest"


# -- pruning -------------------------------------------------------------------------------------------


def test_prune_removes_unused_instance_images_and_keeps_used_ones(base_image: str) -> None:
    token = secrets.token_hex(4)
    unused = build_blob_image(base_image, f"cwmtest{token}/sweb.eval.x86_64.a_1776_a-1:latest", megabytes=2)
    used = build_blob_image(base_image, f"cwmtest{token}/swesmith.x86_64.b_1776_b.1234abcd:latest", megabytes=2)
    env = build_blob_image(base_image, f"cwm-runner/env-test{token}:abc", megabytes=2)
    other = build_blob_image(base_image, f"cwmtest{token}/unrelated:latest", megabytes=1)
    client = docker.from_env()
    container = client.containers.create(used, ["true"])
    mine = rf"^(cwmtest{token}/|cwm-runner/env-test{token}:)"
    try:
        dry = prune_images(dry_run=True, match=mine)
        assert sorted(t for i in dry.images for t in i.tags) == sorted([unused, used, env])
        assert {t for i in dry.images if i.in_use for t in i.tags} == {used}
        assert dry.reclaimable >= 4_000_000 and all(image_present(t) for t in (unused, used, env))

        done = prune_images(dry_run=False, match=mine)
        assert not image_present(unused) and not image_present(env)
        assert image_present(used) and image_present(other) and image_present(base_image)
        assert done.freed is not None and done.freed >= 4_000_000
    finally:
        container.remove(force=True)
        remove_local(unused, used, env, other)
        client.close()


def test_prune_command_dry_run_lists_and_keeps(base_image: str) -> None:
    token = secrets.token_hex(4)
    image = build_blob_image(base_image, f"cwmtest{token}/sweb.eval.x86_64.c_1776_c-1:latest", megabytes=1)
    try:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "images", "prune", "--dry-run", "--match",
                               f"^cwmtest{token}/"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"would remove   {image}" in done.stdout and "1 image(s) would go, freeing at least" in done.stdout
        assert image_present(image)
    finally:
        remove_local(image)
