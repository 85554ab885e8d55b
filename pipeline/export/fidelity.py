"""How well a coloured mesh reproduces the frames: ray cast it from the capture's poses, colour each pixel
from its texture (or vertex colours), and measure the PSNR against the RGB frames.

Pixel centres at integer coordinates, OpenCV camera axes (as everywhere in promptmesh). Texture coordinates
here are glTF's ((0, 0) = image top-left); callers convert OBJ/USD's bottom-left ones (v' = 1 - v).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..geometry import camera_rays
from ..mesh import raycasting_scene
from .texture import bilinear


@dataclass
class ColoredMesh:
    """A mesh coloured by a texture (uv + image) or by vertex colours."""

    vertices: np.ndarray
    """(V,3) world positions, metres."""
    triangles: np.ndarray
    """(T,3) vertex indices."""
    uv: Optional[np.ndarray] = None
    """(V,2) texture coordinates, glTF convention ((0,0) = top-left)."""
    image: Optional[np.ndarray] = None
    """(H,W,3) uint8 RGB texture."""
    colors: Optional[np.ndarray] = None
    """(V,3) uint8 RGB vertex colours (when there is no texture)."""

    @functools.cached_property
    def scene(self):
        """Open3D RaycastingScene of the mesh (built once)."""
        return raycasting_scene(self.vertices, self.triangles)

    def shade(self, triangle: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(n,3) float32 RGB at barycentric points (n,3) of triangles (n,)."""
        corners = self.triangles[triangle]
        if self.image is not None:
            uv = np.einsum("nk,nkc->nc", bary, self.uv[corners].astype(np.float64))
            h, w = self.image.shape[:2]
            return bilinear(self.image, np.stack([uv[:, 0] * w - 0.5, uv[:, 1] * h - 0.5], 1))
        return np.einsum("nk,nkc->nc", bary, self.colors[corners].astype(np.float32))


def cast(mesh: ColoredMesh, K: np.ndarray, camera_to_world: np.ndarray, size_wh: tuple[int, int]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((h,w) z-depth (inf = miss), (h,w) triangle id (-1 = miss), (h,w,3) barycentrics) through pixel centres."""
    import open3d as o3d

    hit = mesh.scene.cast_rays(o3d.core.Tensor(camera_rays(K, camera_to_world, size_wh)))
    depth = hit["t_hit"].numpy()
    triangle = hit["primitive_ids"].numpy().astype(np.int64)
    triangle[~np.isfinite(depth)] = -1
    b = hit["primitive_uvs"].numpy()  # weights of vertices 1 and 2
    return depth, triangle, np.stack([1 - b[..., 0] - b[..., 1], b[..., 0], b[..., 1]], -1)


def psnr_db(mse: float) -> float:
    """PSNR of 8-bit images from their mean squared error."""
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def frame_psnr(meshes: dict[str, ColoredMesh], frames, max_depth_gap_m: float = 0.03) -> tuple[dict[str, float], int]:
    """PSNR of each mesh's rendering against the frames, over the same pixels for all: those every mesh hits
    with depths within `max_depth_gap_m` of each other (no silhouette where the meshes' shapes differ).

    Args:
        meshes: name -> ColoredMesh. frames: iterable of (rgb (H,W,3) uint8, K, camera_to_world).
    Returns:
        ({name: PSNR in dB over all frames' pixels pooled}, number of pixels).
    """
    squared = {name: 0.0 for name in meshes}
    n_pixels = 0
    for rgb, K, camera_to_world in frames:
        size = (rgb.shape[1], rgb.shape[0])
        casts = {name: cast(m, K, camera_to_world, size) for name, m in meshes.items()}
        depths = np.stack([c[0] for c in casts.values()])
        with np.errstate(invalid="ignore"):  # inf - inf where no mesh is hit
            keep = np.isfinite(depths).all(0) & (depths.max(0) - depths.min(0) < max_depth_gap_m)
        target = rgb[keep].astype(np.float32)
        for name, (_, triangle, bary) in casts.items():
            squared[name] += float(((meshes[name].shade(triangle[keep], bary[keep]) - target) ** 2).sum())
        n_pixels += int(keep.sum())
    return {name: psnr_db(total / max(3 * n_pixels, 1)) for name, total in squared.items()}, n_pixels


def glb_mesh(path: Path) -> ColoredMesh:
    """A GLB written by gltf.write_glb, textured or vertex-coloured."""
    import cv2

    from .gltf import read_glb, srgb8_colors

    _, arrays, image = read_glb(path)
    if image is None:
        return ColoredMesh(arrays["POSITION"], arrays["indices"], colors=srgb8_colors(arrays["COLOR_0"]))
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return ColoredMesh(arrays["POSITION"], arrays["indices"], uv=arrays["TEXCOORD_0"], image=rgb)
