"""Export preset `ar`: light, textured, standard files for AR and digital-twin tools in WORKDIR/export/ar/.

    mesh.glb    glTF 2.0 binary, texture embedded (web viewers, Android Scene Viewer, Blender, Unity)
    mesh.usdz   USD zip, texture embedded (AR Quick Look, Reality Composer on iOS)
    mesh.obj    Wavefront OBJ + mesh.mtl + texture.jpg (any 3D tool)

The mesh is WORKDIR/mesh.ply decimated to `target_triangles` (quadric), its triangles re-wound to face like
the full mesh's surface (the decimation flips some), UV-unwrapped and textured from the kept RGB frames at
their fused poses (see `texture.py`). Coordinates: the capture's world, metres, Y up (ARKit's gravity-aligned
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

from ..artifacts import Manifest, atomic_write_bytes, fingerprint, invalidate, is_current
from ..capture import CaptureTable
from ..config import ExportConfig
from ..geometry import output_size, scale_intrinsics
from ..images import read_image
from ..mesh import MeshArrays, raycasting_scene, read_ply
from ..poses import fused_camera_to_world
from ..workdir import WorkDir
from .gltf import vertex_normals, write_glb
from .obj import write_obj
from .simplify import decimate_in_passes, orient_like, surface_distance_m, surface_normals
from .source import mesh_fingerprint
from .texture import View, bake, build_atlas, split_vertices, texel_points, texture_image
from .usd import write_usdz

log = logging.getLogger(__name__)

PRESET = "ar"
TEXTURE_NAME = "texture.jpg"
NAMES = ["mesh.glb", "mesh.usdz", "mesh.obj", "mesh.mtl", TEXTURE_NAME]
SETTINGS = ("target_triangles", "texture_size_px", "recenter", "bake_frame_stride", "occlusion_tolerance_m",
            "padding_px", "depth_test_long_side_px", "texture_jpeg_quality")
"""The ExportConfig fields this preset uses (its fingerprint: another preset's settings do not redo it)."""
FLOOR_PERCENTILE = 2.0
"""`recenter` puts this percentile of the vertices' y (robust to a few stray points below the floor) at 0."""


def recenter_offset(vertices: np.ndarray) -> np.ndarray:
    """(3,) translation that puts the floor (FLOOR_PERCENTILE of y) at y = 0 and the centre of the x, z
    bounding box at the origin."""
    lo, hi = vertices.min(0), vertices.max(0)
    return -np.array([(lo[0] + hi[0]) / 2, np.percentile(vertices[:, 1], FLOOR_PERCENTILE), (lo[2] + hi[2]) / 2])


def frame_views(wd: WorkDir, mesh: MeshArrays, cfg: ExportConfig):
    """(views, count): the kept frames (every bake_frame_stride-th) as texture.View, each with the mesh's depth
    ray-cast from its fused pose at depth_test_long_side_px; read lazily."""
    import cv2

    from ..evaluate import render_depth

    table = CaptureTable.load(wd)
    camera_to_world = fused_camera_to_world(wd, table)
    rows = list(range(0, len(table), cfg.bake_frame_stride))
    scene = raycasting_scene(mesh.vertices, mesh.triangles)

    def views():
        for i in rows:
            path = table.root / table.rgb_path[i]
            bgr = read_image(path, cv2.IMREAD_COLOR, "RGB frame", "rerun `promptmesh ingest` with --force")
            size = (bgr.shape[1], bgr.shape[0])
            K = scale_intrinsics(table.K_rgb[i], (int(table.width[i]), int(table.height[i])), size)
            depth_size = output_size(*size, cfg.depth_test_long_side_px)
            K_depth = scale_intrinsics(K, size, depth_size)
            yield View(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), K, camera_to_world[i],
                       render_depth(scene, K_depth, camera_to_world[i], depth_size), K_depth)

    return views(), len(rows)


def textured(mesh: MeshArrays, surface_normals: np.ndarray, wd: WorkDir, cfg: ExportConfig):
    """UV atlas (charts by `surface_normals`, (T,3)) and baked texture of `mesh`: (vertices, triangles, uv
    (glTF: (0,0) top-left), normals, texture image (N,N,3) uint8 RGB, share of covered texels seen by a frame)."""
    atlas = build_atlas(mesh.vertices, mesh.triangles, cfg.texture_size_px, cfg.padding_px, surface_normals)
    points, normals = texel_points(mesh.vertices, mesh.triangles, atlas)
    views, n_views = frame_views(wd, mesh, cfg)
    colors, weight = bake(points, normals, views, n_views, cfg.occlusion_tolerance_m)
    unseen = weight == 0
    if unseen.any():  # no frame saw these texels: the mesh's own (fused) colours
        corner_colors = mesh.colors[mesh.triangles[atlas.texel_triangle[unseen]]].astype(np.float32)
        colors[unseen] = np.einsum("mk,mkc->mc", atlas.texel_bary[unseen], corner_colors)
    image = texture_image(atlas, colors, cfg.padding_px)
    source_vertex, uv, triangles = split_vertices(mesh.triangles, atlas)
    normals = vertex_normals(mesh.vertices, mesh.triangles)[source_vertex]
    return mesh.vertices[source_vertex], triangles, uv, normals, image, float(1 - unseen.mean()) if len(unseen) else 0.0


def run(cfg: ExportConfig, workdir: Path, force: bool = False) -> list[Path]:
    """Write WORKDIR/export/ar/ (see the module docstring); returns the files."""
    import cv2

    wd = WorkDir(workdir)
    out = wd.export(PRESET)
    settings = {name: getattr(cfg, name) for name in SETTINGS}
    stamp = fingerprint(f"export-{PRESET}", settings, [mesh_fingerprint(wd)])
    paths = [out / n for n in NAMES]
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
    reference_normals = surface_normals(light, full)
    light = orient_like(light, reference_normals)
    mean_m, p95_m = surface_distance_m(full, light)
    t_decimate = time.perf_counter() - t0
    vertices, triangles, uv, normals, image, seen = textured(light, reference_normals, wd, cfg)  # capture world
    offset = recenter_offset(vertices) if cfg.recenter else np.zeros(3)
    vertices = vertices + offset
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, cfg.texture_jpeg_quality])
    texture = jpeg.tobytes()
    uv_bottom_left = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)  # OBJ and USD: (0, 0) = the image's bottom-left
    atomic_write_bytes(out / TEXTURE_NAME, texture)
    write_obj(out / "mesh.obj", vertices, triangles, uv_bottom_left, normals, TEXTURE_NAME)
    write_glb(out / "mesh.glb", vertices, triangles, normals=normals, uv=uv, texture=texture)
    write_usdz(out / "mesh.usdz", vertices, triangles, uv_bottom_left, normals, texture, TEXTURE_NAME)
    if previous is not None:  # files of an older version of this preset that it no longer writes
        for rel in set(previous.outputs) - set(NAMES):
            (out / rel).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    summary = {"triangles_full": len(full.triangles), "triangles": len(triangles), "vertices": len(vertices),
               "distance_to_full_mean_m": round(mean_m, 6), "distance_to_full_p95_m": round(p95_m, 6),
               "texels_seen_share": round(seen, 4), "recenter_offset_m": offset.round(6).tolist(),
               "seconds_decimate": round(t_decimate, 3), "seconds": round(seconds, 3),
               "bytes": {n: (out / n).stat().st_size for n in NAMES}}
    Manifest(f"export-{PRESET}", stamp, outputs=NAMES, settings=settings, summary=summary).write(out)
    log.info("export %s: %d -> %d triangles (distance to full mesh: mean %.4f m, p95 %.4f m), %d px texture "
             "(%.0f %% of texels seen by a frame) in %.1f s -> %s", PRESET, len(full.triangles), len(triangles),
             mean_m, p95_m, cfg.texture_size_px, 100 * seen, seconds, out)
    return paths
