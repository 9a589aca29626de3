"""A stand-in for `python -m vllm.entrypoints.cli.main serve`, run by tests as a real child process.

`agent.serve.launcher` starts it through `ServeOptions.command_override` with exactly the arguments it would
give vLLM (model first, then flags; only --host and --port matter here). It serves GET /health (503
until it is "ready", then 200) and GET /v1/models, and behaves as its environment says - which also
lets tests see the environment `agent.serve.launcher` builds for the child:

  FAKE_VLLM_DELAY=S        seconds before /health answers 200 (default 0)
  FAKE_VLLM_EXIT=N         print a few log lines, then exit with code N without serving
  FAKE_VLLM_LIFETIME=S     exit 0 on its own S seconds after becoming ready
  FAKE_VLLM_IGNORE_TERM=1  ignore SIGTERM and SIGINT (so only SIGKILL stops it)
  FAKE_VLLM_WORKER=1       start a worker process in its process group, as vLLM starts engine cores
  FAKE_VLLM_RECORD=DIR     write argv.json, env.json, pid, worker_pid; append received signal names
                           to `signals` and request paths to `requests`
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORD = Path(os.environ["FAKE_VLLM_RECORD"]) if os.environ.get("FAKE_VLLM_RECORD") else None
START = time.monotonic()
DELAY = float(os.environ.get("FAKE_VLLM_DELAY", "0"))


def record(name: str, text: str, append: bool = False) -> None:
    if RECORD is not None:
        with open(RECORD / name, "a" if append else "w") as handle:
            handle.write(text)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        print("request", self.command, self.path, flush=True)

    def do_GET(self) -> None:
        record("requests", f"GET {self.path}\n", append=True)
        ready = time.monotonic() - START >= DELAY
        if self.path == "/health":
            self.send(200 if ready else 503, b"")
        elif self.path == "/v1/models" and ready:
            model = sys.argv[1]
            name = model
            if "--served-model-name" in sys.argv:
                name = sys.argv[sys.argv.index("--served-model-name") + 1]
            self.send(200, json.dumps({"object": "list", "data": [{"id": name, "root": model}]}).encode())
        else:
            self.send(404, b'{"detail": "Not Found"}')

    def send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def on_signal(signum: int, frame: object) -> None:
    record("signals", signal.Signals(signum).name + "\n", append=True)
    print(f"received {signal.Signals(signum).name}, shutting down", flush=True)
    if os.environ.get("FAKE_VLLM_IGNORE_TERM") != "1":
        raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args, _ = parser.parse_known_args()
    record("argv.json", json.dumps(sys.argv[1:]))
    record("env.json", json.dumps(dict(os.environ)))
    record("pid", str(os.getpid()))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"fake vLLM starting for {args.model}", flush=True)
    if os.environ.get("FAKE_VLLM_EXIT"):
        print("loading weights", flush=True)
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(int(os.environ["FAKE_VLLM_EXIT"]))
    if os.environ.get("FAKE_VLLM_WORKER") == "1":
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        record("worker_pid", str(worker.pid))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lifetime = os.environ.get("FAKE_VLLM_LIFETIME")
    while True:
        elapsed = time.monotonic() - START
        if lifetime and elapsed >= DELAY + float(lifetime):
            print("fake vLLM exiting on its own", flush=True)
            return
        time.sleep(0.05)


if __name__ == "__main__":
    main()
