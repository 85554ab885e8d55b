#!/usr/bin/env bash
# Install promptmesh with everything it needs on a fresh Debian/Ubuntu machine (or venv).
#  - system: libusb-1.0-0 (Open3D loads it), ffmpeg (libx265; only to write realistic HEVC test videos)
#  - chromium: the viewer's tests render `promptmesh view` pages in it (headless, software WebGL)
#  - torch 2.13.0 first: a plain `torch` requirement would pull a multi-GB CUDA build
#  - then this package in editable mode with its test extras (usd-core writes the USDZ export)
#  - nodejs/npm and the Khronos glTF validator pinned in tools/node/package-lock.json (tests validate GLB exports)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_apt+=(chromium)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so' || need_apt+=(libusb-1.0-0)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: apt-get install ${need_apt[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} with your system's package manager" >&2
  fi
fi

python3 -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null \
  || python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
# Optional: Ray for `promptmesh benchmark --ray` (its test is skipped when Ray is absent).
python3 -c 'import ray' 2>/dev/null || python3 -m pip install -q "ray>=2.9" \
  || echo "setup: Ray did not install; benchmark --ray and its test are unavailable" >&2
# glTF validator (npm, pinned by tools/node/package-lock.json) for the export tests.
if command -v npm >/dev/null 2>&1; then
  (cd tools/node && npm ci --no-audit --no-fund --silent) \
    || echo "setup: npm ci in tools/node failed; the glTF validator tests will be skipped" >&2
else
  echo "setup: npm not found; the glTF validator tests will be skipped" >&2
fi
