"""Export preset `ar`: light, textured, standard files for AR and digital-twin tools in WORKDIR/export/ar/.

    mesh.glb    glTF 2.0 binary, texture embedded (web viewers, Android Scene Viewer, Blender, Unity)
    mesh.usdz   USD zip, texture embedded (AR Quick Look, Reality Composer on iOS)
    mesh.obj    Wavefront OBJ + mesh.mtl + texture.jpg (any 3D tool)

The mesh is WORKDIR/mesh.ply decimated to `target_triangles` (quadric), UV-unwrapped and textured from the
kept RGB frames (see `texture.py`). Coordinates: the capture's world, metres, Y up (ARKit's gravity-aligned
world; glTF is Y up; USD gets upAxis = Y, metersPerUnit = 1), so the export overlays the frames and the full
mesh. `recenter` translates it (no rotation) so that the floor is at y = 0 and the floor plan's centre at the
origin; the translation is recorded in manifest.json.

UV conventions: glTF puts UV (0, 0) at the image's top-left corner, OBJ and USD at the bottom-left, so
those two get v' = 1 - v of the same atlas.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..artifacts import Manifest, fingerprint, invalidate, is_current
from ..config import ExportConfig
from ..mesh import MeshArrays, read_ply
from ..workdir import WorkDir
from .gltf import vertex_normals, write_glb
from .simplify import decimate_in_passes, surface_distance_m
from .source import mesh_fingerprint

log = logging.getLogger(__name__)

PRESET = "ar"
FLOOR_PERCENTILE = 2.0
"""`recenter` puts this percentile of the vertices' y (robust to a few stray points below the floor) at 0."""


def recenter_offset(vertices: np.ndarray) -> np.ndarray:
    """(3,) translation that puts the floor (FLOOR_PERCENTILE of y) at y = 0 and the centre of the x, z
    bounding box at the origin."""
    lo, hi = vertices.min(0), vertices.max(0)
    return -np.array([(lo[0] + hi[0]) / 2, np.percentile(vertices[:, 1], FLOOR_PERCENTILE), (lo[2] + hi[2]) / 2])


def run(cfg: ExportConfig, workdir: Path, force: bool = False) -> list[Path]:
    """Write WORKDIR/export/ar/ (see the module docstring); returns the files."""
    wd = WorkDir(workdir)
    out = wd.export(PRESET)
    stamp = fingerprint(f"export-{PRESET}", cfg, [mesh_fingerprint(wd)])
    names = ["mesh.glb"]
    paths = [out / n for n in names]
    if not force and is_current(out, stamp):
        log.info("export %s: up to date (%s)", PRESET, out)
        return paths
    log.info("export %s: <= %d triangles, %d px texture%s", PRESET, cfg.target_triangles, cfg.texture_size_px,
             ", recentred" if cfg.recenter else "")
    t0 = time.perf_counter()
    previous = Manifest.read(out)
    invalidate(out)
    full = read_ply(wd.mesh("ply"))
    light = decimate_in_passes(full, cfg.target_triangles)
    mean_m, p95_m = surface_distance_m(full, light)
    offset = recenter_offset(light.vertices) if cfg.recenter else np.zeros(3)
    light = MeshArrays(light.vertices + offset, light.triangles, light.colors)
    write_glb(paths[0], light.vertices, light.triangles, normals=vertex_normals(light.vertices, light.triangles),
              colors_rgb8=light.colors)
    if previous is not None:  # files of an older version of this preset that it no longer writes
        for rel in set(previous.outputs) - set(names):
            (out / rel).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    summary = {"triangles_full": len(full.triangles), "triangles": len(light.triangles),
               "vertices": len(light.vertices), "distance_to_full_mean_m": round(mean_m, 6),
               "distance_to_full_p95_m": round(p95_m, 6), "recenter_offset_m": offset.round(6).tolist(),
               "seconds": round(seconds, 3), "bytes": {n: (out / n).stat().st_size for n in names}}
    Manifest(f"export-{PRESET}", stamp, outputs=names, settings={"cfg": cfg}, summary=summary).write(out)
    log.info("export %s: %d -> %d triangles (distance to full mesh: mean %.4f m, p95 %.4f m) in %.1f s -> %s",
             PRESET, len(full.triangles), len(light.triangles), mean_m, p95_m, seconds, out)
    return paths
