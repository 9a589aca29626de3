#!/usr/bin/env bash
# Prepare what the GPU end-to-end episode carries to the lent machine (no network there), with no
# device time: run here, from the project root, after `bash ../shared/gpu/prepare.sh` and with the
# sandbox base image built (`agent images build`).
#   .gpu/extra  the runner's own dependencies as Python 3.12 wheels (structlog among them, which
#               `agent serve` needs and vLLM's wheels lack); small enough to ride with .gpu/c1
#   .gpu/e2e    rootfs.tar.xz     the base image as a root filesystem for the bubblewrap sandbox
#               bubblewrap_*.deb  the sandbox tool (the GPU image has none)
# A device call carries at most 64 MiB, so the root filesystem travels alone in the third call.
# Usage: bash bench/gpu/prepare_e2e.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/extra .gpu/e2e && mkdir -p .gpu/extra .gpu/e2e
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# The runner's dependencies (pyproject's, and theirs), pinned to what this machine runs, so the GPU
# episode and the replay here use the same library versions.
deps=$(python3 - <<'PY'
from importlib.metadata import version
names = ["docker", "GitPython", "gitdb", "smmap", "pydantic", "pydantic_core", "annotated-types",
         "typing-inspection", "typing_extensions", "tenacity", "structlog", "typer", "click", "shellingham",
         "rich", "markdown-it-py", "mdurl", "pygments", "httpx", "httpcore", "h11", "anyio", "sniffio",
         "certifi", "idna", "requests", "urllib3", "charset-normalizer"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
python3 -m pip download -q --no-deps "${plat[@]}" -d .gpu/extra $deps
(cd .gpu/e2e && apt-get download -q bubblewrap >/dev/null)
image=$(python3 -c "from images.build import ensure_base_image; print(ensure_base_image())")
tree=$(mktemp -d)/rootfs
python3 -c "import sys; from pathlib import Path; from sandbox.rootfs import export_image_rootfs as e; e(sys.argv[1], Path(sys.argv[2]))" "$image" "$tree"
tar -C "$tree" --numeric-owner -cf - . | xz -T2 -9 > .gpu/e2e/rootfs.tar.xz
rm -rf "$(dirname "$tree")"
du -sh .gpu/extra .gpu/e2e .gpu/e2e/*
echo "rootfs made from $image"
