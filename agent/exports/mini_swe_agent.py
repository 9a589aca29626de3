"""mini-swe-agent's `traj.json` (trajectory_format "mini-swe-agent-1.1", mini-swe-agent 2.x on PyPI).

Learnt from `DefaultAgent.serialize` and the trajectory inspector of `minisweagent` 2.4: a JSON object
with `info` (`exit_status`, `submission`, `model_stats` with `instance_cost` and `api_calls`, `config`,
`mini_version`), `messages` (the conversation: `role`, `content`, and `extra`; a model reply carries its
actions in `extra.actions` as `{"command": ...}`; the last message has role `exit` and `extra` with
`exit_status` and `submission`), `trajectory_format`, and, as its SWE-bench runner adds, `instance_id`.

Mapping: the system and user prompts are the first two messages; each step is an `assistant` message
(the raw reply; `extra.actions` holds the call, a bash command as is, another tool as its literal
block, with `tool` naming it) followed by a `user` message with the observation exactly as the model
saw it (a step without one, such as the last, has none); then the `exit` message. `exit_status` is
mini-swe-agent's word where it has one (`Submitted`, `LimitsExceeded` for the turn limit,
`TimeExceeded`, `ContextWindowExceeded`), else ours. What mini-swe-agent has no field for goes under
`info.cwm_runner`. Files are laid out as its SWE-bench runner does: `<dir>/<id>/<id>.traj.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.exports.common import CWM_RUNNER_KEY
from agent.exports.swe_agent import split_reply
from traces.schema import Ending, Step, Trajectory

TRAJECTORY_FORMAT = "mini-swe-agent-1.1"
EXIT_STATUS = {"submitted": "Submitted", "max_turns": "LimitsExceeded", "wall_clock": "TimeExceeded",
               "context_exceeded": "ContextWindowExceeded"}


def _action(step: Step) -> list[dict[str, str]]:
    call = step.tool_call
    if call is None:
        return []
    _thought, command = split_reply(step)
    return [{"command": command, "tool": call.name}]


def _exit_message(ending: Ending | None) -> dict[str, Any]:
    status = EXIT_STATUS.get(ending.status, ending.status) if ending else "Unfinished"
    submission = ending.submission if ending and ending.submission is not None else ""
    content = ending.reason if ending and ending.reason else status
    return {"role": "exit", "content": content, "extra": {"exit_status": status, "submission": submission}}


def to_mini_swe_agent(trajectory: Trajectory) -> dict[str, Any]:
    """Our trajectory as a mini-swe-agent trajectory document."""
    header, ending = trajectory.header, trajectory.ending
    messages: list[dict[str, Any]] = [{"role": "system", "content": header.system_prompt},
                                      {"role": "user", "content": header.user_prompt}]
    for step in trajectory.steps:
        messages.append({"role": "assistant", "content": step.raw_reply,
                         "extra": {"actions": _action(step), "finish_reason": step.finish_reason,
                                   "completion_tokens": step.completion_tokens}})
        if step.observation is not None:
            messages.append({"role": "user", "content": step.observation,
                             "extra": {"returncode": step.exit_code, "timed_out": step.timed_out}})
    exit_message = _exit_message(ending)
    messages.append(exit_message)
    ours = {"run_id": header.run_id, "status": ending.status if ending else None, "model": header.model.model_dump(),
            "repo": header.repo, "commit": header.commit, "image": header.image,
            "prompt_tokens": ending.total_prompt_tokens if ending else None,
            "completion_tokens": ending.total_completion_tokens if ending else None}
    return {
        "info": {"model_stats": {"instance_cost": 0.0, "api_calls": len(trajectory.steps)},
                 "config": {"agent_type": "cwm-runner", "model": header.model.model_dump()},
                 "exit_status": exit_message["extra"]["exit_status"],
                 "submission": exit_message["extra"]["submission"], CWM_RUNNER_KEY: ours},
        "messages": messages,
        "trajectory_format": TRAJECTORY_FORMAT,
        "instance_id": header.instance_id,
    }


def write_mini_swe_agent(trajectory: Trajectory, path: Path) -> None:
    Path(path).write_text(json.dumps(to_mini_swe_agent(trajectory), indent=2) + "\n", encoding="utf-8")
