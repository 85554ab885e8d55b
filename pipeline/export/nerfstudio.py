"""Export preset `nerfstudio`: WORKDIR/export/nerfstudio/ in nerfstudio's `nerfstudio-data` format, for NeRF and
Gaussian splatting (nerfstudio's nerfacto / depth-nerfacto / splatfacto, gsplat) with dense metric depth.

    transforms.json    camera_model OPENCV (k1 k2 p1 p2 = 0), fl_x fl_y cx cy w h, ply_file_path; per frame
                       file_path, transform_matrix, depth_file_path
    images/<stem>.jpg  the kept RGB frames, unchanged (hard links to capture/rgb/ where the filesystem allows)
    depth/<stem>.png   uint16 millimetres at the image's size, 0 = invalid: the depth maps the mesh was fused from
                       (depth/<model>/, PromptDA's when it ran), resized nearest-neighbour, bilinear where
                       that agrees with the nearest depth within 2 % (no depth is blended across an edge)
    sparse_pc.ply      points of the mesh with their colours (splatfacto starts its Gaussians there)

Conventions that bite:
- Camera axes: nerfstudio's are OpenGL's (x right, y up, the camera looks down -z); ours are OpenCV's. So
  transform_matrix = camera_to_world @ diag(1, -1, -1, 1), with the pose each frame was fused with (after pose
  refinement, fuse/poses.parquet). World: the capture's own, metres; nerfstudio's dataparser orients, centres
  and scales it itself (and scales the depth with it), so nothing here is recentred.
- Pixel centres: nerfstudio casts the ray of pixel (row i, column j) through (j + 0.5, i + 0.5), i.e. the image
  spans [0, W] x [0, H]; promptmesh (OpenCV) puts pixel centres at integer coordinates. So cx, cy are ours + 0.5.
- Depth units: nerfstudio reads depth PNGs times `depth_unit_scale_factor`, 1e-3 by default: millimetres, as
  written here. The values are z-depth (along the camera's -z axis), not distance along the ray.
- Intrinsics: nerfstudio ignores per-frame intrinsics when transforms.json has top-level ones, so they are top
  level when every frame has the same (within 1e-6 px) and per frame otherwise (ARKit's focal length can change
  with autofocus).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..artifacts import (Manifest, atomic_write_bytes, atomic_write_text, fingerprint, invalidate, is_current,
                         remove_tree, write_png_atomic)
from ..capture import CaptureTable
from ..config import ExportConfig
from ..depth.classical import resize_lidar
from ..errors import PromptmeshError
from ..geometry import FLIP_YZ
from ..images import read_depth_mm
from ..mesh import MeshArrays, read_ply, write_ply
from ..poses import fused_camera_to_world
from ..workdir import WorkDir
from .source import mesh_fingerprint

log = logging.getLogger(__name__)

PRESET = "nerfstudio"
FORMAT_VERSION = 2
"""Bumped when the files written change for the same inputs (part of the fingerprint)."""
SAME_INTRINSICS_PX = 1e-6
POINT_CLOUD = "sparse_pc.ply"
SMOOTH_SHARE = 0.02
"""`depth_at_image_size` interpolates where the bilinear depth is within this share of the nearest one."""


def opengl_camera_to_world(camera_to_world: np.ndarray) -> np.ndarray:
    """(..., 4, 4) camera-to-world with OpenCV camera axes -> the same pose with OpenGL camera axes (x right, y up,
    looking down -z), as nerfstudio's transform_matrix. Flipping y and z twice is the identity."""
    return np.asarray(camera_to_world, np.float64) @ FLIP_YZ


def nerfstudio_intrinsics(K: np.ndarray, width: int, height: int) -> dict:
    """fl_x, fl_y, cx, cy, w, h of a pinhole K (pixels, OpenCV: pixel centres at integer coordinates) in
    nerfstudio's convention (pixel centres at + 0.5)."""
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]) + 0.5, "cy": float(K[1, 2]) + 0.5,
            "w": int(width), "h": int(height)}


def transforms(table: CaptureTable, camera_to_world: np.ndarray, image_paths: list[str], depth_paths: list[str],
               ply_path: str | None) -> dict:
    """The transforms.json dictionary (see the module docstring). `camera_to_world` (N,4,4) OpenCV axes; paths
    relative to transforms.json's folder."""
    intrinsics = [nerfstudio_intrinsics(table.K_rgb[i], table.width[i], table.height[i]) for i in range(len(table))]
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h")
    shared = all(abs(x[k] - intrinsics[0][k]) <= SAME_INTRINSICS_PX for x in intrinsics for k in keys)
    meta: dict = {"camera_model": "OPENCV", **(intrinsics[0] if shared else {}),
                  "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    if ply_path is not None:
        meta["ply_file_path"] = ply_path
    gl = opengl_camera_to_world(camera_to_world)
    meta["frames"] = [{"file_path": image_paths[i], "depth_file_path": depth_paths[i],
                       "transform_matrix": gl[i].tolist(), **({} if shared else intrinsics[i])}
                      for i in range(len(table))]
    return meta


def _json_with_flat_rows(obj: dict) -> str:
    """Indented JSON whose innermost lists (matrix rows) stay on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
                  text) + "\n"


def depth_at_image_size(depth_mm: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h', w') uint16 depth -> (height, width) in `geometry.scale_intrinsics`' mapping (pixel (x, y) takes the
    depth at (x w'/width, y h'/height)): the nearest pixel's depth, or the bilinear one where that is within
    `SMOOTH_SHARE` of it (a smooth surface, no staircase). So depth edges and holes (0) stay unblended; a map
    already at that size is returned as is."""
    if depth_mm.shape == (height, width):
        return depth_mm
    h, w = depth_mm.shape
    rows = np.minimum(np.floor(np.arange(height) * (h / height) + 0.5).astype(np.intp), h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (w / width) + 0.5).astype(np.intp), w - 1)
    nearest = depth_mm[rows][:, cols]
    bilinear = resize_lidar(depth_mm.astype(np.float32), (height, width))
    smooth = (nearest > 0) & (np.abs(bilinear - nearest) <= SMOOTH_SHARE * nearest.astype(np.float32))
    return np.where(smooth, np.rint(bilinear), nearest).astype(np.uint16)


def link_or_copy(src: Path, dst: Path) -> Path:
    """`dst` with the bytes of `src`, atomically: a hard link where the filesystem allows, else a copy."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        return atomic_write_bytes(dst, Path(src).read_bytes())
    os.replace(tmp, dst)
    return dst


def mesh_points(mesh: MeshArrays, n_points: int, seed: int = 0) -> MeshArrays:
    """At most `n_points` of the mesh's vertices (a seeded uniform choice; TSDF mesh vertices are spread evenly
    over the surface) with their colours, and no triangles."""
    keep = np.arange(len(mesh.vertices))
    if len(keep) > n_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), n_points, replace=False))
    return MeshArrays(mesh.vertices[keep], np.zeros((0, 3), np.int64), mesh.colors[keep])


def fused_depth_model(wd: WorkDir) -> str:
    """The depth model whose maps the mesh was fused from (fuse/manifest.json)."""
    manifest = Manifest.read(wd.fuse)
    model = manifest.settings.get("depth_model") if manifest is not None else None
    if not model:
        raise PromptmeshError(f"{Manifest.path_in(wd.fuse)}: missing or names no depth model; rerun "
                              f"`promptmesh fuse {wd.root}`")
    return model


def run(cfg: ExportConfig, workdir: Path, force: bool = False) -> list[Path]:
    """Write WORKDIR/export/nerfstudio/ (see the module docstring); returns [transforms.json, images/, depth/,
    sparse_pc.ply (when written)]."""
    wd = WorkDir(workdir)
    out = wd.export(PRESET)
    upstream = mesh_fingerprint(wd)  # covers frames, depth, fusion and the fused poses
    settings = {"point_cloud_points": cfg.point_cloud_points, "format_version": FORMAT_VERSION}
    stamp = fingerprint(f"export-{PRESET}", settings, [upstream])
    ply = cfg.point_cloud_points > 0
    paths = [out / "transforms.json", out / "images", out / "depth"] + ([out / POINT_CLOUD] if ply else [])
    if not force and is_current(out, stamp):
        log.info("export %s: up to date (%s)", PRESET, out)
        return paths

    t0 = time.perf_counter()
    table = CaptureTable.load(wd)
    camera_to_world = fused_camera_to_world(wd, table)
    model = fused_depth_model(wd)
    depth_dir = wd.depth(model)
    log.info("export %s: %d frames, depth of %s at the image size, %s", PRESET, len(table), model,
             f"{cfg.point_cloud_points} points" if ply else "no point cloud")
    invalidate(out)
    for folder in ("images", "depth"):  # a previous export's frames may not all be kept now
        remove_tree(out / folder)
    (out / POINT_CLOUD).unlink(missing_ok=True)
    image_paths, depth_paths = [], []
    for i in tqdm(range(len(table)), desc=f"export {PRESET}", unit="frame", disable=None, leave=False):
        stem, rgb = table.stem(i), table.root / table.rgb_path[i]
        image_paths.append(f"images/{stem}{rgb.suffix}")
        depth_paths.append(f"depth/{stem}.png")
        if not rgb.is_file():
            raise PromptmeshError(f"{rgb}: RGB frame missing; rerun `promptmesh ingest CAPTURE -o {wd.root} --force`")
        link_or_copy(rgb, out / image_paths[-1])
        depth_mm = read_depth_mm(depth_dir / f"{stem}.png", f"rerun `promptmesh depth {wd.root} --force`")
        depth_mm = depth_at_image_size(depth_mm, int(table.width[i]), int(table.height[i]))
        write_png_atomic(out / depth_paths[-1], depth_mm)
    if ply:
        write_ply(mesh_points(read_ply(wd.mesh("ply")), cfg.point_cloud_points), out / POINT_CLOUD)
    meta = transforms(table, camera_to_world, image_paths, depth_paths, POINT_CLOUD if ply else None)
    atomic_write_text(paths[0], _json_with_flat_rows(meta))
    seconds = time.perf_counter() - t0
    outputs = ["transforms.json"] + image_paths + depth_paths + ([POINT_CLOUD] if ply else [])
    Manifest(f"export-{PRESET}", stamp, outputs=outputs, settings=settings,
             summary={"frames": len(table), "depth_model": model, "seconds": round(seconds, 3)}).write(out)
    log.info("export %s: %d frames (depth of %s) in %.1f s -> %s", PRESET, len(table), model, seconds, paths[0])
    return paths
