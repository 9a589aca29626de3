"""`agent serve`: start vLLM's OpenAI-compatible server for CWM, wait until it is healthy, stop it cleanly.

The launcher owns what every CWM server must have, so nobody has to remember it: prefix caching on
(each agent turn re-sends the whole history), cached-token counts in `usage`, bf16, CWM's three stop
tokens as the default end of generation, and the NVLink-multicast-off settings (multicast can take
shared GPUs out of service) in the child's environment, always.

vLLM and torch are the optional `serve` extra: this module never imports them. It runs
`python -m vllm.entrypoints.cli.main serve` as a child in its own process group (so vLLM's worker
processes go down with it), writes the child's output to a log file, forwards SIGINT/SIGTERM and
kills whatever is left after a grace period. HTTP goes through urllib so the module also runs on
GPU hosts that only have vLLM's dependencies (pydantic, plus structlog).

Stop tokens: vLLM reads stop ids from the *generation config* (`eos_token_id`, a list), not from
`--override-generation-config`, which only carries sampling defaults (temperature, top_p, top_k,
min_p, repetition_penalty, max_new_tokens; vLLM's `ModelConfig.get_diff_sampling_param`). So the
launcher writes a generation_config.json (the model's own, if it has one, with CWM's eos ids set)
into a folder of its own and passes `--generation-config FOLDER`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.protocol.prompts import CONTEXT_SIZE
from agent.protocol.render import BEGIN_OF_TEXT_ID, STOP_TOKEN_IDS
from agent.serve.checks import ServeError, check_fit, check_gpus, check_vllm, visible_gpus
from agent.serve.presets import PRESETS, PresetName, fill_from_preset

log = structlog.get_logger("agent.serve.launcher")

VLLM_MODULE = "vllm.entrypoints.cli.main"
# Set for the child whatever the caller's environment says.
REQUIRED_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",  # the log file is the only window into start-up: no buffering
}
DEFAULT_STATE_DIR = Path.home() / ".cache" / "cwm-runner" / "serve"
HEALTH_POLL_S = 0.5
PROGRESS_EVERY_S = 30.0
LOG_TAIL_LINES = 30


class ServeOptions(BaseModel):
    """Everything `agent serve` takes; each vLLM-facing field maps to one vLLM flag."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="model folder or Hugging Face name")
    tp: int = Field(default=1, ge=1, description="tensor-parallel size (GPUs)")
    port: int = Field(default=8000, ge=1, le=65535)
    host: str = "127.0.0.1"
    max_model_len: int = Field(default=CONTEXT_SIZE, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    served_model_name: str = "cwm"
    load_format: Literal["auto", "dummy"] = "auto"
    quantization: Literal["fp8"] | None = Field(
        default=None, description="fp8: vLLM quantizes the linear layers to FP8 while loading (Hopper and "
        "newer): half the bytes read per decoded token, so 32B fits one 80 GB GPU with room for KV cache")
    kv_cache_dtype: Literal["auto", "fp8"] | None = Field(
        default=None, description="fp8: KV cache in FP8, twice the cached tokens in the same memory; auto: the "
        "model's dtype (vLLM's default)")
    max_num_seqs: int | None = Field(default=None, ge=1, description="most sequences decoded at once "
                                     "(None: vLLM's default)")
    max_num_batched_tokens: int | None = Field(default=None, ge=16, description="tokens per scheduler step, "
                                               "the chunked-prefill budget (None: vLLM's default)")
    preset: PresetName | None = Field(default=None, description="named settings for a workload "
                                      "(agent.serve.presets); options given explicitly win")
    extra_args: list[str] = Field(default_factory=list, description="passed to vLLM as they are")
    python: str = Field(default_factory=lambda: sys.executable, description="interpreter that runs vLLM")
    command_override: list[str] | None = Field(
        default=None, description="program to run instead of `python -m vllm.entrypoints.cli.main serve` "
        "(tests, or a vLLM installed elsewhere); it gets the same arguments")
    state_dir: Path = Field(default=DEFAULT_STATE_DIR, description="generation config and log live here")
    log_file: Path | None = None
    startup_timeout_s: float = Field(default=900.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    skip_preflight: bool = Field(default=False, description="skip the GPU count and fit checks")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return fill_from_preset(data) if isinstance(data, dict) else data

    @property
    def generation_config_dir(self) -> Path:
        return self.state_dir / f"generation-config-{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.state_dir / f"vllm-{self.port}.log"

    @property
    def url(self) -> str:
        """The /v1 base a client on this machine uses."""
        return f"http://{_client_host(self.host)}:{self.port}/v1"


def _client_host(host: str) -> str:
    """Where to connect to reach a server bound to `host` (wildcards mean this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# Command and environment


def build_command(options: ServeOptions) -> list[str]:
    """The child's argv: vLLM's serve with CWM's settings, then `extra_args` (which may override)."""
    launcher = options.command_override or [options.python, "-m", VLLM_MODULE, "serve"]
    return [
        *launcher,
        os.path.expanduser(options.model),  # no shell runs this, so `~` must be expanded here
        "--served-model-name", options.served_model_name,
        "--host", options.host,
        "--port", str(options.port),
        "--tensor-parallel-size", str(options.tp),
        "--dtype", "bfloat16",
        "--max-model-len", str(options.max_model_len),
        "--gpu-memory-utilization", str(options.gpu_memory_utilization),
        "--load-format", options.load_format,
        *(["--quantization", options.quantization] if options.quantization else []),
        *(["--kv-cache-dtype", options.kv_cache_dtype] if options.kv_cache_dtype else []),
        *(["--max-num-seqs", str(options.max_num_seqs)] if options.max_num_seqs else []),
        *(["--max-num-batched-tokens", str(options.max_num_batched_tokens)] if options.max_num_batched_tokens else []),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--generation-config", str(options.generation_config_dir),
        "--disable-uvicorn-access-log",
        *options.extra_args,
    ]


def build_env(base_env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: `base_env` plus the required settings, which always win."""
    env = dict(base_env)
    env.update(REQUIRED_ENV)
    # FlashInfer's sampler is vLLM's default when FlashInfer is installed; where it is not (the lent
    # GPU machines carry vLLM without it) vLLM must be told, unless the caller decided already.
    if "VLLM_USE_FLASHINFER_SAMPLER" not in env and not _flashinfer_installed():
        env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    return env


def _flashinfer_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flashinfer") is not None


def write_generation_config(options: ServeOptions) -> Path:
    """Write the generation config vLLM will read: the model's own, with CWM's stop tokens set."""
    config: dict[str, Any] = {}
    own = Path(options.model).expanduser() / "generation_config.json"
    if own.is_file():
        config = json.loads(own.read_text())
    config["bos_token_id"] = config.get("bos_token_id", BEGIN_OF_TEXT_ID)
    config["eos_token_id"] = list(STOP_TOKEN_IDS)  # end_of_text, eom_id, eot_id: CWM ends turns with either
    folder = options.generation_config_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


# Checks before start


def preflight(options: ServeOptions, env: Mapping[str, str] | None = None) -> None:
    """Fail in seconds, with one line that says what to do, instead of minutes into vLLM's start-up."""
    env = os.environ if env is None else env
    if options.command_override is None:
        check_vllm(options.python)
    model_dir = Path(options.model).expanduser()
    looks_local = options.model.startswith(("/", ".", "~")) or model_dir.exists()
    if looks_local and not model_dir.is_dir():
        raise ServeError(f"model folder {model_dir} does not exist: pass a model folder or a Hugging Face name")
    _check_port_free(options)
    if options.skip_preflight:
        return
    gpus = visible_gpus(env)
    check_gpus(options.tp, gpus)
    if looks_local:
        log.info("fit", estimate=check_fit(model_dir, options.tp, options.max_model_len,
                                           options.gpu_memory_utilization, gpus, options.quantization,
                                           options.kv_cache_dtype))


def _check_port_free(options: ServeOptions) -> None:
    """A server already on the port would answer our health checks and hide vLLM's failure to bind."""
    host = _client_host(options.host).strip("[]")
    try:
        with socket.create_connection((host, options.port), timeout=1):
            pass
    except OSError:
        return
    raise ServeError(f"port {options.port} on {host} is already in use (is a server running? "
                     f"`agent solve` can use it as it is); stop it or pass --port")


# Finding a server


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    """GET without proxies (they must never see loopback traffic); (status, body), 0 if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except (OSError, ValueError):
        return 0, b""


def find_local_server(ports: Sequence[int] = (8000,), host: str = "127.0.0.1",
                      timeout_s: float = 1.0) -> str | None:
    """The /v1 base of the first OpenAI-compatible server answering on `ports`, or None."""
    for port in ports:
        base = f"http://{_client_host(host)}:{port}/v1"
        status, body = _get(base + "/models", timeout_s)
        if status != 200:
            continue
        try:
            listed = json.loads(body)
        except ValueError:
            continue
        if isinstance(listed, dict) and isinstance(listed.get("data"), list):
            return base
    return None


# Running the server


class _StopRequest:
    """Signal handler that records the first SIGINT/SIGTERM; the main loop does the shutting down."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group.

    Zombies are skipped: an orphaned worker's zombie waits for whoever reaps orphans, which may be
    slow, and a zombie holds no GPU memory. Without /proc, any member counts.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _shutdown(child: subprocess.Popen[bytes], signum: int, grace_s: float) -> None:
    """Send `signum` to the child's group, wait `grace_s`, then SIGKILL the child and any leftovers."""
    pgid = child.pid  # start_new_session made the child its group's leader
    if child.poll() is None:
        log.info("stopping vLLM", signal=signal.Signals(signum).name, grace_s=grace_s)
        _signal_group(pgid, signum)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("vLLM did not stop in time: killing it", grace_s=grace_s)
            _signal_group(pgid, signal.SIGKILL)
            child.wait()
    # Workers that outlived the main process (same group): give them the grace period too.
    deadline = time.monotonic() + grace_s
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def _exit_code(returncode: int) -> int:
    """The shell's convention: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _wait_healthy(child: subprocess.Popen[bytes], options: ServeOptions, stop: _StopRequest) -> bool:
    """True once GET /health answers 200; False if a stop was requested; ServeError otherwise."""
    health = f"http://{_client_host(options.host)}:{options.port}/health"
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while stop.signum is None:
        code = child.poll()
        if code is not None:
            raise ServeError(f"vLLM exited with code {code} before it became healthy "
                             f"(full log: {options.log_path}); its last lines:",
                             _tail(options.log_path))
        if _get(health, timeout_s=2.0)[0] == 200:
            log.info("vLLM is healthy", after_s=round(time.monotonic() - started, 1))
            return True
        now = time.monotonic()
        if now - started > options.startup_timeout_s:
            raise ServeError(f"vLLM was not healthy after {options.startup_timeout_s:.0f} s "
                             f"(full log: {options.log_path}); its last lines:",
                             _tail(options.log_path))
        if now >= next_progress:
            last = _tail(options.log_path, 1)
            log.info("waiting for vLLM", elapsed_s=round(now - started), last_log_line=last[-200:])
            next_progress = now + PROGRESS_EVERY_S
        time.sleep(HEALTH_POLL_S)
    return False


def run_server(options: ServeOptions, out: TextIO | None = None) -> int:
    """Start vLLM, print its endpoint once healthy, serve until it exits or a signal stops it.

    Returns the child's exit code (128 + N if a signal N killed it). Raises ServeError, with the
    log's last lines, if a check fails or vLLM dies or hangs during start-up (the child is then
    stopped). SIGINT and SIGTERM are forwarded to the child's process group when this runs in the
    main thread; the previous handlers are restored on return.
    """
    out = out or sys.stdout
    preflight(options)
    write_generation_config(options)
    command = build_command(options)
    options.log_path.parent.mkdir(parents=True, exist_ok=True)
    stop = _StopRequest()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for forwarded in (signal.SIGINT, signal.SIGTERM):
            previous[forwarded] = signal.signal(forwarded, stop)
    log.info("starting vLLM", command=shlex.join(command), log=str(options.log_path))
    child: subprocess.Popen[bytes] | None = None
    try:
        with open(options.log_path, "wb") as log_file:
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, env=build_env(os.environ),
                                         start_new_session=True)
            except OSError as error:
                raise ServeError(f"cannot start {command[0]}: {error.strerror or error}; "
                                 "check --python / the serve extra") from error
        if _wait_healthy(child, options, stop):
            print(f"serving {options.served_model_name} at {options.url} "
                  f"(log: {options.log_path}; Ctrl-C stops it)", file=out, flush=True)
        while stop.signum is None and child.poll() is None:
            time.sleep(0.2)
        if stop.signum is None:
            log.warning("vLLM exited", code=child.returncode, last_lines=_tail(options.log_path, 5))
    finally:
        if child is not None:
            _shutdown(child, stop.signum or signal.SIGTERM, options.shutdown_grace_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert child is not None and child.returncode is not None
    return _exit_code(child.returncode)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agent.serve ...`: the same launcher without the CLI's dependencies (typer, rich).

    Unknown arguments go to vLLM, as `agent serve` passes them.
    """
    parser = argparse.ArgumentParser(prog="python -m agent.serve", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tp", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--served-model-name")
    parser.add_argument("--load-format", choices=["auto", "dummy"])
    parser.add_argument("--quantization", choices=["fp8"])
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"])
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--startup-timeout", type=float, dest="startup_timeout_s")
    parser.add_argument("--skip-preflight", action="store_true", default=None)
    parser.add_argument("--log-file", type=Path, help="vLLM's output (default: STATE_DIR/vllm-PORT.log)")
    parser.add_argument("--state-dir", type=Path)
    known, extra = parser.parse_known_args(argv)
    # Options left out keep ServeOptions' defaults, written once on its fields.
    given = {name: value for name, value in vars(known).items() if value is not None}
    options = ServeOptions(**given, extra_args=extra)
    try:
        return run_server(options)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
