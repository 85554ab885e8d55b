"""Decimation of the full-resolution mesh for light exports, and how far it moved the surface."""
from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from ..mesh import MeshArrays, decimate, raycasting_scene
from ..metrics import sample_surface


def decimate_in_passes(mesh: MeshArrays, target_triangles: int, max_passes: int = 4) -> MeshArrays:
    """Quadric decimation (Open3D) to at most about `target_triangles`, with a progress bar.

    Open3D's decimation reports no progress, so the reduction is split into passes that each keep at least a
    quarter of the triangles (at most `max_passes`; a 10x reduction takes two passes and costs ~1.3x one pass).
    target_triangles <= 0 or a mesh already within budget is returned unchanged.
    """
    n = len(mesh.triangles)
    if target_triangles <= 0 or n <= target_triangles:
        return mesh
    passes = min(max_passes, max(1, math.ceil(math.log(n / target_triangles, 4))))
    ratio = (target_triangles / n) ** (1.0 / passes)
    targets = [max(target_triangles, int(round(n * ratio ** (k + 1)))) for k in range(passes)]
    targets[-1] = target_triangles
    for target in tqdm(targets, desc="export: decimate", unit="pass", leave=False):
        mesh = decimate(mesh, target)
    return mesh


def surface_distance_m(source: MeshArrays, target: MeshArrays, n_samples: int = 200_000,
                       seed: int = 0) -> tuple[float, float]:
    """(mean, 95th percentile) distance, metres, from about n_samples points sampled uniformly on `source` to the
    surface of `target` (Open3D RaycastingScene.compute_distance)."""
    import open3d as o3d

    v = source.vertices[source.triangles]
    area_m2 = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum()
    points = sample_surface(source.vertices, source.triangles, math.sqrt(area_m2 / n_samples), seed)
    scene = raycasting_scene(target.vertices, target.triangles)
    d = scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()
    return float(d.mean()), float(np.percentile(d, 95))



def surface_normals(light: MeshArrays, full: MeshArrays) -> np.ndarray:
    """(T,) unit normal of the full mesh's surface at each triangle centroid of `light` (its closest point on
    `full`, vertex normals interpolated there): a smooth reference that decimation cannot flip."""
    import open3d as o3d

    from .gltf import vertex_normals

    scene = raycasting_scene(full.vertices, full.triangles)
    centroids = light.vertices[light.triangles].mean(1).astype(np.float32)
    closest = scene.compute_closest_points(o3d.core.Tensor(centroids))
    triangle = closest["primitive_ids"].numpy().astype(np.int64)
    b = closest["primitive_uvs"].numpy().astype(np.float64)
    weights = np.stack([1 - b[:, 0] - b[:, 1], b[:, 0], b[:, 1]], 1)
    normals = np.einsum("tk,tkc->tc", weights, vertex_normals(full.vertices, full.triangles)[full.triangles[triangle]])
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def orient_like(light: MeshArrays, reference_normals: np.ndarray) -> MeshArrays:
    """`light` with the winding of every triangle whose normal opposes its reference normal reversed.

    Open3D's quadric decimation does not guard against flipping faces; on a noisy scan about a tenth of the
    triangles come out facing backwards (culled by viewers, and chart breakers in the atlas)."""
    v = light.vertices[light.triangles]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flipped = np.einsum("tc,tc->t", normals, reference_normals) < 0
    triangles = light.triangles.copy()
    triangles[flipped] = triangles[flipped][:, [0, 2, 1]]
    return MeshArrays(light.vertices, triangles, light.colors)
