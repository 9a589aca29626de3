"""`make_model(spec)`: the one place a `--model` string becomes a Model.

Spec syntax:

    http(s)://HOST:PORT[/v1]          CWM over raw /v1/completions (the default; exact prompt)
    completions:http(s)://...         the same, spelled out
    chat:http(s)://...                an OpenAI-compatible /v1/chat/completions endpoint
    replay:PATH                       the replies recorded in a trajectory file
    URL1,URL2,...                     replicas of one model (agent.models.replicas); a prefix applies
                                      to all (`chat:URL1,URL2`), and every entry must be of one kind

`kind="completions" | "chat" | "replay"` chooses the client for a bare URL or path instead of a prefix
(a prefix and a different `kind` together are an error). Keyword options go to the client and are
validated there (see `ServerOptions`, `ChatOptions`); options whose value is None are dropped, so a
command line can pass its unset flags through unchanged. Every failure is a ModelError of one line.
"""

from __future__ import annotations

from typing import Any

from agent.models.base import Model, ModelError

KINDS = ("completions", "chat", "replay")
# Where `agent serve` listens by default: the spec every command uses when none is given.
DEFAULT_MODEL_URL = "http://127.0.0.1:8000/v1"
USAGE = (
    "use http(s)://HOST:PORT/v1 (CWM over raw completions), chat:URL (OpenAI-compatible chat) "
    "or replay:PATH (a recorded trajectory)"
)


def parse_spec(spec: str, kind: str | None = None) -> tuple[str, str]:
    """Split a spec into (kind, target); raise ModelError naming the accepted forms."""
    text = spec.strip()
    if kind is not None and kind not in KINDS:
        raise ModelError(f"unknown model kind '{kind}'; choose one of {', '.join(KINDS)}")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in KINDS:
        if kind is not None and kind != prefix:
            raise ModelError(f"model spec '{spec}' says {prefix} but kind={kind} was asked for; drop one")
        kind, text = prefix, rest.strip()
    if not text:
        raise ModelError(f"empty model spec '{spec}'; {USAGE}")
    is_url = text.startswith(("http://", "https://"))
    if kind is None:
        if not is_url:
            raise ModelError(f"cannot understand model spec '{spec}'; {USAGE}")
        kind = "completions"
    if kind in ("completions", "chat") and not is_url:
        raise ModelError(f"model spec '{spec}' needs an http(s):// URL for a {kind} model; {USAGE}")
    return kind, text


def parse_replicas(spec: str, kind: str | None = None) -> tuple[str, list[str]]:
    """Split a spec into (kind, targets): one target, or several for a comma list of replicas.

    A leading kind prefix applies to every entry; entries may also carry their own, but all must name
    the same kind (replicas serve one model the same way). A replay spec is one path.
    """
    text = spec.strip()
    prefix, sep, rest = text.partition(":")
    if "," not in text:
        found, target = parse_spec(text, kind)
        return found, [target]
    if sep and prefix in KINDS:
        if kind is not None and kind != prefix:
            raise ModelError(f"model spec '{spec}' says {prefix} but kind={kind} was asked for; drop one")
        kind, text = prefix, rest
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise ModelError(f"model spec '{spec}' has an empty entry in its comma list of replicas; {USAGE}")
    parsed = [parse_spec(entry, kind) for entry in entries]
    kinds = sorted({found for found, _ in parsed})
    if len(kinds) > 1:
        raise ModelError(f"model spec '{spec}' mixes kinds ({', '.join(kinds)}); replicas must all be one kind")
    if kinds[0] == "replay":
        raise ModelError(f"model spec '{spec}' lists several replay files; a replay model reads one")
    return kinds[0], [target for _, target in parsed]


def same_model(first: str, second: str) -> bool:
    """Do two specs name one deployment? Equal specs do, and so do server lists of one kind that share a
    server: adding or removing a replica, or reordering them, changes where episodes run, not what they
    produce (a resumed batch is the same run)."""
    if first == second:
        return True
    from agent.models.http import normalize_base_url

    try:
        (kind, mine), (other_kind, theirs) = parse_replicas(first), parse_replicas(second)
        if kind != other_kind or kind not in ("completions", "chat"):
            return False
        return bool({normalize_base_url(t)[0] for t in mine} & {normalize_base_url(t)[0] for t in theirs})
    except ModelError:
        return False


def make_model(spec: str, *, kind: str | None = None, affinity: str | None = None, **options: Any) -> Model:
    """Build the model client a spec names (no network traffic until first use).

    `affinity` (an episode's identity, such as instance and sample) spreads the episodes of several
    processes over replicas alike; a single server ignores it.
    """
    kind, targets = parse_replicas(spec, kind)
    given = {name: value for name, value in options.items() if value is not None}
    if len(targets) > 1:
        from agent.models.replicas import ReplicaSet

        return ReplicaSet(kind, targets, affinity=affinity, **given)
    target = targets[0]
    if kind == "replay":
        from agent.models.replay import ReplayModel

        if given:
            raise ModelError(f"a replay model takes no options (got {', '.join(sorted(given))})")
        return ReplayModel(target)
    if kind == "chat":
        from agent.models.chat import ChatModel

        return ChatModel(target, **given)
    from agent.models.completions import CompletionsModel

    return CompletionsModel(target, **given)
