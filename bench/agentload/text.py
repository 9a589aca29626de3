"""Text for the episodes' issues, observations and replayed history, sized in the server's tokens.

Why Python sources: an agent's observations are mostly code, test output and listings, and the
stand-in tokenizer of the GPU machines (bench/gpu/mktokenizer.py) learned its merges from Python's
own standard library, so this text tokenizes as densely there as code does for CWM's tokenizer. Every
piece starts at a random offset, so no two episodes share more than the system prompt and the
templates (as two SWE-bench instances do); `<|` never appears, so no text forms a special token.

`round_trip_token_ids` answers a problem of random weights: a sampled token whose text does not
re-tokenize to itself (the stand-in tokenizer's filler entries print as `<|bpe_filler_N|>`, ten
tokens when read back) would make each reply grow the next prompt several times over. Restricting
sampling to tokens that print as plain text keeps a reply of N tokens about N tokens long in the
history, as a real model's reply is.
"""

from __future__ import annotations

import json
import random
import sysconfig
from collections.abc import Callable
from pathlib import Path

TokenCounter = Callable[[str], int]
POOL_BYTES = 4_000_000
CALIBRATION_CHARS = 20_000
FIT_ROUNDS = 3
FIT_TOLERANCE = 0.02  # relative: close enough to the drawn count


class TextPool:
    """A long string of source text to cut pieces from, with the server's characters per token."""

    def __init__(self, text: str) -> None:
        clean = text.replace("<|", "<!").replace("|>", "!>").replace("\r", "")
        if len(clean) < 1000:
            raise ValueError("the text pool needs at least 1000 characters")
        self.text = clean
        self.chars_per_token = 4.0

    @classmethod
    def from_folder(cls, folder: Path | None = None, max_bytes: int = POOL_BYTES) -> TextPool:
        """Python sources under `folder` (default: this interpreter's standard library), sorted."""
        root = folder or Path(sysconfig.get_paths()["stdlib"])
        parts: list[str] = []
        total = 0
        for path in sorted(root.rglob("*.py")):
            if "site-packages" in path.parts or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            parts.append(text)
            total += len(text)
            if total >= max_bytes:
                break
        return cls("\n".join(parts))

    def calibrate(self, count: TokenCounter) -> float:
        """Measure characters per token on a slice (one tokenizer call); later cuts start from it."""
        sample = self.text[:CALIBRATION_CHARS]
        self.chars_per_token = len(sample) / max(1, count(sample))
        return self.chars_per_token

    def cut(self, chars: int, rng: random.Random) -> str:
        """`chars` characters from a random offset (wrapping around the end)."""
        chars = max(1, min(chars, len(self.text)))
        start = rng.randrange(len(self.text))
        piece = self.text[start:start + chars]
        return piece if len(piece) == chars else piece + self.text[:chars - len(piece)]

    def sized(self, tokens: int, rng: random.Random, count: TokenCounter) -> str:
        """A piece of about `tokens` tokens: cut by the calibrated ratio, then corrected by counting."""
        text = self.cut(max(1, round(tokens * self.chars_per_token)), rng)
        for _ in range(FIT_ROUNDS):
            have = count(text)
            if abs(have - tokens) <= max(1, FIT_TOLERANCE * tokens):
                break
            if have > tokens:
                text = text[:max(1, round(len(text) * tokens / have))]
            else:
                extra = round((tokens - have) * len(text) / max(1, have)) or 1
                text += self.cut(extra, rng)
        return text


# vLLM refuses a request whose `allowed_token_ids` is longer ("Too many allowed token IDs: N. The max
# size is 1024"), and its engine dies of it (vLLM 0.26.0, measured on an H100 on 2026-12-06).
MAX_ALLOWED_TOKEN_IDS = 1024


def round_trip_token_ids(model_dir: Path) -> list[int]:
    """The first MAX_ALLOWED_TOKEN_IDS ids of the model folder's tokenizer that print as plain text and
    read back as text again: ASCII without control characters (newlines and tabs allowed) and without
    `<|` or `|>`. The lowest ids are the bytes and the earliest (most frequent) merges.

    Uses the `tokenizers` library (the GPU image has it) on tokenizer.json; special and filler
    entries are left out by the same rule, since both print as `<|...|>`.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    allowed = []
    for token_id in sorted(vocab.values()):
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if text and text.isascii() and "<|" not in text and "|>" not in text and \
                all(ch.isprintable() or ch in "\n\t" for ch in text):
            allowed.append(token_id)
            if len(allowed) == MAX_ALLOWED_TOKEN_IDS:
                break
    if not allowed:
        raise ValueError(f"no plain-text token in {model_dir}/tokenizer.json")
    return allowed
