"""Converters: SWE-bench predictions, SWE-agent `.traj`, CWM's rollout format both ways.

Round trips run on the bundled example and on variants of it that end differently (an ending after
an observation, no ending at all, a graded ending); the CWM import runs on the hand-written sample
in CWM's format, and, with Docker, the imported sample is replayed and verified.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.episode.replay import verify
from agent.exports import cwm, files, swe_agent, swebench
from agent.protocol.render import EOT, Message, render_prompt
from tests.helpers import REPO_ROOT
from traces import recorder
from traces.recorder import read_trajectory
from traces.schema import Ending, Evaluation, Header, Step, Trajectory

ROOT = REPO_ROOT
EXAMPLE = ROOT / "traces" / "examples" / "intervals"
CWM_SAMPLE = ROOT / "traces" / "examples" / "cwm-format" / "intervals.rollouts.jsonl"


@pytest.fixture()
def example() -> Trajectory:
    return read_trajectory(EXAMPLE / "trajectory.jsonl")


def variants(example: Trajectory) -> dict[str, Trajectory]:
    """The example, and the example ending in the other ways an episode can end."""
    after_observation = example.model_copy(deep=True)
    after_observation.steps = after_observation.steps[:4]  # step 4 has an observation
    after_observation.ending = Ending(status="context_exceeded", reason="Context size exceeded", steps=4,
                                      total_prompt_tokens=7000, total_completion_tokens=260)
    killed = example.model_copy(deep=True)
    killed.steps, killed.ending = killed.steps[:3], None
    graded = example.model_copy(deep=True)
    assert graded.ending is not None
    graded.ending.evaluation = Evaluation(resolved=True, fail_to_pass={"t::a": True}, log="1 passed")
    graded.ending.extra = {"note": "kept"}
    no_steps = example.model_copy(deep=True)
    no_steps.steps = []
    no_steps.ending = Ending(status="context_exceeded", reason="Context size exceeded")
    return {"example": example, "after_observation": after_observation, "killed": killed, "graded": graded,
            "no_steps": no_steps}


# -- SWE-bench --------------------------------------------------------------------------------


def test_swebench_prediction(example: Trajectory, tmp_path: Path) -> None:
    prediction = swebench.to_swebench(example)
    assert prediction.instance_id == "intervals"
    assert prediction.model_name_or_path == example.header.model.name
    assert prediction.model_patch == example.ending.submission  # type: ignore[union-attr]
    assert swebench.to_swebench(example, model_name="cwm-32b").model_name_or_path == "cwm-32b"

    unsubmitted = variants(example)["killed"]
    out = tmp_path / "preds.jsonl"
    assert swebench.write_swebench([example, unsubmitted], out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(row) for row in rows] == [{"instance_id", "model_name_or_path", "model_patch"}] * 2
    assert rows[0]["model_patch"].startswith("diff --git") and rows[1]["model_patch"] == ""
    assert swebench.write_swebench([example, unsubmitted], out, include_empty=False) == 1


# -- SWE-agent --------------------------------------------------------------------------------


def test_swe_agent_traj_keeps_actions_observations_and_submission(example: Trajectory, tmp_path: Path) -> None:
    path = tmp_path / "intervals.traj"
    swe_agent.write_swe_agent(example, path)
    document = json.loads(path.read_text())
    assert set(document) == {"trajectory", "history", "info", "replay_config", "environment"}
    assert document["environment"] == example.header.image and document["replay_config"] is None

    steps = document["trajectory"]
    assert len(steps) == len(example.steps)
    for entry, step in zip(steps, example.steps):
        assert set(entry) == {"action", "observation", "response", "thought", "execution_time", "state", "query",
                              "extra_info"}
        assert entry["response"] == step.raw_reply
        if step.tool_call is None:
            assert entry["action"] == ""
        elif step.tool_call.name == "bash":
            assert entry["action"] == step.tool_call.body
        else:
            assert entry["action"] == f"<tool: {step.tool_call.name}>\n{step.tool_call.body}\n</tool>"
        assert entry["observation"] == (step.output if step.output is not None else (step.observation or ""))
        assert "</think>" not in entry["thought"] and "<tool:" not in entry["thought"]
        assert entry["execution_time"] == (step.command_duration_s or 0.0)
    assert steps[0]["thought"].startswith("The issue says merge()")
    assert steps[0]["state"] == {"working_dir": "/testbed"}
    assert steps[-1]["thought"].startswith("The submission is accepted; time for the summary.\n\n## Issue Summary")

    history = document["history"]
    assert (history[0]["role"], history[0]["content"]) == ("system", example.header.system_prompt)
    assert (history[1]["role"], history[1]["content"]) == ("user", example.header.user_prompt)
    assert [h["content"] for h in history if h["message_type"] == "observation"][1:] == [
        s.observation for s in example.steps if s.observation is not None]
    assert [h["content"] for h in history if h["role"] == "assistant"] == [s.raw_reply for s in example.steps]

    info, ending = document["info"], example.ending
    assert ending is not None
    assert info["submission"] == ending.submission
    assert info["exit_status"] == "submitted"
    assert info["model_stats"] == {"instance_cost": 0.0, "tokens_sent": ending.total_prompt_tokens,
                                   "tokens_received": ending.total_completion_tokens, "api_calls": 7}
    assert info["cwm_runner"]["run_id"] == "example"


def test_swe_agent_exit_statuses(example: Trajectory) -> None:
    cases = variants(example)
    assert swe_agent.to_swe_agent(cases["killed"]).info.exit_status is None
    assert swe_agent.to_swe_agent(cases["after_observation"]).info.exit_status == "exit_context"
    submitted_then_cut = example.model_copy(deep=True)
    submitted_then_cut.ending.status = "max_turns"  # type: ignore[union-attr]
    assert swe_agent.to_swe_agent(submitted_then_cut).info.exit_status == "submitted (exit_cost)"


# -- CWM: export and round trips --------------------------------------------------------------


def test_cwm_transitions_follow_cwms_layout(example: Trajectory) -> None:
    rollout = cwm.to_cwm(example)
    transitions = rollout.traj.transitions
    assert len(transitions) == len(example.steps) + 1
    start = transitions[0]
    assert start.action_str == "" and start.rewards == [] and not start.terminal
    assert start.observation_str == example.steps[0].prompt_delta
    assert start.info["instance_id"] == "intervals" and start.info["eval_duration"] == -1.0
    for position, (tr, step) in enumerate(zip(transitions[1:], example.steps)):
        assert tr.action_str == step.raw_reply
        if position + 1 < len(example.steps):
            assert tr.observation_str == example.steps[position + 1].prompt_delta
            assert not tr.terminal and tr.outcomes == {"pass": False}
    final = transitions[-1]
    assert final.terminal and final.observation_str == "" and final.outcomes == {"pass": False}
    assert final.info["pred_patch"] == example.ending.submission  # type: ignore[union-attr]
    assert final.info["message"] == example.ending.reason  # type: ignore[union-attr]
    assert rollout.start_args["docker_url"] == example.header.image
    assert rollout.rl_task_args.init_args["max_turns"] == 128  # type: ignore[index]
    json.loads(rollout.model_dump_json())  # plain JSON all the way down


@pytest.mark.parametrize("case", ["example", "after_observation", "killed", "graded", "no_steps"])
def test_cwm_round_trip_is_exact(example: Trajectory, case: str) -> None:
    original = variants(example)[case]
    back = cwm.from_cwm(cwm.to_cwm(original))
    assert back == original
    # Every action and observation survives, in order.
    assert [s.raw_reply for s in back.steps] == [s.raw_reply for s in original.steps]
    assert [s.observation for s in back.steps] == [s.observation for s in original.steps]


def test_cwm_terminal_transitions(example: Trajectory) -> None:
    cases = variants(example)
    after = cwm.to_cwm(cases["after_observation"]).traj.transitions
    assert [t.terminal for t in after] == [False] * 5 + [True]  # an extra, empty terminal transition
    assert after[-1].action_str == "" and after[-1].observation_str == ""
    assert after[-2].observation_str == cwm.observation_delta(cases["after_observation"].steps[-1])
    killed = cwm.to_cwm(cases["killed"]).traj.transitions
    assert not any(t.terminal for t in killed)  # CWM's truncated trajectory
    assert cwm.to_cwm(cases["graded"]).traj.transitions[-1].outcomes == {"pass": True}


@pytest.mark.parametrize("layout", ["rollouts", "transitions"])
def test_cwm_files_round_trip(example: Trajectory, tmp_path: Path, layout: str) -> None:
    cases = variants(example)
    originals = [cases["example"], cases["killed"], cases["after_observation"]]
    path = tmp_path / f"{layout}.jsonl"
    assert cwm.write_cwm(originals, path, layout=layout) == 3  # type: ignore[arg-type]
    lines = path.read_text().splitlines()
    if layout == "rollouts":
        assert len(lines) == 3 and all(set(json.loads(line)) == {"rollouts", "metrics"} for line in lines)
    else:
        assert len(lines) == 8 + 4 + 6
    assert cwm.read_cwm(path) == originals


def test_imported_trajectory_is_written_in_our_format(example: Trajectory, tmp_path: Path) -> None:
    cwm_file = tmp_path / "out.jsonl"
    cwm.write_cwm([example], cwm_file)
    ours = recorder.write_trajectory(cwm.read_cwm(cwm_file)[0], tmp_path / "back.traj.jsonl")
    assert read_trajectory(ours) == example


# -- CWM: importing the hand-written sample ----------------------------------------------------


def test_import_cwm_sample() -> None:
    [trajectory] = cwm.read_cwm(CWM_SAMPLE)
    header = trajectory.header
    assert header.instance_id == "intervals"
    assert header.image.startswith("cwm-runner/base:") and header.workdir == "/testbed"
    assert (header.protocol.max_turns, header.protocol.context_size, header.protocol.timeout_s) == (128, 131072, 120.0)
    assert header.protocol.tools == ["bash", "edit", "create", "submit"]
    assert header.system_prompt.startswith("You are a helpful AI assistant.")
    assert header.issue == (EXAMPLE / "issue.md").read_text()
    assert f"<issue_description>\n{header.issue}\n</issue_description>" in header.user_prompt

    steps = trajectory.steps
    assert [s.tool_call.name if s.tool_call else None for s in steps] == [
        "bash", None, "bash", "edit", "bash", "submit", None]
    assert steps[0].tool_call.body == "cat intervals/core.py"  # type: ignore[union-attr]
    assert steps[1].parse_error == "FormatError: No tool calls found" and steps[1].observation_role == "user"
    assert steps[2].observation_role == "tool: bash" and "1 failed, 4 passed" in (steps[2].output or "")
    assert steps[5].submission is not None and steps[5].submission.startswith("diff --git a/intervals/core.py")
    assert steps[6].observation is None and steps[6].parse_error is None
    assert steps[0].command_duration_s == 0.41 and steps[0].exit_code is None

    # CWM leaves the eot token out of observations; the import puts it back, so that our invariant
    # holds: step k's prompt = step k-1's prompt + its reply (right-stripped) + step k's delta.
    prompt = steps[0].prompt_delta
    messages = [Message(role="system", content=header.system_prompt), Message(role="user", content=header.user_prompt)]
    assert prompt == render_prompt(messages)
    for previous, step in zip(steps, steps[1:]):
        assert step.prompt_delta.startswith(EOT)
        prompt = prompt + previous.raw_reply.rstrip() + step.prompt_delta
        messages += [Message(role="assistant", content="<think>\n" + previous.raw_reply),
                     Message(role=previous.observation_role or "", content=previous.observation or "")]
        assert prompt == render_prompt(messages)

    ending = trajectory.ending
    assert ending is not None and ending.status == "submitted" and ending.steps == 7
    assert ending.submission == steps[5].submission
    assert ending.final_response is not None and ending.final_response.startswith("## Issue Summary")
    assert ending.evaluation is not None and ending.evaluation.resolved
    assert "FAIL_TO_PASS" in ending.evaluation.log
    # CWM's own fields are kept.
    assert ending.extra["cwm"]["outcomes"] == {"pass": True}
    assert ending.extra["cwm"]["info"]["eval_duration"] == 14.82
    rollout = header.extra["cwm"] if "extra" in Header.model_fields else ending.extra["cwm_rollout"]
    assert rollout["rl_task_args"]["env_config"] == "swerl_tool_env:think_tag:modal:eval"
    assert rollout["data_src"] == {"path": "data/intervals.jsonl", "line_no": 0, "pos": 0}


@pytest.mark.skipif("extra" not in Step.model_fields, reason="needs traces.schema.Step.extra (requested)")
def test_import_keeps_each_transitions_cwm_fields() -> None:
    [trajectory] = cwm.read_cwm(CWM_SAMPLE)
    first = trajectory.steps[0].extra["cwm"]  # type: ignore[attr-defined]
    assert first["outcomes"] == {"pass": False} and first["info"] == {"duration": 0.41}
    assert first["rewards"] == [0.0, 0.0, 0.0, 0.0]


def test_import_reads_every_layout_of_the_sample(tmp_path: Path) -> None:
    line = json.loads(CWM_SAMPLE.read_text())
    rollout = line["rollouts"][0]
    [expected] = cwm.read_cwm(CWM_SAMPLE)
    layouts = {
        "pretty.json": json.dumps(line, indent=2),
        "rollout.json": json.dumps(rollout),
        "traj.json": json.dumps(rollout["traj"]),
        "list.json": json.dumps([rollout["traj"], rollout["traj"]]),
        "loose.jsonl": "\n".join(json.dumps(t) for t in rollout["traj"]["transitions"]) + "\n",
    }
    for name, text in layouts.items():
        path = tmp_path / name
        path.write_text(text)
        found = cwm.read_cwm(path)
        assert len(found) == (2 if name == "list.json" else 1), name
        assert [s.raw_reply for s in found[0].steps] == [s.raw_reply for s in expected.steps], name
        assert [s.observation for s in found[0].steps] == [s.observation for s in expected.steps], name


def test_import_errors_name_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"rollouts": []}\nnot json\n')
    with pytest.raises(files.ConvertError, match=r"bad.jsonl:2: not JSON"):
        cwm.read_cwm(bad)
    bad.write_text('{"something": 1}\n')
    with pytest.raises(files.ConvertError, match="not a CWM rollout, trajectory or transition"):
        cwm.read_cwm(bad)
    bad.write_text('{"transitions": [{"action_str": "x", "observation_str": "y"}]}\n')
    with pytest.raises(files.ConvertError, match="start transition"):
        cwm.read_cwm(bad)
    bad.write_text('{"traj": {"transitions": [{"terminal": "maybe"}]}}\n')
    with pytest.raises(files.ConvertError, match=r"bad.jsonl: traj.transitions.0.terminal"):
        cwm.read_cwm(bad)
    with pytest.raises(files.ConvertError, match="cannot read"):
        cwm.read_cwm(tmp_path / "missing.jsonl")


# -- files in, files out ----------------------------------------------------------------------


def test_export_files(example: Trajectory, tmp_path: Path) -> None:
    source = EXAMPLE / "trajectory.jsonl"
    [preds] = files.export_files([source], "swebench", tmp_path / "out" / "preds.jsonl", model_name="m")
    assert json.loads(preds.read_text())["model_name_or_path"] == "m"
    [traj] = files.export_files([source], "swe-agent", tmp_path / "swe")
    assert traj == tmp_path / "swe" / "intervals" / "intervals.traj"
    assert json.loads(traj.read_text())["info"]["exit_status"] == "submitted"
    [cwm_file] = files.export_files([source, source], "cwm", tmp_path / "cwm.jsonl")
    assert cwm.read_cwm(cwm_file) == [example, example]
    with pytest.raises(files.ConvertError, match="unknown export format 'sweagent'"):
        files.export_files([source], "sweagent", tmp_path / "x")
    with pytest.raises(files.ConvertError, match="no such trajectory file"):
        files.export_files([tmp_path / "missing.jsonl"], "cwm", tmp_path / "x")


def test_import_cwm_file_names_each_episode(tmp_path: Path) -> None:
    text = CWM_SAMPLE.read_text()
    doubled = tmp_path / "two.jsonl"
    doubled.write_text(text + text)
    written = files.import_cwm_file(doubled, tmp_path / "imported")
    assert [p.name for p in written] == ["intervals.traj.jsonl", "intervals.2.traj.jsonl"]
    assert read_trajectory(written[1]).ending.status == "submitted"  # type: ignore[union-attr]


# -- replaying what was imported ---------------------------------------------------------------


@pytest.mark.docker
def test_imported_cwm_sample_replays_and_verifies(tmp_path: Path, base_image: str) -> None:
    [trajectory] = cwm.read_cwm(CWM_SAMPLE)
    path = recorder.write_trajectory(trajectory, tmp_path / "intervals.traj.jsonl")
    report = verify(path, repo=str(EXAMPLE / "repo"), image=base_image)
    assert report.ok, report.render(all_diffs=True)
    assert report.steps_compared == 7 and report.ending_checked
    assert any("no exit code" in note for note in report.notes)


@pytest.mark.docker
def test_round_tripped_example_still_verifies(example: Trajectory, tmp_path: Path, base_image: str) -> None:
    cwm_file = tmp_path / "example.cwm.jsonl"
    cwm.write_cwm([example], cwm_file)
    path = recorder.write_trajectory(cwm.read_cwm(cwm_file)[0], tmp_path / "intervals.traj.jsonl")
    report = verify(path, repo=str(EXAMPLE / "repo"), image=base_image)
    assert report.ok, report.render(all_diffs=True)
    assert report.steps_compared == 7
