#!/usr/bin/env bash
# Prepare, with no device time, what bench/gpu/agent_load.sh needs beside ../shared/gpu/prepare.sh's
# vLLM: the runner's own dependencies that the GPU image lacks (structlog, tenacity; the rest of
# what `agent serve` and bench/agent_load.py import is in the image or in vLLM's wheels), as Python 3.12
# wheels in the git-ignored .gpu/agentdeps (a few hundred KB: it rides along with .gpu/c2).
# Usage (from the project root): bash bench/gpu/prepare_agent_load.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/agentdeps && mkdir -p .gpu/agentdeps
deps=$(python3 -c "from importlib.metadata import version as v; print(f'structlog=={v(\"structlog\")} tenacity=={v(\"tenacity\")}')")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d .gpu/agentdeps $deps
ls -la .gpu/agentdeps
