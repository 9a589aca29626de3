"""The viewer's HTTP server, run for real on 127.0.0.1 with an ephemeral port and queried with httpx."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from agent.viewer.server import ViewerServer, serve
from agent.viewer.tail import TrajectoryTail
from tests.agent.viewer.fixtures import make_header, steps, write_run_dir, write_trajectory
from tests.helpers import REPO_ROOT
from traces.recorder import Recorder
from traces.schema import Ending

MERGE = "intervals__merge-touching.traj.jsonl"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run_dir(tmp_path / "run")


@pytest.fixture
def server(run_dir: Path) -> Iterator[ViewerServer]:
    running = serve(run_dir)
    yield running
    running.shutdown()


def get(server: ViewerServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]


def raw_get(server: ViewerServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A request with the path sent exactly as written (httpx would normalise `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def test_run_table_rows(server: ViewerServer) -> None:
    body = get(server, "/api/runs").json()
    rows = {row["file"]: row for row in body["rows"]}
    assert set(rows) == {
        MERGE, "intervals__total-length.traj.jsonl", "requests__requests-2317.traj.jsonl",
        "batch-2/astropy__astropy-12907.traj.jsonl", "batch-2/django__django-11099.traj.jsonl",
        "batch-2/sympy__sympy-20590.traj.jsonl",
    }
    merge = rows[MERGE]
    assert merge["instance"] == "intervals__merge-touching"
    assert (merge["status"], merge["resolved"], merge["steps"], merge["model"]) == ("submitted", True, 12, "facebook/cwm")
    assert merge["total_tokens"] > 0 and merge["wall_s"] > 0
    assert rows["intervals__total-length.traj.jsonl"]["resolved"] is False
    astropy = rows["batch-2/astropy__astropy-12907.traj.jsonl"]
    assert (astropy["status"], astropy["resolved"], astropy["steps"], astropy["model"]) == (
        "max_turns", None, 128, "facebook/cwm-sft")
    live = rows["requests__requests-2317.traj.jsonl"]
    assert (live["status"], live["steps"], live["resolved"]) == ("running", 6, None)


def test_trajectory_document(server: ViewerServer, run_dir: Path) -> None:
    doc = get(server, "/api/trajectory", params={"file": MERGE}).json()
    assert doc["header"]["instance_id"] == "intervals__merge-touching"
    assert doc["header"]["issue"].startswith("`merge()` does not merge")
    assert len(doc["steps"]) == doc["next"] == 12
    assert doc["ending"]["status"] == "submitted" and doc["ending"]["evaluation"]["resolved"] is True
    assert doc["ending"]["submission"].startswith("diff --git")
    first = doc["steps"][0]
    assert first["index"] == 1 and first["tool_call"]["name"] == "bash" and "</think>" in first["raw_reply"]
    # The bulk document leaves out what repeats elsewhere; /api/step serves it.
    assert "prompt_delta" not in first and "output" not in first
    full = get(server, "/api/step", params={"file": MERGE, "index": 0}).json()
    assert full["prompt_delta"] and full["output"].startswith("total 16")
    assert get(server, "/api/step", params={"file": MERGE, "index": 99}).status_code == 404


def test_security_headers_on_every_response(server: ViewerServer) -> None:
    for path in ("/", "/view", "/static/view.js", "/static/style.css", "/api/runs", "/nope"):
        response = get(server, path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert get(server, "/static/view.js").headers["content-type"].startswith("text/javascript")
    assert get(server, "/nope").status_code == 404


def test_pages_load_no_inline_script_and_no_remote_asset(server: ViewerServer) -> None:
    static = REPO_ROOT / "agent" / "viewer" / "static"
    for page in ("index.html", "view.html"):
        html = (static / page).read_text()
        assert "<script>" not in html and "http://" not in html and "https://" not in html
    for name in os.listdir(static):
        text = (static / name).read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
        assert "https://" not in text.replace("http://www.w3.org/2000/svg", "")


def test_path_traversal_refused(server: ViewerServer, run_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.traj.jsonl"
    write_trajectory(outside, 2)
    (run_dir / "escape.traj.jsonl").symlink_to(outside)
    for name in ("../secret.traj.jsonl", str(outside), "escape.traj.jsonl", "batch-2/../../secret.traj.jsonl",
                 "intervals__merge-touching.patch", "", "nope.traj.jsonl", "batch-2"):
        response = get(server, "/api/trajectory", params={"file": name})
        assert response.status_code == 404, name
    assert "escape.traj.jsonl" not in {row["file"] for row in get(server, "/api/runs").json()["rows"]}
    for path in ("/static/../server.py", "/static/..%2Fserver.py", "/static/%2e%2e/server.py",
                 "/api/trajectory?file=..%2F..%2Fetc%2Fpasswd", "/static//etc/passwd"):
        assert raw_get(server, path).status == 404, path


def test_single_file_path_serves_only_that_file(run_dir: Path) -> None:
    running = serve(run_dir / MERGE)
    try:
        response = get(running, "/", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == f"/view?file={MERGE}"
        assert [row["file"] for row in get(running, "/api/runs").json()["rows"]] == [MERGE]
        assert get(running, "/api/trajectory", params={"file": MERGE}).status_code == 200
        other = "intervals__total-length.traj.jsonl"
        assert get(running, "/api/trajectory", params={"file": other}).status_code == 404
    finally:
        running.shutdown()


def test_token_required_when_given(run_dir: Path) -> None:
    running = serve(run_dir, token="s3cret-token")
    try:
        assert running.url.endswith("/?token=s3cret-token")
        for path in ("/", "/view", "/static/style.css", "/api/runs"):
            assert get(running, path).status_code == 403, path
            assert get(running, path, params={"token": "wrong"}).status_code == 403, path
        ok = get(running, "/api/runs", params={"token": "s3cret-token"})
        assert ok.status_code == 200 and ok.json()["rows"]
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert get(running, "/api/runs", headers={"X-Viewer-Token": "s3cret-token"}).status_code == 200
        name = f"cwm_viewer_{running.port}"
        assert get(running, "/static/view.js", headers={"Cookie": f"{name}=s3cret-token"}).status_code == 200
        # A page opened with the token is redirected to the same page without it (the cookie holds it).
        page = get(running, "/view", params={"file": MERGE, "token": "s3cret-token"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == f"/view?file={MERGE}"
    finally:
        running.shutdown()


def test_non_loopback_bind_generates_a_token(run_dir: Path) -> None:
    running = serve(run_dir, host="0.0.0.0")
    try:
        assert running.token and f"token={running.token}" in running.url
        assert get(running, "/api/runs").status_code == 403
        assert get(running, "/api/runs", params={"token": running.token}).status_code == 200
    finally:
        running.shutdown()


def test_foreign_host_header_refused_without_token(server: ViewerServer) -> None:
    """DNS rebinding: a page from evil.example resolving to 127.0.0.1 must not read trajectories."""
    assert raw_get(server, "/api/runs", {"Host": "evil.example:80"}).status == 403
    assert raw_get(server, "/api/runs", {"Host": f"localhost:{server.port}"}).status == 200


def test_read_only_methods(server: ViewerServer) -> None:
    response = httpx.post(f"http://127.0.0.1:{server.port}/api/runs", timeout=10)
    assert response.status_code == 405
    assert get(server, "/api/steps", params={"file": MERGE, "since": "-1"}).status_code == 400
    assert get(server, "/api/steps", params={"file": MERGE, "since": "x"}).status_code == 400


def test_torn_last_line_tolerated(server: ViewerServer, run_dir: Path) -> None:
    path = write_trajectory(run_dir / "torn.traj.jsonl", 5, status=None)
    whole = next(s for i, s in enumerate(steps(6)) if i == 5).model_dump_json() + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(whole[: len(whole) // 2])
    doc = get(server, "/api/trajectory", params={"file": "torn.traj.jsonl"}).json()
    assert len(doc["steps"]) == 5 and doc["torn_tail"] is True and doc["ending"] is None
    row = next(r for r in get(server, "/api/runs").json()["rows"] if r["file"] == "torn.traj.jsonl")
    assert row["steps"] == 5 and row["torn_tail"] is True
    with path.open("a", encoding="utf-8") as handle:
        handle.write(whole[len(whole) // 2:])
    more = get(server, "/api/steps", params={"file": "torn.traj.jsonl", "since": 5}).json()
    assert [s["index"] for s in more["steps"]] == [6] and more["torn_tail"] is False


def test_corrupt_line_is_reported_not_fatal(server: ViewerServer, run_dir: Path) -> None:
    path = write_trajectory(run_dir / "corrupt.traj.jsonl", 3, status=None)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"type": "step", "index": "not a number"}\n')
        handle.write(next(iter(steps(1))).model_copy(update={"index": 4}).model_dump_json() + "\n")
    doc = get(server, "/api/trajectory", params={"file": "corrupt.traj.jsonl"}).json()
    assert [s["index"] for s in doc["steps"]] == [1, 2, 3, 4]
    assert len(doc["problems"]) == 1 and doc["problems"][0].startswith("line 5:")


def test_incremental_steps_of_a_live_run(server: ViewerServer, run_dir: Path) -> None:
    path = run_dir / "live.traj.jsonl"
    recorder = Recorder(path, make_header("live"))
    produced = steps(10)
    for _ in range(3):
        recorder.step(next(produced))
    params = {"file": "live.traj.jsonl"}
    doc = get(server, "/api/trajectory", params=params).json()
    assert doc["next"] == 3 and doc["ending"] is None
    assert get(server, "/api/steps", params={**params, "since": 3}).json()["steps"] == []
    recorder.step(next(produced))
    recorder.step(next(produced))
    update = get(server, "/api/steps", params={**params, "since": 3}).json()
    assert [s["index"] for s in update["steps"]] == [4, 5] and update["next"] == 5
    assert update["generation"] == doc["generation"] and "header" not in update
    recorder.end(Ending(status="submitted", steps=5))
    final = get(server, "/api/steps", params={**params, "since": 5}).json()
    assert final["steps"] == [] and final["ending"]["status"] == "submitted"
    # A page that is behind gets everything it missed.
    assert [s["index"] for s in get(server, "/api/steps", params={**params, "since": 1}).json()["steps"]] == [2, 3, 4, 5]


def test_rewritten_file_changes_generation(server: ViewerServer, run_dir: Path) -> None:
    path = write_trajectory(run_dir / "again.traj.jsonl", 4, status=None)
    first = get(server, "/api/trajectory", params={"file": path.name}).json()
    write_trajectory(path, 6, status=None, instance_id="again-rerun")
    update = get(server, "/api/steps", params={"file": path.name, "since": 4}).json()
    assert update["generation"] == first["generation"] + 1
    doc = get(server, "/api/trajectory", params={"file": path.name}).json()
    assert doc["header"]["instance_id"] == "again-rerun" and doc["next"] == 6


def test_tail_reads_only_appended_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.traj.jsonl"
    recorder = Recorder(path, make_header("t"))
    produced = steps(5)
    recorder.step(next(produced))
    tail = TrajectoryTail(path)
    assert len(tail.read_new().records) == 2 and tail.offset == path.stat().st_size
    assert tail.read_new().records == []
    recorder.step(next(produced))
    recorder.step(next(produced))
    before = tail.offset
    records = tail.read_new().records
    assert [r.index for r, _, _ in records] == [2, 3]  # type: ignore[union-attr]
    assert records[0][1] == before and tail.offset == path.stat().st_size
    recorder.close()
    json.loads(path.read_text().splitlines()[-1])


def test_unterminated_whole_record_is_read_once(tmp_path: Path) -> None:
    """A last line that parses is taken before its newline arrives; the newline must not add a line."""
    path = write_trajectory(tmp_path / "t.traj.jsonl", 1, status=None)
    line = next(iter(steps(2))).model_copy(update={"index": 2}).model_dump_json()
    tail = TrajectoryTail(path)
    tail.read_new()
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
    assert [r.index for r, _, _ in tail.read_new().records] == [2] and not tail.torn_tail  # type: ignore[union-attr]
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n{broken\n")
    assert tail.read_new().records == []
    assert len(tail.problems) == 1 and tail.problems[0].startswith("line 4:") and "JSON" in tail.problems[0]


def test_single_file_of_any_name_and_missing_path(tmp_path: Path) -> None:
    path = write_trajectory(tmp_path / "episode.jsonl", 3)
    running = serve(path)
    try:
        assert get(running, "/api/trajectory", params={"file": "episode.jsonl"}).json()["next"] == 4
    finally:
        running.shutdown()
    with pytest.raises(FileNotFoundError):
        serve(tmp_path / "missing")
