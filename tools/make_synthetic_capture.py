#!/usr/bin/env python
"""Render a synthetic iPhone LiDAR capture with ground truth, in the phone apps' formats.

A textured room (`easy`: a box room with a few boxes; `hard`: thin chair/table legs and plant stems, an
open shelf, a glass pane, dark glossy surfaces, a doorway to a wall 7.5 m away, and ~1.5 cm / 0.3 deg of
ARKit-like pose drift; --drift-m / --drift-deg set any size, for either room) is ray cast along a smooth
handheld loop (tools/synthetic_scene.py) and written as

    OUT_DIR/stray/            Stray Scanner folder (rgb.mp4, depth/, confidence/, odometry.csv, camera_matrix.csv,
                              and gt_depth/NNNNNN.png: GT z-depth, uint16 mm, at --gt-depth-size)
    OUT_DIR/capture.r3d       Record3D .r3d                       (--layouts r3d)
    OUT_DIR/r3d_export/       Record3D EXR+JPG export             (--layouts r3d-exr)
    OUT_DIR/3dscannerapp/     3D Scanner App "All Data" folder    (--layouts 3dscannerapp)
    OUT_DIR/gt_mesh.ply       GT mesh, world frame (y up), metres, vertex colours = base albedo
    OUT_DIR/gt_poses.npy      (N,4,4) true camera_to_world, OpenCV camera axes (RGB, LiDAR and GT depth use these)
    OUT_DIR/written_poses.npy (N,4,4) the poses written into the captures (= gt_poses plus drift for `hard`)
    OUT_DIR/K_rgb.npy         (3,3) intrinsics at RGB resolution, pixels

With --flat (Stray only) the Stray folder is OUT_DIR itself, with the GT files inside it: that is how
sample_captures/synthetic_room/ is made. Deterministic given --seed; frames are generated one at a time
(memory does not grow with --frames), once per layout.

Example:
    python tools/make_synthetic_capture.py /tmp/room --scene hard --frames 120 --layouts stray,r3d
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import open3d as o3d
from tqdm import tqdm

from capture_writers import WriterFrame, write_3dscannerapp, write_r3d, write_r3d_export, write_stray
from pipeline.artifacts import atomic_output
from pipeline.geometry import scale_intrinsics
from synthetic_scene import (SCENES, LidarModel, Renderer, Scene, arkit_intrinsics, camera_trajectory,
                             drifted_poses, lidar_intrinsics, scene_mesh, shade, simulate_lidar)

log = logging.getLogger(__name__)

LAYOUTS = {"stray": "stray", "r3d": "capture.r3d", "r3d-exr": "r3d_export", "3dscannerapp": "3dscannerapp"}
"""Layout name -> where it goes under OUT_DIR."""
STRAY_SUBDIRS = ("depth", "confidence", "gt_depth")


def iter_frames(scene: Scene, true_poses: np.ndarray, written_poses: np.ndarray, K_rgb: np.ndarray,
                rgb_size: tuple[int, int], fps: float, seed: int, gt_depth_size: Optional[tuple[int, int]] = None,
                lidar_model: LidarModel = LidarModel(), desc: str = "render") -> Iterator[WriterFrame]:
    """Render frames one at a time.

    RGB, LiDAR and GT depth come from `true_poses`; each frame carries `written_poses[i]`. GT depth is the
    z-depth at `gt_depth_size` (W, H) (default the RGB size), rendered with K_rgb scaled to that size.
    Frame i's noise is seeded by (seed, i), so any layout, order or subset of frames renders identically.
    """
    renderer = Renderer(scene)
    K_lidar, lidar_wh = lidar_intrinsics(K_rgb, rgb_size)
    gt_size = tuple(gt_depth_size or rgb_size)
    K_gt = scale_intrinsics(K_rgb, rgb_size, gt_size)
    for i in tqdm(range(len(true_poses)), desc=desc, unit="frame", disable=None):
        T = true_poses[i]
        seen = renderer.render(T, K_rgb, *rgb_size)
        gt = seen.depth_m if gt_size == tuple(rgb_size) else renderer.render(T, K_gt, *gt_size).depth_m
        lidar = simulate_lidar(renderer, T, K_lidar, lidar_wh, np.random.default_rng([seed, 3, i]), lidar_model)
        yield WriterFrame(rgb=shade(scene, seen, T[:3, 3], seed), depth_m=lidar.depth_m, confidence=lidar.confidence,
                          camera_to_world=written_poses[i].copy(), timestamp_s=i / fps, gt_depth_m=gt)


def _write_layout(layout: str, path: Path, frames: Iterator[WriterFrame], K_rgb: np.ndarray, fps: float,
                  codec: str) -> Path:
    if layout == "stray":
        return write_stray(path, frames, K_rgb, fps=fps, codec=codec)
    if layout == "r3d":
        return write_r3d(path, frames, K_rgb, fps=fps)
    if layout == "r3d-exr":
        return write_r3d_export(path, frames, K_rgb, fps=fps)
    return write_3dscannerapp(path, frames, K_rgb)


def make_capture(out_dir: Path, scene: str = "easy", n_frames: int = 60, width: int = 640, height: int = 480,
                 layouts: Sequence[str] = ("stray",), seed: int = 0, fps: float = 30.0, codec: str = "hevc",
                 gt_depth_size: Optional[tuple[int, int]] = None, flat: bool = False,
                 drift_m: Optional[float] = None, drift_deg: Optional[float] = None) -> dict[str, Path]:
    """Render and write a synthetic capture; returns {layout name or "gt_mesh" / "gt_poses" /
    "written_poses" / "K_rgb": path}.

    Args:
        out_dir: output folder (created). A layout's previous output there is replaced.
        scene: "easy" or "hard".
        n_frames, width, height, fps: capture length and RGB size (pixels); LiDAR is 256 wide, same aspect.
        layouts: any of "stray", "r3d", "r3d-exr", "3dscannerapp".
        seed: noise, trajectory jitter and drift direction; same seed -> same bytes of depth and poses.
        codec: Stray video codec, "hevc" (ffmpeg/libx265) or "mp4v".
        gt_depth_size: (W, H) of the Stray gt_depth/ PNGs (default the RGB size).
        flat: write the (single, Stray) layout directly into out_dir, GT files beside it.
        drift_m, drift_deg: ARKit-like drift of the written poses at the last frame (camera centre, metres;
            orientation, degrees), growing smoothly from zero at the first frame (`drifted_poses`); None = the
            scene's own (hard 1.5 cm / 0.3 deg, easy none).
    """
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; choose from {sorted(SCENES)}")
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown or not layouts:
        raise ValueError(f"unknown layouts {unknown}; choose from {sorted(LAYOUTS)}")
    if flat and list(layouts) != ["stray"]:
        raise ValueError(f"flat output needs exactly the stray layout, got {list(layouts)}")
    if n_frames < 1 or width < 2 or height < 2:
        raise ValueError(f"need frames >= 1 and a size of at least 2x2, got {n_frames} frames, {width}x{height}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sc = SCENES[scene]()
    K_rgb = arkit_intrinsics(width, height)
    true_poses = camera_trajectory(sc, n_frames, fps, seed)
    written = drifted_poses(true_poses, sc.drift_m if drift_m is None else drift_m,
                            sc.drift_deg if drift_deg is None else drift_deg, seed)
    log.info("synthetic %s capture: %d frames at %dx%d, seed %d, layouts %s -> %s",
             scene, n_frames, width, height, seed, ",".join(layouts), out_dir)

    paths: dict[str, Path] = {}
    for layout in layouts:
        target = out_dir if flat else out_dir / LAYOUTS[layout]
        for old in ([target / d for d in STRAY_SUBDIRS] if flat else [target]):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        frames = iter_frames(sc, true_poses, written, K_rgb, (width, height), fps, seed,
                             gt_depth_size if layout == "stray" else None, desc=layout)
        paths[layout] = _write_layout(layout, target, frames, K_rgb, fps, codec)

    paths["gt_mesh"] = out_dir / "gt_mesh.ply"
    with atomic_output(paths["gt_mesh"]) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), scene_mesh(sc), write_ascii=False, compressed=True):
            raise OSError(f"could not write {paths['gt_mesh']}")
    for name, array in (("gt_poses", true_poses), ("written_poses", written), ("K_rgb", K_rgb)):
        paths[name] = out_dir / f"{name}.npy"
        with atomic_output(paths[name]) as tmp:
            np.save(tmp, array)
    seconds = time.perf_counter() - start
    log.info("wrote %s in %.1f s (%.1f frames/s over all layouts)", ", ".join(str(p) for p in paths.values()),
             seconds, n_frames * len(layouts) / seconds)
    return paths


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 320x240, got {text!r}") from None
    return w, h


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python tools/make_synthetic_capture.py /tmp/room --scene hard "
                                        "--frames 120 --layouts stray,r3d")
    ap.add_argument("out_dir", type=Path, help="output folder")
    ap.add_argument("--scene", choices=sorted(SCENES), default="easy")
    ap.add_argument("--frames", type=int, default=60, help="number of frames (one loop around the room)")
    ap.add_argument("--width", type=int, default=640, help="RGB width, pixels (ARKit: 1920)")
    ap.add_argument("--height", type=int, default=480, help="RGB height, pixels (ARKit: 1440)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--layouts", default="stray",
                    help=f"comma-separated, any of {','.join(LAYOUTS)} (default stray)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", choices=("hevc", "mp4v"), default="hevc", help="Stray rgb.mp4 codec")
    ap.add_argument("--gt-depth-size", type=_size, default=None, metavar="WxH",
                    help="size of the Stray gt_depth/ PNGs (default: the RGB size)")
    ap.add_argument("--drift-m", type=float, default=None,
                    help="pose drift at the last frame, metres (default: the scene's, hard 0.015, easy 0)")
    ap.add_argument("--drift-deg", type=float, default=None,
                    help="orientation drift at the last frame, degrees (default: the scene's, hard 0.3, easy 0)")
    ap.add_argument("--flat", action="store_true",
                    help="write the Stray capture directly into OUT_DIR (GT files inside it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    try:
        make_capture(args.out_dir, scene=args.scene, n_frames=args.frames, width=args.width, height=args.height,
                     layouts=[s.strip() for s in args.layouts.split(",") if s.strip()], seed=args.seed, fps=args.fps,
                     codec=args.codec, gt_depth_size=args.gt_depth_size, flat=args.flat, drift_m=args.drift_m,
                     drift_deg=args.drift_deg)
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
