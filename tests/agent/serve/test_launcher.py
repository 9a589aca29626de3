"""`agent serve` without a GPU: command line, environment, one-line preflight errors, and process
management against real processes (a fake vLLM HTTP server, a fake `nvidia-smi` executable)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.serve.checks import ServeError, check_fit, visible_gpus
from agent.serve.launcher import (
    REQUIRED_ENV,
    ServeOptions,
    build_command,
    build_env,
    find_local_server,
    preflight,
    run_server,
    write_generation_config,
)
from tests.fakes.openai_server import FakeOpenAIServer
from tests.helpers import REPO_ROOT

REPO = REPO_ROOT
FAKE_VLLM = REPO / "tests" / "fakes" / "fake_vllm.py"
H100_MIB = 81559
H200_MIB = 143771
# CWM's published shape (transformers' CwmConfig defaults).
CWM_CONFIG = {
    "architectures": ["CwmForCausalLM"], "model_type": "cwm", "vocab_size": 128256, "hidden_size": 6144,
    "intermediate_size": 21504, "num_hidden_layers": 64, "num_attention_heads": 48,
    "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False, "sliding_window": 8192,
    "layer_types": ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(64)],
    "eos_token_id": [128001, 128008, 128009],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """Running (a zombie or a missing process is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def fake_nvidia_smi(folder: Path, mib: list[int]) -> Path:
    """A real `nvidia-smi` executable that reports GPUs of the given memory sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    query = "\n".join(f"{i}, {m}" for i, m in enumerate(mib))
    listing = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})" for i in range(len(mib)))
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        "# test stand-in: answers the two questions agent.serve.launcher may ask\n"
        'case "$1" in\n'
        f"  -L) printf '%s\\n' '{listing}' ;;\n"
        f"  --query-gpu=index,memory.total) printf '%s\\n' '{query}' ;;\n"
        "  *) echo \"unexpected: $*\" >&2; exit 9 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return folder


def gpu_env(tmp_path: Path, mib: list[int], **extra: str) -> dict[str, str]:
    smi_dir = fake_nvidia_smi(tmp_path / "bin", mib)
    return {"PATH": f"{smi_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def model_dir(tmp_path: Path, config: dict | None = None) -> Path:
    folder = tmp_path / "cwm"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CWM_CONFIG))
    return folder


def fake_options(tmp_path: Path, **fields: object) -> ServeOptions:
    values: dict[str, object] = dict(
        model=str(model_dir(tmp_path)), port=free_port(), state_dir=tmp_path / "state",
        command_override=[sys.executable, str(FAKE_VLLM)], skip_preflight=True, shutdown_grace_s=5.0,
        startup_timeout_s=30.0,
    )
    values.update(fields)
    return ServeOptions(**values)


# Command line and environment


def test_command_line_is_exact(tmp_path: Path) -> None:
    options = ServeOptions(model="/tmp/cwm", tp=2, load_format="dummy", max_model_len=32768,
                           python="/usr/bin/python3", state_dir=tmp_path)
    assert build_command(options) == [
        "/usr/bin/python3", "-m", "vllm.entrypoints.cli.main", "serve", "/tmp/cwm",
        "--served-model-name", "cwm",
        "--host", "127.0.0.1",
        "--port", "8000",
        "--tensor-parallel-size", "2",
        "--dtype", "bfloat16",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.9",
        "--load-format", "dummy",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--generation-config", f"{tmp_path}/generation-config-8000",
        "--disable-uvicorn-access-log",
    ]


def test_fp8_quantization_is_one_flag_after_the_load_format(tmp_path: Path) -> None:
    options = ServeOptions(model="/tmp/cwm", quantization="fp8", state_dir=tmp_path)
    command = build_command(options)
    at = command.index("--load-format")
    assert command[at + 2:at + 4] == ["--quantization", "fp8"]
    assert "--quantization" not in build_command(ServeOptions(model="/tmp/cwm", state_dir=tmp_path))


def test_command_line_passes_extra_args_last_and_honours_the_override(tmp_path: Path) -> None:
    options = ServeOptions(model="facebook/cwm", port=9001, host="0.0.0.0", served_model_name="c",
                           gpu_memory_utilization=0.95, extra_args=["--enforce-eager", "--max-num-seqs", "8"],
                           command_override=["/opt/vllm/bin/vllm", "serve"], state_dir=tmp_path)
    command = build_command(options)
    assert command[:3] == ["/opt/vllm/bin/vllm", "serve", "facebook/cwm"]
    assert command[-3:] == ["--enforce-eager", "--max-num-seqs", "8"]
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.95"
    assert command[command.index("--generation-config") + 1] == f"{tmp_path}/generation-config-9001"
    assert options.url == "http://127.0.0.1:9001/v1"


def test_environment_always_has_the_required_settings() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/root", "NCCL_NVLS_ENABLE": "1", "VLLM_ALLREDUCE_USE_SYMM_MEM": "1"}
    expected = {
        "PATH": "/usr/bin", "HOME": "/root",
        "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
        "VLLM_ALLREDUCE_USE_SYMM_MEM": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if importlib.util.find_spec("flashinfer") is None:
        expected["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    assert build_env(base) == expected
    assert base["NCCL_NVLS_ENABLE"] == "1"  # the caller's mapping is left alone
    assert build_env({"VLLM_USE_FLASHINFER_SAMPLER": "1"})["VLLM_USE_FLASHINFER_SAMPLER"] == "1"


def test_generation_config_keeps_the_models_own_and_sets_cwm_stop_tokens(tmp_path: Path) -> None:
    folder = model_dir(tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "eos_token_id": 128001}))
    options = ServeOptions(model=str(folder), state_dir=tmp_path / "state", port=8123)
    written = write_generation_config(options)
    assert written == tmp_path / "state" / "generation-config-8123"
    assert json.loads((written / "generation_config.json").read_text()) == {
        "temperature": 0.6, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
    hub = ServeOptions(model="facebook/cwm", state_dir=tmp_path / "hub")
    assert json.loads((write_generation_config(hub) / "generation_config.json").read_text()) == {
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}


# Preflight: one line each, saying what to do


def one_line(error: pytest.ExceptionInfo[ServeError]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_says_how_to_install_it(tmp_path: Path) -> None:
    options = ServeOptions(model=str(model_dir(tmp_path)), state_dir=tmp_path)
    with pytest.raises(ServeError) as error:
        preflight(options)
    assert one_line(error) == (f"vLLM is not importable by {sys.executable}: install the serve extra: "
                               "pip install 'cwm-runner[serve]'")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_module_entry_point_reports_missing_vllm(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "agent.serve", "--model", str(model_dir(tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("pip install 'cwm-runner[serve]'")


def test_missing_model_folder(tmp_path: Path) -> None:
    options = fake_options(tmp_path, model=str(tmp_path / "nowhere"))
    with pytest.raises(ServeError) as error:
        preflight(options)
    assert one_line(error).startswith(f"model folder {tmp_path / 'nowhere'} does not exist")


def test_fewer_gpus_than_tp(tmp_path: Path) -> None:
    options = fake_options(tmp_path, tp=2, skip_preflight=False)
    with pytest.raises(ServeError) as error:
        preflight(options, gpu_env(tmp_path, [H100_MIB]))
    assert one_line(error) == "--tp 2 needs 2 GPUs but only 1 is visible (nvidia-smi); use --tp 1 or free more GPUs"


def test_no_gpu_at_all(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    options = fake_options(tmp_path, skip_preflight=False)
    with pytest.raises(ServeError) as error:
        preflight(options, {"PATH": str(tmp_path / "empty")})
    assert one_line(error) == ("--tp 1 needs 1 GPU but none is visible (nvidia-smi not found on PATH); "
                               "run `agent serve` on a GPU host")


def test_cuda_visible_devices_limits_the_gpus(tmp_path: Path) -> None:
    env = gpu_env(tmp_path, [H100_MIB, H200_MIB, H100_MIB, H200_MIB], CUDA_VISIBLE_DEVICES="1,3")
    gpus = visible_gpus(env)
    assert (gpus.count, gpus.memory_bytes) == (2, [H200_MIB * 2**20] * 2)
    with pytest.raises(ServeError) as error:
        preflight(fake_options(tmp_path, tp=4, skip_preflight=False), env)
    assert "only 2 are visible" in one_line(error) and "use --tp 2" in one_line(error)
    assert visible_gpus({**env, "CUDA_VISIBLE_DEVICES": ""}).count == 0


def test_model_that_does_not_fit_names_the_numbers_and_the_fixes(tmp_path: Path) -> None:
    options = fake_options(tmp_path, skip_preflight=False)  # TP 1, 131072 tokens, 0.9
    with pytest.raises(ServeError) as error:
        preflight(options, gpu_env(tmp_path, [H100_MIB]))
    message = one_line(error)
    assert message.startswith("the model does not fit: it needs about 72.2 GiB per GPU (60.7 GiB weights "
                              "+ 9.5 GiB KV cache for 131072 tokens + 2 GiB runtime; 32.6B parameters "
                              "from config.json) but 71.7 GiB is usable (79.6 GiB x 0.90); use --tp 2 or "
                              "--max-model-len ")
    assert message.endswith(" (or --skip-preflight to try anyway)")
    shorter = int(message.split("--max-model-len ")[1].split()[0])
    assert 16640 < shorter < 131072 and shorter % 1024 == 0
    # and that suggestion passes the same check
    preflight(fake_options(tmp_path, skip_preflight=False, max_model_len=shorter), gpu_env(tmp_path, [H100_MIB]))
    # FP8 linear layers halve the weights: the whole context fits one H100, and the advice says so.
    assert message.endswith(" or --quantization fp8 (or --skip-preflight to try anyway)")
    estimate = check_fit(tmp_path / "cwm", 1, 131072, 0.9, visible_gpus(gpu_env(tmp_path, [H100_MIB])), "fp8")
    assert estimate.startswith("fits: about 43.3 GiB per GPU (31.8 GiB weights + 9.5 GiB KV cache")
    assert "linear layers in fp8" in estimate
    preflight(fake_options(tmp_path, skip_preflight=False, quantization="fp8"), gpu_env(tmp_path, [H100_MIB]))


@pytest.mark.parametrize(("gpus", "tp", "max_len", "utilization"), [
    ([H100_MIB], 1, 16640, 0.95),  # measured working on one H100 (shared/gpu/README.md)
    ([H100_MIB] * 2, 2, 131072, 0.9),
    ([H200_MIB], 1, 131072, 0.9),
    ([H200_MIB] * 2, 2, 32768, 0.9),
])
def test_known_good_setups_pass(tmp_path: Path, gpus: list[int], tp: int, max_len: int, utilization: float) -> None:
    options = fake_options(tmp_path, tp=tp, max_model_len=max_len, gpu_memory_utilization=utilization,
                           skip_preflight=False)
    preflight(options, gpu_env(tmp_path, gpus))


def test_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ServeError) as error:
            preflight(fake_options(tmp_path, port=port))
    assert one_line(error).startswith(f"port {port} on 127.0.0.1 is already in use")


# Running a real child


def test_waits_for_health_then_serves_until_the_child_exits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("FAKE_VLLM_DELAY", "1.5")
    monkeypatch.setenv("FAKE_VLLM_LIFETIME", "0.5")
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")  # must be overridden for the child
    options = fake_options(tmp_path)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    out = io.StringIO()
    started = time.monotonic()
    assert run_server(options, out=out) == 0
    assert time.monotonic() - started >= 1.5
    assert out.getvalue() == (f"serving cwm at http://127.0.0.1:{options.port}/v1 "
                              f"(log: {options.log_path}; Ctrl-C stops it)\n")
    requests = (record / "requests").read_text().splitlines()
    assert requests.count("GET /health") >= 2  # polled while it answered 503
    assert json.loads((record / "argv.json").read_text()) == build_command(options)[2:]
    env = json.loads((record / "env.json").read_text())
    assert {key: env[key] for key in REQUIRED_ENV} == REQUIRED_ENV
    assert "fake vLLM exiting on its own" in options.log_path.read_text()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_child_that_dies_during_start_up_is_reported_with_its_log(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_EXIT", "3")
    options = fake_options(tmp_path)
    with pytest.raises(ServeError) as error:
        run_server(options, out=io.StringIO())
    first, *tail = str(error.value).splitlines()
    assert first == (f"vLLM exited with code 3 before it became healthy (full log: {options.log_path}); "
                     "its last lines:")
    assert tail[-1] == "RuntimeError: CUDA out of memory (fake)"
    assert error.value.log_tail.endswith("RuntimeError: CUDA out of memory (fake)")


def test_start_up_timeout_stops_the_child_and_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("FAKE_VLLM_DELAY", "60")
    monkeypatch.setenv("FAKE_VLLM_WORKER", "1")
    options = fake_options(tmp_path, startup_timeout_s=1.0)
    with pytest.raises(ServeError) as error:
        run_server(options, out=io.StringIO())
    assert str(error.value).startswith("vLLM was not healthy after 1 s")
    assert wait_gone(int((record / "pid").read_text()))
    assert wait_gone(int((record / "worker_pid").read_text()))


RUNNER = """
import sys
from agent.serve.launcher import ServeOptions, run_server
sys.exit(run_server(ServeOptions.model_validate_json(sys.argv[1])))
"""


def start_runner(options: ServeOptions, record: Path, **env: str) -> subprocess.Popen[str]:
    """`run_server` in a process of its own, so a test can signal it as a user or supervisor would."""
    child_env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_VLLM_RECORD": str(record),
                 "FAKE_VLLM_WORKER": "1", **env}
    return subprocess.Popen([sys.executable, "-c", RUNNER, options.model_dump_json()], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)


def wait_serving(runner: subprocess.Popen[str]) -> list[str]:
    assert runner.stdout is not None
    lines = []
    for line in runner.stdout:
        lines.append(line)
        if line.startswith("serving cwm at "):
            return lines
    raise AssertionError("runner ended before serving:\n" + "".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_forwarded_and_nothing_is_left(tmp_path: Path, signum: signal.Signals) -> None:
    record = tmp_path / "record"
    record.mkdir()
    runner = start_runner(fake_options(tmp_path), record)
    try:
        wait_serving(runner)
        vllm_pid = int((record / "pid").read_text())
        worker_pid = int((record / "worker_pid").read_text())
        assert alive(vllm_pid) and alive(worker_pid)
        runner.send_signal(signum)
        assert runner.wait(timeout=30) == 0  # the fake exits 0 when told to stop
    finally:
        runner.kill()
        runner.communicate()
    assert (record / "signals").read_text().splitlines() == [signum.name]
    assert wait_gone(vllm_pid) and wait_gone(worker_pid)


def test_child_that_ignores_the_signal_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.mkdir()
    runner = start_runner(fake_options(tmp_path, shutdown_grace_s=1.0), record, FAKE_VLLM_IGNORE_TERM="1")
    try:
        wait_serving(runner)
        vllm_pid = int((record / "pid").read_text())
        worker_pid = int((record / "worker_pid").read_text())
        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 128 + signal.SIGKILL
        assert time.monotonic() - started >= 1.0
    finally:
        runner.kill()
        runner.communicate()
    assert (record / "signals").read_text().splitlines() == ["SIGTERM"]
    assert wait_gone(vllm_pid) and wait_gone(worker_pid)


# Finding a running server


def test_find_local_server() -> None:
    nobody = free_port()
    with FakeOpenAIServer() as server:
        assert find_local_server(ports=(nobody, server.port)) == server.url
    assert find_local_server(ports=(nobody,)) is None


def test_find_local_server_ignores_a_non_openai_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_DELAY", "60")  # /v1/models answers 404 until ready
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(FAKE_VLLM), "m", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert find_local_server(ports=(port,)) is None
    finally:
        fake.terminate()
        fake.wait(timeout=10)
