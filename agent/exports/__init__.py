"""Converters: our trajectories out to SWE-bench, SWE-agent and CWM's formats, and CWM's back in.

Converters: our trajectories out to SWE-bench, SWE-agent and CWM's formats, and CWM's back in.

Exports exist so that our runs can be graded and browsed by other tools; the CWM import exists so
that trajectories released in CWM's own format can be viewed (`agent view`) and replayed
(`agent replay --verify --repo ... --image ...`) here. Every foreign shape is a pydantic model, so a
malformed file fails at the boundary with the field that is wrong.

They live in agent/ rather than in traces/ (the format itself) because converting a reply needs the
protocol above the format: the tool-call parser splits a reply into thought and action, and CWM's
dumps hold rendered chat text. One module per foreign format; `files` is what the command line calls.
"""
