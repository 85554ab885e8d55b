#!/usr/bin/env python
"""Pose refinement against drift: culled F with and without refinement, and the fuse stage's time.

Protocol: for each drift size, the hard synthetic room (`tools/make_synthetic_capture.py`, seed 0, one loop
around the room) is rendered with ARKit-like drift of that size added to the written poses (zero at the first
frame, growing smoothly to the size at the last; RGB and LiDAR come from the true poses). Ingest (no blur
selection) and the `lidar` depth model run once per capture; then the fuse stage runs with refinement off and
on, `--repeats` times each in alternating order (the stage's own timer, from its manifest; median quoted), and
mesh + eval run on the last fuse of each. "True poses" is the drift-free capture without refinement: the F
the drift takes away. Pose error: camera-centre distance of the fused poses to the true ones (mean / max).

Example:
    python tools/bench_refine.py --repeats 3 --write
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench_common import BENCHMARKS_MD, DEFAULT_CACHE, REPO, load_average, machine_line, median, setup_logging, \
    write_table

sys.path.insert(0, str(REPO))
from pipeline import depth, evaluate, fuse, ingest, mesh  # noqa: E402
from pipeline.artifacts import Manifest  # noqa: E402
from pipeline.capture import CaptureTable  # noqa: E402
from pipeline.config import PipelineConfig, override  # noqa: E402
from pipeline.poses import fused_camera_to_world  # noqa: E402
from pipeline.refine import pose_difference  # noqa: E402
from pipeline.workdir import WorkDir  # noqa: E402

log = logging.getLogger("bench")

DRIFTS = ((0.0, 0.0), (0.02, 0.5), (0.05, 1.0), (0.10, 2.0))
"""(metres, degrees) at the last frame."""


def render(cache: Path, drift_m: float, drift_deg: float, frames: int, width: int, height: int) -> Path:
    from make_synthetic_capture import make_capture

    path = cache / f"refine_hard{frames}_{width}x{height}_drift{drift_m:g}m{drift_deg:g}deg"
    if not (path / ".complete").exists():
        if path.exists():
            shutil.rmtree(path)
        make_capture(path, scene="hard", n_frames=frames, width=width, height=height, seed=0, drift_m=drift_m,
                     drift_deg=drift_deg, gt_depth_size=(16, 12))
        (path / ".complete").write_text("")
    return path


def measure(capture: Path, cfg: PipelineConfig, repeats: int) -> dict:
    """{refine_poses: {f, f2, fuse_s, refine_s, error_mean_m, error_max_m}} on one capture."""
    root = WorkDir(capture / "work")
    ingest.run(cfg.ingest, capture / "stray", root)
    depth.run(cfg.depth, root)
    table = CaptureTable.load(root)
    gt = np.load(capture / "gt_poses.npy")
    variants = {refine_poses: WorkDir(root, root.root / ("refined" if refine_poses else "unrefined"))
                for refine_poses in (False, True)}
    seconds: dict[bool, list] = {False: [], True: []}
    for r in range(repeats):
        for refine_poses in ((False, True) if r % 2 == 0 else (True, False)):
            fuse_cfg = dataclasses.replace(cfg.fuse, refine_poses=refine_poses)
            fuse.run(fuse_cfg, variants[refine_poses], "lidar", force=True)
            summary = Manifest.read(variants[refine_poses].fuse).summary
            refine_cpu_s = summary["refine"]["cpu_seconds"] if refine_poses else 0.0
            seconds[refine_poses].append((summary["seconds"], summary["seconds_refine"], refine_cpu_s))
    results = {}
    for refine_poses, wd in variants.items():
        mesh.run(cfg.mesh, wd, force=True)
        evaluate.run(cfg.eval, wd, capture / "gt_mesh.ply", force=True)
        report = json.loads(wd.eval_json.read_text())
        curve = json.loads(wd.eval_curve.read_text())
        error_m, _ = pose_difference(fused_camera_to_world(wd, table), gt)
        results[refine_poses] = {
            "f": report["culled"]["fscore"],
            "f2": curve["culled"]["fscore"][curve["thresholds_m"].index(0.02)],
            "fuse_s": median([s for s, _, _ in seconds[refine_poses]]),
            "refine_s": median([s for _, s, _ in seconds[refine_poses]]),
            "refine_cpu_s": median([c for _, _, c in seconds[refine_poses]]),
            "error_mean_m": float(error_m.mean()), "error_max_m": float(error_m.max())}
    return results


def table(rows: list[tuple], frames: int, width: int, height: int, repeats: int, loads: tuple[str, str],
          voxel_m: float) -> str:
    true_f, true_f2 = rows[0][2][False]["f"], rows[0][2][False]["f2"]
    lines = [f"{machine_line()}; hard room, {frames} frames at {width}x{height}, `lidar` depth, {voxel_m * 100:g} cm "
             f"voxels; fuse time = the stage's own timer, median of {repeats}; CPU s = the process's CPU time while "
             f"refining; load average {loads[0]} at the start, {loads[1]} at the end. True poses: culled F@5cm "
             f"{true_f:.3f}, F@2cm {true_f2:.3f}.", "",
             "| drift at the last frame | F@5cm without | F@5cm with | F@2cm without | F@2cm with | pose error without "
             "(mean / max) | pose error with (mean / max) | fuse s without | fuse s with | of which refinement s "
             "(CPU s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for drift_m, drift_deg, r in rows:
        off, on = r[False], r[True]
        lines.append(f"| {drift_m * 100:g} cm / {drift_deg:g} deg | {off['f']:.3f} | **{on['f']:.3f}** | "
                     f"{off['f2']:.3f} | **{on['f2']:.3f}** | {off['error_mean_m'] * 100:.1f} / "
                     f"{off['error_max_m'] * 100:.1f} cm | "
                     f"{on['error_mean_m'] * 100:.1f} / {on['error_max_m'] * 100:.1f} cm | {off['fuse_s']:.1f} | "
                     f"{on['fuse_s']:.1f} | {on['refine_s']:.1f} ({on['refine_cpu_s']:.1f}) |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the captures and work directories")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--voxel-size", type=float, default=0.01, help="TSDF voxel, metres")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('Pose refinement')")
    args = ap.parse_args(argv)
    setup_logging()
    cfg = override(PipelineConfig(), "ingest", blur_select=False)
    cfg = override(cfg, "depth", model="lidar", long_side_px=max(args.width, args.height))
    cfg = override(cfg, "fuse", voxel_size_m=args.voxel_size)
    start_load = load_average()
    rows = []
    for drift_m, drift_deg in DRIFTS:
        capture = render(args.cache, drift_m, drift_deg, args.frames, args.width, args.height)
        rows.append((drift_m, drift_deg, measure(capture, cfg, args.repeats)))
        log.info("drift %g m / %g deg: %s", drift_m, drift_deg, rows[-1][2])
    text = table(rows, args.frames, args.width, args.height, args.repeats, (start_load, load_average()),
                 args.voxel_size)
    print(text)
    if args.write:
        write_table(BENCHMARKS_MD, "Pose refinement", "bench_refine.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
