"""The tools' call syntax: how a reply names a tool, and the specification of each tool.

The specifications are the tool blocks of CWM's system prompt, verbatim (docs/cwm-protocol.md,
section 2); the prompt assembles them (agent.protocol.prompts), the parser reads calls with the
pattern below (section 4). Each string is pinned by
tests/agent/protocol/test_prompts.py.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
TOOL_CALL_RE = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
OPENING_TAG = "<tool:"
CLOSING_TAG = "</tool>"
DEFAULT_TOOL_NAMES: tuple[str, ...] = ("bash", "edit", "create", "submit")

BASH_TOOL_SPEC = """\
<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any \
non-interactive bash command(s), either single or multi-line."""

# The edit call's shape; also the body of the edit parse-failure message.
EDIT_TEMPLATE = """\
<tool: edit>
[path]
<<<<<<< SEARCH
[search_lines]
=======
[replacement_lines]
>>>>>>> REPLACE
</tool>"""

EDIT_TOOL_SPEC = (
    EDIT_TEMPLATE
    + "\nReplaces [search_lines] from [path] with [replacement_lines], where [path] must exist and "
    "[search_lines] must uniquely and exactly match one or more consecutive lines from the original "
    "file, including indentations and whitespaces."
)

CREATE_TOOL_SPEC = """\
<tool: create>
[path]
[content]
</tool>
Creates a new file at [path] with [content], where [path] must not exist, but its parent \
directory must exist."""

SUBMIT_TOOL_SPEC = """\
<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the \
specific user request."""
