"""Named sets of `agent serve` options for a workload: `--preset agent` for many long CWM episodes.

Why presets: the settings that decide how many agent episodes one GPU serves (weights' and KV
cache's precision, how many sequences run at once, the prefill chunk) must be chosen together, from
measurements (docs/benchmarks.md, "Serving the agent workload"), and a team should not have to
rediscover them. A preset only fills the options a command line leaves out: `--preset agent
--kv-cache-dtype auto` keeps bf16 KV cache and takes the rest.

`agent`: FP8 linear layers (half the bytes per decoded token, measured 1.5x bf16's throughput at 64
sessions on one H200) and an FP8 KV cache (twice the tokens in the same room): an agent run is bound
by how many episodes' contexts stay cached, and on one H200 at 0.9 utilisation the two together
hold about 74 episodes of 16k tokens where bf16 holds about 25 (docs/benchmarks.md has the
arithmetic). At most 64 sequences at once: about what that cache holds, and a cap the size of the
load keeps CUDA-graph capture (and start-up) short. Prefill chunks of 8192 tokens, vLLM 0.26's own
default on 80 GB GPUs, written out so the preset means the same when a later vLLM changes its
default. The choice rests on that arithmetic and the FP8 measurements; bench/agent_load.py's GPU run,
which is to confirm it, had not run yet (docs/benchmarks.md says why).
"""

from __future__ import annotations

from typing import Any, Literal

PresetName = Literal["agent"]

PRESETS: dict[str, dict[str, Any]] = {
    "agent": {
        "quantization": "fp8",
        "kv_cache_dtype": "fp8",
        "max_num_seqs": 64,
        "max_num_batched_tokens": 8192,
    },
}


def fill_from_preset(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the named preset's settings added where no value (or None) was given."""
    name = values.get("preset")
    if name is None:
        return values
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    filled = dict(values)
    for field, setting in PRESETS[name].items():
        if filled.get(field) is None:
            filled[field] = setting
    return filled
