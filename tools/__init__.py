"""The model's tools: the call syntax and tool specifications (`syntax`), the reply parser
(`parser`), each tool's semantics in the sandbox (`bash`, `edit`, `create`, `submit`, dispatched by
`registry`), and every message they return (`messages`), verbatim as CWM was trained on them.
"""
