#!/usr/bin/env bash
# On the GPU machine: stop the running `agent serve` with SIGTERM (its signal forwarding must leave no
# GPU process), then serve the tiny CWM-shaped model with a real text tokenizer and check that
# constrained decoding yields replies the runner's parser accepts.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# /tmp/agent-site (the runner's own dependencies) last: vLLM's pins in /tmp/site win.
export PYTHONPATH=/tmp/site:$root:/tmp/agent-site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# Every server an earlier call left running (the machine stays warm between calls) holds port 8000.
for pidfile in /tmp/agent-serve*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile"); rm -f "$pidfile"; kill -0 "$pid" 2>/dev/null || continue
  t0=$(date +%s.%N); kill -TERM "$pid"
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  echo "agent serve ($pidfile) stopped after $(python3 -c "import time;print(round(time.time()-$t0,1))") s"
  tail -3 "${pidfile%.pid}.out" 2>/dev/null
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv
done
python3 "$root/bench/gpu/mktokenizer.py" /tmp/cwm-tiny || exit 1
setsid nohup python3 -m agent.serve --model /tmp/cwm-tiny --tp "${1:-2}" --served-model-name cwm-tiny --load-format dummy \
  --max-model-len 16384 --log-file /tmp/vllm-tiny.log > /tmp/agent-serve-tiny.out 2>&1 < /dev/null &
echo $! > /tmp/agent-serve-tiny.pid
for _ in $(seq 200); do grep -q '^serving' /tmp/agent-serve-tiny.out && break; kill -0 "$(cat /tmp/agent-serve-tiny.pid)" 2>/dev/null || break; sleep 2; done
cat /tmp/agent-serve-tiny.out
grep -q '^serving' /tmp/agent-serve-tiny.out || { tail -40 /tmp/vllm-tiny.log; exit 1; }
python3 "$root/bench/gpu/constrained_smoke.py" --url http://127.0.0.1:8000/v1 -n 4 2>&1 | tee "${OUT:-/tmp}/constrained-smoke.txt"
