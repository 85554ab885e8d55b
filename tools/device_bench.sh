#!/usr/bin/env bash
# The prepared GPU check (issue 12, README "what it means for PromptDA"): fp16 PromptDA ViT-S and ViT-L at
# 756x1008 and 2160x3840, seconds per frame and torch.cuda.max_memory_allocated, as tools/bench_depth.py measures
# them (deterministic weights: the same operations, speed and memory as the official checkpoints).
#
# For a session whose task is lent a device machine (the `device` tool; its `status` says so at no cost):
#   1. here:   echo /.device/ >> .git/info/exclude
#              python tools/bench_depth.py --save-frame .device/frame.npz   # the input frame (rendering needs
#                                                                           # Open3D, which that machine lacks)
#   2. device: run(command="bash tools/device_bench.sh", carry=[".device"], timeout_s=540)
#   3. here:   cp <files_at>/benchmarks.md docs/benchmarks.md   # its "### cuda: ..." block added or replaced (and
#              the section intro rewritten), the rest as here; quote the times in the README, and give_back.
# That machine has torch, numpy, OpenCV, pyarrow, SciPy, click and tqdm (/work/.library/device/KINDS.md), and
# promptmesh runs there from the source tree (PYTHONPATH); nothing is installed.
#
# Not measured: CUDA TSDF fusion. Open3D is not on that machine, and its CUDA wheel (~400 MB) is far over the
# 64 MiB a call can carry.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/promptmesh-device}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FRAME="${FRAME:-.device/frame.npz}"
DEVICE="${DEVICE:-cuda}"                    # DEVICE=cpu SIZES=140x182 checks this script on a CPU machine
SIZES="${SIZES:-756x1008,2160x3840}"

{ python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
  "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; } 2>&1 | tee "$OUT/env.txt"
if [ ! -f "$FRAME" ]; then
  echo "$FRAME: not found; write it first with 'python tools/bench_depth.py --save-frame $FRAME' and carry it" >&2
  exit 2
fi
cp docs/benchmarks.md "$OUT/benchmarks.md"
python3 tools/bench_depth.py --frame "$FRAME" --models promptda-vits,promptda-vitl --sizes "$SIZES" \
  --repeats 5 --max-seconds 120 --device "$DEVICE" --out "$OUT/benchmarks.md" 2>&1 | tee "$OUT/bench_depth.log"
