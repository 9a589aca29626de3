"""CWM's prompts and limits: the system prompt, the issue prompt, the observation wrapper, truncation.

The model was trained on these exact bytes (docs/cwm-protocol.md, sections 2, 3,
5 and 6), so each one is pinned by
tests/agent/protocol/test_prompts.py and nothing else in the project spells them out again. The
tools' own specifications and messages live with the tools (tools.syntax, tools.messages); builders
here only substitute placeholders and apply the documented token limits, never reword anything.

Convention this module fixes (the protocol leaves it open):

* Truncation markers are joined to the kept text without a separator (`"[...]" + tail`,
  `head + "[...]"`), and the marker counts towards the token limit.
"""

from __future__ import annotations

from collections.abc import Callable

from sandbox.base import DEFAULT_TIMEOUT_S, DEFAULT_WORKDIR
from tools.syntax import BASH_TOOL_SPEC, CREATE_TOOL_SPEC, EDIT_TOOL_SPEC, SUBMIT_TOOL_SPEC

# --------------------------------------------------------------------------------------------
# Limits and defaults (protocol sections 2, 3, 5 and 6).

MAX_TURNS = 128
CONTEXT_SIZE = 131072
MAX_REPLY_TOKENS = 65536
MAX_USER_TOKENS = 8192  # cut from the LEFT, prefixed with the marker
MAX_TOOL_TOKENS = 32768  # cut from the RIGHT, followed by the marker
TRUNCATION_MARKER = "[...]"
DEFAULT_TIMEOUT = f"{DEFAULT_TIMEOUT_S:g}-second"  # the {timeout} wording, as timeout_phrase writes it
DEFAULT_REPO_ROOT = DEFAULT_WORKDIR

# Endings' reasons (section 6).
MAX_TURNS_REASON = "Max turns reached"
CONTEXT_EXCEEDED_REASON = "Context size exceeded"
# The runner's own wording (not trained on): the reason of an episode that ended as the protocol wants.
SUBMITTED_REASON = "final response after a successful submission"

# --------------------------------------------------------------------------------------------
# System prompt (section 2).

REASONING_HEADER = """\
You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response"""

ENVIRONMENT_INTRO = """\
# Environment

You are working in a linux container. The container session is persistent but will restart when \
encountering errors or after a {timeout} session timeout in each turn. You are also constrained by \
a {context} total context window limit. You can interact with the container through the following \
tool interface for at most {turns} turns. Here are the specifications:"""

REQUIREMENTS = """\
REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise \
continue iterating. You cannot provide a final response before invoking <tool: submit>."""


def timeout_phrase(seconds: float) -> str:
    """The `{timeout}` wording for a per-call timeout in seconds, e.g. 120 -> `120-second`."""
    return f"{seconds:g}-second"


def system_prompt(
    timeout: str = DEFAULT_TIMEOUT,
    context: int = CONTEXT_SIZE,
    turns: int = MAX_TURNS,
    plugins: bool = True,
) -> str:
    """The system prompt; `plugins=False` drops the edit and create blocks (bash + submit only)."""
    specs = [BASH_TOOL_SPEC, EDIT_TOOL_SPEC, CREATE_TOOL_SPEC, SUBMIT_TOOL_SPEC]
    if not plugins:
        specs = [BASH_TOOL_SPEC, SUBMIT_TOOL_SPEC]
    intro = ENVIRONMENT_INTRO.format(timeout=timeout, context=context, turns=turns)
    return "\n\n".join([REASONING_HEADER, intro, *specs, REQUIREMENTS])


# --------------------------------------------------------------------------------------------
# User prompt for an issue (section 3).

ISSUE_PROMPT_TEMPLATE = """\
Solve the following issue by implementing the necessary code changes and submitting a patch file:

<issue_description>
{issue}
</issue_description>

The [result] argument of <tool: submit> should be the path to a patch file that resolves the issue. \
This file must be accessible from the current working directory and should contain the end-to-end \
code changes in git diff format. You can refine and submit your patch multiple times as needed to \
ensure correctness.

Once you've submitted at least once and are confident in your solution, provide a final response \
summarizing your work using the following markdown template as a guide. Feel free to adjust the \
sections as necessary to fit the specific issue and solution:

```markdown
## Issue Summary

Brief description of the issue (bug/feature/enhancement), affected component, and expected outcome.

## Investigation and Reproduction

Steps taken to understand and reproduce the issue: commands executed, test cases run, error \
messages, debugging approach, and root cause analysis. For features, describe requirement analysis \
and codebase exploration.

## Solution and Code Changes

High-level approach and rationale for the chosen solution. Specific modifications by \
file/component, including new functions, classes, or architectural decisions. Explain how changes \
work together if multiple files are involved.

## Testing and Verification

Description of how you ensure the patch fully resolves the issue, including new tests added (or \
test changes made) to verify correctness, how you ran existing tests to prevent regressions, and \
how comprehensive your testing process is (e.g., what edge cases you covered, how you validated \
correctness across different scenarios).
```

Your primary objective is to ensure patch correctness above all else - thoroughly explore the \
codebase, think hard, and leverage significant execution to verify correctness by writing \
comprehensive tests to validate your solution and running existing tests to prevent regressions. \
Only submit when you are genuinely confident in your patch's correctness.

I've uploaded the corresponding code repository at {repo_root} and installed all the necessary \
dependencies. Now, the bash session has started, with the current working directory set to the \
repo root."""


def issue_prompt(issue: str, repo_root: str = DEFAULT_REPO_ROOT) -> str:
    """The first user message (before the 8192-token left truncation, see `truncate_left`)."""
    return ISSUE_PROMPT_TEMPLATE.format(issue=issue, repo_root=repo_root)


# --------------------------------------------------------------------------------------------
# Tool observations (section 5).

OBSERVATION_TEMPLATE = """\
<output>
{feedback}
</output>

<budget>
* Remaining turns: {n}
* Remaining tokens: {m}
</budget>"""

# --------------------------------------------------------------------------------------------
# Token limits.

TokenCounter = Callable[[str], int]


def _memoized(count_tokens: TokenCounter) -> TokenCounter:
    """Remember counts of strings already measured (the fixed point re-measures the same text)."""
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in cache:
            cache[text] = count_tokens(text)
        return cache[text]

    return count


def _longest_fitting(n_chars: int, measure: Callable[[int], int], limit: int, total: int) -> int:
    """Largest k in [0, n_chars) with measure(k) <= limit, knowing measure(n_chars) > limit.

    `measure(k)` is the token count of the candidate keeping k characters, which grows with k.
    Steps alternate between interpolating on the token counts (lands close to the answer at once
    for text of even density) and bisecting (bounds the worst case to about 2 log2(n) calls), so a
    480 KB output needs a handful of tokenizer calls rather than one per character.
    `total` (the untruncated text's count) stands in for measure(n_chars), which is never called;
    nor is measure(0): keeping nothing is taken to fit (the marker alone is a few tokens).
    """
    lo, lo_count = 0, 0
    hi, hi_count = n_chars, total
    interpolate = True
    while hi - lo > 1:
        if interpolate and hi_count > lo_count:
            guess = lo + (limit - lo_count) * (hi - lo) // (hi_count - lo_count)
            mid = min(max(guess, lo + 1), hi - 1)
        else:
            mid = (lo + hi) // 2
        interpolate = not interpolate
        mid_count = measure(mid)
        if mid_count <= limit:
            lo, lo_count = mid, mid_count
        else:
            hi, hi_count = mid, mid_count
    return lo


def truncate_left(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """`text` if it fits in `max_tokens`, else `[...]` + the longest suffix such that the whole fits.

    Used for user messages (the issue prompt): the end of an issue is kept, its start is cut.
    """
    total = count_tokens(text)
    if total <= max_tokens:
        return text
    n = len(text)
    # k = number of characters kept from the end.
    k = _longest_fitting(n, lambda k: count_tokens(TRUNCATION_MARKER + text[n - k :]), max_tokens, total)
    return TRUNCATION_MARKER + text[n - k :]


def truncate_right(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """`text` if it fits in `max_tokens`, else the longest prefix + `[...]` such that the whole fits.

    Used for tool messages: the start of an output is kept, its end is cut.
    """
    total = count_tokens(text)
    if total <= max_tokens:
        return text
    k = _longest_fitting(len(text), lambda k: count_tokens(text[:k] + TRUNCATION_MARKER), max_tokens, total)
    return text[:k] + TRUNCATION_MARKER


def format_observation(feedback: str, remaining_turns: int, remaining_tokens: int) -> str:
    """The observation wrapper with its budget block, before any truncation."""
    return OBSERVATION_TEMPLATE.format(feedback=feedback, n=remaining_turns, m=remaining_tokens)


def tool_observation(
    feedback: str,
    remaining_turns: int,
    tokens_so_far: int,
    context_size: int,
    count_tokens: TokenCounter,
    *,
    extra_tokens: int = 0,
    max_tokens: int = MAX_TOOL_TOKENS,
    max_rounds: int = 4,
) -> str:
    """The content of a `tool: {name}` message, budget included, right-truncated to `max_tokens`.

    Remaining tokens = context_size - tokens_so_far - (tokens of this very message), and the message
    contains that number, so it is found as a fixed point: start from the budget without this message,
    render, count, and re-render with the new figure until it stops changing (normally two or three
    rounds; only the number's digits can move it). There may be no fixed point (9999 vs 10000 can
    flip-flop): then, or after `max_rounds`, the smaller of the last two figures is shown, which
    under-states the budget by a token at most. `extra_tokens` is what the message costs beyond its
    content (role header and end-of-turn token), if the caller counts those.
    """
    count = _memoized(count_tokens)
    available = context_size - tokens_so_far - extra_tokens

    def render(remaining: int) -> str:
        return truncate_right(format_observation(feedback, remaining_turns, remaining), max_tokens, count)

    remaining = available
    for _ in range(max_rounds):
        updated = available - count(render(remaining))
        if updated == remaining:
            return render(remaining)
        previous, remaining = remaining, updated
    return render(min(previous, remaining))
