#!/usr/bin/env python
"""Memory benchmark: peak RSS of the ingest, depth and fuse stages on 100 and on 1000 frames.

Two synthetic captures of the same room and trajectory (one loop), 100 and 1000 frames, 640x480 HEVC video
and 256x192 LiDAR, go through `promptmesh ingest`, `promptmesh depth --depth-model lidar` and
`promptmesh fuse` (and `promptmesh mesh`), each a subprocess whose own peak RSS is measured (`os.wait4`).
Memory must not grow with the number of frames: frames stream through bounded queues. The voxel grid is
the exception: it grows with the surface seen (and is pre-sized to the estimate), so the fuse row also
gives its size, the pre-sized block count x 8^3 voxels x 20 bytes, which Open3D keeps resident, and the
peak without it.

Example:
    python tools/bench_memory.py --write      # table into docs/benchmarks.md, section "Memory"
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, check, load_average, machine_line, promptmesh_cmd,  # noqa: E402
                          write_table, run_measured, setup_logging, synthetic_capture)
from pipeline.workdir import WorkDir

log = logging.getLogger("bench")

FRAME_COUNTS = (100, 1000)
WIDTH, HEIGHT = 640, 480
GROWTH_LIMIT = 0.10
"""Allowed growth of a stage's peak RSS from 100 to 1000 frames (the issue's bound), voxel grid aside."""
VOXEL_BYTES = 4 + 4 + 3 * 4
"""Open3D's tsdf, weight and colour per voxel, float32."""


def measure(capture: Path, workdir: Path) -> dict[str, dict]:
    """Peak RSS (bytes) per stage, run as separate commands on a fresh work directory."""
    if workdir.exists():
        shutil.rmtree(workdir)
    out = {}
    for stage, args in (("ingest", ["ingest", str(capture), "-o", str(workdir)]),
                        ("depth", ["depth", str(workdir), "--depth-model", "lidar"]),
                        ("fuse", ["fuse", str(workdir), "--depth-model", "lidar"]),
                        ("mesh", ["mesh", str(workdir)])):
        m = check(run_measured(promptmesh_cmd("-q", *args)), f"promptmesh {stage}")
        out[stage] = {"rss": m.peak_rss_bytes, "wall_s": m.wall_s}
    fuse = json.loads((WorkDir(workdir).fuse / "manifest.json").read_text())["summary"]
    out["fuse"]["grid_bytes"] = fuse["blocks_presized"] * 8 ** 3 * VOXEL_BYTES
    out["fuse"]["blocks"] = fuse["blocks"]
    return out


def table(results: dict[int, dict[str, dict]], load_before: str, load_after: str) -> str:
    a, b = (results[n] for n in FRAME_COUNTS)
    mib = 2 ** 20
    lines = [f"| stage | peak RSS, {FRAME_COUNTS[0]} frames | {FRAME_COUNTS[1]} frames | growth | voxel grid "
             f"({FRAME_COUNTS[0]} / {FRAME_COUNTS[1]}) | growth without the grid |",
             "|---|---:|---:|---:|---:|---:|"]
    for stage in ("ingest", "depth", "fuse", "mesh"):
        ra, rb = a[stage]["rss"], b[stage]["rss"]
        grid = ""
        net = ""
        if stage == "fuse":
            ga, gb = a[stage]["grid_bytes"], b[stage]["grid_bytes"]
            grid = f"{ga / mib:.0f} / {gb / mib:.0f} MiB"
            net = f"{((rb - gb) / (ra - ga) - 1) * 100:+.1f} %"
        lines.append(f"| {stage} | {ra / mib:.0f} MiB | {rb / mib:.0f} MiB | {(rb / ra - 1) * 100:+.1f} % | {grid} | "
                     f"{net} |")
    return "\n".join(lines) + (
        f"\n\nSynthetic captures of one room and one loop, {FRAME_COUNTS[0]} and {FRAME_COUNTS[1]} frames, {WIDTH}x{HEIGHT} "
        f"HEVC video, 256x192 LiDAR; default settings (depth {WIDTH}x{HEIGHT}, 1 cm voxels); each stage a separate "
        f"`promptmesh` command, peak RSS = its own maximum resident set size. The voxel grid is the pre-sized block "
        f"count x 8^3 voxels x {VOXEL_BYTES} bytes (Open3D keeps it resident); it grows with the surface seen, not "
        f"the frame count. The mesh stage is listed for completeness (its memory follows the mesh size). Machine: "
        f"{machine_line()}; 1-minute load average {load_before} before, {load_after} after.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the captures and work directories")
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('Memory')")
    args = ap.parse_args(argv)
    setup_logging()
    load_before = load_average()
    results = {}
    for n in FRAME_COUNTS:
        capture = synthetic_capture(args.cache / f"room{n}_{WIDTH}x{HEIGHT}", n, WIDTH, HEIGHT)
        results[n] = measure(capture, args.cache / f"memory-{n}")
        log.info("%d frames: %s", n, results[n])
    text = table(results, load_before, load_average())
    print(text)
    for stage in ("ingest", "depth"):
        growth = results[FRAME_COUNTS[1]][stage]["rss"] / results[FRAME_COUNTS[0]][stage]["rss"] - 1
        if growth > GROWTH_LIMIT:
            log.warning("%s: peak RSS grew by %.0f %% from %d to %d frames", stage, growth * 100, *FRAME_COUNTS)
    if args.write:
        write_table(BENCHMARKS_MD, "Memory", "bench_memory.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
