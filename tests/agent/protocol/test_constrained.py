"""The structured-output regex admits exactly the replies `tools.parser` turns into one tool call."""

from __future__ import annotations

import random
import re

import pytest

from agent.protocol.constrained import (
    SPECIAL_TOKENS,
    WHITESPACE_CLASS_BODY,
    bounded_reply_regex,
    reply_regex,
    structured_outputs,
)
from tools import messages
from tools.parser import parse_reply
from tools.syntax import DEFAULT_TOOL_NAMES, TOOL_CALL_RE

EXACT = re.compile(reply_regex())

VALID = [
    "I will look around.\n</think>\n<tool: bash>\nls -la\n</tool>",
    "</think><tool: submit>\npatch.diff\n</tool>",
    "plan\n</think>\nLet me edit.\n<tool: edit>\nsrc/a.py\n<<<<<<< SEARCH\n    x = 1\n=======\n    x = 2\n"
    ">>>>>>> REPLACE\n</tool>\n",
    "x</think>\n<tool: create>\nweb/index.html\n<html><body><div>a < b</div></body></html>\n</tool>  \n",
    # a call written while thinking is only reasoning; `<tool:` and `</tool>` are allowed there
    "maybe <tool: bash>\nrm -rf /\n</tool> no.\n</think>\n<tool: bash>\necho hi\n</tool>",
    # near misses of the tags inside the body and the text
    "t</think>see </tool <tool </thinking <tool-x\n<tool: bash>\necho '</tool' '<tool' '</thin'\n</tool>",
    "t</think>\n<tool: bash>\n<\n</tool>",
    "t</think>\n<tool: bash>\n  \t x\n\n</tool>\n\n",
    "t</think>\n<tool: bash>\necho done\n\n</tool>",  # the body keeps its trailing newline
    "t</think>\n<tool: bash>\n</tool\n</tool>",
    "t</think>\n<tool: bash>\nprintf 'é ü 中文'\n</tool>",
    # `<|` alone is ordinary text (Haskell's `<|>`); only whole special-token spellings are excluded
    "a <| b</think>\n<tool: create>\nP.hs\nmain = pure () <|> pure () -- <|eot\n</tool>",
]

INVALID = {
    "no </think>": "I will run ls\n<tool: bash>\nls\n</tool>",
    "two </think>": "a</think>b</think>\n<tool: bash>\nls\n</tool>",
    "</think> in the body": "a</think>\n<tool: bash>\necho '</think>'\n</tool>",
    "no call": "a</think>\nAll done, here is my summary.",
    "two calls": "a</think>\n<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>",
    "empty body": "a</think>\n<tool: bash>\n\n</tool>",
    "whitespace body": "a</think>\n<tool: bash>\n  \t \n</tool>",
    "unicode whitespace body": "a</think>\n<tool: bash>\n\u2003\xa0\u3000\n</tool>",
    "unknown tool": "a</think>\n<tool: python>\nprint(1)\n</tool>",
    "stray </tool> in text": "a</think>\nsee </tool>\n<tool: bash>\nls\n</tool>",
    "stray <tool: in body": "a</think>\n<tool: bash>\necho '<tool: bash>'\n</tool>",
    "unclosed call": "a</think>\n<tool: bash>\nls\n",
    "no newline before </tool>": "a</think>\n<tool: bash>\nls</tool>",
    "text after the call": "a</think>\n<tool: bash>\nls\n</tool>\nand then more",
    # special tokens spelled out: they would stop generation or corrupt the re-rendered history
    "end of turn while thinking": "a<|eot_id|>b</think>\n<tool: bash>\nls\n</tool>",
    "end of message in the text": "a</think><|eom_id|>\n<tool: bash>\nls\n</tool>",
    "header in the body": "a</think>\n<tool: bash>\necho '<|start_header_id|>'\n</tool>",
    "reserved token in the body": "a</think>\n<tool: bash>\necho <|reserved_special_token_7|>\n</tool>",
}
# The parser takes these; the regex does not (see reply_regex's docstring).
STRICTER_THAN_PARSER = {"text after the call", "end of turn while thinking", "end of message in the text",
                        "header in the body", "reserved token in the body"}


@pytest.mark.parametrize("reply", VALID)
def test_valid_replies_match_and_parse(reply: str) -> None:
    assert EXACT.fullmatch(reply), reply
    parsed = parse_reply(reply)
    assert parsed.call is not None, parsed.error


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_replies_do_not_match(case: str) -> None:
    assert EXACT.fullmatch(INVALID[case]) is None


def test_every_format_error_of_the_protocol_is_excluded() -> None:
    """Each parser error message (protocol section 4) has a reply above that triggers it."""
    errors = {parse_reply(reply).error for case, reply in INVALID.items() if case not in STRICTER_THAN_PARSER}
    assert None not in errors
    assert all(parse_reply(INVALID[case]).call for case in STRICTER_THAN_PARSER)
    expected = {
        messages.THINK_END_ERROR.format(n=0), messages.THINK_END_ERROR.format(n=2), messages.NO_CALL_ERROR,
        messages.MULTIPLE_CALLS_ERROR.format(n=2, names="bash, bash"),
        messages.EMPTY_ARGS_ERROR.format(name="bash"), messages.NO_SUCH_TOOL_ERROR.format(name="python"),
        messages.TAG_MISMATCH_ERROR.format(n=1, o=1, c=2),
    }
    assert expected <= errors


def test_only_the_announced_tools_are_allowed() -> None:
    without_plugins = re.compile(reply_regex(("bash", "submit")))
    assert without_plugins.fullmatch("a</think>\n<tool: submit>\np.diff\n</tool>")
    edit = "a</think>\n<tool: edit>\nf\n<<<<<<< SEARCH\n=======\n>>>>>>> REPLACE\n</tool>"
    assert EXACT.fullmatch(edit) and without_plugins.fullmatch(edit) is None


@pytest.mark.parametrize("tools", [(), ("bash", "rm -rf"), ("a.b",)])
def test_tool_names_the_parser_cannot_read_are_refused(tools: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        reply_regex(tools)


def test_whitespace_class_is_what_str_strip_removes() -> None:
    everything = "".join(map(chr, range(0x110000)))
    pattern = re.compile(f"[{WHITESPACE_CLASS_BODY}]")
    assert {c for c in everything if pattern.fullmatch(c)} == {c for c in everything if c.isspace()}


# Equivalence with the parser on many generated replies

PIECES = ["<", "/", ">", ":", "t", "too", "l", "/th", "ink>", "x", " ", "\n", "\t", "\u2003", "\xa0", "é",
          "<tool:", "<tool: bash>\n", "<tool: edit>\n", "<tool: nope>\n", "<tool:\tbash>\n", "</tool>",
          "\n</tool>", "</think>", "<to", "</thin", "|", "<|", "eot_id|>", "<|eot_id|>", "<|eom_id|>",
          "<|reserved_special_token_", "<|pad|"]


def parser_accepts(reply: str, tools: tuple[str, ...] = DEFAULT_TOOL_NAMES) -> bool:
    """The reference: the parser returns a call, written `<tool: NAME>`, with only whitespace after it,
    and no special token is spelled out anywhere."""
    parsed = parse_reply(reply, tools)
    if parsed.call is None or any(token in reply for token in SPECIAL_TOKENS):
        return False
    match = TOOL_CALL_RE.search(parsed.answer)
    assert match is not None
    return parsed.answer[match.start():match.start() + 7] == "<tool: " and not parsed.answer[match.end():].strip()


def random_reply(rng: random.Random) -> str:
    def some(count: int) -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, count)))

    if rng.random() < 0.3:
        return some(12)
    call = rng.choice(["<tool: bash>\n", "<tool: submit>\n", "<tool: nope>\n", "<tool:\tbash>\n"])
    return some(4) + "</think>" + some(3) + call + some(4) + "\n</tool>" + rng.choice(["", " ", "\n", "x", "\u3000"])


def test_regex_and_parser_agree_on_generated_replies() -> None:
    rng = random.Random(20240611)
    accepted = 0
    for _ in range(20000):
        reply = random_reply(rng)
        expected = parser_accepts(reply)
        assert (EXACT.fullmatch(reply) is not None) == expected, repr(reply)
        accepted += expected
    assert accepted > 500  # the generator reaches both sides


# The bounded variant, for models that would never stop on their own


def test_bounded_regex_is_a_subset_with_caps() -> None:
    bounded = re.compile(bounded_reply_regex(reasoning_chars=20, text_chars=10, body_chars=15))
    assert bounded.fullmatch("thinking</think>\nok\n<tool: bash>\nls -la\n</tool>\n")
    assert bounded.fullmatch("x" * 21 + "</think><tool: bash>\nls\n</tool>") is None
    assert bounded.fullmatch("</think>" + "y" * 11 + "<tool: bash>\nls\n</tool>") is None
    assert bounded.fullmatch("</think><tool: bash>\n" + "z" * 15 + "\n</tool>")
    assert bounded.fullmatch("</think><tool: bash>\n" + "z" * 16 + "\n</tool>") is None
    assert bounded.fullmatch("</think><tool: bash>\n \n</tool>") is None
    rng = random.Random(7)
    seen = 0
    for _ in range(20000):
        reply = random_reply(rng)
        if bounded.fullmatch(reply):
            seen += 1
            assert EXACT.fullmatch(reply) and parser_accepts(reply), repr(reply)
    assert seen > 100


# Only the regex subset that xgrammar and llguidance both read

ALLOWED_ESCAPES = re.compile(r"\\(n|t|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[\\\-\]\[^|])")


@pytest.mark.parametrize("regex", [reply_regex(), bounded_reply_regex()])
def test_regex_uses_only_the_portable_subset(regex: str) -> None:
    assert "(?" not in regex  # no non-capturing groups, lookarounds or flags
    assert not re.search(r"(?<!\\)\.", regex)  # no dot: xgrammar's matches newlines
    assert not re.search(r"(?<!\\)[\^$](?<!\[\^)", regex.replace("[^", "["))  # no anchors
    escapes = re.findall(r"\\.", regex)
    stripped = ALLOWED_ESCAPES.sub("", regex)
    assert "\\" not in stripped, f"unsupported escapes among {set(escapes)}"


def test_regex_compiles_in_xgrammar_when_installed() -> None:
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgrammar.Grammar.from_regex(reply_regex())
    for reply in VALID:
        assert _is_grammar_accept_string(grammar, reply), reply
    for reply in INVALID.values():
        assert not _is_grammar_accept_string(grammar, reply), reply


def test_request_field() -> None:
    assert structured_outputs("a+") == {"structured_outputs": {"regex": "a+"}}
