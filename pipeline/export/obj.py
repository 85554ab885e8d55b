"""Wavefront OBJ + MTL writer for one textured mesh.

OBJ's `vt` has (0, 0) at the image's BOTTOM-left, so the caller passes v = 1 - v_gltf. Faces are 1-based
`f v/vt/vn` with the same index for all three (one vertex = one position, UV and normal). The material has
`illum 1` (no specular) and the texture as `map_Kd`, a file beside the OBJ.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_text


def _lines(prefix: str, values: np.ndarray, fmt: str) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, values, fmt=f"{prefix} {fmt}")
    return buffer.getvalue()


def write_obj(path: Path, vertices: np.ndarray, triangles: np.ndarray, uv_bottom_left: np.ndarray,
              normals: np.ndarray, texture_name: str, material: str = "scan") -> tuple[Path, Path]:
    """Write PATH.obj and PATH.mtl (same stem) atomically; the texture file `texture_name` is the caller's."""
    path = Path(path)
    mtl = path.with_suffix(".mtl")
    atomic_write_text(mtl, f"# promptmesh\nnewmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                           f"map_Kd {texture_name}\n")
    face = np.asarray(triangles, np.int64) + 1
    text = "".join([
        f"# promptmesh: metres, Y up\nmtllib {mtl.name}\no scan\n",
        _lines("v", vertices, "%.6f %.6f %.6f"),
        _lines("vt", uv_bottom_left, "%.6f %.6f"),
        _lines("vn", normals, "%.4f %.4f %.4f"),
        f"usemtl {material}\n",
        _lines("f", np.repeat(face, 3, axis=1), "%d/%d/%d %d/%d/%d %d/%d/%d"),
    ])
    atomic_write_text(path, text)
    return path, mtl
