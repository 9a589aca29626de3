"""The reply parser: every error of docs/cwm-protocol.md section 4, in its order, verbatim."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tools.parser import ParsedReply, ToolCall, parse_reply


def error_of(reply: str, **kwargs: object) -> str | None:
    parsed = parse_reply(reply, **kwargs)  # type: ignore[arg-type]
    assert parsed.call is None
    return parsed.error


# --- success ---------------------------------------------------------------------------------


def test_single_call() -> None:
    parsed = parse_reply("Let me look.\n</think>\nI'll list files.\n<tool: bash>\nls -la\n</tool>")
    assert parsed.call == ToolCall(name="bash", body="ls -la")
    assert parsed.error is None
    assert parsed.answer == "\nI'll list files.\n<tool: bash>\nls -la\n</tool>"


def test_body_keeps_inner_newlines_and_whitespace() -> None:
    body = "  cd /tmp\n\n  echo 'a  b'  "
    parsed = parse_reply(f"t</think><tool: bash>\n{body}\n</tool>")
    assert parsed.call == ToolCall(name="bash", body=body)


def test_body_excludes_only_one_newline_on_each_side() -> None:
    parsed = parse_reply("t</think><tool: create>\nf.txt\nline\n\n</tool>")
    assert parsed.call == ToolCall(name="create", body="f.txt\nline\n")


def test_any_whitespace_character_after_colon() -> None:
    assert parse_reply("t</think><tool:\tsubmit>\np.diff\n</tool>").call == ToolCall(
        name="submit", body="p.diff"
    )


def test_call_written_while_thinking_is_ignored() -> None:
    reply = "maybe <tool: bash>\nrm -rf /\n</tool>\n</think>\n<tool: bash>\npwd\n</tool>"
    assert parse_reply(reply).call == ToolCall(name="bash", body="pwd")


def test_text_around_call_is_allowed() -> None:
    reply = (
        "t\n</think>\nbefore\n<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n"
        "</tool>\nafter"
    )
    parsed = parse_reply(reply)
    assert parsed.call is not None and parsed.call.name == "edit"
    assert parsed.call.body == "a.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE"


# --- thinking end ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 2, 3])
def test_thinking_end_count(count: int) -> None:
    reply = "thought" + "</think>" * count + "\n<tool: bash>\nls\n</tool>"
    assert error_of(reply) == f"FormatError: Expected exactly one thinking end token, got {count}"


def test_thinking_end_inside_tool_body_counts() -> None:
    reply = "t</think>\n<tool: bash>\necho '</think>'\n</tool>"
    assert error_of(reply) == "FormatError: Expected exactly one thinking end token, got 2"


def test_thinking_end_error_comes_before_call_errors() -> None:
    assert error_of("no end, no call") == "FormatError: Expected exactly one thinking end token, got 0"


def test_think_start_tag_is_not_counted() -> None:
    # The `<think>\n` belongs to the prompt; a stray extra `<think>` in the reply is just text.
    assert parse_reply("<think>t</think><tool: bash>\nls\n</tool>").call == ToolCall(name="bash", body="ls")


# --- call errors, in order -------------------------------------------------------------------


def test_more_than_one_call() -> None:
    reply = "t</think><tool: bash>\nls\n</tool>\n<tool: submit>\np\n</tool>\n<tool: nope>\nx\n</tool>"
    assert error_of(reply) == (
        "FormatError: Expected one tool call, but found 3: bash, submit, nope. "
        "Ensure only one <tool:...></tool> block is present in the response."
    )


def test_more_than_one_call_wins_over_tag_mismatch_and_empty_body() -> None:
    reply = "t</think><tool: bash>\n \n</tool><tool: bash>\nls\n</tool></tool>"
    assert error_of(reply) == (
        "FormatError: Expected one tool call, but found 2: bash, bash. "
        "Ensure only one <tool:...></tool> block is present in the response."
    )


def test_tag_mismatch_extra_opening() -> None:
    reply = "t</think><tool: bash>\necho '<tool: x>'\n</tool>"
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 1 tool calls via regex, "
        "but counted 2 opening tags and 1 closing tags."
    )


def test_tag_mismatch_extra_closing() -> None:
    reply = "t</think><tool: bash>\nls\n</tool>\n</tool>"
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 1 tool calls via regex, "
        "but counted 1 opening tags and 2 closing tags."
    )


def test_tag_mismatch_when_call_is_malformed() -> None:
    # No newline before </tool>: the regex finds nothing, but the tags are there.
    reply = "t</think><tool: bash>\nls</tool>"
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 0 tool calls via regex, "
        "but counted 1 opening tags and 1 closing tags."
    )


def test_tag_mismatch_unclosed_call() -> None:
    reply = "t</think><tool: bash>\nls\n"
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 0 tool calls via regex, "
        "but counted 1 opening tags and 0 closing tags."
    )


def test_tag_mismatch_bad_name_characters() -> None:
    reply = "t</think><tool: str-replace>\nx\n</tool>"
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 0 tool calls via regex, "
        "but counted 1 opening tags and 1 closing tags."
    )


def test_nested_call_is_a_mismatch() -> None:
    reply = "t</think><tool: bash>\n<tool: bash>\nls\n</tool>\n</tool>"
    # The lazy body stops at the first `\n</tool>`: one match, two of each tag.
    assert error_of(reply) == (
        "FormatError: Mismatch in tool tag counts: found 1 tool calls via regex, "
        "but counted 2 opening tags and 2 closing tags."
    )


def test_no_call() -> None:
    assert error_of("t</think>\n## Issue Summary\n\nDone.") == "FormatError: No tool calls found"


def test_empty_reply_after_think() -> None:
    assert error_of("t</think>") == "FormatError: No tool calls found"


@pytest.mark.parametrize("body", ["", " ", "\t \n  "])
def test_blank_body(body: str) -> None:
    reply = f"t</think><tool: bash>\n{body}\n</tool>"
    assert error_of(reply) == (
        "FormatError: Tool 'bash' requires non-empty arguments, but received empty or whitespace-only input."
    )


def test_blank_body_checked_before_unknown_tool() -> None:
    reply = "t</think><tool: python>\n  \n</tool>"
    assert error_of(reply) == (
        "FormatError: Tool 'python' requires non-empty arguments, but received empty or "
        "whitespace-only input."
    )


def test_unknown_tool() -> None:
    assert (
        error_of("t</think><tool: python>\nprint(1)\n</tool>") == "NoSuchToolError: Tool 'python' not found."
    )


def test_known_tools_restrict_names() -> None:
    reply = "t</think><tool: edit>\na.py\n</tool>"
    assert error_of(reply, known_tools=("bash", "submit")) == "NoSuchToolError: Tool 'edit' not found."
    assert parse_reply(reply).call == ToolCall(name="edit", body="a.py")


def test_name_is_case_sensitive() -> None:
    assert error_of("t</think><tool: Bash>\nls\n</tool>") == "NoSuchToolError: Tool 'Bash' not found."


def test_answer_is_kept_for_final_response() -> None:
    parsed = parse_reply("done thinking</think>\n## Issue Summary\n")
    assert parsed.answer == "\n## Issue Summary\n"
    assert parsed.error == "FormatError: No tool calls found"


def test_parsed_reply_holds_exactly_one_outcome() -> None:
    with pytest.raises(ValidationError):
        ParsedReply()
    with pytest.raises(ValidationError):
        ParsedReply(call=ToolCall(name="bash", body="ls"), error="x")
