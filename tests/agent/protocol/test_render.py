"""CWM's chat layout, token by token, for a whole multi-turn conversation (protocol section 1).

The expected prompt is spelled out in full: system, user, assistant (with its `<think>`), a bash
result (kept unstripped), a format error answered as a user message, and the next turn's prefix.
"""

from __future__ import annotations

from agent.protocol.render import (
    STOP_STRINGS,
    STOP_TOKEN_IDS,
    Message,
    assistant_content,
    assistant_prefix,
    render_message,
    render_prompt,
)

OBSERVATION = (
    "<output>\n"
    "README.md\n"
    "setup.py\n"
    "\n"
    "</output>\n"
    "\n"
    "<budget>\n"
    "* Remaining turns: 127\n"
    "* Remaining tokens: 129000\n"
    "</budget>"
)

CONVERSATION = [
    Message(role="system", content="\nYou are a helpful AI assistant.\n\n"),
    Message(role="user", content="  Solve the issue.\n"),
    Message(
        role="assistant",
        content=assistant_content("Let me look around.\n</think>\n<tool: bash>\nls\n</tool>\n"),
    ),
    Message(role="tool: bash", content=OBSERVATION),
    Message(role="assistant", content=assistant_content("Hmm.\n</think>\nI think it is done.")),
    Message(role="user", content="FormatError: No tool calls found"),
]

EXPECTED_PROMPT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful AI assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nSolve the issue.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "<think>\nLet me look around.\n</think>\n<tool: bash>\nls\n</tool><|eot_id|>"
    "<|start_header_id|>tool: bash<|end_header_id|>\n\n"
    "<output>\nREADME.md\nsetup.py\n\n</output>\n\n<budget>\n* Remaining turns: 127\n"
    "* Remaining tokens: 129000\n</budget><|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "<think>\nHmm.\n</think>\nI think it is done.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nFormatError: No tool calls found<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
)


def test_multi_turn_prompt_layout() -> None:
    assert render_prompt(CONVERSATION) == EXPECTED_PROMPT


def test_first_turn_prompt() -> None:
    assert render_prompt(CONVERSATION[:2]) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful AI assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSolve the issue.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
    )


def test_history_is_a_prefix_of_the_next_prompt() -> None:
    # Nothing earlier is rewritten: each prompt extends the previous one (prefix-cache friendly),
    # once the previous prompt's trailing `<think>\n` is taken as the start of the stored reply.
    earlier = render_prompt(CONVERSATION[:4])
    assert EXPECTED_PROMPT.startswith(earlier)


def test_tool_result_is_not_stripped() -> None:
    message = Message(role="tool: bash", content="\n  spaced output  \n\n")
    assert render_message(message) == (
        "<|start_header_id|>tool: bash<|end_header_id|>\n\n\n  spaced output  \n\n<|eot_id|>"
    )


def test_system_user_assistant_are_stripped() -> None:
    for role in ("system", "user", "assistant"):
        assert render_message(Message(role=role, content=" \n x \n ")) == (
            f"<|start_header_id|>{role}<|end_header_id|>\n\nx<|eot_id|>"
        )


def test_assistant_prefix_and_content() -> None:
    assert assistant_prefix() == "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n"
    assert assistant_content("r</think>x") == "<think>\nr</think>x"


def test_stop_tokens() -> None:
    assert set(STOP_TOKEN_IDS) == {128001, 128008, 128009}
    assert set(STOP_STRINGS) == {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}
