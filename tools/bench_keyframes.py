#!/usr/bin/env python
"""Quality with keyframes against every frame, and the automatic voxel against 1 cm (docs/benchmarks.md,
"Keyframes").

On the hard synthetic room of tools/bench_run.py (200 frames, 1920x1440 HEVC at 30 fps) and on the synthetic
close-up desk (`--scene closeup`: objects at 0.2-0.45 m, 0.4 m of orbit, 120 frames at 640x480), for `lidar`
and `guided`: the stages at their defaults (keyframes, automatic voxel, pose refinement) and with
`all_frames`; on the close-up also keyframes at a fixed 1 cm voxel. Scores are eval.json's culled ones
(culled with the cameras of the frames each variant kept); the room at the default eval settings, the
close-up at millimetre scale (1 cm threshold, 4 mm downsampling, 2 mm sample spacing: at 5 cm every variant
scores ~1). Times are the stages' own (ingest, depth, fuse, mesh) in this process.

Example:
    python tools/bench_keyframes.py --write
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, load_average, machine_line, setup_logging,  # noqa: E402
                          synthetic_capture, write_table)

log = logging.getLogger("bench")

CLOSEUP_EVAL = {"threshold_m": 0.01, "downsample_m": 0.004, "sample_spacing_m": 0.002}


def variant(capture: Path, gt_mesh: Path, workdir: Path, model: str, all_frames: bool, voxel_size_m: float,
            eval_settings: dict) -> dict:
    """One fresh pass of ingest -> depth -> fuse -> mesh -> eval; scores, frames, voxel and stage seconds."""
    from pipeline import depth, evaluate, fuse, ingest, mesh
    from pipeline.artifacts import Manifest
    from pipeline.config import DepthConfig, EvalConfig, FuseConfig, IngestConfig, MeshConfig
    from pipeline.workdir import WorkDir

    if workdir.exists():
        shutil.rmtree(workdir)
    wd = WorkDir(workdir)
    seconds = {}
    t = time.perf_counter()
    for stage, call in (("ingest", lambda: ingest.run(IngestConfig(all_frames=all_frames), capture, wd)),
                        ("depth", lambda: depth.run(DepthConfig(model=model), wd)),
                        ("fuse", lambda: fuse.run(FuseConfig(voxel_size_m=voxel_size_m), wd, depth_model=model)),
                        ("mesh", lambda: mesh.run(MeshConfig(), wd))):
        call()
        seconds[stage] = time.perf_counter() - t
        t = time.perf_counter()
    culled = json.loads(evaluate.run(EvalConfig(**eval_settings), wd, gt_mesh=gt_mesh).read_text())["culled"]
    fused = Manifest.read(wd.fuse).summary
    return {"frames": Manifest.read(wd.capture).summary["kept"], "voxel_m": fused["voxel_size_m"],
            "trunc_m": fused["sdf_trunc_m"], **culled, "seconds": seconds}


def table(rows: list[tuple[str, str, str, dict]]) -> str:
    lines = ["| scene | model | frames | voxel / truncation | culled F | precision | recall | acc | comp | "
             "ingest + depth + fuse + mesh |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for scene, model, label, r in rows:
        s = r["seconds"]
        lines.append(f"| {scene} | `{model}` | {label}: {r['frames']} | {r['voxel_m'] * 1000:g} / {r['trunc_m'] * 100:.2g} "
                     f"cm | {r['fscore']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['accuracy_m'] * 1000:.2f} mm | {r['completeness_m'] * 1000:.2f} mm | "
                     f"{sum(s.values()):.1f} s |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the captures and work directories")
    ap.add_argument("--models", default="lidar,guided")
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('Keyframes')")
    args = ap.parse_args(argv)
    setup_logging()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_synthetic_capture import make_capture

    room = synthetic_capture(args.cache / "room200_1920x1440", 200, 1920, 1440)
    desk = args.cache / "closeup120_640x480"
    if not (desk / ".complete").exists():
        make_capture(desk, scene="closeup", n_frames=120, width=640, height=480, codec="mp4v")
        (desk / ".complete").write_text("")
    scenes = [("hard room (200 frames, 30 fps)", room, room / "gt_mesh.ply", {}, False),
              ("close-up desk (120 frames, 30 fps)", desk / "stray", desk / "gt_mesh.ply", CLOSEUP_EVAL, True)]
    load_before = load_average()
    rows = []
    for scene, capture, gt_mesh, eval_settings, closeup in scenes:
        for model in args.models.split(","):
            variants = [("all frames", True, 0.0), ("keyframes", False, 0.0)]
            variants += [("keyframes, 1 cm voxel", False, 0.01)] if closeup else []
            for label, all_frames, voxel in variants:
                log.info("%s, %s, %s (load %s)", scene, model, label, load_average())
                work = args.cache / "keyframes" / f"{capture.parent.name if closeup else capture.name}-{model}-{label}"
                rows.append((scene, model, label, variant(capture, gt_mesh, work, model, all_frames, voxel,
                                                          eval_settings)))
    text = table(rows) + (
        f"\n\nDefaults (keyframes, automatic voxel, pose refinement) against `all_frames = true`; the close-up also "
        f"with keyframes at a fixed 1 cm voxel. Culled scores from eval.json (each variant culled with its own "
        f"frames' cameras); the room at the default eval settings (5 cm threshold, 2 cm downsampling), the close-up "
        f"at {CLOSEUP_EVAL['threshold_m'] * 100:g} cm threshold, {CLOSEUP_EVAL['downsample_m'] * 1000:g} mm "
        f"downsampling. Machine: {machine_line()}; 1-minute load {load_before} before, {load_average()} after "
        f"(shared machine: the times are for orientation only).")
    print(text)
    if args.write:
        write_table(BENCHMARKS_MD, "Keyframes", "bench_keyframes.py", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
