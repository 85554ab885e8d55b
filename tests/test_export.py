"""promptmesh export: the preset registry, caching, and the `ar` preset's files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import export
from pipeline.cli import cli
from pipeline.config import ExportConfig
from pipeline.errors import PromptmeshError
from pipeline.export.ar import recenter_offset
from pipeline.export.gltf import unit_normals, write_glb


def read_glb(path):
    """(json dict, binary chunk) of a GLB."""
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    gltf = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\x00"
    return gltf, data[28 + json_len:28 + json_len + bin_len]


def test_export_without_mesh_names_the_command(tmp_path):
    with pytest.raises(PromptmeshError, match=r"mesh.ply: no mesh yet; run `promptmesh mesh"):
        export.run(ExportConfig(), tmp_path, "ar")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "missing"), "--preset", "ar"])
    assert result.exit_code == 1 and "no mesh yet" in result.output
    assert not (tmp_path / "missing").exists()


def test_unknown_preset_is_an_error(tmp_path):
    with pytest.raises(PromptmeshError, match="unknown"):
        export.run(ExportConfig(), tmp_path, "nope")


def test_recenter_offset_puts_floor_at_zero_and_plan_centre_at_origin():
    rng = np.random.default_rng(0)
    v = rng.uniform([1.0, -1.2, 3.0], [5.0, 1.3, 7.0], (20000, 3))
    v[:, 1] = np.where(rng.random(len(v)) < 0.3, -1.2, v[:, 1])  # 30 % of the points on the floor
    offset = recenter_offset(v)
    np.testing.assert_allclose(offset, [-3.0, 1.2, -5.0], atol=1e-3)


def test_unit_normals_replace_zero_length():
    n = unit_normals(np.array([[0.0, 0, 0], [3.0, 0, 4], [np.nan, 0, 0]]))
    np.testing.assert_allclose(n, [[0, 1, 0], [0.6, 0, 0.8], [0, 1, 0]], atol=1e-7)


def test_glb_round_trip_positions_indices_and_unlit_material(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    gltf, blob = read_glb(write_glb(tmp_path / "m.glb", vertices, triangles, colors_rgb8=colors))
    prim = gltf["meshes"][0]["primitives"][0]

    def array(accessor, dtype, width):
        a = gltf["accessors"][accessor]
        view = gltf["bufferViews"][a["bufferView"]]
        assert view["byteOffset"] % 4 == 0
        return np.frombuffer(blob, dtype, a["count"] * width, view["byteOffset"]).reshape(a["count"], width)

    np.testing.assert_array_equal(array(prim["attributes"]["POSITION"], "<f4", 3), vertices)
    np.testing.assert_array_equal(array(prim["indices"], "<u2", 1).reshape(-1, 3), triangles)
    np.testing.assert_array_equal(array(prim["attributes"]["COLOR_0"], "u1", 4)[:, :3], colors)
    material = gltf["materials"][0]
    assert "KHR_materials_unlit" in material["extensions"] and material["pbrMetallicRoughness"]["metallicFactor"] == 0
    assert gltf["accessors"][prim["attributes"]["POSITION"]]["max"] == [1, 1, 1]
