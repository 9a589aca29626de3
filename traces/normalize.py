"""Normalisers: named rewrites that blank out output which changes from run to run by nature.

`agent replay --verify` re-runs an episode and compares each observation with the recorded one. Some
output can never repeat byte for byte (a test runner's timing, a random temporary directory, an
object's address), and a verification that fails on those says nothing about the repository or the
runner. Each normaliser is one compiled regular expression and the text that replaces what it
matches; both sides of a comparison go through the same normalisers, so only the volatile part is
hidden and everything around it is still compared.

The defaults (`DEFAULT`, applied in this order; `--strict` applies none of them):

``pytest_duration``
    The duration in pytest's summary line: ``5 passed in 0.02s`` and ``1 failed, 4 passed, 2 warnings
    in 1.31s (0:00:01)`` become ``... in <duration>``. Only a duration preceded by one of pytest's
    outcome words is touched, so ``sleep in 3s`` elsewhere is kept.
``unittest_duration``
    unittest's ``Ran 3 tests in 0.001s`` becomes ``Ran 3 tests in <duration>``.
``shell_time``
    The lines of bash's ``time`` keyword, ``real 0m0.010s`` (and ``user``, ``sys``), keep their label
    and lose their value: ``real <duration>``.
``pytest_tmp_path``
    pytest's per-run base directory ``/tmp/pytest-of-root/pytest-3`` becomes
    ``/tmp/pytest-of-<user>/pytest-<n>`` (the counter grows with every run in the same sandbox).
``temp_path``
    A random name made by Python's ``tempfile`` (``/tmp/tmpa1b2c3d4``) or by ``mktemp``
    (``/tmp/tmp.Ab12Cd34Ef``) under ``/tmp`` or ``/var/tmp`` becomes ``/tmp/<tmp>`` (``/var/tmp/<tmp>``); the rest of
    the path after it is kept.
``hex_address``
    An address such as ``0x7f3a2c1b4d60`` (8 to 16 hex digits after ``0x``: object reprs, core
    dumps) becomes ``0x<addr>``. Shorter constants such as ``0xff`` are kept.
``iso_timestamp``
    An ISO 8601 date and time (``2024-05-01T12:34:56.789+00:00``, ``2024-05-01 12:34:56``, ``Z``
    or an offset optional) becomes ``<timestamp>``.
``iso_date``
    A remaining ISO date (``2024-05-01``) becomes ``<date>``.
``shell_line``
    The line number in bash's own error messages, ``/bin/bash: line 61: foo: command not found``,
    becomes ``line <n>`` (also where output without a final newline runs into it). The persistent
    session counts every line it has read, the runner's own commands and file writes included, and
    backends write files differently (bubblewrap writes from the host, Docker through the session),
    so the figure says nothing about the repository.
``budget_tokens``
    The figure of the budget block's ``* Remaining tokens: 128856`` line becomes ``<n>``. It is
    the context size minus the recorded token counts (replayed unchanged) minus the size of this very
    message, so it can only move when the message's length moves, and that length is compared through
    the message itself: without this normaliser a pytest run that took 0.1s instead of 0.12s would
    diverge in the budget line although the duration was normalised away.

Users add their own with `custom(pattern)` (``--normalize REGEX`` on the command line): the whole
match becomes ``<normalized>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict


class NormalizerError(ValueError):
    """A user-supplied pattern is not a valid regular expression; the message quotes it."""


class Normalizer(BaseModel):
    """One rewrite: every match of `pattern` becomes `replacement` (a `re.sub` template)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    pattern: re.Pattern[str]
    replacement: str
    description: str = ""

    def apply(self, text: str) -> str:
        return self.pattern.sub(self.replacement, text)


def _make(name: str, regex: str, replacement: str, description: str, flags: int = 0) -> Normalizer:
    return Normalizer(name=name, pattern=re.compile(regex, flags), replacement=replacement,
                      description=description)


_PYTEST_OUTCOMES = r"(?:passed|failed|skipped|deselected|xfailed|xpassed|warnings?|errors?|no tests ran)"

PYTEST_DURATION = _make(
    "pytest_duration",
    rf"(\b{_PYTEST_OUTCOMES} in )\d+(?:\.\d+)?s(?: \(\d+:\d\d:\d\d\))?",
    r"\g<1><duration>",
    "pytest's summary duration",
)
UNITTEST_DURATION = _make(
    "unittest_duration",
    r"(\bRan \d+ tests? in )\d+(?:\.\d+)?s",
    r"\g<1><duration>",
    "unittest's 'Ran N tests in Xs'",
)
SHELL_TIME = _make(
    "shell_time",
    r"^((?:real|user|sys)[ \t]+)\d+m\d+(?:[.,]\d+)?s",
    r"\g<1><duration>",
    "the lines printed by bash's `time`",
    re.MULTILINE,
)
PYTEST_TMP_PATH = _make(
    "pytest_tmp_path",
    r"/tmp/pytest-of-[^/\s]+/pytest-\d+",
    "/tmp/pytest-of-<user>/pytest-<n>",
    "pytest's numbered base temporary directory",
)
TEMP_PATH = _make(
    "temp_path",
    r"(/(?:var/)?tmp/)tmp(?:[a-z0-9_]{8}|\.[A-Za-z0-9]{10})(?![A-Za-z0-9_])",
    r"\g<1><tmp>",
    "random names from Python's tempfile and from mktemp",
)
HEX_ADDRESS = _make(
    "hex_address",
    r"\b0x[0-9a-fA-F]{8,16}\b",
    "0x<addr>",
    "memory addresses",
)
ISO_TIMESTAMP = _make(
    "iso_timestamp",
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b",
    "<timestamp>",
    "ISO 8601 date and time",
)
ISO_DATE = _make(
    "iso_date",
    r"\b\d{4}-\d{2}-\d{2}\b",
    "<date>",
    "ISO 8601 dates",
)

SHELL_LINE = _make(
    "shell_line",
    r"((?:/usr)?(?:/bin/)?\bbash: line )\d+:",
    r"\g<1><n>:",
    "the session's cumulative line number in bash's error messages",
)
BUDGET_TOKENS = _make(
    "budget_tokens",
    r"^(\* Remaining tokens: )-?\d+$",
    r"\g<1><n>",
    "the budget block's remaining tokens, which follow the message's own length",
    re.MULTILINE,
)

DEFAULT: tuple[Normalizer, ...] = (
    PYTEST_DURATION, UNITTEST_DURATION, SHELL_TIME, PYTEST_TMP_PATH, TEMP_PATH, HEX_ADDRESS,
    ISO_TIMESTAMP, ISO_DATE, SHELL_LINE, BUDGET_TOKENS,
)
STRICT: tuple[Normalizer, ...] = ()
BY_NAME: dict[str, Normalizer] = {n.name: n for n in DEFAULT}


def custom(pattern: str, index: int = 1) -> Normalizer:
    """A user's normaliser: every match of `pattern` becomes `<normalized>`."""
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as error:
        raise NormalizerError(f"--normalize {pattern!r} is not a valid regular expression: {error}") from None
    if compiled.match(""):
        raise NormalizerError(f"--normalize {pattern!r} matches the empty string; it would rewrite everything")
    return Normalizer(name=f"custom{index}", pattern=compiled, replacement="<normalized>",
                      description=f"user pattern {pattern!r}")


def select(strict: bool = False, patterns: Iterable[str] = ()) -> tuple[Normalizer, ...]:
    """The normalisers a command line asks for: the defaults (none if `strict`) plus the user's."""
    base = STRICT if strict else DEFAULT
    return base + tuple(custom(p, i) for i, p in enumerate(patterns, start=1))


def normalize(text: str, normalizers: Sequence[Normalizer] = DEFAULT) -> str:
    """`text` with every normaliser applied in order."""
    for normalizer in normalizers:
        text = normalizer.apply(text)
    return text
