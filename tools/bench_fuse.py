#!/usr/bin/env python
"""Fusion benchmark: the fuse stage's frames/s against a naive loop on the same input.

Input: a work directory ingested from a synthetic capture (by default 200 frames at 1920x1440, every third
frame kept), with depth maps at 256x192, 960x720 and 1920x1440 (LiDAR resized bilinearly, as the `lidar`
model does) in depth/bench-WxH/, fused at 1 and 2 cm voxels.

- naive: a plain loop, one thread, frame after frame: read the depth PNG, the RGB JPEG (full size) and the
  confidence map with OpenCV, mask depth range and confidence with numpy (`naive_read`), integrate
  (`fuse.integrate_frame`), next; the voxel grid starts at NAIVE_BLOCK_COUNT blocks and grows by rehashing
  (not pre-sized).
- stage: `fuse.run` as `promptmesh fuse` runs it: frames read by `fuse.prepare_frame` (depth PNG inflated by
  libdeflate, colour decoded at a reduced JPEG scale, masks with OpenCV) on background threads through a
  bounded queue, the grid pre-sized from the LiDAR maps. Its time is the block estimate plus integration
  (from its manifest); writing the volume is a separate column (the naive loop writes nothing).

Same depth, same masks, same integration call, so both grids hold the same blocks (checked). The ratio is
what the stage's reading, pipelining and pre-sizing buy together; the per-frame read times of both readers
(one thread) and the naive loop's integration time are listed to show where it comes from. Each
configuration is repeated (order alternated) and medians are reported, with the load average (the machine is
shared).

Example:
    python tools/bench_fuse.py --repeats 3 --write     # table into docs/benchmarks.md, section "Fusion"
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, load_average, machine_line, median,  # noqa: E402
                          write_table, setup_logging, synthetic_capture)
from pipeline.images import depth_m_to_mm, depth_mm_to_m  # noqa: E402
from pipeline.workdir import WorkDir

log = logging.getLogger("bench")

DEPTH_SIZES = ((256, 192), (960, 720), (1920, 1440))
VOXELS_M = (0.01, 0.02)
NAIVE_BLOCK_COUNT = 10_000
"""Initial hash-map size of the naive grid (Open3D's examples' order of magnitude); it grows by rehashing."""


def prepare_workdir(capture: Path, workdir: Path, stride: int) -> None:
    """Ingest every `stride`-th frame and write depth/bench-WxH/ for each benchmark size (once)."""
    import cv2

    from pipeline import ingest
    from pipeline.artifacts import Manifest, write_png_atomic
    from pipeline.capture import CaptureTable
    from pipeline.config import IngestConfig
    from pipeline.depth.classical import resize_lidar

    ingest.run(IngestConfig(stride=stride, blur_select=False), capture, workdir)
    table = CaptureTable.load(workdir)
    for w, h in DEPTH_SIZES:
        out = WorkDir(workdir).depth(f"bench-{w}x{h}")
        if Manifest.read(out) is not None:
            continue
        log.info("writing %d depth maps at %dx%d", len(table), w, h)
        for i in range(len(table)):
            lidar_mm = cv2.imread(str(table.root / table.lidar_path[i]), cv2.IMREAD_UNCHANGED)
            depth_m = resize_lidar(depth_mm_to_m(lidar_mm), (h, w))
            write_png_atomic(out / f"{table.stem(i)}.png", depth_m_to_mm(depth_m))
        Manifest("depth", f"bench-{w}x{h}", outputs=[f"{table.stem(i)}.png" for i in range(len(table))],
                 settings={"size_wh": [w, h]}).write(out)


def naive_read(table, i: int, depth_dir: Path, cfg):
    """Frame i as a plain loop reads it: OpenCV for the depth PNG, the full-size JPEG and the confidence map
    (resized to the depth size, nearest), numpy for the masks; the same masks as `fuse.prepare_frame`."""
    import cv2

    from pipeline import fuse
    from pipeline.geometry import scale_intrinsics

    depth_mm = cv2.imread(str(depth_dir / f"{table.stem(i)}.png"), cv2.IMREAD_UNCHANGED)
    rgb = cv2.cvtColor(cv2.imread(str(table.root / table.rgb_path[i])), cv2.COLOR_BGR2RGB)
    h, w = depth_mm.shape
    drop = (depth_mm < cfg.depth_min_m * 1000) | (depth_mm > cfg.depth_max_m * 1000)
    if table.confidence_path[i] is not None and cfg.min_confidence > 0:
        confidence = cv2.imread(str(table.root / table.confidence_path[i]), cv2.IMREAD_UNCHANGED)
        drop |= cv2.resize(confidence, (w, h), interpolation=cv2.INTER_NEAREST) < cfg.min_confidence
    depth_mm = np.where(drop, np.uint16(0), depth_mm)
    rgb_wh = (rgb.shape[1], rgb.shape[0])
    return fuse.PreparedFrame(index=i, depth_mm=depth_mm, rgb=rgb, K_color=table.K_rgb[i],
                              K_depth=scale_intrinsics(table.K_rgb[i], rgb_wh, (w, h)),
                              n_valid=int(np.count_nonzero(depth_mm)))


def stage_read_ms(workdir: Path, depth_model: str, voxel_size_m: float) -> float:
    """The stage's reader (`fuse.prepare_frame`) on one thread, ms per frame (for the table's read column)."""
    from pipeline import fuse
    from pipeline.capture import CaptureTable
    from pipeline.config import FuseConfig

    table = CaptureTable.load(workdir)
    t = time.perf_counter()
    for i in range(len(table)):
        fuse.prepare_frame(table, i, WorkDir(workdir).depth(depth_model), FuseConfig(voxel_size_m=voxel_size_m))
    return 1000 * (time.perf_counter() - t) / len(table)


def naive_loop(workdir: Path, depth_model: str, voxel_size_m: float) -> dict:
    """Read, integrate, next; no threads, no pre-sizing. Returns seconds (total, read, integrate) and blocks."""
    import open3d as o3d

    from pipeline import fuse
    from pipeline.capture import CaptureTable
    from pipeline.config import FuseConfig

    cfg = FuseConfig(voxel_size_m=voxel_size_m)
    device = o3d.core.Device("CPU:0")
    t0 = time.perf_counter()
    table = CaptureTable.load(workdir)
    grid = fuse.new_grid(cfg, NAIVE_BLOCK_COUNT, device)
    world_to_camera = np.linalg.inv(table.camera_to_world)
    read_s = integrate_s = 0.0
    for i in range(len(table)):
        t = time.perf_counter()
        frame = naive_read(table, i, WorkDir(workdir).depth(depth_model), cfg)
        t_read = time.perf_counter()
        fuse.integrate_frame(grid, frame, world_to_camera[i], cfg, device)
        read_s += t_read - t
        integrate_s += time.perf_counter() - t_read
    return {"seconds": time.perf_counter() - t0, "read": read_s, "integrate": integrate_s,
            "blocks": int(grid.hashmap().size()), "frames": len(table)}


def stage(workdir: Path, depth_model: str, voxel_size_m: float) -> dict:
    """fuse.run with force=True into a separate output folder; times from its manifest."""
    from pipeline import fuse
    from pipeline.artifacts import Manifest
    from pipeline.config import FuseConfig

    out = workdir / "out" / f"{depth_model}-{voxel_size_m:g}"
    fuse.run(FuseConfig(voxel_size_m=voxel_size_m), WorkDir(workdir, out), depth_model, force=True)
    s = Manifest.read(WorkDir(workdir, out).fuse).summary
    return {"seconds": s["seconds_presize"] + s["seconds_integrate"], "save": s["seconds_save"],
            "blocks": s["blocks"], "frames": s["frames"]}


def benchmark(workdir: Path, repeats: int) -> list[dict]:
    rows = []
    for w, h in DEPTH_SIZES:
        for voxel in VOXELS_M:
            model = f"bench-{w}x{h}"
            runs: dict[str, list[dict]] = {"naive": [], "stage": []}
            load = [load_average()]
            for r in range(repeats):
                for name in (("naive", "stage") if r % 2 == 0 else ("stage", "naive")):
                    runs[name].append((naive_loop if name == "naive" else stage)(workdir, model, voxel))
                load.append(load_average())
            naive, staged = runs["naive"], runs["stage"]
            assert naive[0]["blocks"] == staged[0]["blocks"], (naive[0]["blocks"], staged[0]["blocks"])
            frames = naive[0]["frames"]
            row = {"size": f"{w}x{h}", "voxel_cm": voxel * 100, "frames": frames, "blocks": staged[0]["blocks"],
                   "naive_fps": frames / median([n["seconds"] for n in naive]),
                   "stage_fps": frames / median([s["seconds"] for s in staged]),
                   "read_ms": 1000 * median([n["read"] for n in naive]) / frames,
                   "stage_read_ms": stage_read_ms(workdir, model, voxel),
                   "integrate_ms": 1000 * median([n["integrate"] for n in naive]) / frames,
                   "save_s": median([s["save"] for s in staged]),
                   "ratios": [n["seconds"] / s["seconds"] for n, s in zip(naive, staged)], "load": load}
            row["ratio"] = median(row["ratios"])  # paired: robust to the load changing between repeats
            log.info("%s", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()})
            rows.append(row)
    return rows


def table(rows: list[dict], repeats: int) -> str:
    lines = ["| depth | voxel | frames | blocks | naive frames/s | stage frames/s | stage / naive (each repeat) | "
             "naive: read + integrate ms/frame | stage's reader ms/frame | stage: save volume |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        each = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(f"| {r['size']} | {r['voxel_cm']:g} cm | {r['frames']} | {r['blocks']} | {r['naive_fps']:.1f} | "
                     f"{r['stage_fps']:.1f} | **{r['ratio']:.2f}** ({each}) | {r['read_ms']:.0f} + "
                     f"{r['integrate_ms']:.0f} | {r['stage_read_ms']:.0f} | {r['save_s']:.2f} s |")
    loads = [x for r in rows for x in r["load"]]
    return "\n".join(lines) + (
        f"\n\nMedian of {repeats} repeats, order alternated; stage / naive = the naive loop's time / the stage's in "
        f"the same repeat (median, then each). Frames/s = frames / (block estimate + integration); read times are "
        f"per frame on one thread (the stage reads on two background threads); "
        f"the stage also writes its volume (last column), which the naive loop does not. Machine: {machine_line()}; "
        f"1-minute load average during the runs {min(loads)}-{max(loads)} (the machine is shared).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, help="Stray capture to ingest (default: render one into --cache)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the capture and work directory")
    ap.add_argument("--stride", type=int, default=3, help="keep every n-th frame of the capture")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('Fusion')")
    args = ap.parse_args(argv)
    setup_logging()
    capture = args.capture or synthetic_capture(args.cache / "room200_1920x1440", 200, 1920, 1440)
    workdir = args.cache / f"fuse-stride{args.stride}"
    prepare_workdir(capture, workdir, args.stride)
    text = table(benchmark(workdir, args.repeats), args.repeats)
    print(text)
    if args.write:
        write_table(BENCHMARKS_MD, "Fusion", "bench_fuse.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
