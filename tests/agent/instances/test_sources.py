"""Instance sources: SWE-bench files, GitHub issue URLs (through a real local HTTP server), folders
of local repositories; one-line errors naming file, line or index, and field; pure selection."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.instances.records import Instance
from agent.instances.sources import (
    InstanceSourceError,
    filter_instances,
    load_directory,
    load_instances,
    load_issue_urls,
    load_json_instances,
    load_predictions,
    parse_slice,
    repo_source,
    select_instances,
    shuffle_instances,
)
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
EXAMPLES = ROOT / "traces" / "examples"
PYPI = ROOT / "tests" / "fixtures" / "pypi"


def record(instance_id: str, **fields: object) -> dict[str, object]:
    return {"instance_id": instance_id, "repo": "owner/name", "base_commit": "abc123",
            "problem_statement": f"issue of {instance_id}", **fields}


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def error_of(call, *args: object) -> str:  # noqa: ANN001 - any loader
    with pytest.raises(InstanceSourceError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- SWE-bench JSON and JSON Lines ----------------------------------------------------------------


def test_jsonl_loads_swe_bench_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instances.jsonl", [
        record("a-1", FAIL_TO_PASS='["t.py::a"]', PASS_TO_PASS="[]", version="1.0"),
        record("a-2", FAIL_TO_PASS=["t.py::b"], repo_path="repos/a"),
    ])
    first, second = load_instances(path)
    assert first.FAIL_TO_PASS == ["t.py::a"] and first.PASS_TO_PASS == [] and first.version == "1.0"
    assert second.repo_path == str(tmp_path / "repos" / "a")  # relative to the file


def test_json_array_loads(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps([record("x"), record("y")], indent=2))
    assert [i.instance_id for i in load_instances(path)] == ["x", "y"]


def test_jsonl_error_names_line_and_field(tmp_path: Path) -> None:
    records = [record(f"i-{n}") for n in range(6)] + [record("bad", FAIL_TO_PASS=5)]
    path = write_jsonl(tmp_path / "instances.jsonl", records)
    assert error_of(load_json_instances, path) == f"{path}:7: FAIL_TO_PASS: Input should be a valid list"


def test_jsonl_error_counts_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "instances.jsonl"
    path.write_text(json.dumps(record("a")) + "\n\n" + json.dumps({"instance_id": "b", "repo": "o/r"}) + "\n")
    assert error_of(load_json_instances, path) == f"{path}:3: problem_statement: Field required"


def test_json_array_error_names_index_and_nested_field(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps([record("a"), record("b", PASS_TO_PASS=["ok", 3])]))
    assert error_of(load_json_instances, path) == f"{path}[1]: PASS_TO_PASS.1: Input should be a valid string"


def test_string_list_that_is_not_json_is_reported(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instances.jsonl", [record("a", FAIL_TO_PASS="[not json")])
    message = error_of(load_json_instances, path)
    assert message.startswith(f"{path}:1: FAIL_TO_PASS: Expecting value")


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "instances.jsonl"
    path.write_text(json.dumps(record("a")) + "\n{\"instance_id\": \n")
    assert error_of(load_json_instances, path).startswith(f"{path}:2: invalid JSON: Expecting value")


def test_non_object_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instances.jsonl", [record("a"), ["a", "list"]])
    assert error_of(load_json_instances, path) == f"{path}:2: expected a JSON object, got list"


def test_duplicate_instance_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instances.jsonl", [record("a"), record("b"), record("a")])
    assert error_of(load_json_instances, path) == f"{path}:3: instance_id: duplicate 'a' (first at {path}:1)"


def test_jsonl_named_json_still_loads(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instances.json", [record("a"), record("b")])
    assert [i.instance_id for i in load_instances(path)] == ["a", "b"]


def test_predictions(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "preds.jsonl", [
        {"instance_id": "a", "model_name_or_path": "cwm", "model_patch": "diff"},
        {"instance_id": "b", "model_name_or_path": "cwm", "model_patch": None},
    ])
    assert [(p.instance_id, p.model_patch) for p in load_predictions(path)] == [("a", "diff"), ("b", "")]
    mapping = tmp_path / "preds.json"
    mapping.write_text(json.dumps({"a": {"model_name_or_path": "m", "model_patch": "p"}}))
    assert load_predictions(mapping)[0].instance_id == "a"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instance_id": "a", "model_patch": "p"}])
    assert error_of(load_predictions, bad) == f"{bad}:1: model_name_or_path: Field required"


def test_missing_file() -> None:
    assert error_of(load_instances, Path("/nonexistent/instances.jsonl")).endswith("no such file or directory")


# -- GitHub issue URLs through a real HTTP server -------------------------------------------------


class FakeGitHub(BaseHTTPRequestHandler):
    """A real HTTP server answering the issues endpoint like GitHub's REST API."""

    issues = {
        "/repos/octo/widgets/issues/7": {"title": "Widget spins forever", "body": "Steps: call spin(0)."},
        "/repos/octo/gears/issues/12": {"title": "Gear ratio off by one", "body": None},
    }

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        data = self.issues.get(self.path)
        body = json.dumps(data if data else {"message": "Not Found"}).encode()
        self.send_response(200 if data else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def github_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGitHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("CWM_GITHUB_API", url)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    yield url
    server.shutdown()
    server.server_close()


def test_issue_urls_become_instances(tmp_path: Path, github_api: str) -> None:
    path = tmp_path / "issues.txt"
    path.write_text("# two issues\nhttps://github.com/octo/widgets/issues/7\n\n"
                    "https://github.com/octo/gears/issues/12/\n")
    widgets, gears = load_instances(path)
    assert widgets.instance_id == "octo__widgets-7" and widgets.repo == "octo/widgets"
    assert widgets.base_commit == "" and widgets.problem_statement == "Widget spins forever\n\nSteps: call spin(0)."
    assert gears.instance_id == "octo__gears-12" and gears.problem_statement == "Gear ratio off by one"
    assert repo_source(widgets) == "https://github.com/octo/widgets.git"


def test_issue_url_errors_name_the_line(tmp_path: Path, github_api: str) -> None:
    path = tmp_path / "issues.txt"
    path.write_text("https://github.com/octo/widgets/issues/7\nhttps://github.com/octo/widgets/pull/8\n")
    assert error_of(load_issue_urls, path).startswith(f"{path}:2: url: 'https://github.com/octo/widgets/pull/8' is not")
    path.write_text("https://github.com/octo/widgets/issues/7\nhttps://github.com/octo/missing/issues/1\n")
    message = error_of(load_issue_urls, path)
    assert message.startswith(f"{path}:2: https://github.com/octo/missing/issues/1: no such issue")


# -- folders of local repositories --------------------------------------------------------------


def test_bundled_examples_folder() -> None:
    (intervals,) = load_directory(EXAMPLES)  # cwm-format/ has no repo/ or issue.md: not a task
    assert intervals.instance_id == "intervals"
    assert intervals.repo_path == str(EXAMPLES / "intervals" / "repo")
    assert intervals.problem_statement.startswith("`merge()` does not merge intervals")
    assert load_instances(EXAMPLES / "intervals") == [intervals]  # one task folder on its own


def test_folder_with_instance_json(tmp_path: Path) -> None:
    task = tmp_path / "tasks" / "calc"
    (task / "repo").mkdir(parents=True)
    (task / "repo" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (task / "issue.md").write_text("add() subtracts\n")
    (task / "instance.json").write_text(json.dumps({"FAIL_TO_PASS": ["test_calc.py::test_add"], "version": "0.1"}))
    (calc,) = load_instances(tmp_path / "tasks")
    assert calc.FAIL_TO_PASS == ["test_calc.py::test_add"] and calc.version == "0.1"
    assert calc.problem_statement == "add() subtracts\n" and repo_source(calc) == str(task / "repo")
    (task / "instance.json").write_text(json.dumps({"FAIL_TO_PASS": "t"}))
    message = error_of(load_directory, tmp_path / "tasks")
    assert message == f"{task / 'instance.json'}: FAIL_TO_PASS: Expecting value: line 1 column 1 (char 0)"


def test_folder_missing_issue(tmp_path: Path) -> None:
    (tmp_path / "t" / "repo").mkdir(parents=True)
    assert error_of(load_directory, tmp_path) == f"{tmp_path / 't'}: problem_statement: missing issue.md next to repo/"


# -- fixtures stored as git bundles ---------------------------------------------------------------


def test_bundle_repo_source_is_a_clone_with_the_base_commit() -> None:
    instances = load_instances(PYPI / "instances.jsonl")
    assert len(instances) >= 2
    six = next(i for i in instances if i.instance_id.startswith("six-"))
    assert six.repo_path == str(PYPI / "six-1.14.0.bundle")
    source = repo_source(six)
    head = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert head.stdout.strip() == six.base_commit
    assert repo_source(six) == source  # cloned once per process


def test_remote_repositories_are_mirrored_once(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    for command in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                   "--allow-empty", "-m", "first"]):
        subprocess.run(["git", "-C", str(origin), *command], check=True)
    remote = Instance(instance_id="r", repo=f"file://{origin}", problem_statement="p")
    assert repo_source(remote) == f"file://{origin}"
    mirror = repo_source(remote, mirror=True)
    assert mirror != str(origin) and (Path(mirror) / ".git").is_dir()
    assert repo_source(remote, mirror=True) == mirror


# -- selection --------------------------------------------------------------------------------------


def many(n: int) -> list[Instance]:
    return [Instance.model_validate(record(f"proj__repo-{k}")) for k in range(n)]


def ids(instances: list[Instance]) -> list[str]:
    return [i.instance_id for i in instances]


def test_parse_slice() -> None:
    assert parse_slice("10:20") == slice(10, 20)
    assert parse_slice(":5") == slice(None, 5)
    assert parse_slice("3:") == slice(3, None)
    assert parse_slice("::2") == slice(None, None, 2)
    assert parse_slice("7") == slice(7, 8)
    for bad in ("a:b", "1:2:3:4", "::0", ""):
        with pytest.raises(ValueError):
            parse_slice(bad)


def test_filter_is_a_regex_search() -> None:
    items = many(12)
    assert ids(filter_instances(items, r"-1\d$")) == ["proj__repo-10", "proj__repo-11"]
    with pytest.raises(ValueError, match="invalid regular expression"):
        filter_instances(items, "(")


def test_shuffle_is_seeded_and_pure() -> None:
    items = many(30)
    before = ids(items)
    once, again = shuffle_instances(items, 42), shuffle_instances(items, 42)
    assert ids(once) == ids(again) and ids(items) == before
    assert ids(once) != before and sorted(ids(once)) == sorted(before)
    assert ids(shuffle_instances(items, 43)) != ids(once)


def test_select_filters_then_shuffles_then_slices() -> None:
    items = many(40)
    chosen = select_instances(items, slice_spec="0:5", pattern=r"-[0-9]$", shuffle_seed=7)
    assert ids(chosen) == ids(shuffle_instances(filter_instances(items, r"-[0-9]$"), 7))[:5]
    assert ids(select_instances(items, slice_spec="10:12")) == ["proj__repo-10", "proj__repo-11"]
    assert select_instances(items) == items
