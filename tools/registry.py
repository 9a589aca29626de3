"""Tool names to tool functions, and which names the system prompt announces.

The announced set must agree with `agent.protocol.prompts.system_prompt(plugins=...)`: with plugins the
model is told about bash, edit, create and submit; without, about bash and submit only. The parser
is given the announced names, so a call to a tool the model was not told about is a
NoSuchToolError, exactly as an unknown name is.
"""

from __future__ import annotations

from sandbox.base import Sandbox
from tools.base import Tool, ToolResult
from tools.bash import bash
from tools.create import create
from tools.edit import edit
from tools.submit import submit
from tools.syntax import DEFAULT_TOOL_NAMES

TOOLS: dict[str, Tool] = {"bash": bash, "edit": edit, "create": create, "submit": submit}

# In the order the system prompt lists them.
ANNOUNCED_TOOLS: tuple[str, ...] = DEFAULT_TOOL_NAMES
ANNOUNCED_TOOLS_NO_PLUGINS: tuple[str, ...] = ("bash", "submit")


def announced_tools(plugins: bool = True) -> tuple[str, ...]:
    """Names announced by `system_prompt(plugins=plugins)`, to hand to `tools.parser.parse_reply`."""
    return ANNOUNCED_TOOLS if plugins else ANNOUNCED_TOOLS_NO_PLUGINS


def run_tool(name: str, sandbox: Sandbox, body: str) -> ToolResult:
    """Run the named tool; the parser has already checked the name, so a KeyError is a bug."""
    return TOOLS[name](sandbox, body)
