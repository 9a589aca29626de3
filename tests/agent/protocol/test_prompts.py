"""Pins every CWM interface constant to the text of docs/cwm-protocol.md.

The expected strings are written out in full, copied from the protocol document (not from
agent/protocol/prompts.py), so that any drift in the module fails here.
"""

# ruff: noqa: E501 - the expected prompts are the protocol's lines, unwrapped.
from __future__ import annotations

import pytest

from agent.protocol import prompts
from tools import messages, syntax

EXPECTED_SYSTEM_PROMPT = """\
You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response

# Environment

You are working in a linux container. The container session is persistent but will restart when encountering errors or after a 120-second session timeout in each turn. You are also constrained by a 131072 total context window limit. You can interact with the container through the following tool interface for at most 128 turns. Here are the specifications:

<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.

<tool: edit>
[path]
<<<<<<< SEARCH
[search_lines]
=======
[replacement_lines]
>>>>>>> REPLACE
</tool>
Replaces [search_lines] from [path] with [replacement_lines], where [path] must exist and [search_lines] must uniquely and exactly match one or more consecutive lines from the original file, including indentations and whitespaces.

<tool: create>
[path]
[content]
</tool>
Creates a new file at [path] with [content], where [path] must not exist, but its parent directory must exist.

<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.

REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>."""

EXPECTED_SYSTEM_PROMPT_NO_PLUGINS = """\
You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response

# Environment

You are working in a linux container. The container session is persistent but will restart when encountering errors or after a 120-second session timeout in each turn. You are also constrained by a 131072 total context window limit. You can interact with the container through the following tool interface for at most 128 turns. Here are the specifications:

<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.

<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.

REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>."""

EXPECTED_ISSUE_PROMPT = """\
Solve the following issue by implementing the necessary code changes and submitting a patch file:

<issue_description>
Calling `f({})` raises KeyError.

Steps:
1. run it
</issue_description>

The [result] argument of <tool: submit> should be the path to a patch file that resolves the issue. This file must be accessible from the current working directory and should contain the end-to-end code changes in git diff format. You can refine and submit your patch multiple times as needed to ensure correctness.

Once you've submitted at least once and are confident in your solution, provide a final response summarizing your work using the following markdown template as a guide. Feel free to adjust the sections as necessary to fit the specific issue and solution:

```markdown
## Issue Summary

Brief description of the issue (bug/feature/enhancement), affected component, and expected outcome.

## Investigation and Reproduction

Steps taken to understand and reproduce the issue: commands executed, test cases run, error messages, debugging approach, and root cause analysis. For features, describe requirement analysis and codebase exploration.

## Solution and Code Changes

High-level approach and rationale for the chosen solution. Specific modifications by file/component, including new functions, classes, or architectural decisions. Explain how changes work together if multiple files are involved.

## Testing and Verification

Description of how you ensure the patch fully resolves the issue, including new tests added (or test changes made) to verify correctness, how you ran existing tests to prevent regressions, and how comprehensive your testing process is (e.g., what edge cases you covered, how you validated correctness across different scenarios).
```

Your primary objective is to ensure patch correctness above all else - thoroughly explore the codebase, think hard, and leverage significant execution to verify correctness by writing comprehensive tests to validate your solution and running existing tests to prevent regressions. Only submit when you are genuinely confident in your patch's correctness.

I've uploaded the corresponding code repository at /testbed and installed all the necessary dependencies. Now, the bash session has started, with the current working directory set to the repo root."""

ISSUE = "Calling `f({})` raises KeyError.\n\nSteps:\n1. run it"


# ---------------------------------------------------------------------------------------------
# System and user prompts


def test_system_prompt_defaults() -> None:
    assert prompts.system_prompt() == EXPECTED_SYSTEM_PROMPT


def test_system_prompt_explicit_defaults_match() -> None:
    assert prompts.system_prompt("120-second", 131072, 128, plugins=True) == EXPECTED_SYSTEM_PROMPT


def test_system_prompt_without_plugins() -> None:
    assert prompts.system_prompt(plugins=False) == EXPECTED_SYSTEM_PROMPT_NO_PLUGINS


def test_system_prompt_parameters() -> None:
    text = prompts.system_prompt(timeout="60-second", context=32768, turns=50)
    sentence = (
        "You are working in a linux container. The container session is persistent but will restart "
        "when encountering errors or after a 60-second session timeout in each turn. You are also "
        "constrained by a 32768 total context window limit. You can interact with the container "
        "through the following tool interface for at most 50 turns. Here are the specifications:"
    )
    assert sentence in text
    assert "131072" not in text and "120-second" not in text and "128 turns" not in text
    # Everything else is unchanged.
    default_sentence = (
        "You are working in a linux container. The container session is persistent but will restart "
        "when encountering errors or after a 120-second session timeout in each turn. You are also "
        "constrained by a 131072 total context window limit. You can interact with the container "
        "through the following tool interface for at most 128 turns. Here are the specifications:"
    )
    assert text.replace(sentence, default_sentence) == EXPECTED_SYSTEM_PROMPT


def test_timeout_phrase() -> None:
    assert prompts.timeout_phrase(120.0) == "120-second"
    assert prompts.timeout_phrase(30) == "30-second"
    assert prompts.DEFAULT_TIMEOUT == "120-second"


def test_issue_prompt() -> None:
    assert prompts.issue_prompt(ISSUE) == EXPECTED_ISSUE_PROMPT
    assert prompts.issue_prompt(ISSUE, repo_root="/testbed") == EXPECTED_ISSUE_PROMPT


def test_issue_prompt_repo_root_and_braces_kept_literally() -> None:
    text = prompts.issue_prompt("use {repo_root} and {issue} and {0}", repo_root="/work/repo")
    assert "<issue_description>\nuse {repo_root} and {issue} and {0}\n</issue_description>" in text
    assert text.endswith(
        "I've uploaded the corresponding code repository at /work/repo and installed all the "
        "necessary dependencies. Now, the bash session has started, with the current working "
        "directory set to the repo root."
    )
    assert "/testbed" not in text


# ---------------------------------------------------------------------------------------------
# Limits, endings, parser errors


def test_limits_and_endings() -> None:
    assert prompts.MAX_TURNS == 128
    assert prompts.CONTEXT_SIZE == 131072
    assert prompts.MAX_REPLY_TOKENS == 65536
    assert prompts.MAX_USER_TOKENS == 8192
    assert prompts.MAX_TOOL_TOKENS == 32768
    assert prompts.TRUNCATION_MARKER == "[...]"
    assert prompts.DEFAULT_REPO_ROOT == "/testbed"
    assert prompts.MAX_TURNS_REASON == "Max turns reached"
    assert prompts.CONTEXT_EXCEEDED_REASON == "Context size exceeded"


def test_format_error_templates() -> None:
    assert (
        messages.THINK_END_ERROR.format(n=0) == "FormatError: Expected exactly one thinking end token, got 0"
    )
    assert (
        messages.MULTIPLE_CALLS_ERROR.format(n=2, names="bash, edit")
        == "FormatError: Expected one tool call, but found 2: bash, edit. Ensure only one "
        "<tool:...></tool> block is present in the response."
    )
    assert (
        messages.TAG_MISMATCH_ERROR.format(n=0, o=1, c=0)
        == "FormatError: Mismatch in tool tag counts: found 0 tool calls via regex, but counted 1 "
        "opening tags and 0 closing tags."
    )
    assert messages.NO_CALL_ERROR == "FormatError: No tool calls found"
    assert (
        messages.EMPTY_ARGS_ERROR.format(name="bash")
        == "FormatError: Tool 'bash' requires non-empty arguments, but received empty or "
        "whitespace-only input."
    )
    assert messages.NO_SUCH_TOOL_ERROR.format(name="python") == "NoSuchToolError: Tool 'python' not found."


# ---------------------------------------------------------------------------------------------
# Tool messages


def test_session_failure_messages() -> None:
    assert messages.SESSION_TIMEOUT_MESSAGE == (
        "The current session has terminated due to timeout. A fresh session has started with the "
        "current working directory reset to default."
    )
    assert messages.SESSION_OVERFLOW_MESSAGE == (
        "The current session has terminated because your previous command produced too much output. "
        "A fresh session has started with the current working directory reset to default."
    )
    assert messages.SESSION_DIED_MESSAGE == (
        "The current session has terminated unexpectedly. A fresh session has started with the "
        "current working directory reset to default."
    )


def test_edit_parse_error_is_sentence_blank_line_template() -> None:
    assert messages.EDIT_PARSE_ERROR == (
        "Failed to parse the edit tool call. Make sure it has the following format:\n"
        "\n"
        "<tool: edit>\n"
        "[path]\n"
        "<<<<<<< SEARCH\n"
        "[search_lines]\n"
        "=======\n"
        "[replacement_lines]\n"
        ">>>>>>> REPLACE\n"
        "</tool>"
    )
    # The template is the system prompt's edit block, minus its description line.
    assert syntax.EDIT_TEMPLATE + "\nReplaces [search_lines]" in EXPECTED_SYSTEM_PROMPT


def test_edit_messages() -> None:
    assert messages.EDIT_MULTIPLE_BLOCKS.format(n=2) == "Only one search/replace block is allowed. Got: 2."
    assert (
        messages.EDIT_MISSING_PATH.format(path="a/b.py")
        == "The path a/b.py does not exist. Please provide a valid path."
    )
    assert (
        messages.EDIT_NO_MATCH.format(path="x.py")
        == "No replacement was performed, the search lines did not appear verbatim in x.py."
    )
    assert messages.EDIT_INDENTATION_HINT == (
        " The search lines must exactly match one or more consecutive lines from the file, with "
        "indentations preserved."
    )
    assert messages.EDIT_MULTIPLE_MATCHES.format(linenums=[3, 10], path="x.py") == (
        "No replacement was performed. Multiple occurrences of the search text in lines [3, 10] of "
        "x.py. Please ensure it is unique."
    )
    assert messages.EDIT_SUCCESS.format(path="x.py", line=4, n=20, snippet="     4\tfoo") == (
        "File x.py has been successfully updated at line 4 and now contains 20 lines. The "
        "surrounding lines after the edit are shown below:\n     4\tfoo\nReview the changes and make "
        "sure they are as expected."
    )
    assert messages.EDIT_SNIPPET_CONTEXT_LINES == 8


def test_create_messages() -> None:
    assert (
        messages.CREATE_EXISTS.format(path="a.py")
        == "a.py already exists. Cannot create a new file at an existing path."
    )
    assert messages.CREATE_EMPTY_PATH == "Path is empty. Please provide a valid path."
    assert (
        messages.CREATE_MISSING_PARENT.format(parent_dir="/testbed/nope")
        == "File creation failed. The parent directory /testbed/nope does not exist."
    )
    assert messages.CREATE_SUCCESS.format(path="a.py", n=3) == "File created successfully at: a.py (3 lines)."


def test_submit_messages() -> None:
    assert (
        messages.SUBMIT_UNREADABLE.format(path="p.diff")
        == "Failed to submit p.diff. Make sure it exists and is readable."
    )
    assert messages.SUBMIT_EMPTY.format(path="p.diff") == "Failed to submit p.diff. It is an empty file."
    assert (
        messages.SUBMIT_NOT_DIFF.format(path="p.diff")
        == "Failed to submit p.diff. It is not a valid diff file."
    )


def test_submission_feedback_quotes_patch_unstripped() -> None:
    patch = "diff --git a/x b/x\n+{y}\n"
    assert messages.submission_feedback(patch) == (
        "The following patch content is marked as your final submission:\n"
        "\n"
        "<submission>\n"
        "diff --git a/x b/x\n"
        "+{y}\n"
        "\n"
        "</submission>\n"
        "\n"
        "Review the patch content and ensure it correctly resolves the issue. If necessary, you can "
        "continue refining the patch and submit an updated version."
    )


def test_observation_wrapper() -> None:
    assert prompts.format_observation("total 0\n", 127, 120000) == (
        "<output>\n"
        "total 0\n"
        "\n"
        "</output>\n"
        "\n"
        "<budget>\n"
        "* Remaining turns: 127\n"
        "* Remaining tokens: 120000\n"
        "</budget>"
    )


# ---------------------------------------------------------------------------------------------
# Truncation


class CountingCounter:
    """Token counter of one token per character that records how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return len(text)


def words(text: str) -> int:
    """A token counter of uneven density: one token per space-separated piece."""
    return len(text.split(" "))


def test_truncate_within_limit_is_identity_with_one_call() -> None:
    counter = CountingCounter()
    assert prompts.truncate_right("abc", 3, counter) == "abc"
    assert prompts.truncate_left("abc", 3, counter) == "abc"
    assert counter.calls == 2


def test_truncate_right_keeps_head_and_appends_marker() -> None:
    assert prompts.truncate_right("abcdefghij", 8, len) == "abc[...]"


def test_truncate_left_keeps_tail_and_prefixes_marker() -> None:
    assert prompts.truncate_left("abcdefghij", 8, len) == "[...]hij"


def test_truncation_is_maximal_with_uneven_tokens() -> None:
    text = " ".join(f"w{i}" + "x" * (i % 7) for i in range(500))
    right = prompts.truncate_right(text, 100, words)
    assert right.endswith("[...]") and words(right) <= 100
    kept = right[: -len("[...]")]
    assert text.startswith(kept)
    assert words(text[: len(kept) + 1] + "[...]") > 100  # one more character would not fit
    left = prompts.truncate_left(text, 100, words)
    assert left.startswith("[...]") and words(left) <= 100
    tail = left[len("[...]") :]
    assert text.endswith(tail)
    assert words("[...]" + text[len(text) - len(tail) - 1 :]) > 100


def test_truncation_of_large_output_uses_few_counts() -> None:
    counter = CountingCounter()
    text = "line of output\n" * 40000  # 600 KB
    result = prompts.truncate_right(text, 32768, counter)
    assert len(result) == 32768 and result.endswith("[...]")
    assert counter.calls <= 8


# ---------------------------------------------------------------------------------------------
# The tool observation with its budget


def test_tool_observation_budget_is_fixed_point() -> None:
    message = prompts.tool_observation("hello\n", 10, 5000, 131072, len)
    remaining = 131072 - 5000 - len(message)
    assert message == (
        "<output>\nhello\n\n</output>\n\n<budget>\n* Remaining turns: 10\n"
        f"* Remaining tokens: {remaining}\n</budget>"
    )
    assert remaining == 131072 - 5000 - 94 == 125978


def test_tool_observation_extra_tokens_count_against_budget() -> None:
    message = prompts.tool_observation("x", 3, 100, 1000, len, extra_tokens=7)
    assert message.endswith(f"* Remaining tokens: {1000 - 100 - 7 - len(message)}\n</budget>")


def test_tool_observation_without_fixed_point_understates_by_one() -> None:
    # With one token per character the message is 85 + digits long for feedback "x"; an available
    # budget of 85 + 10004 makes 9999 (4 digits) imply 10000 and 10000 (5 digits) imply 9999.
    base = len(prompts.format_observation("x", 3, 0)) - 1
    available = base + 10004
    message = prompts.tool_observation("x", 3, 0, available, len)
    assert message.endswith("* Remaining tokens: 9999\n</budget>")
    assert available - len(message) == 10000


def test_tool_observation_is_right_truncated_with_budget_cut() -> None:
    feedback = "y" * 40000
    message = prompts.tool_observation(feedback, 1, 0, 131072, len)
    assert len(message) == 32768
    assert message == "<output>\n" + "y" * (32768 - len("<output>\n") - 5) + "[...]"


@pytest.mark.parametrize("feedback", ["", "\n", "no newline", "ends with newline\n"])
def test_tool_observation_keeps_feedback_exactly(feedback: str) -> None:
    message = prompts.tool_observation(feedback, 5, 0, 131072, len)
    assert message.startswith("<output>\n" + feedback + "\n</output>\n\n<budget>\n")


def test_each_default_has_one_value_across_the_layers() -> None:
    """Defaults that must agree but live in different layers (the trajectory format cannot import the
    protocol above it) are pinned to each other here."""
    from agent.episode.loop import LoopConfig
    from sandbox.base import DEFAULT_TIMEOUT_S, DEFAULT_WORKDIR, SandboxConfig
    from tools.syntax import DEFAULT_TOOL_NAMES
    from traces.schema import ProtocolSettings

    loop, recorded = LoopConfig(), ProtocolSettings()
    assert (recorded.max_turns, recorded.context_size, recorded.max_reply_tokens) == (
        loop.max_turns, loop.context_size, loop.max_reply_tokens) == (prompts.MAX_TURNS, prompts.CONTEXT_SIZE,
                                                                      prompts.MAX_REPLY_TOKENS)
    assert recorded.timeout_s == SandboxConfig(image="x").timeout_s == DEFAULT_TIMEOUT_S
    assert tuple(recorded.tools) == loop.tools == DEFAULT_TOOL_NAMES
    assert prompts.DEFAULT_TIMEOUT == prompts.timeout_phrase(DEFAULT_TIMEOUT_S)
    assert prompts.DEFAULT_REPO_ROOT == DEFAULT_WORKDIR
