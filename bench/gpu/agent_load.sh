#!/usr/bin/env bash
# On the GPU machine, after device-step1.sh (and device-step2.sh, in this call or an earlier one):
# for each configuration named, serve CWM's real 32B configuration with dummy weights through our
# launcher (`python -m agent.serve`), run bench/serve_bench.py's concurrency section (the synthetic
# figure) and bench/agent_load.py at LEVELS concurrent episodes, write both JSONs to $OUT, stop the
# server. A configuration that fails to start is reported and skipped; `agent` falls back to `fp8`.
#   bf16   the launcher's defaults
#   fp8    --quantization fp8 (FP8 linear layers)
#   agent  --preset agent (FP8 weights + FP8 KV cache, 64 sequences, 8192-token chunks)
# Needs .gpu/agentdeps carried (bench/gpu/prepare_agent_load.sh). Scaled down for a short device
# lease (docs/benchmarks.md says so): episodes of up to TURNS turns and MAXLEN tokens, DURATION s
# measured per level after at most WARMUP s of warm-up.
# Usage: bash bench/gpu/agent_load.sh CONFIG...   (env: LEVELS TURNS MAXLEN DURATION WARMUP UTIL ADMISSION BUDGET_S,
# the seconds from now by which everything must be done)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/agent-load-out}; mkdir -p "$out"
levels=${LEVELS:-8,32,64}; turns=${TURNS:-32}; maxlen=${MAXLEN:-32768}
duration=${DURATION:-50}; warmup=${WARMUP:-40}; util=${UTIL:-0.9}
# The device call ends at a fixed time: agent_load.py shortens its last levels to be done by then.
stop_at=$(( $(date +%s) + ${BUDGET_S:-560} ))
export PYTHONPATH=/tmp/site:$root:/tmp/agent-site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
[ -d /tmp/agent-site/structlog ] || python3 -m pip install -q --no-index --no-deps --no-compile --target \
  /tmp/agent-site "$root"/.gpu/agentdeps/*.whl || exit 3
# A text tokenizer with CWM's special-token ids (the stand-in one only takes token ids).
grep -q '"BPE"' /tmp/cwm/tokenizer.json 2>/dev/null || \
  python3 "$root/bench/gpu/mktokenizer.py" /tmp/cwm --bpe-vocab-size 32000 --max-corpus-mb 4 || exit 4

flags_of() {
  case $1 in
    bf16) echo "" ;;
    fp8) echo "--quantization fp8" ;;
    agent) echo "--preset agent" ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
  esac
}

start_server() {  # $1: configuration; returns non-zero if it does not become healthy
  local started; started=$(date +%s.%N)
  # shellcheck disable=SC2046
  setsid nohup python3 -m agent.serve --model /tmp/cwm --load-format dummy --max-model-len "$maxlen" \
    --gpu-memory-utilization "$util" --log-file "/tmp/vllm-$1.log" $(flags_of "$1") \
    > "/tmp/agent-serve-$1.out" 2>&1 < /dev/null &
  echo $! > /tmp/agent-serve.pid
  for _ in $(seq 200); do
    grep -q '^serving' "/tmp/agent-serve-$1.out" && break
    kill -0 "$(cat /tmp/agent-serve.pid)" 2>/dev/null || break
    sleep 2
  done
  echo "$1: $(python3 -c "import time; print(round(time.time() - $started))") s to start"
  grep -q '^serving' "/tmp/agent-serve-$1.out" || { tail -25 "/tmp/vllm-$1.log"; return 1; }
}

stop_server() {
  local pid; pid=$(cat /tmp/agent-serve.pid 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f /tmp/agent-serve.pid
}

for config in "$@"; do
  if ! start_server "$config"; then
    stop_server; cp "/tmp/vllm-$config.log" "$out/vllm-$config.log" 2>/dev/null
    [ "$config" = agent ] || continue
    echo "agent preset did not start: falling back to fp8 weights with a bf16 KV cache"
    config=fp8; start_server "$config" || { stop_server; continue; }
  fi
  grep -E "GPU KV cache size|Maximum concurrency|Available KV cache" "/tmp/vllm-$config.log" | tail -3
  python3 "$root/bench/serve_bench.py" --sections concurrency --concurrency "$levels" \
    --json "$out/synthetic-$config.json" 2>&1 | tail -4
  # With ADMISSION=1 the same server is measured twice, plain and then with --admission (agent batch's
  # KV-aware admission deciding how many of each level's episodes run), each in half the time left.
  runs=("plain"); [ "${ADMISSION:-0}" = 1 ] && runs+=("admission")
  for way in "${runs[@]}"; do
    now=$(date +%s); until=$stop_at
    [ "$way" = plain ] && [ ${#runs[@]} = 2 ] && until=$(( now + (stop_at - now) / 2 ))
    label=$config; flag=(); [ "$way" = admission ] && { label="$config+admission"; flag=(--admission); }
    python3 "$root/bench/agent_load.py" --label "$label" --levels "$levels" --duration "$duration" \
      --warmup-max "$warmup" --scale-to "$turns:$maxlen" --max-context "$maxlen" --allowed-tokens-from /tmp/cwm \
      --synthetic-json "$out/synthetic-$config.json" --json "$out/agent-load-${label/+/-}.json" --stop-at "$until" \
      "${flag[@]}" 2>&1 | tail -16
  done
  grep -E "GPU KV cache size|Maximum concurrency" "/tmp/vllm-$config.log" > "$out/kv-$config.txt"
  stop_server
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
