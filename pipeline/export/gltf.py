"""glTF 2.0 binary (GLB) writer for one scanned mesh: positions, optional normals, vertex colours or a UV
texture, one unlit material.

Conventions: glTF is Y up, right-handed, metres; positions are written as given (the capture's world).
TEXCOORD_0 has (0, 0) at the image's TOP-left corner (v grows downwards in the image). Colours: glTF vertex
colours (COLOR_0) are linear, so the scan's sRGB colours are converted (`images.srgb8_to_linear`) and written
as normalized unsigned shorts (8 bits of linear light would merge 73 of the 256 dark sRGB levels; 16 bits give
every sRGB byte back exactly, `srgb8_colors`); a texture image stays sRGB, as glTF specifies. The material is
`KHR_materials_unlit` with metallicFactor 0 (a scan's colours are already lit; the default metallic material
renders black without an environment map). Every attribute is 4-byte aligned and each bufferView holds one
attribute (no byteStride needed), so the Khronos glTF validator reports no issue.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from ..artifacts import atomic_write_bytes
from ..images import linear_to_srgb8, srgb8_to_linear

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071


def unit_normals(normals: np.ndarray) -> np.ndarray:
    """(V,3) -> unit length float32; zero or non-finite normals (vertices of degenerate triangles only)
    become +Y, so that every normal is valid glTF."""
    n = np.nan_to_num(np.asarray(normals, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    ok = length[:, 0] > 1e-12
    out = np.zeros_like(n)
    out[:, 1] = 1.0
    out[ok] = n[ok] / length[ok]
    return out.astype(np.float32)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted smooth vertex normals (V,3), unit length (see unit_normals)."""
    v = np.asarray(vertices, np.float64)
    t = np.asarray(triangles, np.int64)
    face = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # length = 2 x area
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, t[:, k], face)
    return unit_normals(n)


def write_glb(path: Path, vertices: np.ndarray, triangles: np.ndarray, *, normals: Optional[np.ndarray] = None,
              colors_rgb8: Optional[np.ndarray] = None, uv: Optional[np.ndarray] = None,
              texture: Optional[bytes] = None, texture_mime: str = "image/jpeg", name: str = "scan") -> Path:
    """Write a GLB atomically.

    Args:
        vertices: (V,3) positions, metres (written as float32).
        triangles: (T,3) vertex indices, counter-clockwise seen from the front.
        normals: (V,3) unit normals or None.
        colors_rgb8: (V,3) uint8 sRGB vertex colours or None (written as linear COLOR_0, module docstring).
        uv: (V,2) texture coordinates, glTF convention ((0,0) = image top-left), with `texture`.
        texture: encoded image bytes (JPEG or PNG, see texture_mime), embedded in the binary chunk.
    """
    if (uv is None) != (texture is None):
        raise ValueError("uv and texture go together")
    vertices = np.ascontiguousarray(vertices, np.float32)
    n_vertices = len(vertices)
    index_type, index_dtype = (UNSIGNED_SHORT, "<u2") if n_vertices < 65535 else (UNSIGNED_INT, "<u4")
    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: Optional[int] = None) -> int:
        while len(blob) % 4:
            blob.append(0)
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    def add_accessor(array: np.ndarray, component: int, kind: str, target: int, **extra) -> int:
        accessors.append({"bufferView": add_view(array.tobytes(), target), "componentType": component,
                          "count": int(len(array)), "type": kind, **extra})
        return len(accessors) - 1

    indices = np.ascontiguousarray(triangles, index_dtype).reshape(-1)
    primitive: dict = {"indices": add_accessor(indices, index_type, "SCALAR", ELEMENT_ARRAY_BUFFER), "mode": 4}
    attributes = {"POSITION": add_accessor(vertices, FLOAT, "VEC3", ARRAY_BUFFER,
                                           min=vertices.min(0).tolist(), max=vertices.max(0).tolist())}
    if normals is not None:
        attributes["NORMAL"] = add_accessor(unit_normals(normals), FLOAT, "VEC3", ARRAY_BUFFER)
    if colors_rgb8 is not None:  # linear light, RGBA (VEC4 keeps each vertex's colour 4-byte aligned)
        linear = np.rint(srgb8_to_linear(colors_rgb8) * 65535).astype("<u2")
        rgba = np.concatenate([linear, np.full((n_vertices, 1), 65535, "<u2")], 1)
        attributes["COLOR_0"] = add_accessor(rgba, UNSIGNED_SHORT, "VEC4", ARRAY_BUFFER, normalized=True)
    pbr: dict = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}
    gltf: dict = {"asset": {"version": "2.0", "generator": "promptmesh"}}
    if uv is not None:
        attributes["TEXCOORD_0"] = add_accessor(np.ascontiguousarray(uv, np.float32), FLOAT, "VEC2", ARRAY_BUFFER)
        gltf["images"] = [{"bufferView": add_view(texture), "mimeType": texture_mime}]
        gltf["samplers"] = [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                             "wrapT": CLAMP_TO_EDGE}]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
    primitive["attributes"] = attributes
    primitive["material"] = 0
    while len(blob) % 4:
        blob.append(0)
    gltf.update({
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [primitive]}],
        "materials": [{"name": f"{name}_unlit", "pbrMetallicRoughness": pbr, "doubleSided": False,
                       "extensions": {"KHR_materials_unlit": {}}}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    })
    json_chunk = json.dumps(gltf, separators=(",", ":")).encode()
    json_chunk += b" " * (-len(json_chunk) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(blob)
    data = b"".join([struct.pack("<4sII", b"glTF", 2, total),
                     struct.pack("<I4s", len(json_chunk), b"JSON"), json_chunk,
                     struct.pack("<I4s", len(blob), b"BIN\x00"), bytes(blob)])
    return atomic_write_bytes(Path(path), data)


COMPONENT_DTYPES = {FLOAT: "<f4", UNSIGNED_BYTE: "u1", UNSIGNED_SHORT: "<u2", UNSIGNED_INT: "<u4"}
TYPE_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path) -> tuple[dict, dict[str, np.ndarray], Optional[bytes]]:
    """(glTF JSON, the first primitive's arrays, the first image's bytes or None) of a GLB written by
    write_glb. Arrays: "indices" (T,3) int64 and each attribute by name as stored (POSITION (V,3) float32,
    COLOR_0 (V,4) uint16 linear: `srgb8_colors` gives the sRGB bytes, TEXCOORD_0 (V,2) float32, ...). For reading
    our own files back (tests, benchmarks)."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    if (magic, version, total, json_type) != (b"glTF", 2, len(data), b"JSON"):
        raise ValueError(f"{path}: not a glTF 2.0 binary")
    gltf = json.loads(data[20:20 + json_length])
    blob = data[28 + json_length:]

    def view_bytes(index: int) -> bytes:
        view = gltf["bufferViews"][index]
        return blob[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]

    def accessor(index: int) -> np.ndarray:
        a = gltf["accessors"][index]
        width = TYPE_WIDTH[a["type"]]
        flat = np.frombuffer(view_bytes(a["bufferView"]), COMPONENT_DTYPES[a["componentType"]], a["count"] * width,
                             a.get("byteOffset", 0))
        return flat.reshape(a["count"], width) if width > 1 else flat

    primitive = gltf["meshes"][0]["primitives"][0]
    arrays = {name: accessor(i) for name, i in primitive["attributes"].items()}
    arrays["indices"] = accessor(primitive["indices"]).astype(np.int64).reshape(-1, 3)
    image = view_bytes(gltf["images"][0]["bufferView"]) if gltf.get("images") else None
    return gltf, arrays, image


def srgb8_colors(color_0: np.ndarray) -> np.ndarray:
    """COLOR_0 as `read_glb` returns it ((V,4) normalized uint16, linear) -> (V,3) uint8 sRGB, what was written."""
    return linear_to_srgb8(np.asarray(color_0[:, :3], np.float64) / 65535.0)
