"""Stage 4, mesh: OUT/fuse/tsdf.npz -> OUT/mesh.<fmt> (ply, obj, glb) with vertex colours.

Marching cubes on the TSDF (Open3D `extract_triangle_mesh`) keeps voxels observed by at least
`weight_threshold` frames; Open3D's default (weight > 3) drops surface seen by three frames or fewer, so
the config default (1) favours recall. Cleanup: connected pieces (vertex-connected) with fewer than
`min_component_triangles` triangles are dropped (floaters), then optional quadric decimation to about
`target_triangles`.

The mesh stays in the capture's world frame (the TSDF was integrated there), metres. Export through
trimesh: PLY (binary, RGBA uchar vertex colours), OBJ (`v x y z r g b`, colours in [0, 1]) and GLB
(glTF 2.0 binary, COLOR_0 vertex colours and smooth normals; opens in any glTF viewer). glTF itself has
no world frame: the coordinates are written as they are (ARKit worlds are y up, like glTF).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .artifacts import Manifest, atomic_output, fingerprint, invalidate, is_current, upstream_fingerprint
from .config import MeshConfig
from .errors import PromptmeshError
from .fuse import fuse_dir, load_grid

log = logging.getLogger(__name__)

STAGE = "mesh"


def mesh_dir(out_dir: Path) -> Path:
    """Where the mesh stage's manifest lives (the meshes themselves are OUT/mesh.<fmt>)."""
    return Path(out_dir) / "mesh"


def mesh_path(out_dir: Path, fmt: str) -> Path:
    return Path(out_dir) / f"mesh.{fmt}"


@dataclass
class MeshArrays:
    """A triangle mesh as arrays: world frame, metres."""

    vertices: np.ndarray
    """(V,3) float64."""
    triangles: np.ndarray
    """(T,3) int64 vertex indices."""
    colors: np.ndarray
    """(V,3) uint8 RGB."""


def extract(grid, weight_threshold: float) -> MeshArrays:
    """Marching cubes on a fused VoxelBlockGrid over the voxels with weight >= weight_threshold.

    Weights are observation counts (each frame adds 1). Open3D keeps voxels with weight *strictly above*
    its threshold, so `weight >= w` is asked as `> ceil(w) - 0.5`, and at least one observation is
    required (unobserved voxels hold no distance).
    """
    open3d_threshold = max(np.ceil(weight_threshold), 1.0) - 0.5
    try:
        m = grid.extract_triangle_mesh(weight_threshold=float(open3d_threshold)).cpu()
    except RuntimeError as e:  # Open3D 0.20 fails to attach colours to an empty mesh
        log.debug("mesh: extraction found no surface (%s)", e)
        return MeshArrays(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    return MeshArrays(
        vertices=m.vertex.positions.numpy().astype(np.float64),
        triangles=m.triangle.indices.numpy().astype(np.int64),
        colors=np.clip(np.rint(m.vertex.colors.numpy() * 255), 0, 255).astype(np.uint8),
    )


def _keep_triangles(mesh: MeshArrays, keep: np.ndarray) -> MeshArrays:
    """The mesh with only the triangles `keep` (bool mask) and the vertices they use."""
    tri = mesh.triangles[keep]
    used = np.unique(tri)
    remap = np.full(len(mesh.vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return MeshArrays(mesh.vertices[used], remap[tri], mesh.colors[used])


def remove_small_components(mesh: MeshArrays, min_triangles: int) -> tuple[MeshArrays, int]:
    """Drop connected pieces (triangles sharing a vertex are connected) with < min_triangles triangles.

    Returns (cleaned mesh, number of pieces removed). min_triangles <= 0 keeps everything.
    """
    if min_triangles <= 0 or len(mesh.triangles) == 0:
        return mesh, 0
    t = mesh.triangles
    n = len(mesh.vertices)
    edges = np.concatenate([t[:, [0, 1]], t[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, vertex_label = connected_components(graph, directed=False)
    tri_label = vertex_label[t[:, 0]]
    tri_count = np.bincount(tri_label)
    small = tri_count[tri_count > 0] < min_triangles
    return _keep_triangles(mesh, tri_count[tri_label] >= min_triangles), int(small.sum())


def decimate(mesh: MeshArrays, target_triangles: int) -> MeshArrays:
    """Quadric edge-collapse decimation (Open3D) to about `target_triangles`; colours are carried along."""
    import open3d as o3d

    if target_triangles <= 0 or len(mesh.triangles) <= target_triangles:
        return mesh
    legacy = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices),
                                       o3d.utility.Vector3iVector(mesh.triangles.astype(np.int32)))
    legacy.vertex_colors = o3d.utility.Vector3dVector(mesh.colors / 255.0)
    legacy = legacy.simplify_quadric_decimation(target_number_of_triangles=int(target_triangles))
    legacy.remove_unreferenced_vertices()
    return MeshArrays(np.asarray(legacy.vertices), np.asarray(legacy.triangles, np.int64),
                      np.clip(np.rint(np.asarray(legacy.vertex_colors) * 255), 0, 255).astype(np.uint8))


def export(mesh: MeshArrays, path: Path) -> Path:
    """Write `mesh` atomically as PLY, OBJ or GLB (by suffix) with vertex colours."""
    import trimesh

    path = Path(path)
    rgba = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], axis=1)
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.triangles, vertex_colors=rgba, process=False)
    fmt = path.suffix.lstrip(".").lower()
    with atomic_output(path) as tmp:
        if fmt == "glb":
            tm.export(tmp, file_type="glb", include_normals=True)
        elif fmt == "obj":
            tm.export(tmp, file_type="obj", include_normals=False, include_color=True, include_texture=False)
        elif fmt == "ply":
            tm.export(tmp, file_type="ply", encoding="binary")
        else:
            raise ValueError(f"unknown mesh format {fmt!r}")
    return path


def run(cfg: MeshConfig, workdir: Path, out_dir: Optional[Path] = None, force: bool = False) -> list[Path]:
    """Extract, clean and export the mesh of OUT/fuse/ (OUT = out_dir or workdir); returns [OUT/mesh.<fmt>]."""
    out_dir = Path(out_dir if out_dir is not None else workdir)
    mdir = mesh_dir(out_dir)
    upstream = upstream_fingerprint(fuse_dir(out_dir), "fuse")
    stamp = fingerprint(STAGE, cfg, [upstream])
    paths = [mesh_path(out_dir, fmt) for fmt in cfg.formats]
    if not force and is_current(mdir, stamp):
        log.info("mesh: up to date (%s)", ", ".join(str(p) for p in paths))
        return paths

    log.info("mesh: weight >= %g, pieces >= %d triangles, %s, formats %s", cfg.weight_threshold,
             cfg.min_component_triangles,
             f"decimate to {cfg.target_triangles} triangles" if cfg.target_triangles else "no decimation",
             ",".join(cfg.formats))
    t0 = time.perf_counter()
    previous = Manifest.read(mdir)
    invalidate(mdir)
    mesh = extract(load_grid(out_dir), cfg.weight_threshold)
    n_extracted = len(mesh.triangles)
    mesh, n_pieces_removed = remove_small_components(mesh, cfg.min_component_triangles)
    mesh = decimate(mesh, cfg.target_triangles)
    if len(mesh.triangles) == 0:
        raise PromptmeshError(f"{fuse_dir(out_dir)}: no surface with weight >= {cfg.weight_threshold} and pieces of "
                              f">= {cfg.min_component_triangles} triangles ({n_extracted} extracted); lower "
                              "mesh.weight_threshold / mesh.min_component_triangles or check depth and poses")
    for p in paths:
        export(mesh, p)
    outputs = [f"../{p.name}" for p in paths]
    if previous is not None:  # exports of formats no longer asked for would be stale
        for rel in set(previous.outputs) - set(outputs):
            (mdir / rel).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    Manifest(STAGE, stamp, outputs=outputs, settings={"cfg": cfg},
             summary={"vertices": len(mesh.vertices), "triangles": len(mesh.triangles),
                      "triangles_extracted": n_extracted, "pieces_removed": n_pieces_removed,
                      "seconds": round(seconds, 3)}).write(mdir)
    log.info("mesh: %d vertices, %d triangles (%d extracted, %d small pieces removed) in %.1f s -> %s",
             len(mesh.vertices), len(mesh.triangles), n_extracted, n_pieces_removed, seconds,
             ", ".join(str(p) for p in paths))
    return paths
