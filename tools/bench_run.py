#!/usr/bin/env python
"""End-to-end benchmark: `promptmesh run --depth-model lidar`, per stage, against a naive one-pass script.

The naive script (`naive_one_pass`, run as `bench_run.py --naive CAPTURE OUT.ply`) streams the frames of the
capture, resizes LiDAR depth bilinearly to 960x720, integrates into an Open3D VoxelBlockGrid that is not
pre-sized (1 cm voxels, uint16 millimetre depth, the full-size RGB frame as colour), extracts the mesh and
writes a PLY. It writes nothing in between, caches nothing, skips no frame and drops no depth pixel (no
confidence mask).

`promptmesh run` does more: it caches every stage (JPEG frames, LiDAR and confidence PNGs, depth PNGs, the
TSDF volume), masks low-confidence depth and removes small pieces of the mesh. It is timed cold (fresh work
directory) at its defaults (keyframes, automatic voxel size), cold with `--all-frames --voxel-size 0.01`
(every frame at the naive script's voxel: what keyframes buy), and warm (the defaults again: every stage up
to date).

Each repeat runs all of them, in alternating order; the table gives medians, the stage times from the
run's timings.json and the fuse stage's manifest, and each process's own peak RSS. Quality: the culled
F@5cm of each mesh against the capture's GT mesh, all culled with the cameras of every frame (so that a
mesh from fewer frames is judged on the same surface), from the first repeat.

Examples:
    python tools/bench_run.py --repeats 3 --write        # table into docs/benchmarks.md, "End to end"
    python tools/bench_run.py --frames 900 --fps 60 --width 960 --height 720 --write   # a 60 fps walk
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, check, load_average, machine_line, median,  # noqa: E402
                          promptmesh_cmd, write_table, run_measured, setup_logging, synthetic_capture)
from pipeline.workdir import WorkDir

log = logging.getLogger("bench")

NAIVE_DEPTH_WH = (960, 720)
NAIVE_BLOCK_COUNT = 10_000
"""Initial hash-map size of the naive grid (Open3D's examples' order of magnitude); it grows by rehashing."""
STAGES = ("ingest", "depth", "fuse", "mesh")


def naive_one_pass(capture: Path, out_ply: Path, voxel_size_m: float = 0.01,
                   depth_wh: tuple[int, int] = NAIVE_DEPTH_WH) -> int:
    """Stream frames -> bilinear LiDAR at `depth_wh` -> TSDF (not pre-sized) -> mesh -> PLY. Returns triangles."""
    import cv2
    import open3d as o3d

    from pipeline.fuse import open3d_intrinsics
    from pipeline.images import MM_PER_M
    from pipeline.geometry import scale_intrinsics
    from pipeline.readers import open_capture

    source = open_capture(capture)
    f32 = o3d.core.float32
    grid = o3d.t.geometry.VoxelBlockGrid(attr_names=("tsdf", "weight", "color"), attr_dtypes=(f32, f32, f32),
                                         attr_channels=((1), (1), (3)), voxel_size=voxel_size_m,
                                         block_resolution=8, block_count=NAIVE_BLOCK_COUNT,
                                         device=o3d.core.Device("CPU:0"))
    for frame in source.frames():
        depth_m = cv2.resize(frame.load_depth_m(), depth_wh, interpolation=cv2.INTER_LINEAR)
        depth = o3d.t.geometry.Image(o3d.core.Tensor((depth_m * MM_PER_M).astype(np.uint16)))
        color = o3d.t.geometry.Image(o3d.core.Tensor(frame.load_rgb()))
        K_depth = o3d.core.Tensor(open3d_intrinsics(scale_intrinsics(frame.K_rgb, frame.rgb_size, depth_wh)))
        K_color = o3d.core.Tensor(open3d_intrinsics(frame.K_rgb))
        extrinsic = o3d.core.Tensor(np.linalg.inv(frame.camera_to_world))
        blocks = grid.compute_unique_block_coordinates(depth, K_depth, extrinsic, MM_PER_M, 5.0, 4.0)
        grid.integrate(blocks, depth, color, K_depth, K_color, extrinsic, MM_PER_M, 5.0, 4.0)
    mesh = grid.extract_triangle_mesh(weight_threshold=0.5)
    o3d.t.io.write_triangle_mesh(str(out_ply), mesh)
    return int(mesh.triangle.indices.shape[0])


def _run_variant(capture: Path, workdir: Path, extra: Sequence[str], fresh: bool,
                 checkout: Optional[Path] = None) -> dict:
    """`promptmesh run` from this checkout, or from `checkout` (a folder holding another version's pipeline/)."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    m = check(run_measured(promptmesh_cmd("-q", "run", str(capture), "-o", str(workdir), "--depth-model", "lidar",
                                          *extra), cwd=checkout), f"promptmesh run {' '.join(extra)}")
    timings = json.loads(WorkDir(workdir).timings_json.read_text())["seconds"]
    ingest_summary = json.loads((WorkDir(workdir).capture / "manifest.json").read_text())["summary"]
    fuse_summary = json.loads((WorkDir(workdir).fuse / "manifest.json").read_text())["summary"]
    mesh_summary = json.loads((WorkDir(workdir).mesh_stage / "manifest.json").read_text())["summary"]
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "rss": m.peak_rss_bytes, **{s: timings.get(s, 0.0) for s in STAGES},
            "integrate": fuse_summary["seconds_integrate"], "save": fuse_summary["seconds_save"],
            "triangles": mesh_summary["triangles"], "frames": ingest_summary["kept"],
            "voxel_size_m": fuse_summary.get("voxel_size_m")}


CULL_CAMERAS = 100
"""At most this many of the capture's cameras (evenly strided) cull the GT for the F-scores (culling renders
the GT from each camera: minutes for hundreds)."""


def culled_fscores(meshes: dict[str, Path], gt_mesh: Path, cameras_workdir: Path) -> dict[str, float]:
    """Culled F@5cm (default EvalConfig, cameras strided to at most CULL_CAMERAS) of each mesh against
    `gt_mesh`, culled with the cameras of `cameras_workdir`'s capture at the capture's poses (the same for
    every mesh)."""
    from pipeline.capture import CaptureTable
    from pipeline.config import EvalConfig
    from pipeline.evaluate import SEED_PRED, load_ground_truth, load_mesh, sampled_points, score_meshes

    table = CaptureTable.load(cameras_workdir)
    cfg = EvalConfig(cull_stride=-(-len(table) // CULL_CAMERAS))
    gt = load_ground_truth(gt_mesh, cfg)
    return {name: score_meshes(sampled_points(*load_mesh(path, "mesh"), cfg, SEED_PRED), gt, table,
                               table.camera_to_world, cfg).culled["fscore"] for name, path in meshes.items()}


def benchmark(capture: Path, work: Path, repeats: int, before: Optional[Path],
              all_frames: bool = True) -> dict[str, list[dict]]:
    variants = {
        "naive": None,
        **({"run_all": ["--all-frames", "--voxel-size", "0.01"]} if all_frames else {}),
        "run_default": [],
        **({"before": []} if before else {}),
    }
    results: dict[str, list[dict]] = {name: [] for name in (*variants, "warm")}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            log.info("repeat %d/%d: %s (load %s)", r + 1, repeats, name, load_average())
            if name == "naive":
                out = work / "naive.ply"
                m = check(run_measured([sys.executable, __file__, "--naive", str(capture), str(out)]), "naive script")
                results[name].append({"wall_s": m.wall_s, "cpu_s": m.cpu_s, "rss": m.peak_rss_bytes})
            else:
                results[name].append(_run_variant(capture, work / name, variants[name], fresh=True,
                                                  checkout=before if name.startswith("before") else None))
                if name == "run_default":
                    results["warm"].append(_run_variant(capture, work / name, variants[name], fresh=False))
        if r == 0 and (capture / "gt_mesh.ply").is_file():
            meshes = {"naive": work / "naive.ply", **{n: work / n / "mesh.ply" for n in variants if n != "naive"}}
            results["fscore"] = [culled_fscores(meshes, capture / "gt_mesh.ply", work / "run_all" if all_frames
                                                else work / "run_default")]
    return results


def table(results: dict[str, list[dict]], frames: int, load_before: str, load_after: str, repeats: int,
          before_label: str = "before this work", describe: str = "hard room, 1920x1440 HEVC video at 30 fps, "
                                                                 "256x192 LiDAR") -> str:
    def med(name: str, key: str) -> float:
        return median([r[key] for r in results[name]])

    naive = med("naive", "wall_s")

    def ratios(name: str) -> list[float]:  # each repeat against the naive script of the same repeat
        return [r["wall_s"] / n["wall_s"] for r, n in zip(results[name], results["naive"])]

    fscore = (results.get("fscore") or [{}])[0]
    cameras = (f"one in {-(-frames // CULL_CAMERAS)} of all {frames} frames" if results.get("run_all") else
               "those of the keyframes")

    def f_cell(name: str) -> str:
        return f"{fscore[name]:.3f}" if name in fscore else ""

    rows = [("naive one-pass script (every frame, 1 cm)", None),
            *([(f"`run` {before_label} (same command)", "before")] if results.get("before") else []),
            *([("`run --all-frames --voxel-size 0.01`", "run_all")] if results.get("run_all") else []),
            ("`run` (defaults: keyframes, automatic voxel)", "run_default"),
            ("`run` again, all stages up to date", "warm")]
    lines = ["| | frames fused | ingest | depth | fuse (integrate / save) | mesh | total wall | vs naive (each repeat) | "
             "CPU time | peak RSS | culled F@5cm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, name in rows:
        if name is None:
            lines.append(f"| {label} | {frames} | | | | | {naive:.1f} s | 1.00 | {med('naive', 'cpu_s'):.1f} s | "
                         f"{med('naive', 'rss') / 2**30:.2f} GiB | {f_cell('naive')} |")
            continue
        wall = med(name, "wall_s")
        fuse = f"{med(name, 'fuse'):.1f} s" + ("" if name == "warm" else
                                               f" ({med(name, 'integrate'):.1f} / {med(name, 'save'):.2f})")
        lines.append(f"| {label} | {results[name][0]['frames']} | {med(name, 'ingest'):.1f} s | "
                     f"{med(name, 'depth'):.1f} s | {fuse} | "
                     f"{med(name, 'mesh'):.1f} s | {wall:.1f} s | **{median(ratios(name)):.2f}** "
                     f"({', '.join(f'{x:.2f}' for x in ratios(name))}) | "
                     f"{med(name, 'cpu_s'):.1f} s | {med(name, 'rss') / 2**30:.2f} GiB | "
                     f"{f_cell(name if name != 'warm' else 'run_default')} |")
    return "\n".join(lines) + (
        f"\n\n{frames}-frame synthetic capture ({describe}), median of {repeats} "
        f"repeats (order alternated), `promptmesh -q run CAPTURE -o WORK --depth-model lidar` as a subprocess, "
        f"wall time including Python start-up; stage times from WORKDIR/timings.json; CPU time = user + system time of "
        f"the process (all threads: the work done, less sensitive to other people's jobs than wall time); peak RSS = the "
        f"process's own maximum resident set size. Machine: {machine_line()}; 1-minute load average {load_before} before, "
        f"{load_after} after (the machine is shared). `vs naive` = wall time / the naive script's wall time in the same "
        f"repeat: the median, then each repeat (robust to the load changing between repeats); culled F@5cm against the "
        f"GT mesh, every mesh culled with the same cameras ({cameras}).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, help="Stray capture to use (default: render one into --cache)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the capture and work directories")
    ap.add_argument("--frames", type=int, default=200, help="frames of the rendered capture")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the rendered capture (one loop of the "
                    "room in --frames frames)")
    ap.add_argument("--width", type=int, default=1920, help="RGB width of the rendered capture")
    ap.add_argument("--height", type=int, default=1440, help="RGB height of the rendered capture")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('End to end')")
    ap.add_argument("--before", type=Path, help="a folder holding an older version's pipeline/ (e.g. from "
                    "`git archive REV pipeline | tar -x -C DIR`), timed with the same command")
    ap.add_argument("--before-label", default="before this work", help="how the table names --before's version")
    ap.add_argument("--no-all-frames", dest="all_frames", action="store_false",
                    help="leave out the `run --all-frames` variant (long captures)")
    ap.add_argument("--naive", nargs=2, type=Path, metavar=("CAPTURE", "OUT_PLY"),
                    help="only run the naive one-pass script (what the benchmark times in a subprocess)")
    args = ap.parse_args(argv)
    if args.naive:
        t0 = time.perf_counter()
        n = naive_one_pass(*args.naive)
        print(f"naive: {n} triangles in {time.perf_counter() - t0:.1f} s")
        return 0
    setup_logging()
    name = f"room{args.frames}_{args.width}x{args.height}" + (f"_{args.fps:g}fps" if args.fps != 30 else "")
    capture = args.capture or synthetic_capture(args.cache / name, args.frames, args.width, args.height, fps=args.fps)
    work = args.cache / "run" / name
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    results = benchmark(capture, work, args.repeats, args.before, args.all_frames)
    text = table(results, args.frames, load_before, load_average(), args.repeats, args.before_label,
                 f"hard room, {args.width}x{args.height} HEVC video at {args.fps:g} fps, 256x192 LiDAR")
    print(text)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if args.write:
        default = (args.frames, args.fps, args.width, args.height) == (200, 30.0, 1920, 1440)
        write_table(BENCHMARKS_MD, "End to end", "bench_run.py" if default else f"bench_run.py {name}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
