"""Stage 4, mesh: OUT/fuse/tsdf.npz -> OUT/mesh.<fmt> (ply, obj, glb) with vertex colours.

Marching cubes on the TSDF (Open3D `extract_triangle_mesh`) keeps voxels observed by at least
`weight_threshold` frames; Open3D's default (weight > 3) drops surface seen by three frames or fewer, so
the config default (1) favours recall. Open3D numbers vertices and triangles in a thread-dependent order,
so the mesh is put in a canonical order (`canonical_order`): the same volume always gives the same file,
and evaluation (which samples triangles in order) the same scores. Cleanup: connected pieces
(vertex-connected) with fewer than `min_component_triangles` triangles are dropped (floaters), then
optional quadric decimation to about `target_triangles`.

The mesh stays in the capture's world frame (the TSDF was integrated there), metres. Export: PLY written
directly (binary, float32 positions as marching cubes made them, uchar RGB vertex colours) and always
(the measurable mesh eval reads); through trimesh, OBJ (`v x y z r g b`, colours in [0, 1]); GLB through
export.gltf (glTF 2.0 binary, COLOR_0 vertex colours in linear light as glTF specifies, unit smooth normals, an
unlit material; passes the Khronos validator). glTF itself has no world frame: the coordinates are written as they are (ARKit worlds are y up, like
glTF).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .artifacts import Manifest, atomic_output, fingerprint, invalidate, is_current, upstream_fingerprint
from .config import MeshConfig
from .errors import PromptmeshError
from .fuse import LiveGrid, load_grid, take_live_grid
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

STAGE = "mesh"


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
    """Marching cubes on a fused VoxelBlockGrid over the voxels with weight >= weight_threshold, in canonical
    order (`marching_cubes`, then `canonical_order`)."""
    return canonical_order(marching_cubes(grid, weight_threshold))


def marching_cubes(grid, weight_threshold: float, grid_done: Callable[[], object] = lambda: None) -> MeshArrays:
    """Open3D's marching cubes on a fused VoxelBlockGrid over the voxels with weight >= weight_threshold, in the
    thread-dependent order Open3D makes them. `grid_done` is called once Open3D has extracted the surface (the
    grid is not read after that), before the arrays are converted.

    Weights are observation counts (each frame adds 1). Open3D keeps voxels with weight *strictly above*
    its threshold, so `weight >= w` is asked as `> ceil(w) - 0.5`, and at least one observation is
    required (unobserved voxels hold no distance).
    """
    open3d_threshold = max(np.ceil(weight_threshold), 1.0) - 0.5
    try:
        m = grid.extract_triangle_mesh(weight_threshold=float(open3d_threshold)).cpu()
    except RuntimeError as e:  # Open3D 0.20 fails to attach colours to an empty mesh
        log.debug("mesh: extraction found no surface (%s)", e)
        grid_done()
        return MeshArrays(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    grid_done()
    return MeshArrays(
        vertices=m.vertex.positions.numpy().astype(np.float64),
        triangles=m.triangle.indices.numpy().astype(np.int64),
        colors=np.clip(np.rint(m.vertex.colors.numpy() * 255), 0, 255).astype(np.uint8),
    )


def canonical_order(mesh: MeshArrays) -> MeshArrays:
    """The same surface in an order that depends only on its geometry and colours.

    Vertices equal in position (as float32, Open3D's precision) and colour are merged (marching cubes emits
    a few twice at block borders), then sorted by (x, y, z, r, g, b); each triangle is rotated to start at
    its smallest index (winding kept), triangles that lost an edge to the merge are dropped, and triangles
    are sorted by their indices. The large sorts run on two threads, one half each, and the halves are merged.
    """
    xyz = mesh.vertices.astype(np.float32)
    rgb = mesh.colors.astype(np.uint64)
    key_xy = (_sortable_bits(xyz[:, 0]) << np.uint64(32)) | _sortable_bits(xyz[:, 1])
    key_zc = ((_sortable_bits(xyz[:, 2]) << np.uint64(24)) | (rgb[:, 0] << np.uint64(16)) | (rgb[:, 1] << np.uint64(8))
              | rgb[:, 2])
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mesh-order") as pool:
        # by (x, y); then the runs of equal (x, y) by (z, r, g, b)
        order = np.concatenate(list(pool.map(lambda half: np.argsort(key_xy[half]) + half.start, _halves(len(xyz)))))
        order = order[np.argsort(key_xy[order], kind="stable")]  # merges the two sorted runs
        key_xy = key_xy[order]
        tied = np.zeros(len(order), bool)
        tied[1:] = key_xy[1:] == key_xy[:-1]
        tied[:-1] |= tied[1:]
        tied = np.flatnonzero(tied)
        order[tied] = order[tied][np.lexsort((key_zc[order[tied]], key_xy[tied]))]
        key_zc = key_zc[order]
        first_of_kind = np.ones(len(order), bool)  # False where a vertex repeats the one before it
        first_of_kind[1:] = (key_xy[1:] != key_xy[:-1]) | (key_zc[1:] != key_zc[:-1])
        keep = order[first_of_kind]
        kept = pool.submit(lambda: (np.take(mesh.vertices, keep, axis=0), np.take(mesh.colors, keep, axis=0)))
        remap = np.empty(len(order), np.int64)
        remap[order] = np.cumsum(first_of_kind) - 1
        if len(order) < 1 << 21:  # three indices fit in one int64 key: sort the keys, unpack them in place
            key = np.concatenate(list(pool.map(lambda half: np.sort(_triangle_keys(mesh.triangles[half], remap)),
                                               _halves(len(mesh.triangles)))))
            key.sort(kind="stable")  # merges the two sorted runs
            tri = np.empty((len(key), 3), np.int64)
            np.right_shift(key, 42, out=tri[:, 0])
            np.bitwise_and(np.right_shift(key, 21), (1 << 21) - 1, out=tri[:, 1])
            np.bitwise_and(key, (1 << 21) - 1, out=tri[:, 2])
        else:
            tri = np.stack(_rotated_triangles(mesh.triangles, remap), 1)
            tri = tri[np.lexsort(tri.T[::-1])]
        vertices, colors = kept.result()
    return MeshArrays(vertices, tri, colors)


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, n // 2), slice(n // 2, n)


def _rotated_triangles(triangles: np.ndarray, remap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The triangles with new vertex indices (remap[old]) as three columns, each triangle rotated to start at its
    smallest index (winding kept); triangles left with a repeated index (an edge lost to the merge) dropped."""
    a, b, c = (remap[triangles[:, k]] for k in range(3))
    proper = (a != b) & (b != c) & (a != c)
    a, b, c = a[proper], b[proper], c[proper]
    a_leads = (a < b) & (a < c)  # the smallest index leads (indices are distinct now)
    b_leads = ~a_leads & (b < c)
    return (np.where(a_leads, a, np.where(b_leads, b, c)), np.where(a_leads, b, np.where(b_leads, c, a)),
            np.where(a_leads, c, np.where(b_leads, a, b)))


def _triangle_keys(triangles: np.ndarray, remap: np.ndarray) -> np.ndarray:
    """`_rotated_triangles` packed one int64 per triangle (indices < 2**21), first << 42 | second << 21 | third:
    the keys' integer order is the triangles' lexicographic order."""
    first, second, third = _rotated_triangles(triangles, remap)
    first <<= 42
    second <<= 21
    first |= second
    first |= third
    return first


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint64 whose integer order is the float order (sign bit flipped, negatives inverted)."""
    bits = x.view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)


def raycasting_scene(vertices: np.ndarray, triangles: np.ndarray):
    """Open3D RaycastingScene of a triangle mesh given as arrays (vertices (V,3) metres, triangles (T,3))."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(triangles, np.uint32)))
    return scene


def remove_small_components(mesh: MeshArrays, min_triangles: int) -> tuple[MeshArrays, int]:
    """Drop connected pieces (triangles sharing a vertex are connected) with < min_triangles triangles and the
    vertices of those pieces; vertex and triangle order are kept.

    Returns (cleaned mesh, number of pieces removed). min_triangles <= 0 keeps everything.
    """
    from scipy.sparse import csr_matrix  # where used: commands start ~0.5 s sooner (tests/test_imports.py)
    from scipy.sparse.csgraph import connected_components

    if min_triangles <= 0 or len(mesh.triangles) == 0:
        return mesh, 0
    t = mesh.triangles
    n = len(mesh.vertices)
    # edges v0 -> v1 and v0 -> v2 of each triangle connect all three; weak components of this directed graph
    # are the pieces. Its rows are built directly (row v0 holds the v1, v2 of the triangles led by v0), so
    # nothing is sorted; nor is a symmetrised copy built
    order = np.argsort(t[:, 0], kind="stable")  # canonical meshes are sorted already: a linear pass
    row_starts = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(t[:, 0], minlength=n) * 2, out=row_starts[1:])
    graph = csr_matrix((np.ones(2 * len(t), np.int8), t[order, 1:].ravel(), row_starts), shape=(n, n))
    n_pieces, vertex_label = connected_components(graph, directed=True, connection="weak")
    piece_triangles = np.bincount(vertex_label[t[:, 0]], minlength=n_pieces)
    n_removed = int(np.count_nonzero((piece_triangles > 0) & (piece_triangles < min_triangles)))
    # a vertex is kept with its piece (a vertex no triangle uses is a piece of none, and goes)
    kept_vertex = piece_triangles[vertex_label] >= min_triangles
    kept_index = np.flatnonzero(kept_vertex)
    remap = np.cumsum(kept_vertex) - 1  # increasing: vertex and triangle order are kept
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mesh-pieces") as pool:
        kept = pool.submit(lambda: (np.take(mesh.vertices, kept_index, axis=0),
                                    np.take(mesh.colors, kept_index, axis=0)))
        tri = np.concatenate(list(pool.map(lambda half: remap[t[half][kept_vertex[t[half, 0]]]], _halves(len(t)))))
        vertices, colors = kept.result()
    return MeshArrays(vertices, tri, colors), n_removed


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
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "ply":
        return write_ply(mesh, path)
    if fmt not in ("obj", "glb"):
        raise ValueError(f"unknown mesh format {fmt!r}")
    if fmt == "glb":
        from .export.gltf import vertex_normals, write_glb

        return write_glb(path, mesh.vertices, mesh.triangles, normals=vertex_normals(mesh.vertices, mesh.triangles),
                         colors_rgb8=mesh.colors)
    import trimesh

    rgba = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], axis=1)
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.triangles, vertex_colors=rgba, process=False)
    with atomic_output(path) as tmp:
        tm.export(tmp, file_type="obj", include_normals=False, include_color=True, include_texture=False)
    return path


PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
PLY_FACE = np.dtype([("n", "u1"), ("vertex_indices", "<i4", (3,))])


def _ply_header(n_vertices: int, n_faces: int) -> bytes:
    return (f"ply\nformat binary_little_endian 1.0\nelement vertex {n_vertices}\nproperty float x\n"
            f"property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
            f"element face {n_faces}\nproperty list uchar int vertex_indices\nend_header\n").encode("ascii")


def write_ply(mesh: MeshArrays, path: Path) -> Path:
    """Binary little-endian PLY: float32 x y z (what marching cubes produced, exactly) and uchar RGB per vertex,
    int triangles; written atomically with numpy (no per-element Python work)."""
    vertices = np.empty(len(mesh.vertices), PLY_VERTEX)
    for i, axis in enumerate("xyz"):
        vertices[axis] = mesh.vertices[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertices[channel] = mesh.colors[:, i]
    faces = np.empty(len(mesh.triangles), PLY_FACE)
    faces["n"] = 3
    faces["vertex_indices"] = mesh.triangles
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as f:
        f.write(_ply_header(len(vertices), len(faces)))
        f.write(vertices.tobytes())
        f.write(faces.tobytes())
    return Path(path)


def read_ply(path: Path) -> MeshArrays:
    """Read a mesh.ply written by `write_ply` (numpy, no per-element work); other PLYs go through Open3D."""
    path = Path(path)
    data = path.read_bytes()
    header_end = data.find(b"end_header\n") + len(b"end_header\n")
    counts = {ln.split()[1]: int(ln.split()[2]) for ln in data[:header_end].decode("ascii", "replace").split("\n")
              if ln.startswith("element ") and len(ln.split()) == 3 and ln.split()[2].isdigit()}
    n_v, n_f = counts.get("vertex", 0), counts.get("face", 0)
    if (data[:header_end] == _ply_header(n_v, n_f)
            and len(data) - header_end == n_v * PLY_VERTEX.itemsize + n_f * PLY_FACE.itemsize):
        vertices = np.frombuffer(data, PLY_VERTEX, n_v, offset=header_end)
        faces = np.frombuffer(data, PLY_FACE, n_f, offset=header_end + n_v * PLY_VERTEX.itemsize)
        return MeshArrays(np.stack([vertices[a] for a in "xyz"], 1).astype(np.float64),
                          faces["vertex_indices"].astype(np.int64),
                          np.stack([vertices[c] for c in ("red", "green", "blue")], 1))
    import open3d as o3d

    legacy = o3d.io.read_triangle_mesh(str(path))
    if len(legacy.triangles) == 0:
        raise PromptmeshError(f"{path}: no triangles could be read; rerun `promptmesh mesh WORKDIR --force`")
    colors = np.asarray(legacy.vertex_colors) if legacy.has_vertex_colors() else np.ones((len(legacy.vertices), 3))
    return MeshArrays(np.asarray(legacy.vertices), np.asarray(legacy.triangles, np.int64),
                      np.clip(np.rint(colors * 255), 0, 255).astype(np.uint8))


def run(cfg: MeshConfig, workdir: WorkDirLike, force: bool = False) -> list[Path]:
    """Extract, clean and export the mesh of OUT/fuse/ (OUT = the WorkDir's `out`); returns [OUT/mesh.ply, then
    OUT/mesh.<fmt> of the other cfg.formats].

    mesh.ply is always written. Asking for another format of an up-to-date mesh adds that file and keeps the
    others; only a changed mesh (settings or upstream) removes the files of the old one it does not rewrite.
    A grid that fusion handed over in memory (`fuse.run` with hand_to_mesh) is meshed instead of the saved
    volume (the same mesh); its save (`LiveGrid.start_save`) starts once Open3D has extracted the surface and is
    waited for before the mesh manifest is written."""
    wd = WorkDir(workdir)
    live = take_live_grid(wd)  # the grid fusion just integrated, when it handed it over (its save not yet done)
    try:
        return _run(cfg, wd, force, live)
    finally:
        if live is not None:
            live.start_save().result()  # fusion's files and manifest are written (or its error raised) first


def _run(cfg: MeshConfig, wd: WorkDir, force: bool, live: Optional[LiveGrid]) -> list[Path]:
    mdir = wd.mesh_stage
    upstream = live.fingerprint if live is not None else upstream_fingerprint(wd.fuse, "fuse")
    stamp = fingerprint(STAGE, dataclasses.replace(cfg, formats=()), [upstream])  # the files asked for: not the mesh
    formats = ["ply"] + [f for f in cfg.formats if f != "ply"]  # mesh.ply, the measurable mesh, always
    paths = [wd.mesh(fmt) for fmt in formats]
    current = None if force else is_current(mdir, stamp)
    if current is not None:
        missing = [p for p in paths if f"../{p.name}" not in current.outputs]
        if missing:  # same mesh, another format asked for: add it, keep the others
            mesh = read_ply(paths[0])
            for p in missing:
                export(mesh, p)
            current.outputs = sorted(set(current.outputs) | {f"../{p.name}" for p in missing})
            current.write(mdir)
        log.info("mesh: up to date (%s)%s", ", ".join(str(p) for p in paths),
                 f"; added {', '.join(p.name for p in missing)}" if missing else "")
        return paths

    log.info("mesh: weight >= %g, pieces >= %d triangles, %s, formats %s", cfg.weight_threshold,
             cfg.min_component_triangles,
             f"decimate to {cfg.target_triangles} triangles" if cfg.target_triangles else "no decimation",
             ",".join(formats))
    t0 = time.perf_counter()
    previous = Manifest.read(mdir)
    invalidate(mdir)
    if live is not None:
        grid, live.grid = live.grid, None  # the save holds the grid until it is written
    else:
        grid = load_grid(wd)
    # the volume's save starts once Open3D's extraction (two threads) is done: the steps after it leave a core idle
    mesh = marching_cubes(grid, cfg.weight_threshold, grid_done=live.start_save if live is not None else lambda: None)
    del grid
    mesh = canonical_order(mesh)
    n_extracted = len(mesh.triangles)
    mesh, n_pieces_removed = remove_small_components(mesh, cfg.min_component_triangles)
    mesh = decimate(mesh, cfg.target_triangles)
    if len(mesh.triangles) == 0:
        raise PromptmeshError(f"{wd.fuse}: no surface with weight >= {cfg.weight_threshold} and pieces of "
                              f">= {cfg.min_component_triangles} triangles ({n_extracted} extracted); lower "
                              "mesh.weight_threshold / mesh.min_component_triangles or check depth and poses")
    for p in paths:
        export(mesh, p)
    outputs = [f"../{p.name}" for p in paths]
    if previous is not None:  # the mesh changed: other formats of the old one would be stale
        for rel in set(previous.outputs) - set(outputs):
            (mdir / rel).unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    if live is not None:
        live.start_save().result()  # the fuse manifest is written before this one, which names it as upstream
    Manifest(STAGE, stamp, outputs=outputs, settings={"cfg": cfg},
             summary={"vertices": len(mesh.vertices), "triangles": len(mesh.triangles),
                      "triangles_extracted": n_extracted, "pieces_removed": n_pieces_removed,
                      "seconds": round(seconds, 3)}).write(mdir)
    log.info("mesh: %d vertices, %d triangles (%d extracted, %d small pieces removed) in %.1f s -> %s",
             len(mesh.vertices), len(mesh.triangles), n_extracted, n_pieces_removed, seconds,
             ", ".join(str(p) for p in paths))
    return paths
