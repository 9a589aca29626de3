"""The tools' rules without a sandbox: edit matching and messages, create and submit texts.

Expected messages are written out in full; they are what the model reads (protocol section 5).
"""

from __future__ import annotations

import pytest

from sandbox.base import CommandResult
from tools.base import decode_text, displayable, encode_text
from tools.bash import session_failure_message
from tools.create import count_lines, split_body, success_message
from tools.edit import EditRequest, apply_edit, parse_edit, replace_unique
from tools.submit import check_patch

PARSE_FAILURE = (
    "Failed to parse the edit tool call. Make sure it has the following format:\n"
    "\n"
    "<tool: edit>\n"
    "[path]\n"
    "<<<<<<< SEARCH\n"
    "[search_lines]\n"
    "=======\n"
    "[replacement_lines]\n"
    ">>>>>>> REPLACE\n"
    "</tool>\n"
)


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


PY = "def f(x):\n    if x:\n        return 1\n    return 2\n"


# --- edit: parsing ---------------------------------------------------------------------------


def test_parse_edit_takes_first_line_as_path() -> None:
    assert parse_edit("src/a.py\n" + block("x", "y")) == EditRequest(path="src/a.py", search="x", replace="y")


def test_parse_edit_path_kept_as_written() -> None:
    assert parse_edit(" a b.py \n" + block("x", "y")).path == " a b.py "  # type: ignore[union-attr]


def test_parse_edit_ignores_text_after_replace_marker() -> None:
    request = parse_edit("a.py\n" + block("x", "y") + "\ntrailing words")
    assert request == EditRequest(path="a.py", search="x", replace="y")


def test_parse_edit_multiline_and_empty_parts() -> None:
    assert parse_edit("a.py\n" + block("l1\nl2", "")) == EditRequest(path="a.py", search="l1\nl2", replace="")
    assert parse_edit("a.py\n" + block("", "new")) == EditRequest(path="a.py", search="", replace="new")


@pytest.mark.parametrize(
    "body",
    [
        "a.py",  # nothing but a path
        block("x", "y"),  # no path line: the marker is taken as the path, no block follows
        "a.py\n<<<<<<< SEARCH\nx\n======\ny\n>>>>>>> REPLACE",  # six '='
        "a.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLAC",
        "a.py\n<<<<<<<SEARCH\nx\n=======\ny\n>>>>>>> REPLACE",
        "a.py\n  <<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE",  # marker not at a line start
    ],
)
def test_parse_failure_message(body: str) -> None:
    assert parse_edit(body) == PARSE_FAILURE


def test_only_one_block() -> None:
    body = "a.py\n" + block("x", "y") + "\n" + block("p", "q") + "\n" + block("r", "s")
    assert parse_edit(body) == "Only one search/replace block is allowed. Got: 3.\n"


# --- edit: matching --------------------------------------------------------------------------


def test_no_match_without_hint() -> None:
    assert apply_edit(PY, block("    return 3", "x"), "a.py") == (
        None,
        "No replacement was performed, the search lines did not appear verbatim in a.py.\n",
    )


def test_indentation_only_mismatch_gets_hint() -> None:
    new_text, message = apply_edit(PY, block("    return 1", "    return 0"), "pkg/a.py")
    assert new_text is None
    assert message == (
        "No replacement was performed, the search lines did not appear verbatim in pkg/a.py. "
        "The search lines must exactly match one or more consecutive lines from the file, with "
        "indentations preserved.\n"
    )


def test_hint_uses_only_the_first_search_line() -> None:
    # First line present (stripped), second line absent: hint. First line absent: no hint.
    _, with_hint = apply_edit(PY, block("if x:\n        return 9", "z"), "a.py")
    assert with_hint.endswith("with indentations preserved.\n")
    _, without = apply_edit(PY, block("    if y:\n        return 1", "z"), "a.py")
    assert without.endswith("verbatim in a.py.\n")


def test_hint_ignores_trailing_whitespace_only_leading() -> None:
    # The first search line is stripped on the left only: trailing spaces prevent the hint.
    _, message = apply_edit(PY, block("return 1  ", "z"), "a.py")
    assert message == "No replacement was performed, the search lines did not appear verbatim in a.py.\n"


def test_match_must_start_at_line_start() -> None:
    new_text, message = apply_edit("abc\ndef\n", block("bc", "X"), "t.txt")
    assert new_text is None
    # "bc" occurs in the file, so the hint is added (as the trained harness did).
    assert message == (
        "No replacement was performed, the search lines did not appear verbatim in t.txt. "
        "The search lines must exactly match one or more consecutive lines from the file, with "
        "indentations preserved.\n"
    )


def test_match_may_end_mid_line() -> None:
    new_text, message = apply_edit("abc\ndef\n", block("ab", "X"), "t.txt")
    assert new_text == "Xc\ndef\n"
    assert message == (
        "File t.txt has been successfully updated at line 1 and now contains 3 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\tXc\n"
        "     2\tdef\n"
        "     3\t\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_several_matches_listed_as_python_list() -> None:
    text = "x = 1\ny = 2\nx = 1\nz = 3\nx = 1\n"
    assert apply_edit(text, block("x = 1", "x = 0"), "m.py") == (
        None,
        "No replacement was performed. Multiple occurrences of the search text in lines [1, 3, 5] "
        "of m.py. Please ensure it is unique.\n",
    )


def test_overlapping_matches_are_counted() -> None:
    text = "a\na\na\n"
    assert apply_edit(text, block("a\na", "b"), "o.txt") == (
        None,
        "No replacement was performed. Multiple occurrences of the search text in lines [1, 2] "
        "of o.txt. Please ensure it is unique.\n",
    )


def test_multiline_search_unique_once_context_added() -> None:
    text = "x = 1\ny = 2\nx = 1\nz = 3\n"
    new_text, message = apply_edit(text, block("x = 1\nz = 3", "x = 10\nz = 30"), "m.py")
    assert new_text == "x = 1\ny = 2\nx = 10\nz = 30\n"
    assert message == (
        "File m.py has been successfully updated at line 3 and now contains 5 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\tx = 1\n"
        "     2\ty = 2\n"
        "     3\tx = 10\n"
        "     4\tz = 30\n"
        "     5\t\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_single_match_with_indentation() -> None:
    new_text, message = apply_edit(PY, block("        return 1", "        return 10"), "a.py")
    assert new_text == "def f(x):\n    if x:\n        return 10\n    return 2\n"
    assert message == (
        "File a.py has been successfully updated at line 3 and now contains 5 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\tdef f(x):\n"
        "     2\t    if x:\n"
        "     3\t        return 10\n"
        "     4\t    return 2\n"
        "     5\t\n"
        "Review the changes and make sure they are as expected.\n"
    )


LONG = "".join(f"line{i}\n" for i in range(1, 41))  # 40 lines and a final newline


def test_snippet_window_in_the_middle() -> None:
    new_text, message = apply_edit(LONG, block("line20", "new20a\nnew20b"), "long.txt")
    assert new_text is not None and new_text.count("\n") == 41
    # Lines max(1, 20-8)=12 .. 20+8+2-1=29 of the new file.
    assert message == (
        "File long.txt has been successfully updated at line 20 and now contains 42 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "    12\tline12\n"
        "    13\tline13\n"
        "    14\tline14\n"
        "    15\tline15\n"
        "    16\tline16\n"
        "    17\tline17\n"
        "    18\tline18\n"
        "    19\tline19\n"
        "    20\tnew20a\n"
        "    21\tnew20b\n"
        "    22\tline21\n"
        "    23\tline22\n"
        "    24\tline23\n"
        "    25\tline24\n"
        "    26\tline25\n"
        "    27\tline26\n"
        "    28\tline27\n"
        "    29\tline28\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_snippet_window_at_file_start() -> None:
    # "line2" alone would also match line20..line29 (a match may end mid-line): add line3.
    _, ambiguous = apply_edit(LONG, block("line2", "second"), "long.txt")
    assert ambiguous.startswith(
        "No replacement was performed. Multiple occurrences of the search "
        "text in lines [2, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29] of long.txt."
    )
    _, message = apply_edit(LONG, block("line2\nline3", "second\nline3"), "long.txt")
    # Lines max(1, 2-8)=1 .. 2+8+2-1=11.
    assert message == (
        "File long.txt has been successfully updated at line 2 and now contains 41 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\tline1\n"
        "     2\tsecond\n"
        "     3\tline3\n"
        "     4\tline4\n"
        "     5\tline5\n"
        "     6\tline6\n"
        "     7\tline7\n"
        "     8\tline8\n"
        "     9\tline9\n"
        "    10\tline10\n"
        "    11\tline11\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_snippet_window_at_file_end_without_final_newline() -> None:
    text = LONG.rstrip("\n")
    new_text, message = apply_edit(text, block("line39\nline40", "end"), "long.txt")
    assert new_text == "".join(f"line{i}\n" for i in range(1, 39)) + "end"
    assert message == (
        "File long.txt has been successfully updated at line 39 and now contains 39 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "    31\tline31\n"
        "    32\tline32\n"
        "    33\tline33\n"
        "    34\tline34\n"
        "    35\tline35\n"
        "    36\tline36\n"
        "    37\tline37\n"
        "    38\tline38\n"
        "    39\tend\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_deletion_counts_one_replacement_line() -> None:
    new_text, message = apply_edit("a\nb\nc\n", block("b\n", ""), "d.txt")
    # Search "b\n" matches "b\n" + start of "c": deleting leaves "a\nc\n".
    assert new_text == "a\nc\n"
    assert message == (
        "File d.txt has been successfully updated at line 2 and now contains 3 lines. The "
        "surrounding lines after the edit are shown below:\n"
        "     1\ta\n"
        "     2\tc\n"
        "     3\t\n"
        "Review the changes and make sure they are as expected.\n"
    )


def test_empty_search_matches_every_line() -> None:
    assert apply_edit("a\nb\n", block("", "x"), "e.txt") == (
        None,
        "No replacement was performed. Multiple occurrences of the search text in lines [1, 2, 3] "
        "of e.txt. Please ensure it is unique.\n",
    )


def test_empty_search_in_empty_file_inserts() -> None:
    new_text, message = apply_edit("", block("", "hello"), "e.txt")
    assert new_text == "hello"
    assert message.startswith("File e.txt has been successfully updated at line 1 and now contains 1 lines.")


def test_crlf_file_is_matched_byte_for_byte() -> None:
    text = "a\r\nb\r\n"
    assert apply_edit(text, block("a\nb", "x"), "w.txt")[0] is None
    assert apply_edit(text, block("a\r\nb\r", "x\r"), "w.txt")[0] == "x\r\n"


def test_replace_unique_leaves_rest_of_file_untouched() -> None:
    text = "keep  \t\nold\n\n\nkeep too"
    outcome = replace_unique(text, EditRequest(path="k", search="old", replace="new"))
    assert outcome.new_text == "keep  \t\nnew\n\n\nkeep too"


def test_undecodable_bytes_round_trip_and_display() -> None:
    data = b"caf\xe9 = 1\nx = 2\n"
    text = decode_text(data)
    new_text, message = apply_edit(text, block("x = 2", "x = 3"), "latin.py")
    assert new_text is not None and encode_text(new_text) == b"caf\xe9 = 1\nx = 3\n"
    assert "     1\tcaf\ufffd = 1\n" in message
    assert displayable(text) == "caf\ufffd = 1\nx = 2\n"


# --- create ----------------------------------------------------------------------------------


def test_create_body_split() -> None:
    assert split_body("dir/a.py\nline 1\nline 2") == ("dir/a.py", "line 1\nline 2")
    assert split_body("a.py\nx\n") == ("a.py", "x\n")
    assert split_body("a.py") == ("a.py", "")
    assert split_body("\ncontent") == ("", "content")


@pytest.mark.parametrize(("content", "lines"), [("", 1), ("x", 1), ("x\n", 2), ("x\ny", 2), ("x\ny\n", 3)])
def test_create_line_count(content: str, lines: int) -> None:
    assert count_lines(content) == lines


def test_create_success_message() -> None:
    assert success_message("src/new.py", "a\nb\n") == "File created successfully at: src/new.py (3 lines).\n"


# --- submit ----------------------------------------------------------------------------------


def test_submit_checks() -> None:
    assert check_patch("p.diff", "") == "Failed to submit p.diff. It is an empty file."
    assert check_patch("p.diff", " \n\t\n") == "Failed to submit p.diff. It is an empty file."
    assert (
        check_patch("p.diff", "--- a/x\n+++ b/x\n") == "Failed to submit p.diff. It is not a valid diff file."
    )
    assert (
        check_patch("p.diff", "\ndiff --git a/x b/x\n")
        == "Failed to submit p.diff. It is not a valid diff file."
    )
    assert check_patch("p.diff", "diff --git a/x b/x\n") is None


# --- bash ------------------------------------------------------------------------------------


def result(**flags: bool) -> CommandResult:
    return CommandResult(output="partial", exit_code=None, duration_s=1.0, **flags)


def test_bash_session_failure_messages() -> None:
    assert session_failure_message(CommandResult(output="x\n", exit_code=0, duration_s=0.1)) is None
    assert session_failure_message(result(timed_out=True)) == (
        "The current session has terminated due to timeout. A fresh session has started with the "
        "current working directory reset to default."
    )
    assert session_failure_message(result(overflowed=True)) == (
        "The current session has terminated because your previous command produced too much output. "
        "A fresh session has started with the current working directory reset to default."
    )
    assert session_failure_message(result(session_died=True)) == (
        "The current session has terminated unexpectedly. A fresh session has started with the "
        "current working directory reset to default."
    )
