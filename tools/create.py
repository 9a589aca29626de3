"""The create tool: write a new file, refusing to overwrite, as the trained harness did.

Body: the path on the first line, the content after it, written exactly as given (no newline is
added; a body of one line creates an empty file). Messages are those of
docs/cwm-protocol.md, section 5, printed as lines (ending with a newline).

Choices where the protocol is silent:
* `{n}` counts lines like the edit tool: newline characters in the content plus one (so an empty
  file is "1 lines" and "a\\n" is 2), which is what the trained script printed.
* `{parent_dir}` is the absolute, normalised parent directory (resolved against the session's cwd).
* The path is taken exactly as written; a path whose parent is a file, not a directory, is reported
  as a missing parent directory.
* New files get mode 0644.
"""

from __future__ import annotations

import posixpath
import time

from sandbox.base import Sandbox
from tools import messages
from tools.base import ToolResult, encode_text, file_result, printed

NEW_FILE_MODE = 0o644


def split_body(body: str) -> tuple[str, str]:
    """(path, content): the first line, and everything after its newline (empty if none)."""
    path, _, content = body.partition("\n")
    return path, content


def count_lines(content: str) -> int:
    """The `{n}` of the success message (same rule as edit's line count)."""
    return content.count("\n") + 1


def success_message(path: str, content: str) -> str:
    """The printed success line."""
    return printed(messages.CREATE_SUCCESS.format(path=path, n=count_lines(content)))


def _exists(sandbox: Sandbox, absolute: str) -> bool:
    """Whether anything (file or directory) is at `absolute`, asked through the sandbox's files."""
    try:
        sandbox.read_file(absolute)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # a directory, or a file we may not read: something is there
        return True
    return True


def create(sandbox: Sandbox, body: str) -> ToolResult:
    """The create tool; relative paths resolve against the session's current directory."""
    started = time.monotonic()
    path, content = split_body(body)
    if path == "":
        return file_result(printed(messages.CREATE_EMPTY_PATH), False, started)
    absolute = posixpath.normpath(sandbox.resolve(path))
    if _exists(sandbox, absolute):
        return file_result(printed(messages.CREATE_EXISTS.format(path=path)), False, started)
    parent = posixpath.dirname(absolute)
    missing_parent = printed(messages.CREATE_MISSING_PARENT.format(parent_dir=parent))
    try:
        sandbox.write_file(absolute, encode_text(content), mode=NEW_FILE_MODE)
    except (FileNotFoundError, NotADirectoryError):
        return file_result(missing_parent, False, started)
    except OSError as error:  # read-only filesystem, bad name, full disk: tell the model, keep going
        return file_result(printed(f"File creation failed. {error.strerror or error}"), False, started)
    return file_result(success_message(path, content), True, started)
