"""Every message the tools and the reply parser send back to the model, verbatim.

The model was trained on these exact bytes (docs/cwm-protocol.md, sections 4
and 5); each is pinned by tests/agent/protocol/test_prompts.py and spelled nowhere else.

Conventions fixed here (the protocol leaves them open):

* Tool messages are stored WITHOUT the trailing newline that the edit and create tools add (those
  tools print their message as a line; `tools.edit` / `tools.create` append the `\\n`). Submit
  failures, the submission feedback and the session-failure messages have none.
* The edit parse-failure message joins its first sentence and the edit template with a blank line
  (`"\\n\\n"`), which is how the trained harness laid it out; the template is the `<tool: edit>`
  block of the system prompt without its description line.
"""

from __future__ import annotations

from tools.syntax import EDIT_TEMPLATE

# Parser errors. Each is the whole text of a user message.

THINK_END_ERROR = "FormatError: Expected exactly one thinking end token, got {n}"
MULTIPLE_CALLS_ERROR = (
    "FormatError: Expected one tool call, but found {n}: {names}. "
    "Ensure only one <tool:...></tool> block is present in the response."
)
TAG_MISMATCH_ERROR = (
    "FormatError: Mismatch in tool tag counts: found {n} tool calls via regex, "
    "but counted {o} opening tags and {c} closing tags."
)
NO_CALL_ERROR = "FormatError: No tool calls found"
EMPTY_ARGS_ERROR = (
    "FormatError: Tool '{name}' requires non-empty arguments, but received empty or whitespace-only input."
)
NO_SUCH_TOOL_ERROR = "NoSuchToolError: Tool '{name}' not found."

# Session failures (bash).

SESSION_TIMEOUT_MESSAGE = (
    "The current session has terminated due to timeout. "
    "A fresh session has started with the current working directory reset to default."
)
SESSION_OVERFLOW_MESSAGE = (
    "The current session has terminated because your previous command produced too much output. "
    "A fresh session has started with the current working directory reset to default."
)
SESSION_DIED_MESSAGE = (
    "The current session has terminated unexpectedly. "
    "A fresh session has started with the current working directory reset to default."
)

# edit (messages without the printed line's trailing newline; see the module docstring).
EDIT_PARSE_ERROR = (
    "Failed to parse the edit tool call. Make sure it has the following format:\n\n" + EDIT_TEMPLATE
)
EDIT_MULTIPLE_BLOCKS = "Only one search/replace block is allowed. Got: {n}."
EDIT_MISSING_PATH = "The path {path} does not exist. Please provide a valid path."
EDIT_NO_MATCH = "No replacement was performed, the search lines did not appear verbatim in {path}."
EDIT_INDENTATION_HINT = (
    " The search lines must exactly match one or more consecutive lines from the file, "
    "with indentations preserved."
)
EDIT_MULTIPLE_MATCHES = (
    "No replacement was performed. Multiple occurrences of the search text in lines {linenums} "
    "of {path}. Please ensure it is unique."
)
EDIT_SUCCESS = (
    "File {path} has been successfully updated at line {line} and now contains {n} lines. "
    "The surrounding lines after the edit are shown below:\n{snippet}\n"
    "Review the changes and make sure they are as expected."
)
EDIT_SNIPPET_CONTEXT_LINES = 8

# create
CREATE_EXISTS = "{path} already exists. Cannot create a new file at an existing path."
CREATE_EMPTY_PATH = "Path is empty. Please provide a valid path."
CREATE_MISSING_PARENT = "File creation failed. The parent directory {parent_dir} does not exist."
CREATE_SUCCESS = "File created successfully at: {path} ({n} lines)."

# submit
SUBMIT_UNREADABLE = "Failed to submit {path}. Make sure it exists and is readable."
SUBMIT_EMPTY = "Failed to submit {path}. It is an empty file."
SUBMIT_NOT_DIFF = "Failed to submit {path}. It is not a valid diff file."
SUBMIT_SUCCESS = """\
The following patch content is marked as your final submission:

<submission>
{patch}
</submission>

Review the patch content and ensure it correctly resolves the issue. If necessary, you can \
continue refining the patch and submit an updated version."""


def submission_feedback(patch: str) -> str:
    """Feedback for a successful submit; the patch goes in exactly as read (not stripped)."""
    return SUBMIT_SUCCESS.format(patch=patch)
