"""What every converter shares: its one error, and the key our own fields go under in foreign formats."""

from __future__ import annotations

# Where a foreign format is open-ended (SWE-agent's info, CWM's info dicts), what it has no field for
# goes under this key, so a round trip loses nothing.
CWM_RUNNER_KEY = "cwm_runner"


class ConvertError(ValueError):
    """A file cannot be converted; the message names the file, line and field."""
