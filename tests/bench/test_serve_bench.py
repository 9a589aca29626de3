"""bench/serve_bench.py, run as a program against a real streaming HTTP server that answers the way
vLLM's /v1/completions does (SSE chunks, a usage chunk, cached tokens from a simulated prefix cache),
so a mistake shows up here rather than on rented GPU time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT

REPO = REPO_ROOT
BENCH = REPO / "bench" / "serve_bench.py"
BLOCK = 16  # vLLM caches whole blocks of tokens


class StreamingFake:
    """Streams `max_tokens` chunks a couple of milliseconds apart; records every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.seen: list[tuple[int, ...]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def cached(self, prompt: list[int]) -> int:
        """Longest prefix shared with an earlier prompt, in whole blocks, never the whole prompt."""
        with self.lock:
            best = 0
            for earlier in self.seen:
                common = 0
                for a, b in zip(earlier, prompt, strict=False):
                    if a != b:
                        break
                    common += 1
                best = max(best, common)
            self.seen.append(tuple(prompt))
        return min(best, len(prompt) - 1) // BLOCK * BLOCK


class _Handler(BaseHTTPRequestHandler):
    fake: StreamingFake

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "cwm"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.fake.lock:
            self.fake.bodies.append(body)
        cached = self.fake.cached(body["prompt"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(0.002)  # "prefill"
        for index in range(body["max_tokens"]):
            chunk = {"id": "cmpl-1", "object": "text_completion", "choices": [
                {"index": 0, "text": f"t{index} ", "finish_reason": None}], "usage": None}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.001)
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"],
                 "total_tokens": len(body["prompt"]) + body["max_tokens"],
                 "prompt_tokens_details": {"cached_tokens": cached}}
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture()
def fake() -> StreamingFake:
    server = StreamingFake()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def vllm_log(path: Path) -> Path:
    path.write_text(
        "INFO 11-27 17:59:01 [api_server.py:1] vLLM API server version 0.26.0\n"
        "(EngineCore_DP0 pid=5) INFO 11-27 17:59:40 [gpu_model_runner.py:2] Model loading took 30.4 GiB "
        "memory and 20.1 seconds\n"
        "(EngineCore_DP0 pid=5) INFO 11-27 18:00:30 [kv_cache_utils.py:3] GPU KV cache size: 952,000 tokens\n"
        "(APIServer pid=4) INFO 11-27 18:01:09 [api_server.py:4] Starting vLLM API server 0 on "
        "http://127.0.0.1:8000\n"
        "(APIServer pid=4) INFO:     Application startup complete.\n"
    )
    return path


def run_bench(fake: StreamingFake, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    smi = tmp_path / "bin"
    smi.mkdir(exist_ok=True)
    (smi / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200'\n")
    (smi / "nvidia-smi").chmod(0o755)
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--url", fake.url, "--prompt-tokens", "40", "--output-tokens", "6",
         "--concurrency", "2,3", "--long-tokens", "100", "--prefix-tokens", "70", "--repeats", "2",
         "--json", str(out), *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{smi}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_bench_measures_everything_against_a_streaming_server(fake: StreamingFake, tmp_path: Path) -> None:
    done, report = run_bench(fake, tmp_path, "--tp", "2", "--startup-log", str(vllm_log(tmp_path / "vllm.log")))
    assert report["model"] == "cwm" and report["gpu"] == "NVIDIA H200"
    single = report["single_stream"]
    assert [run["completion_tokens"] for run in single["runs"]] == [6, 6]
    assert single["decode_tps"] > 0 and 0 < single["ttft_s"] < 5
    assert report["bandwidth"]["hbm_tbps"] == 4.8  # from the GPU's name
    assert report["bandwidth"]["limit_tps"] == 150.0  # 4.8 TB/s x 2 / 64 GB
    assert report["bandwidth"]["achieved_ratio"] == round(single["decode_tps"] / 150.0, 3)
    assert [(c["sessions"], c["completion_tokens"], c["failed"]) for c in report["concurrency"]] == [
        (2, 12, []), (3, 18, [])]
    cache = report["prefix_cache"]
    assert cache["cold_cached_tokens"] == [0, 0]
    assert cache["warm_cached_tokens"] == [64, 64]  # 70 tokens sent before, in whole 16-token blocks
    assert cache["agent_turn_cached_tokens"] == [64, 64]
    assert [r["completion_tokens"] for r in cache["runs"]["agent_turn"]] == [6, 6]
    assert report["startup"]["startup_s"] == 128.0 and report["startup"]["measured_from"] == "first log line"
    assert "GPU KV cache size: 952,000 tokens" in report["startup"]["log_facts"]
    assert "single stream 40+6" in done.stdout and "128 s (from first log line)" in done.stdout
    assert "agent turn 70+30+6" in done.stdout


def test_requests_are_token_ids_with_ignore_eos(fake: StreamingFake, tmp_path: Path) -> None:
    run_bench(fake, tmp_path, "--hbm-tbps", "3.35")
    assert fake.bodies
    for body in fake.bodies:
        assert body["ignore_eos"] is True and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (body["temperature"], body["top_p"]) == (1.0, 0.95)
        assert all(isinstance(i, int) and 1000 <= i < 100000 for i in body["prompt"])
    lengths = sorted({len(b["prompt"]) for b in fake.bodies})
    assert lengths == [32, 40, 64, 70, 100]  # warm-up, short, concurrency warm-up, prefix, long


def test_same_seed_same_prompts(fake: StreamingFake, tmp_path: Path) -> None:
    run_bench(fake, tmp_path, "--concurrency", "1")
    first = [b["prompt"] for b in fake.bodies]
    fake.bodies.clear()
    run_bench(fake, tmp_path, "--concurrency", "1")
    assert [b["prompt"] for b in fake.bodies] == first


def test_start_up_from_a_given_start_time(fake: StreamingFake, tmp_path: Path) -> None:
    started = datetime(datetime.now().year, 11, 27, 17, 58, 59).timestamp()
    _, report = run_bench(fake, tmp_path, "--startup-log", str(vllm_log(tmp_path / "vllm.log")),
                          "--started-at", str(started))
    assert report["startup"]["startup_s"] == 130.0 and report["startup"]["measured_from"] == "--started-at"


# bench/gpu/constrained_smoke.py: its plumbing, against the scripted OpenAI-compatible fake


def test_constrained_smoke_sends_the_regex_and_checks_replies_with_the_parser() -> None:
    from agent.protocol.constrained import bounded_reply_regex
    from tests.fakes.openai_server import FakeOpenAIServer

    script = REPO / "bench" / "gpu" / "constrained_smoke.py"
    with FakeOpenAIServer() as server:
        server.reply("thinking</think>\n<tool: bash>\nls\n</tool>", cached_tokens=0)
        server.reply("no end of thinking")
        done = subprocess.run([sys.executable, str(script), "--url", server.url, "-n", "2"],
                              capture_output=True, text=True, timeout=60, cwd="/")
        bodies = server.bodies()
    assert done.returncode == 1, done.stderr
    assert "reply 0: call bash; finish stop" in done.stdout
    assert "reply 1: NOT PARSED: FormatError: Expected exactly one thinking end token, got 0" in done.stdout
    assert done.stdout.strip().endswith("1/2 replies parsed to one tool call (bounded regex)")
    assert [b["structured_outputs"] for b in bodies] == [{"regex": bounded_reply_regex()}] * 2
    assert bodies[0]["prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert bodies[0]["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
