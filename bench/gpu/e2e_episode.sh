#!/usr/bin/env bash
# On the GPU machine (no Docker, no network), with the tiny CWM-shaped model served by `agent serve`
# at 127.0.0.1:8000 (bench/gpu/stop_and_tiny.sh): run `agent solve` on the bundled example with the
# bubblewrap sandbox and constrained replies, for a bounded number of turns, and put the trajectory in
# $OUT so it can be replayed with `agent replay --verify` in Docker on the dev machine.
# Needs, carried in .gpu/e2e (bench/gpu/prepare_e2e.sh): rootfs.tar.xz (the base image's tree) and the
# bubblewrap .deb; and the runner's own dependencies installed in /tmp/agent-site by an earlier call
# (`pip install --target /tmp/agent-site .gpu/extra/*.whl`, carried with .gpu/c1).
# Usage: bash bench/gpu/e2e_episode.sh CARRIED_DIR [TURNS]
set -uo pipefail
carried=${1:?carried dir}; turns=${2:-8}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p /tmp/bwrap-pkg /tmp/rootfs /tmp/agent-site
dpkg -x "$carried"/bubblewrap_*.deb /tmp/bwrap-pkg && export PATH=/tmp/bwrap-pkg/usr/bin:$PATH
bwrap --version || exit 3
[ -x /tmp/rootfs/usr/bin/python3 ] || tar -xJf "$carried/rootfs.tar.xz" -C /tmp/rootfs
python3 -c "import structlog, typer, docker, git" 2>/dev/null || PYTHONPATH=/tmp/agent-site python3 -c "import structlog, typer, docker, git" || exit 4
if ! command -v git >/dev/null; then
  # The host has no git: run the root filesystem's git through bubblewrap (host paths bound as they are).
  mkdir -p /tmp/gitshim && cat > /tmp/gitshim/git <<'SHIM'
#!/bin/sh
exec bwrap --ro-bind /tmp/rootfs / --bind /tmp /tmp --bind /root /root --proc /proc --dev /dev --chdir "$PWD" /usr/bin/git "$@"
SHIM
  chmod +x /tmp/gitshim/git && export PATH=/tmp/gitshim:$PATH && echo "git via the root filesystem: $(git --version)"
fi
export PYTHONPATH=/tmp/agent-site:$root HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$root" && python3 -m agent.cli solve --repo traces/examples/intervals/repo \
  --issue-file traces/examples/intervals/issue.md --model http://127.0.0.1:8000/v1 --sandbox bwrap \
  --image /tmp/rootfs --constrained bounded --max-turns "$turns" --timeout 10 --instance-id gpu-e2e \
  --output "${OUT:-/tmp}/e2e" 2>&1 | tee "${OUT:-/tmp}/e2e-solve.txt"
ls -la "${OUT:-/tmp}/e2e"
