"""The agent loop against a real Docker sandbox, driven by the replay model.

Pins the rendered token layout of a multi-turn episode (format error, tool error, command, submission,
final summary) and each ending (max turns, context exceeded, wall clock).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.episode.loop import LoopConfig, initial_messages, run_episode
from agent.models.replay import ReplayModel
from agent.protocol import prompts
from agent.protocol.render import Message, render_prompt
from sandbox.base import SandboxConfig
from sandbox.docker import DockerSandbox
from tests.helpers import bash, write_replies
from traces.recorder import Recorder, read_trajectory
from traces.schema import Header, ModelInfo

pytestmark = pytest.mark.docker

SYSTEM = "You are a test system prompt."
USER = "Fix the thing."

PATCH = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
REPLIES = [
    "I forgot to close my thoughts and call a tool.",
    "Edit a file that is not there.\n</think>\n\n<tool: edit>\nmissing.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n</tool>",
    bash("printf 'one\\ntwo'", "Look around."),
    bash(f"cat > /tmp/p.diff <<'EOF'\n{PATCH}EOF", "Write the patch."),
    "Submit it.\n</think>\n\n<tool: submit>\n/tmp/p.diff\n</tool>",
    "Done.\n</think>\n\n## Issue Summary\n\nFixed.",
]


@pytest.fixture(scope="module")
def sandbox(base_image: str):
    with DockerSandbox(SandboxConfig(image=base_image, workdir="/tmp")) as box:
        yield box


def run(tmp_path: Path, sandbox: DockerSandbox, replies: list[str], config: LoopConfig, **fields: object):
    model = ReplayModel(write_replies(tmp_path / "replies.jsonl", replies, **fields))
    messages = initial_messages(SYSTEM, USER)
    recorder = Recorder(tmp_path / "out.traj.jsonl",
                        Header(run_id="t", instance_id="loop", model=ModelInfo(kind="replay")))
    ending = run_episode(model, sandbox, messages, recorder, config)
    recorder.end(ending)
    return ending, messages, read_trajectory(tmp_path / "out.traj.jsonl")


def budget(turns: int, tokens: int) -> str:
    return f"\n\n<budget>\n* Remaining turns: {turns}\n* Remaining tokens: {tokens}\n</budget>"


def test_multi_turn_layout_and_submission(tmp_path: Path, sandbox: DockerSandbox) -> None:
    ending, messages, trajectory = run(tmp_path, sandbox, REPLIES, LoopConfig(record_diff_stat=False))
    assert ending.status == "submitted"
    assert ending.submission == PATCH
    assert ending.final_response == "## Issue Summary\n\nFixed."
    assert [s.tool_call.name if s.tool_call else None for s in trajectory.steps] == [
        None, "edit", "bash", "bash", "submit", None]
    steps = trajectory.steps
    assert steps[0].parse_error == "FormatError: Expected exactly one thinking end token, got 0"
    assert steps[0].observation_role == "user"
    assert steps[2].output == "one\ntwo" and steps[2].exit_code == 0

    # The whole rendered conversation, token by token, with the budget figures the loop computed.
    b = [s.observation.rsplit("<budget>", 1)[1] for s in steps[1:5]]
    tokens = [int(x.split("Remaining tokens: ")[1].split("\n")[0]) for x in b]
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    expected = (
        "<|begin_of_text|>"
        + h.format("system") + SYSTEM + "<|eot_id|>"
        + h.format("user") + USER + "<|eot_id|>"
        + h.format("assistant") + "<think>\nI forgot to close my thoughts and call a tool.<|eot_id|>"
        + h.format("user") + "FormatError: Expected exactly one thinking end token, got 0<|eot_id|>"
        + h.format("assistant") + "<think>\n" + REPLIES[1] + "<|eot_id|>"
        + h.format("tool: edit") + "<output>\nThe path missing.py does not exist. Please provide a valid path.\n\n</output>"
        + budget(126, tokens[0]) + "<|eot_id|>"
        + h.format("assistant") + "<think>\n" + REPLIES[2] + "<|eot_id|>"
        + h.format("tool: bash") + "<output>\none\ntwo\n</output>" + budget(125, tokens[1]) + "<|eot_id|>"
        + h.format("assistant") + "<think>\n" + REPLIES[3] + "<|eot_id|>"
        + h.format("tool: bash") + "<output>\n\n</output>" + budget(124, tokens[2]) + "<|eot_id|>"
        + h.format("assistant") + "<think>\n" + REPLIES[4] + "<|eot_id|>"
        + h.format("tool: submit") + "<output>\nThe following patch content is marked as your final submission:\n\n"
        "<submission>\n" + PATCH + "\n</submission>\n\nReview the patch content and ensure it correctly resolves "
        "the issue. If necessary, you can continue refining the patch and submit an updated version.\n</output>"
        + budget(123, tokens[3]) + "<|eot_id|>"
        + h.format("assistant") + "<think>\n" + REPLIES[5] + "<|eot_id|>"
        + h.format("assistant") + "<think>\n"
    )
    assert render_prompt(messages) == expected
    # Budgets shrink as the conversation grows, and stay within the context.
    assert prompts.CONTEXT_SIZE > tokens[0] > tokens[1] > tokens[2] > tokens[3] > 0


def test_prompt_deltas_rebuild_every_prompt(tmp_path: Path, sandbox: DockerSandbox) -> None:
    _, messages, trajectory = run(tmp_path, sandbox, REPLIES, LoopConfig(record_diff_stat=False))
    prompt = ""
    for step in trajectory.steps:
        prompt += step.prompt_delta
        # Each step's prompt is exactly what a raw completions client renders for that turn.
        turn_messages = messages[: 2 + 2 * (step.index - 1)]
        assert prompt == render_prompt(turn_messages)
        prompt += step.raw_reply.rstrip()


def test_max_turns_ends_without_running_the_last_action(tmp_path: Path, sandbox: DockerSandbox) -> None:
    replies = [bash("echo first"), bash("touch /tmp/must-not-exist")]
    ending, _, trajectory = run(tmp_path, sandbox, replies, LoopConfig(max_turns=2, record_diff_stat=False))
    assert ending.status == "max_turns" and ending.reason == "Max turns reached"
    assert trajectory.steps[0].observation.endswith(budget(1, int(
        trajectory.steps[0].observation.split("Remaining tokens: ")[1].split("\n")[0])))
    assert trajectory.steps[1].observation is None
    assert sandbox.run("test -e /tmp/must-not-exist").exit_code == 1


def test_context_exceeded(tmp_path: Path, sandbox: DockerSandbox) -> None:
    ending, _, trajectory = run(tmp_path, sandbox, [bash("seq 1 2000")] * 3,
                                LoopConfig(context_size=2000, record_diff_stat=False))
    assert ending.status == "context_exceeded" and ending.reason == "Context size exceeded"
    assert len(trajectory.steps) == 1


def test_wall_clock(tmp_path: Path, sandbox: DockerSandbox) -> None:
    ending, _, trajectory = run(tmp_path, sandbox, [bash("sleep 1"), bash("echo never")],
                                LoopConfig(wall_clock_s=0.5, record_diff_stat=False))
    assert ending.status == "wall_clock"
    assert len(trajectory.steps) == 1


def test_initial_messages_are_system_then_user() -> None:
    assert initial_messages("s", "u") == [Message(role="system", content="s"), Message(role="user", content="u")]
