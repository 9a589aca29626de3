"""The trajectory format: schema, append-only recorder, normalisers; bundled example trajectories.

The bottom of the stack: nothing here imports the rest of the project (see docs/trajectory-format.md).
"""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
