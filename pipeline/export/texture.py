"""UV atlas by chart packing, and a texture baked from the kept RGB frames.

Atlas (`build_atlas`): triangles are grouped into charts by the dominant axis of their normal (+-x, +-y, +-z)
and edge connectivity, charts longer than a quarter of the atlas are cut by a world grid, and each chart is
projected orthographically onto its axis plane, at one scale (texels per metre) for the whole mesh, so the
texel density is uniform. Charts are shelf-packed (tallest first) with `padding_px` of gutter each side; the
scale is the largest that fits (bisection). Triangles that still overlap in their chart (a surface folding
back under the same axis) are moved to charts of their own and the atlas is packed again. Open3D's
`compute_uvatlas` makes tighter charts but is far slower on two cores (docs/benchmarks.md, "AR export").

UV convention here: glTF's. (0, 0) is the image's top-left corner, u grows rightwards and v downwards, and
texel (row r, column c) has its centre at ((c + 0.5) / N, (r + 0.5) / N).

Baking (`bake`): each covered texel's world point is projected into every frame; a frame sees it when the
point is in front of the camera and inside the image, the surface faces the camera (cos > MIN_COS), and the
point's depth is within `occlusion_tolerance_m` of the mesh's depth ray-cast from that pose (3x3 min-filtered,
so texels just behind a silhouette are refused). Colours (bilinear, pixel centres at integer coordinates) are
blended with weight (cos / z^2)^2, which favours close, frontal views. Texels no frame sees take the mesh's
vertex colours; finally the charts are dilated `padding_px` texels into the gutter (seams hidden under
bilinear filtering and mipmaps).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..errors import PromptmeshError

log = logging.getLogger(__name__)

FILL_RATIO = 0.95
"""Charts are packed into at most this share of the atlas height (the bisection stops short of 1)."""
MIN_COS = 0.1
"""A frame colours a texel only if the surface faces it by more than this cosine (about 84 degrees)."""
SMOOTHING_ITERATIONS = 4
"""Rounds of majority vote on the triangles' chart axes (see axis_charts)."""
MIN_AXIS_COS = 0.3
"""A triangle may take an axis its normal faces by more than this cosine (about 73 degrees)."""
TEXELS_PER_CHUNK = 1 << 20
"""Texels per vectorised block while rasterising and baking (memory about 200 bytes per texel)."""


@dataclass
class Atlas:
    """Triangle corners' texture coordinates and the texels each triangle covers."""

    size_px: int
    """Atlas edge N, texels (square)."""
    corner_uv: np.ndarray
    """(T,3,2) float64 UV of each triangle corner, glTF convention ((0,0) = top-left), in [0, 1]."""
    chart: np.ndarray
    """(T,) int64 chart of each triangle (corners of one vertex in one chart share a UV)."""
    texel: np.ndarray
    """(M,) int64 flat index r * N + c of each covered texel."""
    texel_triangle: np.ndarray
    """(M,) int64 triangle whose surface the texel shows."""
    texel_bary: np.ndarray
    """(M,3) float32 barycentric coordinates of the texel centre in that triangle."""
    texels_per_m: float
    """Texture resolution on the surface."""


# --------------------------------------------------------------------------- charts
def face_normals(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((T,3) unit normals (0 for degenerate triangles), (T,) areas in m^2)."""
    v = vertices[triangles]
    cross = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    length = np.linalg.norm(cross, axis=1)
    return cross / np.maximum(length, 1e-30)[:, None], 0.5 * length


def axis_charts(vertices: np.ndarray, triangles: np.ndarray, smoothing_iterations: int = SMOOTHING_ITERATIONS,
                normals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((T,) chart label, (T,) axis 0..5 = +x +y +z -x -y -z): triangles sharing an edge and their axis are in
    one chart.

    A triangle's axis starts as the dominant one of its normal (or of `normals`, (T,3) unit, e.g. the
    surface's before decimation); then, `smoothing_iterations` times, each
    triangle takes the axis most common among itself and its edge neighbours, among the axes its normal
    faces by more than MIN_AXIS_COS (so its projection keeps some area). This stops a noisy surface near 45
    degrees from shattering into single-triangle charts.
    """
    n = face_normals(vertices, triangles)[0] if normals is None else normals
    facing = np.concatenate([n, -n], 1)  # (T,6) cosine to each axis
    axis6 = np.argmax(facing, 1)
    n_tri = len(triangles)
    edges = np.sort(triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
    key = edges[:, 0] * (int(triangles.max()) + 1) + edges[:, 1]
    owner = np.repeat(np.arange(n_tri), 3)
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    shared = np.nonzero(key[1:] == key[:-1])[0]
    a, b = owner[shared], owner[shared + 1]
    allowed = facing > MIN_AXIS_COS
    for _ in range(smoothing_iterations):
        votes = np.zeros((n_tri, 6), np.int32)
        votes[np.arange(n_tri), axis6] = 1
        np.add.at(votes, (a, axis6[b]), 1)
        np.add.at(votes, (b, axis6[a]), 1)
        votes = np.where(allowed, votes, -1)
        votes[np.arange(n_tri), axis6] += 1  # ties keep the current axis  (its own vote counts 2)
        axis6 = np.argmax(votes, 1)
    from scipy.sparse import coo_matrix  # where used: commands start ~0.5 s sooner (tests/test_imports.py)
    from scipy.sparse.csgraph import connected_components

    same = axis6[a] == axis6[b]
    graph = coo_matrix((np.ones(int(same.sum()), np.int8), (a[same], b[same])), shape=(n_tri, n_tri))
    _, label = connected_components(graph, directed=False)
    return label.astype(np.int64), axis6


def _plane_coordinates(corners: np.ndarray, axis6: np.ndarray) -> np.ndarray:
    """(T,3,3) corner positions -> (T,3,2) coordinates in the plane of each triangle's axis (the two other
    world axes), metres. Charts may come out mirrored; texture lookups do not care."""
    k = (axis6 % 3)[:, None]
    rows = np.arange(len(corners))[:, None]
    u = corners[rows, np.arange(3), np.where(k == 0, 1, 0)]
    v = corners[rows, np.arange(3), np.where(k == 2, 1, 2)]
    return np.stack([u, v], -1)


def _split_long_charts(label: np.ndarray, plane: np.ndarray, cell_m: float) -> np.ndarray:
    """Cut charts by a grid of `cell_m` in their plane (by triangle centroid); returns new dense labels."""
    centroid = plane.mean(1)
    cell = np.floor(centroid / cell_m).astype(np.int64)
    cell -= cell.min(0)
    combined = (label * (cell[:, 0].max() + 1) + cell[:, 0]) * (cell[:, 1].max() + 1) + cell[:, 1]
    return np.unique(combined, return_inverse=True)[1].astype(np.int64)


def _shelf_pack(width_px: np.ndarray, height_px: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shelf packing, tallest first: ((C,) x, (C,) y of each box's top-left, used height). Boxes wider than the
    atlas make the used height infinite."""
    order = np.argsort(-height_px, kind="stable")
    x = np.zeros(len(width_px), np.int64)
    y = np.zeros(len(width_px), np.int64)
    cursor_x = shelf_y = shelf_h = 0
    for i in order.tolist():
        w, h = int(width_px[i]), int(height_px[i])
        if w > size_px:
            return x, y, 1 << 62
        if cursor_x + w > size_px:
            shelf_y += shelf_h
            cursor_x = shelf_h = 0
        x[i], y[i] = cursor_x, shelf_y
        cursor_x += w
        shelf_h = max(shelf_h, h)
    return x, y, shelf_y + shelf_h


def _pack_charts(label: np.ndarray, plane: np.ndarray, size_px: int, padding_px: int) -> tuple[np.ndarray, float]:
    """(T,3,2) corner positions in texels (x = column, y = row, continuous) and the scale, texels per metre."""
    n_charts = int(label.max()) + 1
    lo = np.full((n_charts, 2), np.inf)
    hi = np.full((n_charts, 2), -np.inf)
    np.minimum.at(lo, label, plane.min(1))
    np.maximum.at(hi, label, plane.max(1))
    extent = hi - lo
    rotate = extent[:, 1] > extent[:, 0]  # lay every chart on its long side: shelves pack tighter
    extent = np.where(rotate[:, None], extent[:, ::-1], extent)

    def boxes(scale):
        w = np.ceil(extent[:, 0] * scale).astype(np.int64) + 1 + 2 * padding_px
        h = np.ceil(extent[:, 1] * scale).astype(np.int64) + 1 + 2 * padding_px
        return w, h

    budget = FILL_RATIO * size_px
    scale_hi = math.sqrt(size_px * size_px / max(float((extent[:, 0] * extent[:, 1]).sum()), 1e-12))
    scale_lo = 0.0
    for _ in range(24):  # bisection on the scale; packing is monotone enough in practice
        mid = 0.5 * (scale_lo + scale_hi)
        if _shelf_pack(*boxes(mid), size_px)[2] <= budget:
            scale_lo = mid
        else:
            scale_hi = mid
        if scale_hi - scale_lo < 1e-3 * scale_hi:
            break
    scale = scale_lo
    if scale <= 0:
        raise PromptmeshError(f"export: {n_charts} UV charts with {2 * padding_px} px gutters do not fit a {size_px} px "
                              "texture; raise --texture-size or lower --target-triangles / [export] padding_px")
    x, y, _ = _shelf_pack(*boxes(scale), size_px)
    local = plane - lo[label][:, None, :]
    local = np.where(rotate[label][:, None, None], local[..., ::-1], local)  # transposed: mirrored, no matter
    origin = np.stack([x, y], 1)[label].astype(np.float64) + padding_px + 0.5
    return origin[:, None, :] + local * scale, scale


# --------------------------------------------------------------------------- rasterisation
def rasterize(corner_px: np.ndarray, size_px: int, inside_eps: float = 1e-4
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Texel centres inside each triangle of the atlas.

    Args:
        corner_px: (T,3,2) corners in texels (x = column, y = row); texel (r, c) has its centre at (c+.5, r+.5).
    Returns:
        (texel flat index r * N + c, triangle, (M,3) barycentrics, deep) for every (texel, triangle) pair whose
        centre is inside (barycentrics >= -inside_eps); `deep` marks centres clearly inside (all > 1e-3), the
        pairs that reveal overlapping triangles.
    """
    lo = np.clip(np.floor(corner_px.min(1) - 0.5).astype(np.int64), 0, size_px - 1)
    hi = np.clip(np.ceil(corner_px.max(1) - 0.5).astype(np.int64), 0, size_px - 1)
    nx, ny = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    count = nx * ny
    out = ([], [], [], [])
    chunk_of = (np.cumsum(count) - 1) // TEXELS_PER_CHUNK  # contiguous runs of triangles, ~one chunk of texels
    starts = np.flatnonzero(np.diff(chunk_of, prepend=-1))
    for start, stop in zip(starts.tolist(), np.append(starts[1:], len(count)).tolist()):
        tri = np.repeat(np.arange(start, stop), count[start:stop])
        first = np.repeat(np.cumsum(count[start:stop]) - count[start:stop], count[start:stop])
        k = np.arange(len(tri)) - first
        col = lo[tri, 0] + k % nx[tri]
        row = lo[tri, 1] + k // nx[tri]
        p = np.stack([col + 0.5, row + 0.5], 1)
        a, b, c = corner_px[tri, 0], corner_px[tri, 1], corner_px[tri, 2]
        e1, e2, d = b - a, c - a, p - a
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            w1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
            w2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
            w0 = 1 - w1 - w2
        bary = np.stack([w0, w1, w2], 1)
        inside = np.isfinite(det) & (np.abs(det) > 1e-12) & (bary >= -inside_eps).all(1)
        out[0].append(row[inside] * size_px + col[inside])
        out[1].append(tri[inside])
        kept = np.clip(bary[inside], 0, 1)
        out[2].append((kept / kept.sum(1, keepdims=True)).astype(np.float32))
        out[3].append((bary[inside] > 1e-3).all(1))
    if not out[0]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros(0, bool)
    return tuple(np.concatenate(part) for part in out)


def build_atlas(vertices: np.ndarray, triangles: np.ndarray, size_px: int, padding_px: int,
                normals: np.ndarray | None = None) -> Atlas:
    """Chart, pack and rasterise (see the module docstring); `normals` (T,3) choose the charts' axes instead
    of the triangles' own normals (see axis_charts)."""
    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles, np.int64)
    label, axis6 = axis_charts(vertices, triangles, normals=normals)
    plane = _plane_coordinates(vertices[triangles], axis6)
    _, area = face_normals(vertices, triangles)
    ideal_scale = size_px / math.sqrt(max(area.sum(), 1e-12))  # texels per metre if the atlas were full
    label = _split_long_charts(label, plane, cell_m=size_px / 4 / ideal_scale)
    for attempt in range(2):
        corner_px, scale = _pack_charts(label, plane, size_px, padding_px)
        texel, tri, bary, deep = rasterize(corner_px, size_px)
        texel_deep = texel[deep]
        order = np.argsort(texel_deep, kind="stable")
        repeated = np.nonzero(texel_deep[order][1:] == texel_deep[order][:-1])[0]
        overlapping = np.unique(np.concatenate([tri[deep][order][repeated], tri[deep][order][repeated + 1]]))
        if len(overlapping) == 0 or attempt == 1:
            break
        log.debug("atlas: %d triangles overlap in their charts; giving them charts of their own", len(overlapping))
        label = label.copy()
        label[overlapping] = label.max() + 1 + np.arange(len(overlapping))
        label = np.unique(label, return_inverse=True)[1].astype(np.int64)
    # one triangle per texel: the first listed (edge texels shared by neighbours show either, same surface)
    order = np.argsort(texel, kind="stable")
    texel, tri, bary = texel[order], tri[order], bary[order]
    first = np.ones(len(texel), bool)
    first[1:] = texel[1:] != texel[:-1]
    log.info("atlas: %d charts, %.0f texels/m, %.0f %% of %d^2 texels covered", int(label.max()) + 1, scale,
             100 * first.sum() / size_px ** 2, size_px)
    return Atlas(size_px, corner_px / size_px, label, texel[first], tri[first], bary[first], scale)


# --------------------------------------------------------------------------- baking
def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 sampled at (N,2) pixel coordinates (centres at integers, clamped) -> (N,3) float32."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0], 0, w - 1)
    y = np.clip(uv[:, 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    img = image.astype(np.float32) if image.dtype != np.float32 else image
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class View:
    """One frame as the baker sees it."""

    rgb: np.ndarray
    """(H,W,3) uint8 RGB."""
    K: np.ndarray
    """(3,3) at the RGB size."""
    camera_to_world: np.ndarray
    """(4,4) OpenCV camera axes."""
    depth_m: np.ndarray
    """(h,w) z-depth of the mesh ray-cast from this pose (inf = nothing), any size of the same aspect."""
    K_depth: np.ndarray
    """(3,3) at the depth map's size."""


def texel_points(vertices: np.ndarray, triangles: np.ndarray, atlas: Atlas) -> tuple[np.ndarray, np.ndarray]:
    """((M,3) float32 world point, (M,3) float32 unit face normal) of each covered texel."""
    corners = vertices[triangles[atlas.texel_triangle]].astype(np.float32)  # (M,3,3)
    points = np.einsum("mk,mkc->mc", atlas.texel_bary, corners)
    normals, _ = face_normals(vertices, triangles)
    return points, normals[atlas.texel_triangle].astype(np.float32)


def bake(points: np.ndarray, normals: np.ndarray, views, n_views: int, occlusion_tolerance_m: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Blend the colour of each texel point over the views that see it (see the module docstring).

    Args:
        points, normals: (M,3) texel world points and unit normals.
        views: an iterable of View (read lazily, one frame in memory at a time); n_views its length.
    Returns:
        ((M,3) float32 RGB in [0, 255], (M,) float32 total weight; 0 = no view saw the texel).
    """
    import cv2

    color_sum = np.zeros((len(points), 3), np.float32)
    weight_sum = np.zeros(len(points), np.float32)
    for view in tqdm(views, total=n_views, desc="export: bake texture", unit="frame", leave=False):
        world_to_camera = np.linalg.inv(view.camera_to_world).astype(np.float32)
        centre = view.camera_to_world[:3, 3].astype(np.float32)
        depth = np.where(np.isfinite(view.depth_m), view.depth_m, 1e9).astype(np.float32)
        depth_min = cv2.erode(depth, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        h, w = view.rgb.shape[:2]
        dh, dw = depth_min.shape
        for s in range(0, len(points), TEXELS_PER_CHUNK):
            p = points[s:s + TEXELS_PER_CHUNK]
            cam = p @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
            z = cam[:, 2]
            ray = p - centre
            dist = np.linalg.norm(ray, axis=1)
            cos = -np.einsum("mc,mc->m", normals[s:s + TEXELS_PER_CHUNK], ray) / np.maximum(dist, 1e-9)
            ok = (z > 1e-3) & (cos > MIN_COS)
            with np.errstate(divide="ignore", invalid="ignore"):
                u = view.K[0, 0] * cam[:, 0] / z + view.K[0, 2]
                v = view.K[1, 1] * cam[:, 1] / z + view.K[1, 2]
                ud = np.rint(view.K_depth[0, 0] * cam[:, 0] / z + view.K_depth[0, 2])
                vd = np.rint(view.K_depth[1, 1] * cam[:, 1] / z + view.K_depth[1, 2])
            ok &= (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
            ok &= (ud >= 0) & (ud <= dw - 1) & (vd >= 0) & (vd <= dh - 1)
            idx = np.nonzero(ok)[0]
            ok_depth = z[idx] - depth_min[vd[idx].astype(np.int64), ud[idx].astype(np.int64)] < occlusion_tolerance_m
            idx = idx[ok_depth]
            if len(idx) == 0:
                continue
            weight = (cos[idx] / (z[idx] * z[idx])) ** 2
            rgb = bilinear(view.rgb, np.stack([u[idx], v[idx]], 1))
            color_sum[s + idx] += weight[:, None] * rgb
            weight_sum[s + idx] += weight
    seen = weight_sum > 0
    color = np.zeros_like(color_sum)
    color[seen] = color_sum[seen] / weight_sum[seen, None]
    return color, weight_sum


def dilate(image: np.ndarray, filled: np.ndarray, padding_px: int) -> np.ndarray:
    """Grow the filled texels of (N,N,3) uint8 `image` `padding_px` texels into the empty ones (each new texel
    is the mean of its filled 3x3 neighbours)."""
    import cv2

    image = image.astype(np.float32)
    mask = filled.astype(np.float32)
    for _ in range(padding_px):
        total = cv2.boxFilter(image * mask[..., None], -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(mask, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        grow = (mask == 0) & (count > 0)
        image[grow] = total[grow] / count[grow, None]
        mask[grow] = 1.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def split_vertices(triangles: np.ndarray, atlas: Atlas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One output vertex per (vertex, chart): ((V',) source vertex, (V',2) UV, (T,3) new triangles)."""
    corner_vertex = triangles.reshape(-1)
    corner_chart = np.repeat(atlas.chart, 3)
    key = np.stack([corner_vertex, corner_chart], 1)
    unique, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    uv = atlas.corner_uv.reshape(-1, 2)[first]
    return unique[:, 0], uv, inverse.reshape(-1, 3).astype(np.int64)


def texture_image(atlas: Atlas, colors: np.ndarray, padding_px: int) -> np.ndarray:
    """(N,N,3) uint8 RGB atlas image (row 0 = top, glTF's v = 0) from per-texel colours, dilated."""
    n = atlas.size_px
    image = np.zeros((n * n, 3), np.uint8)
    image[atlas.texel] = np.clip(np.rint(colors), 0, 255).astype(np.uint8)
    filled = np.zeros(n * n, bool)
    filled[atlas.texel] = True
    return dilate(image.reshape(n, n, 3), filled.reshape(n, n), padding_px)
