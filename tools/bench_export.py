"""Benchmark of `promptmesh export --preset ar` on the README's sample capture (docs/benchmarks.md, "AR export").

Measures, on one work directory made by `promptmesh run sample_captures/synthetic_room`:
- the export's wall and CPU time (subprocess, `--force`, default settings: <= 300k triangles, 4096 px texture),
  median of --repeats, and its stage split from the manifest;
- the files' sizes beside the full-resolution mesh.ply / mesh.glb;
- the decimated mesh's mean / p95 distance to the full mesh (from the manifest);
- texture fidelity: the exported GLB and the full-resolution vertex-coloured mesh.ply ray cast from the capture
  poses (every --frame-stride-th frame) and compared with the RGB frames on the same pixels (PSNR);
- the UV atlas: ours (pipeline/export/texture.build_atlas) against Open3D's compute_uvatlas on the same
  decimated mesh (--atlas-triangles), alternating, median of --repeats: the ratio that chose our own packer.

    python3 tools/bench_export.py --write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, REPO, check, load_average, machine_line, median,  # noqa: E402
                          promptmesh_cmd, run_measured, setup_logging, write_table)

SAMPLE = REPO / "sample_captures" / "synthetic_room"


def fidelity(workdir: Path, frame_stride: int) -> tuple[dict[str, float], int, int]:
    """PSNR of export/ar/mesh.glb and of mesh.ply against the frames on the same pixels."""
    import cv2

    from pipeline.capture import CaptureTable
    from pipeline.export.fidelity import ColoredMesh, frame_psnr, glb_mesh
    from pipeline.mesh import read_ply
    from pipeline.poses import fused_camera_to_world
    from pipeline.workdir import WorkDir

    wd = WorkDir(workdir)
    table = CaptureTable.load(wd)
    camera_to_world = fused_camera_to_world(wd, table)
    rows = list(range(0, len(table), frame_stride))
    full = read_ply(wd.mesh("ply"))

    def frames():
        for i in rows:
            rgb = cv2.cvtColor(cv2.imread(str(table.root / table.rgb_path[i])), cv2.COLOR_BGR2RGB)
            yield rgb, table.K_rgb[i], camera_to_world[i]

    meshes = {"export/ar/mesh.glb (texture)": glb_mesh(wd.export("ar") / "mesh.glb"),
              "mesh.ply (vertex colours)": ColoredMesh(full.vertices, full.triangles, colors=full.colors)}
    psnr, n_pixels = frame_psnr(meshes, frames())
    return psnr, n_pixels, len(rows)


def _open3d_uvatlas(vertices: np.ndarray, triangles: np.ndarray, size_px: int) -> None:
    import open3d as o3d

    m = o3d.t.geometry.TriangleMesh(o3d.core.Tensor(vertices.astype(np.float32)),
                                    o3d.core.Tensor(triangles.astype(np.int64)))
    m.compute_uvatlas(size=size_px, parallel_partitions=2, nthreads=2)


def atlas_timings(workdir: Path, n_triangles: int, size_px: int, repeats: int, limit_s: float
                  ) -> dict[str, list[float]]:
    """Seconds of build_atlas and of Open3D's compute_uvatlas (in a child process, stopped after limit_s:
    recorded as inf) on mesh.ply decimated to n_triangles, alternating."""
    import multiprocessing

    from pipeline.config import ExportConfig
    from pipeline.export.texture import build_atlas
    from pipeline.mesh import decimate, read_ply
    from pipeline.workdir import WorkDir

    light = decimate(read_ply(WorkDir(workdir).mesh("ply")), n_triangles)
    times: dict[str, list[float]] = {"ours": [], "open3d": []}
    for r in range(repeats):
        for name in (("ours", "open3d") if r % 2 == 0 else ("open3d", "ours")):
            t0 = time.perf_counter()
            if name == "ours":
                build_atlas(light.vertices, light.triangles, size_px, ExportConfig().padding_px)
            else:
                child = multiprocessing.get_context("fork").Process(
                    target=_open3d_uvatlas, args=(light.vertices, light.triangles, size_px))
                child.start()
                child.join(limit_s)
                if child.is_alive():
                    child.kill()
                    child.join()
                    times[name].append(float("inf"))
                    continue
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, default=SAMPLE)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_CACHE / "export-sample")
    ap.add_argument("--repeats", type=int, default=1, help="export runs (each takes minutes on 2 cores)")
    ap.add_argument("--atlas-triangles", type=int, default=20_000)
    ap.add_argument("--atlas-repeats", type=int, default=1)
    ap.add_argument("--atlas-limit-s", type=float, default=300, help="stop compute_uvatlas after this long")
    ap.add_argument("--frame-stride", type=int, default=3, help="fidelity: every n-th frame")
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('AR export')")
    args = ap.parse_args(argv)
    setup_logging()
    from pipeline.artifacts import Manifest
    from pipeline.workdir import WorkDir

    wd = WorkDir(args.workdir)
    check(run_measured(promptmesh_cmd("-q", "run", str(args.capture), "-o", str(wd.root), "--format", "glb")),
          "promptmesh run")
    load_before = load_average()
    runs = [check(run_measured(promptmesh_cmd("-q", "export", str(wd.root), "--preset", "ar", "--force")),
                  "promptmesh export") for _ in range(args.repeats)]
    load_after = load_average()
    summary = Manifest.read(wd.export("ar")).summary
    psnr, n_pixels, n_frames = fidelity(wd.root, args.frame_stride)
    atlas = atlas_timings(wd.root, args.atlas_triangles, 1024, args.atlas_repeats, args.atlas_limit_s)
    load_end = load_average()

    mib = 2 ** 20
    sizes = {name: (wd.root / name).stat().st_size for name in ("mesh.ply", "mesh.glb")}
    sizes.update({f"export/ar/{name}": n for name, n in summary["bytes"].items()})
    wall = median([r.wall_s for r in runs])
    cpu = median([r.cpu_s for r in runs])
    ratio = median(atlas["open3d"]) / median(atlas["ours"])
    open3d_text = (f"{median(atlas['open3d']):.1f} s" if np.isfinite(median(atlas["open3d"]))
                   else f"not done after {args.atlas_limit_s:.0f} s (stopped)")
    lines = [
        f"`python3 tools/bench_export.py --write` on `{args.capture.relative_to(REPO) if args.capture.is_relative_to(REPO) else args.capture}` "
        f"({machine_line()}; 1-minute load {load_before} before, {load_after} after the export, {load_end} at the end; "
        "other engineers' jobs share the machine).",
        "",
        f"`promptmesh export W --preset ar --force`, default settings (<= 300k triangles, 4096 px texture): "
        f"**{wall:.1f} s** wall, {cpu:.1f} s CPU (median of {len(runs)}); inside: decimation and its distance "
        f"measure {summary['seconds_decimate']:.1f} s, atlas + bake + files the rest.",
        "",
        f"Decimation {summary['triangles_full']:,} -> {summary['triangles']:,} triangles: distance to the full mesh "
        f"mean **{1000 * summary['distance_to_full_mean_m']:.2f} mm**, p95 **{1000 * summary['distance_to_full_p95_m']:.2f} mm**; "
        f"{100 * summary['texels_seen_share']:.1f} % of the covered texels seen by a frame.",
        "",
        f"Texture fidelity, ray cast from {n_frames} capture poses (one frame in {args.frame_stride}) on the "
        f"{n_pixels:,} pixels both meshes hit at the same depth (3 cm), against the RGB frames:",
        "",
        "| mesh | PSNR |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} dB |" for name, value in psnr.items()],
        "",
        "| file | size |",
        "|---|---:|",
        *[f"| {name} | {n / mib:.1f} MiB |" for name, n in sizes.items()],
        "",
        f"UV atlas of mesh.ply decimated to {args.atlas_triangles:,} triangles, 1024 px, alternating, median of "
        f"{args.atlas_repeats}: ours (`texture.build_atlas`) {median(atlas['ours']):.2f} s, Open3D "
        f"`compute_uvatlas` {open3d_text}"
        + (f": **{ratio:.0f}x**." if np.isfinite(ratio) else f": over **{args.atlas_limit_s / median(atlas['ours']):.0f}x**."),
    ]
    table = "\n".join(lines)
    print(table)
    print(json.dumps({"psnr": psnr, "summary": summary, "atlas": atlas}, indent=1))
    if args.write:
        write_table(BENCHMARKS_MD, "AR export", "bench_export", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
