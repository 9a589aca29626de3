"""The edit tool: replace one unique run of whole lines in a file, reporting as the trained harness did.

Body: the path on the first line, then one `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` block.
The matching rules and every message are those of docs/cwm-protocol.md, section 5; the
pure part (`parse_edit`, `replace_unique`, `apply_edit`) is separate from the sandbox wrapper
(`edit`) so that the rules are tested without a container.

Choices where the protocol is silent:
* The path is the first line exactly as written (not stripped); text between it and the block is
  ignored, as is anything after `>>>>>>> REPLACE`.
* Files are matched and rewritten byte for byte: no newline translation (a CRLF file keeps its
  `\\r`), undecodable bytes round-trip unchanged (see `tools.base.decode_text`).
* A path that exists but cannot be read as a file (a directory, say) gets a message of its own;
  the trained script would have crashed with a traceback there.
* The file's permission bits are kept (an executable script stays executable): `write_file` keeps
  an existing file's mode.
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel

from sandbox.base import Sandbox
from tools import messages
from tools.base import ToolResult, decode_text, displayable, encode_text, file_result, printed

BLOCK_RE = re.compile(r"^<<<<<<< SEARCH\n(.*?)\n=======\n(.*?)\n>>>>>>> REPLACE", re.DOTALL | re.MULTILINE)
UNREADABLE_PATH = "The path {path} could not be read as a file ({reason}). Please provide a valid path."


class EditRequest(BaseModel):
    """A parsed edit call."""

    path: str
    search: str
    replace: str


class EditOutcome(BaseModel):
    """What a replacement attempt gives: the new file text on success, and the message to print."""

    new_text: str | None
    message: str


def parse_edit(body: str) -> EditRequest | str:
    """The request, or the printed parse-failure / too-many-blocks message."""
    path, _, rest = body.partition("\n")
    blocks = BLOCK_RE.findall(rest)
    if not blocks:
        return printed(messages.EDIT_PARSE_ERROR)
    if len(blocks) > 1:
        return printed(messages.EDIT_MULTIPLE_BLOCKS.format(n=len(blocks)))
    search, replace = blocks[0]
    return EditRequest(path=path, search=search, replace=replace)


def _line_starts(haystack: str, needle: str) -> list[int]:
    """Offsets of every occurrence of `needle`, overlapping ones included."""
    found: list[int] = []
    at = haystack.find(needle)
    while at != -1:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found


def _line_numbers(haystack: str, starts: list[int]) -> list[int]:
    """1-based line of each match: newlines before the offset in the prefixed file, plus one.

    Counted incrementally: an empty search matches every line, and a quadratic count would stall.
    """
    numbers: list[int] = []
    line, previous = 1, 0
    for start in starts:
        line += haystack.count("\n", previous, start)
        previous = start
        numbers.append(line)
    return numbers


def _snippet(text: str, line: int, replacement_lines: int) -> str:
    """Lines max(1, line-8) .. line+8+replacement_lines-1 of `text`, numbered like `cat -n`."""
    context = messages.EDIT_SNIPPET_CONTEXT_LINES
    first = max(1, line - context)
    last = line + context + replacement_lines - 1
    lines = text.split("\n")[first - 1 : last]
    return "\n".join(f"{number:6}\t{content}" for number, content in enumerate(lines, start=first))


def replace_unique(file_text: str, request: EditRequest) -> EditOutcome:
    """Replace the search lines if they occur exactly once; messages name the path as written.

    Matching is on "\\n" + file against "\\n" + search, so a match starts at a line start but may end
    mid-line; an occurrence at offset i of the prefixed file starts at file offset i.
    """
    path = request.path
    haystack, needle = "\n" + file_text, "\n" + request.search
    starts = _line_starts(haystack, needle)
    if not starts:
        message = messages.EDIT_NO_MATCH.format(path=path)
        first_search_line = request.search.split("\n", 1)[0]
        if first_search_line.lstrip() in file_text:
            message += messages.EDIT_INDENTATION_HINT
        return EditOutcome(new_text=None, message=printed(displayable(message)))
    line_numbers = _line_numbers(haystack, starts)
    if len(starts) > 1:
        message = messages.EDIT_MULTIPLE_MATCHES.format(linenums=line_numbers, path=path)
        return EditOutcome(new_text=None, message=printed(displayable(message)))
    start, line = starts[0], line_numbers[0]
    new_text = file_text[:start] + request.replace + file_text[start + len(request.search) :]
    message = messages.EDIT_SUCCESS.format(
        path=path,
        line=line,
        n=new_text.count("\n") + 1,
        snippet=_snippet(new_text, line, request.replace.count("\n") + 1),
    )
    return EditOutcome(new_text=new_text, message=printed(displayable(message)))


def apply_edit(file_text: str, body_after_path: str, path: str = "") -> tuple[str | None, str]:
    """Pure edit: (new file text or None, printed message) for the body minus its path line.

    `path` is only used in messages (shown as the model wrote it).
    """
    request = parse_edit(f"{path}\n{body_after_path}")
    if isinstance(request, str):
        return None, request
    outcome = replace_unique(file_text, request)
    return outcome.new_text, outcome.message


def edit(sandbox: Sandbox, body: str) -> ToolResult:
    """The edit tool: parse, read through the sandbox (path relative to its cwd), replace, write."""
    started = time.monotonic()
    request = parse_edit(body)
    if isinstance(request, str):
        return file_result(request, False, started)
    path = request.path
    missing = printed(messages.EDIT_MISSING_PATH.format(path=path))
    if path == "":
        return file_result(missing, False, started)
    absolute = sandbox.resolve(path)
    try:
        data = sandbox.read_file(absolute)
    except (FileNotFoundError, NotADirectoryError):
        return file_result(missing, False, started)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return file_result(printed(UNREADABLE_PATH.format(path=path, reason=reason)), False, started)
    outcome = replace_unique(decode_text(data), request)
    if outcome.new_text is None:
        return file_result(outcome.message, False, started)
    # No mode given: write_file keeps an existing file's permission bits.
    try:
        sandbox.write_file(absolute, encode_text(outcome.new_text))
    except OSError as error:  # read-only filesystem, full disk: tell the model, keep going
        return file_result(printed(f"The edit could not be written to {path}: {error.strerror or error}"),
                           False, started)
    return file_result(outcome.message, True, started)
