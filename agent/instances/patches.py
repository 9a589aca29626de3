"""Reversing a unified diff as text: SWE-smith's `patch` column CREATES the bug, so its gold fix is the
same diff the other way round (SWE-smith's own harness applies it with `git apply --reverse`).

The gold fix is needed as a diff, not as an apply option: `agent eval --gold`, the voting among
samples and every export treat `Instance.patch` as the fix. Reversing here keeps that one meaning,
and a reversed diff applies with plain `git apply` at the bug commit.

Git's extended headers are reversed too (new/deleted file modes, mode changes, renames, the blob ids of
the `index` line); binary patches cannot be reversed as text and are refused.
"""

from __future__ import annotations

import re

_HUNK = re.compile(r"^@@ -(\d+(?:,\d+)?) \+(\d+(?:,\d+)?) @@(.*)$", re.DOTALL)
_INDEX = re.compile(r"^index ([0-9a-f]+)\.\.([0-9a-f]+)(.*)$", re.DOTALL)
_GIT_HEADER = re.compile(r"^diff --git a/(.*) b/(.*)$")
_SWAPPED_PREFIXES = (("new file mode ", "deleted file mode "), ("old mode ", "new mode "),
                     ("rename from ", "rename to "), ("copy from ", "copy to "))


class PatchError(ValueError):
    """A diff that cannot be reversed as text; the message says why."""


def _swap_prefix(line: str) -> str:
    for first, second in _SWAPPED_PREFIXES:
        if line.startswith(first):
            return second + line[len(first):]
        if line.startswith(second):
            return first + line[len(second):]
    return line


def _side(path: str, prefix: str) -> str:
    """`a/x` <-> `b/x` (and /dev/null stays), keeping anything after the path (a tab and a date)."""
    if path.startswith(("a/", "b/")):
        return prefix + path[2:]
    return path


def _header(line: str) -> str:
    """One line of a file's header, reversed."""
    git = _GIT_HEADER.match(line.rstrip("\n"))
    if git:
        return f"diff --git a/{git.group(2)} b/{git.group(1)}" + ("\n" if line.endswith("\n") else "")
    index = _INDEX.match(line)
    if index:
        return f"index {index.group(2)}..{index.group(1)}{index.group(3)}"
    return _swap_prefix(line)


def _pairs_in_order(out: list[str]) -> list[str]:
    """Swapped pairs back in git's order (`old mode` before `new mode`, `rename from` before `rename to`)."""
    for i in range(len(out) - 1):
        for first, second in _SWAPPED_PREFIXES[1:]:
            if out[i].startswith(second) and out[i + 1].startswith(first):
                out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _flush(block: list[list[str]], out: list[str]) -> None:
    """A run of changed lines, signs swapped, removals first (each keeps its `\\ No newline` marker)."""
    removed = [["-" + group[0][1:], *group[1:]] for group in block if group[0].startswith("+")]
    added = [["+" + group[0][1:], *group[1:]] for group in block if group[0].startswith("-")]
    for group in removed + added:
        out.extend(group)
    block.clear()


def _counts(spec: str) -> int:
    """The line count of a hunk range (`12,3` -> 3, `12` -> 1)."""
    return int(spec.split(",")[1]) if "," in spec else 1


def invert_patch(text: str) -> str:
    """The diff that undoes `text`: applying it to the result of `text` gives back the original.

    Hunks are walked by their line counts, so a removed line that reads `-- x` is not taken for a header.
    """
    if "GIT binary patch" in text or re.search(r"^Binary files .* differ$", text, re.MULTILINE):
        raise PatchError("it holds binary changes, which cannot be reversed as text")
    out: list[str] = []
    block: list[list[str]] = []  # changed lines of the current hunk, each with its trailing markers
    lines = text.splitlines(keepends=True)
    old_left = new_left = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        if old_left or new_left or line.startswith("\\"):
            kind = line[:1] if line[:1] in "+-\\" else " "
            if kind == "\\":  # `\ No newline at end of file` belongs to the line before it
                (block[-1] if block else out).append(line)
            elif kind == " ":
                _flush(block, out)
                out.append(line)
            else:
                block.append([line])
            old_left = max(0, old_left - (kind in " -"))
            new_left = max(0, new_left - (kind in " +"))
        else:
            _flush(block, out)
            hunk = _HUNK.match(line)
            if hunk:
                out.append(f"@@ -{hunk.group(2)} +{hunk.group(1)} @@{hunk.group(3)}")
                old_left, new_left = _counts(hunk.group(1)), _counts(hunk.group(2))
            elif line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ "):
                out += ["--- " + _side(lines[index + 1][4:], "a/"), "+++ " + _side(line[4:], "b/")]
                index += 1
            else:
                out.append(_header(line))
        index += 1
    _flush(block, out)
    return "".join(_pairs_in_order(out))
