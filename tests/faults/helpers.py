"""What every fault test needs: a CWM model server to kill, and the checks a disturbed run must pass.

The model server is tests/fakes/openai_server.py serving the bundled example's recorded CWM replies
(traces/examples/intervals) over real HTTP: each completion request gets the reply of the turn its
prompt is at (the number of assistant turns already in it), so any number of parallel episodes each
replay the recording, and a request re-sent after an outage gets the same reply again. Its served
model name is the recording's, so a complete run writes exactly `expected_preds`.

`check_run` is the common verdict: every line of status.log whole, every episode committed done
exactly once, nothing finished run again, every finished trajectory complete, no temporary file left,
and the predictions of an undisturbed run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent.instances.records import Instance
from agent.protocol.render import END_HEADER, START_HEADER
from tests.agent.batch.test_run import RECORDED, expected_preds, make_replays
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from traces.recorder import read_trajectory

ASSISTANT = f"{START_HEADER}assistant{END_HEADER}"
STEPS = len(RECORDED.steps)


def turn_of(body: dict[str, Any]) -> int:
    """Which reply a completion request asks for: the assistant turns already in its prompt."""
    return str(body.get("prompt", "")).count(ASSISTANT) - 1


def recorded_reply(body: dict[str, Any]) -> Reply:
    step = RECORDED.steps[turn_of(body)]
    return Reply(text=step.raw_reply, finish_reason=step.finish_reason or "stop")


def cwm_server() -> FakeOpenAIServer:
    """A started server answering every episode with the recorded CWM replies (stop() it at the end)."""
    return FakeOpenAIServer(models=(RECORDED.header.model.name,), respond=recorded_reply).start()


def make_replays_with_waits(folder: Path, instances: list[Instance], waits: dict[str, float]) -> str:
    """Like make_replays, but the instances in `waits` first run `sleep N` as their second step: an
    episode certain to be in flight when a fault strikes. Their patch is the recorded one."""
    spec = make_replays(folder, instances)
    for instance_id, seconds in waits.items():
        path = folder / f"{instance_id}.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        step = json.loads(lines[2])
        step["raw_reply"] = f"The tests take a while to start.\n</think>\n\n<tool: bash>\nsleep {seconds:g}\n</tool>"
        path.write_text("".join([*lines[:2], json.dumps(step) + "\n", *lines[2:]]))
    return spec


def events(out: Path) -> list[dict[str, Any]]:
    """status.log's events; fails on a torn or partial line anywhere."""
    text = (out / "status.log").read_text()
    assert text.endswith("\n"), "status.log ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


def key(event: dict[str, Any]) -> tuple[str, int]:
    return (event["instance_id"], event["sample"])


def count(events_: list[dict[str, Any]], kind: str) -> Counter[tuple[str, int]]:
    return Counter(key(e) for e in events_ if e["event"] == kind)


def check_run(out: Path, instances: list[Instance], done_before: set[tuple[str, int]] = frozenset(),
              slow: tuple[str, ...] = ()) -> None:
    """The verdict on a run disturbed by faults and then finished (see the module docstring).
    `done_before`: episodes committed before a fault, which must not have run again; `slow`: instances
    replayed with one step more (`make_replays_with_waits`)."""
    log = events(out)
    done, starts = count(log, "done"), count(log, "start")
    wanted = {(i.instance_id, 0) for i in instances}
    assert set(done) == wanted and set(done.values()) == {1}, "an episode is missing or was committed twice"
    for finished in done_before:
        assert starts[finished] == 1, f"{finished} finished before the fault and ran again"
    assert (out / "preds.jsonl").read_text() == expected_preds(instances)
    for instance in instances:
        trajectory = read_trajectory(out / "trajectories" / instance.instance_id / "0.traj.jsonl")
        wanted_steps = STEPS + (instance.instance_id in slow)
        assert len(trajectory.steps) == wanted_steps and not trajectory.torn_tail
        assert trajectory.ending is not None and trajectory.ending.status == "submitted"
    assert not [p for p in out.rglob("*.tmp")], "a temporary file was left behind"
    assert not list(out.glob("trajectories/*/*.running"))


def kept_steps(out: Path, event: dict[str, Any]) -> int:
    """Steps of the trajectory an errored attempt left aside (its recorded steps are never lost); 0
    when it failed before its trajectory began (no sandbox, no model connection)."""
    instance_id, sample = key(event)
    aside = out / "trajectories" / instance_id / f"{sample}.attempt{event['attempt']}.error.jsonl"
    if not aside.exists():
        return 0
    trajectory = read_trajectory(aside)
    assert not trajectory.torn_tail and trajectory.ending is not None and trajectory.ending.status == "error"
    return len(trajectory.steps)
