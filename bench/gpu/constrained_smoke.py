"""On the GPU machine: sample CWM replies under the reply regex and check the runner's parser takes each.

Why: it is the end-to-end proof for a tiny random-weight model served with a text tokenizer
(bench/gpu/mktokenizer.py): vLLM loads that tokenizer, xgrammar compiles `agent.protocol.constrained`'s regex
against it, the rendered CWM prompt tokenizes with the right special ids, and what comes back parses
to exactly one tool call. Random weights never stop on their own, so the default is the length-capped
regex; `--exact` uses the full one (replies may then end at --max-tokens). Standard library plus the
project's own modules (pydantic is the only dependency, and vLLM's wheels include it).

    PYTHONPATH=/tmp/site:. python3 bench/gpu/constrained_smoke.py --url http://127.0.0.1:8001/v1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, wherever this runs from

from agent.protocol.constrained import bounded_reply_regex, reply_regex  # noqa: E402
from agent.protocol.prompts import issue_prompt, system_prompt  # noqa: E402
from agent.protocol.render import (
    Message,  # noqa: E402
    render_prompt,  # noqa: E402
)
from tools.parser import parse_reply  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ISSUE = "`add(a, b)` in calc.py returns `a - b`; it should return the sum."


def call(url: str, body: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with OPENER.open(request, timeout=timeout_s) as response:
        return json.load(response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="served model name (default: the first in /v1/models)")
    parser.add_argument("-n", type=int, default=4, help="replies to sample")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--exact", action="store_true", help="the full regex instead of the length-capped one")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    model = args.model or call(base + "/models", None, args.timeout)["data"][0]["id"]
    prompt = render_prompt([Message(role="system", content=system_prompt()),
                            Message(role="user", content=issue_prompt(ISSUE))])
    regex = reply_regex() if args.exact else bounded_reply_regex()
    parsed_ok = 0
    for index in range(args.n):
        body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 1.0,
                "top_p": 0.95, "seed": index, "structured_outputs": {"regex": regex}}
        started = time.perf_counter()
        answer = call(base + "/completions", body, args.timeout)
        seconds = time.perf_counter() - started
        choice, usage = answer["choices"][0], answer.get("usage") or {}
        parsed = parse_reply(choice["text"])
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        verdict = f"call {parsed.call.name}" if parsed.call else f"NOT PARSED: {parsed.error}"
        print(f"reply {index}: {verdict}; finish {choice.get('finish_reason')}, {seconds:.2f} s, "
              f"prompt {usage.get('prompt_tokens')} tokens ({cached} cached), "
              f"{usage.get('completion_tokens')} generated")
        print(f"    {choice['text'][:160]!r}")
        parsed_ok += parsed.call is not None
    print(f"{parsed_ok}/{args.n} replies parsed to one tool call ({'exact' if args.exact else 'bounded'} regex)")
    return 0 if parsed_ok == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
