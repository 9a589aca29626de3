#!/usr/bin/env bash
# On the GPU machine, after device-step1.sh and device-step2.sh: start `agent serve` (through the
# project's own launcher, `python -m agent.serve`) in its own session, wait until healthy, run
# bench/serve_bench.py against it, and copy the results to $OUT.
# Usage: bash bench/gpu/serve_and_bench.sh MODEL_DIR TP MAX_MODEL_LEN [GPU_MEM_UTIL [VLLM_ARGS...]]
# (VLLM_ARGS go to vLLM as they are, e.g. --async-scheduling; the results' file names get a suffix
# from $TAG when it is set.)
set -uo pipefail
model=${1:?model dir}; tp=${2:?tp}; maxlen=${3:?max model len}; util=${4:-0.90}; shift $(( $# < 4 ? $# : 4 ))
suffix=tp$tp${TAG:+-$TAG}
root=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH=/tmp/site:$root:/tmp/agent-site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
started=$(date +%s.%N)
setsid nohup python3 -m agent.serve --model "$model" --tp "$tp" --load-format dummy --max-model-len "$maxlen" \
  --gpu-memory-utilization "$util" --log-file /tmp/vllm.log "$@" > /tmp/agent-serve.out 2>&1 < /dev/null &
echo $! > /tmp/agent-serve.pid
for _ in $(seq 300); do
  grep -q '^serving' /tmp/agent-serve.out && break
  kill -0 "$(cat /tmp/agent-serve.pid)" 2>/dev/null || break
  sleep 2
done
cat /tmp/agent-serve.out
grep -q '^serving' /tmp/agent-serve.out || { tail -40 /tmp/vllm.log; exit 1; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 "$root/bench/serve_bench.py" --tp "$tp" --startup-log /tmp/vllm.log --started-at "$started" \
  --json "${OUT:-/tmp}/serve-bench-$suffix.json" 2>&1 | tee "${OUT:-/tmp}/serve-bench-$suffix.txt"
cp /tmp/agent-serve.out "${OUT:-/tmp}/agent-serve-$suffix.out"
