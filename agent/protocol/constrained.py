"""Regular expressions that admit exactly the CWM replies the parser accepts, for constrained decoding.

vLLM's structured outputs (`"structured_outputs": {"regex": ...}` in a completions request) mask every
token that would leave the regex's language, so a model - even one with random weights - can only
write a reply that `tools.parser.parse_reply` turns into one tool call. The language is that of
docs/cwm-protocol.md, section 4:

    reasoning without `</think>`, `</think>`, free text without `<tool:`/`</tool>`/`</think>`,
    `<tool: NAME>\\n`, a body that is not blank and holds none of those three tags, `\\n</tool>`,
    then optional whitespace.

The reply's `</think>` must be its only one (the parser counts them in the whole reply), so the free
text and the body may not contain it either; a `</tool>` or `<tool:` anywhere after `</think>` would
break the parser's tag counts. "Blank" is Python's `str.strip()` notion, all Unicode whitespace.

No part may spell one of CWM's special tokens (`<|eot_id|>`, `<|start_header_id|>`, ...; any
`<|reserved_special_token_...`) either. A reply is ordinary tokens: xgrammar treats a special token
whose text is allowed as an ordinary token, so without this the sampler could pick `<|eom_id|>` or
`<|end_of_text|>` mid-reply (both stop generation, cutting the reply short), and such text would
turn into real special tokens when the history is re-rendered and re-tokenized next turn. The parser
itself does not care, so this is the one place the regex is stricter than it.

Every forbidden tag starts with `<` and has no other `<`, so "no forbidden tag" is a plain regular
language: split the text at each `<`; each piece after a `<` must not begin with the rest of a tag
(`tool:`, `/tool>`, `/think>`). Written as one alternative per proper prefix of those rests, the
regex is unambiguous, so Python's backtracking matcher stays linear.

The syntax is the subset that xgrammar (vLLM's default structured-output backend) and llguidance
both read: literals, `[...]`/`[^...]` classes with `\\n \\t \\r \\xHH \\uHHHH` escapes, plain `(...)`
groups, `|`, `*`, `+`, `?`, `{m,n}`. No `.` (xgrammar's dot matches newlines, Python's does not), no
`\\s`/`\\w` shorthands (their meaning differs between engines and versions), no `(?:`, no
lookarounds, no backreferences, no anchors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agent.protocol.render import BEGIN_OF_TEXT, END_HEADER, END_OF_TEXT, EOM, EOT, PAD, START_HEADER
from tools.syntax import CLOSING_TAG, DEFAULT_TOOL_NAMES, OPENING_TAG, THINK_END

# CWM's special tokens (docs/cwm-protocol.md, sections 1 and 7) and the reserved ones' prefix.
TRACE_TOKENS = tuple(f"<|{name}|>" for name in ("frame_sep", "action_sep", "return_sep", "call_sep", "line_sep",
                                                 "exception_sep", "arg_sep", "trace_context_start"))
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, PAD, START_HEADER, END_HEADER, EOM, EOT, *TRACE_TOKENS,
                  "<|reserved_special_token_")

# Every character for which `str.isspace()` is true, i.e. what `str.strip()` removes (checked by a test).
WHITESPACE_CLASS_BODY = (
    r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
WHITESPACE = f"[{WHITESPACE_CLASS_BODY}]"
NOT_LT = "[^<]"
_TOOL_NAME = re.compile(r"[a-zA-Z_]+")  # the parser's name pattern
_LITERAL_SAFE = re.compile(r"[A-Za-z0-9_ :/<>\n]")
_CLASS_SAFE = re.compile(r"[A-Za-z0-9_ :/<>|]")


def _literal(text: str) -> str:
    """`text` as a regex literal; our tags only hold characters that need no escaping but `|`."""
    for char in text:
        if not (_LITERAL_SAFE.fullmatch(char) or char == "|"):
            raise ValueError(f"unexpected character {char!r} in a regex literal")
    return text.replace("\n", r"\n").replace("|", r"\|")


def _class_char(char: str) -> str:
    """One character inside `[...]`; only plain ones occur in our tags."""
    if not _CLASS_SAFE.fullmatch(char):
        raise ValueError(f"unexpected character {char!r} in a character class")
    return char


def _after_lt(tags: Sequence[str]) -> str:
    """What may follow one `<` up to the next `<` (or the end) without completing any of `tags`.

    Each alternative is a proper prefix `p` of a tag's rest (the tag minus its `<`), optionally
    followed by a character that continues no tag from `p`, then anything without `<`.
    """
    rests = [tag[1:] for tag in tags]
    prefixes = sorted({rest[:i] for rest in rests for i in range(len(rest))}, key=lambda p: (len(p), p))
    alternatives = []
    for prefix in prefixes:
        continuing = sorted({rest[len(prefix)] for rest in rests if rest.startswith(prefix)})
        excluded = "<" + "".join(_class_char(c) for c in continuing)
        alternatives.append(f"{_literal(prefix)}([^{excluded}]{NOT_LT}*)?")
    return "(" + "|".join(alternatives) + ")"


def _without(tags: Sequence[str]) -> str:
    """Any text that contains none of `tags` (each starts with `<` and holds no other `<`)."""
    for tag in tags:
        if not tag.startswith("<") or "<" in tag[1:]:
            raise ValueError(f"tag {tag!r} must start with '<' and contain no other '<'")
    return f"{NOT_LT}*(<{_after_lt(tags)})*"


def _non_blank_without(tags: Sequence[str]) -> str:
    """Like `_without`, but with at least one non-whitespace character.

    Leading whitespace, then either a first non-whitespace character other than `<` followed by any
    allowed text, or a `<` that starts the first tag-free piece. Whitespace is never `<` and never
    continues a tag, so the split keeps the tag-freedom of `_without`.
    """
    after = _after_lt(tags)
    return f"{WHITESPACE}*([^<{WHITESPACE_CLASS_BODY}]{_without(tags)}|<{after}(<{after})*)"


def _tool_names(tools: Sequence[str]) -> str:
    names = list(dict.fromkeys(tools))
    if not names:
        raise ValueError("at least one tool name is needed")
    for name in names:
        if not _TOOL_NAME.fullmatch(name):
            raise ValueError(f"tool name {name!r} does not match the parser's [a-zA-Z_]+")
    return "(" + "|".join(names) + ")"


def reply_regex(tools: Sequence[str] = DEFAULT_TOOL_NAMES) -> str:
    """The regex whose language is exactly the replies that parse to one call of one of `tools`.

    Exactly, except that the call must be written `<tool: NAME>` with one space (the parser also
    takes a tab or newline there), only whitespace may follow `</tool>` (the parser ignores
    trailing text, which CWM never writes before its end-of-turn token), and no special token may
    be spelled out (see the module's docstring).
    """
    after_think = [OPENING_TAG, CLOSING_TAG, THINK_END, *SPECIAL_TOKENS]
    return (
        _without([THINK_END, *SPECIAL_TOKENS])
        + _literal(THINK_END)
        + _without(after_think)
        + _literal("<tool: ")
        + _tool_names(tools)
        + _literal(">\n")
        + _non_blank_without(after_think)
        + _literal("\n" + CLOSING_TAG)
        + f"{WHITESPACE}*"
    )


def bounded_reply_regex(
    tools: Sequence[str] = DEFAULT_TOOL_NAMES,
    *,
    reasoning_chars: int = 400,
    text_chars: int = 200,
    body_chars: int = 400,
) -> str:
    """A length-capped subset of `reply_regex`, for models that would otherwise never stop.

    A model with random weights almost never samples `</think>` by chance, so under the exact regex
    it writes reasoning until `max_tokens`. Here each part is capped and may hold no `<` at all
    (so no tag can form), which forces `</think>`, the call and `</tool>` within a few hundred
    characters. Every reply it admits is also admitted by `reply_regex`.
    """
    for name, value in (("reasoning_chars", reasoning_chars), ("text_chars", text_chars),
                        ("body_chars", body_chars)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    return (
        f"{NOT_LT}{{0,{reasoning_chars}}}"
        + _literal(THINK_END)
        + f"{NOT_LT}{{0,{text_chars}}}"
        + _literal("<tool: ")
        + _tool_names(tools)
        + _literal(">\n")
        + f"[^<{WHITESPACE_CLASS_BODY}]{NOT_LT}{{0,{body_chars - 1}}}"
        + _literal("\n" + CLOSING_TAG)
        + f"{WHITESPACE}{{0,2}}"
    )


def structured_outputs(regex: str) -> dict[str, Any]:
    """The request-body field vLLM (0.11 and later, 0.26 included) reads for regex-constrained output."""
    return {"structured_outputs": {"regex": regex}}
