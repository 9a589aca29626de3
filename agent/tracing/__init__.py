"""World-model traces: real Python execution traces in CWM's frame format, and a neural debugger.

- `tracer`: the in-sandbox tracer (one stdlib-only file, run by the sandbox's python3)
- `frames`: trace records, JSON Lines, CWM prompt text, parsing predicted frames
- `run`: running the tracer in a sandbox (function call, script, one pytest test)
- `debug`: the neural debugger and its agreement reports

The format and every rule of it: docs/trace-format.md.
"""
