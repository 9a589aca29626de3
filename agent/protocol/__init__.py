"""CWM's side of the conversation, byte for byte (docs/cwm-protocol.md): the prompts and limits
(`prompts`), the chat layout rendered to prompt text with the `Message` type (`render`), and the
reply grammar for constrained decoding (`constrained`). The tools' own syntax and messages live in
the tools package below.
"""

