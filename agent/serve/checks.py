"""Checks `agent serve` runs before it starts vLLM, so a mistake costs seconds, not a 2-minute start-up.

Each failure is a `ServeError` whose message is one line that says what to do. Nothing here imports
vLLM or torch (they are the optional `serve` extra): vLLM's presence is asked of the import system,
GPUs are counted with `nvidia-smi` and `CUDA_VISIBLE_DEVICES`, and the model's size is estimated
from its `config.json`.

The fit estimate is deliberately rough: bf16 weights split over the tensor-parallel GPUs, plus the
KV cache one full-length sequence needs (sliding-window layers only keep their window), plus a fixed
allowance for activations and CUDA graphs. It only has to catch the hopeless cases (CWM 32B on one
80 GB GPU at 131072 tokens) without refusing the known-good ones; `--skip-preflight` overrides it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

GIB = 1024**3
MIB = 1024**2
BF16_BYTES = 2
# Per GPU, beyond weights and KV cache: activations at the batched-token budget, CUDA graphs, NCCL.
RUNTIME_RESERVE_BYTES = 2 * GIB
INSTALL_HINT = "install the serve extra: pip install 'cwm-runner[serve]'"


class ServeError(RuntimeError):
    """`agent serve` cannot go on; the message's first line says what to do, `log_tail` shows why."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class GpuInventory(BaseModel):
    """The GPUs vLLM would see, in the order it would use them; memory is empty when unknown."""

    count: int
    memory_bytes: list[int]
    source: str


# vLLM


def vllm_available(python: str) -> bool:
    """Whether `python` can import vLLM, asked without importing it (that takes seconds and a GPU)."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        return importlib.util.find_spec("vllm") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_vllm(python: str) -> None:
    if not vllm_available(python):
        raise ServeError(f"vLLM is not importable by {python}: {INSTALL_HINT}")


# GPUs


def _query_nvidia_smi(env: Mapping[str, str]) -> tuple[list[tuple[int, int]], str]:
    """(index, memory bytes) of every GPU the driver reports, and where that came from."""
    smi = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if smi is None:
        return [], "nvidia-smi not found on PATH"
    command = [smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=dict(env))
    except (OSError, subprocess.TimeoutExpired) as error:
        return [], f"nvidia-smi failed: {error}"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return [], f"nvidia-smi failed: {reason[0] if reason else f'exit code {done.returncode}'}"
    rows = []
    for line in done.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1]) * MIB))
    return rows, "nvidia-smi"


def _visible_entries(value: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries up to the first one CUDA would reject (it stops there too)."""
    entries = []
    for entry in (part.strip() for part in value.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def visible_gpus(env: Mapping[str, str] | None = None) -> GpuInventory:
    """The GPUs a child started with `env` would see (nvidia-smi filtered by CUDA_VISIBLE_DEVICES)."""
    env = os.environ if env is None else env
    rows, source = _query_nvidia_smi(env)
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return GpuInventory(count=len(rows), memory_bytes=[m for _, m in rows], source=source)
    entries = _visible_entries(mask)
    source = f"{source}, CUDA_VISIBLE_DEVICES={mask!r}"
    by_index = dict(rows)
    if rows and all(entry.isdigit() for entry in entries):
        memory = [by_index[int(e)] for e in entries if int(e) in by_index]
        return GpuInventory(count=len(memory), memory_bytes=memory, source=source)
    if rows:  # UUIDs: trust the count, assume the smallest card
        count = min(len(entries), len(rows))
        return GpuInventory(count=count, memory_bytes=[min(by_index.values())] * count, source=source)
    return GpuInventory(count=len(entries), memory_bytes=[], source=source)


def check_gpus(tp: int, gpus: GpuInventory) -> None:
    if gpus.count >= tp:
        return
    needs = f"--tp {tp} needs {tp} GPU{'s' if tp > 1 else ''}"
    if gpus.count == 0:
        raise ServeError(f"{needs} but none is visible ({gpus.source}); run `agent serve` on a GPU host")
    fits = 1 << (gpus.count.bit_length() - 1)
    raise ServeError(f"{needs} but only {gpus.count} {'is' if gpus.count == 1 else 'are'} visible "
                     f"({gpus.source}); use --tp {fits} or free more GPUs")


# Model size


def read_config(model_dir: Path) -> dict[str, Any] | None:
    """The model's config.json (the text part of a multimodal one), or None if there is none."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("text_config", config)


def _ints(config: Mapping[str, Any], *keys: str) -> list[int] | None:
    values = [config.get(key) for key in keys]
    return values if all(isinstance(v, int) and v > 0 for v in values) else None  # type: ignore[return-value]


def parameter_count(config: Mapping[str, Any]) -> int | None:
    """Parameters of a dense decoder (Llama/CWM layout) from its config, or None if it is not one."""
    dims = _ints(config, "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                 "num_attention_heads")
    if dims is None:
        return None
    vocab, hidden, layers, intermediate, heads = dims
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o + k, v
    mlp = 3 * hidden * intermediate  # gate, up, down
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


def weight_bytes(model_dir: Path, config: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """Bytes of bf16 weights and how they were found: config first (right for dummy weights too)."""
    if config is not None and (params := parameter_count(config)) is not None:
        return params * BF16_BYTES, f"{params / 1e9:.1f}B parameters from config.json"
    return _checkpoint_bytes(model_dir)


def served_weight_bytes(model_dir: Path, config: Mapping[str, Any] | None, quantization: str | None
                        ) -> tuple[int, str] | None:
    """Bytes the GPUs hold for the weights as served: bf16, or with `fp8` the linear layers at one byte
    per parameter (vLLM quantizes them while loading; embeddings and the output head stay bf16)."""
    found = weight_bytes(model_dir, config)
    if found is None or quantization != "fp8":
        return found
    total, how = found
    embeddings = _embedding_parameters(config) * BF16_BYTES if config is not None else 0
    return embeddings + (total - embeddings) // BF16_BYTES, f"{how}, linear layers in fp8"


def _embedding_parameters(config: Mapping[str, Any]) -> int:
    dims = _ints(config, "vocab_size", "hidden_size")
    if dims is None:
        return 0
    return dims[0] * dims[1] * (1 if config.get("tie_word_embeddings") else 2)


def _checkpoint_bytes(model_dir: Path) -> tuple[int, str] | None:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if isinstance(total, int) and total > 0:
            return total, "safetensors index"
    files = list(model_dir.glob("*.safetensors"))
    if files:
        return sum(f.stat().st_size for f in files), "safetensors files"
    return None


def kv_bytes_per_gpu(config: Mapping[str, Any], max_model_len: int, tp: int, kv_cache_dtype: str | None = None) -> int:
    """KV cache one `max_model_len` sequence needs on each GPU (bf16, or one byte a value with an fp8
    KV cache; sliding layers keep a window)."""
    hidden, heads, layers = (config.get(k, 0) for k in ("hidden_size", "num_attention_heads",
                                                        "num_hidden_layers"))
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (hidden // heads if heads else 0)
    per_token_layer = 2 * kv_heads * head_dim * (1 if kv_cache_dtype == "fp8" else BF16_BYTES)  # K and V
    window = config.get("sliding_window")
    types = config.get("layer_types") or []
    sliding = sum(1 for t in types if t == "sliding_attention") if window else 0
    tokens = (layers - sliding) * max_model_len + sliding * min(window or 0, max_model_len)
    # KV heads are split over the GPUs, but never below one head per GPU (then they are replicated).
    return per_token_layer * tokens // max(1, min(tp, kv_heads))


def _need_per_gpu(weights: int, config: Mapping[str, Any], max_model_len: int, tp: int,
                  kv_cache_dtype: str | None = None) -> int:
    return weights // tp + kv_bytes_per_gpu(config, max_model_len, tp, kv_cache_dtype) + RUNTIME_RESERVE_BYTES


def _largest_fitting_len(weights: int, config: Mapping[str, Any], tp: int, usable: float,
                         current: int, kv_cache_dtype: str | None) -> int | None:
    """The longest context (a multiple of 1024 below `current`) that fits, or None."""
    def need(length: int) -> int:
        return _need_per_gpu(weights, config, length, tp, kv_cache_dtype)

    low, high = 0, current // 1024 - 1
    while low < high:
        middle = (low + high + 1) // 2
        if need(middle * 1024) <= usable:
            low = middle
        else:
            high = middle - 1
    return low * 1024 if low > 0 and need(low * 1024) <= usable else None


def check_fit(model_dir: Path, tp: int, max_model_len: int, utilization: float, gpus: GpuInventory,
              quantization: str | None = None, kv_cache_dtype: str | None = None) -> str:
    """Raise if the model clearly cannot fit; otherwise say what was estimated (or why not)."""
    config = read_config(model_dir)
    found = served_weight_bytes(model_dir, config, quantization)
    if found is None or config is None or not gpus.memory_bytes[:tp]:
        return "fit not checked (no config.json / weights size or GPU memory unknown)"
    weights, how = found
    memory = min(gpus.memory_bytes[:tp])
    usable = memory * utilization
    kv = kv_bytes_per_gpu(config, max_model_len, tp, kv_cache_dtype)
    need = weights // tp + kv + RUNTIME_RESERVE_BYTES
    kv_kind = "FP8 KV cache" if kv_cache_dtype == "fp8" else "KV cache"
    summary = (f"about {need / GIB:.1f} GiB per GPU ({weights / GIB:.1f} GiB weights"
               f"{f' over {tp} GPUs' if tp > 1 else ''} + {kv / GIB:.1f} GiB {kv_kind} for {max_model_len} "
               f"tokens + {RUNTIME_RESERVE_BYTES / GIB:.0f} GiB runtime; {how})")
    if need <= usable:
        return f"fits: {summary} of {usable / GIB:.1f} GiB usable"
    heads = config.get("num_attention_heads", 1)
    bigger = [t for t in (2, 4, 8, 16) if t > tp and heads % t == 0
              and _need_per_gpu(weights, config, max_model_len, t, kv_cache_dtype) <= usable]
    shorter = _largest_fitting_len(weights, config, tp, usable, max_model_len, kv_cache_dtype)
    options = ([f"--tp {bigger[0]}"] if bigger else []) + ([f"--max-model-len {shorter}"] if shorter else [])
    if quantization != "fp8":
        halved = served_weight_bytes(model_dir, config, "fp8")
        if halved is not None and _need_per_gpu(halved[0], config, max_model_len, tp, kv_cache_dtype) <= usable:
            options.append("--quantization fp8")
    advice = " or ".join(options) if options else "bigger or more GPUs"
    raise ServeError(f"the model does not fit: it needs {summary} but {usable / GIB:.1f} GiB is usable "
                     f"({memory / GIB:.1f} GiB x {utilization:.2f}); use {advice} "
                     "(or --skip-preflight to try anyway)")
