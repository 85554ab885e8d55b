"""promptmesh export: the preset registry, caching, and the `ar` preset's files (standard-conformant, textured
from the frames in the right UV orientation, in the capture's coordinates).

The textured tests use the box room of test_fuse_mesh_eval with an 8 cm checker on its walls (so that a texture
sharper than the 2 cm vertex colours shows), exported at 20k triangles and a 1024 px texture.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
import trimesh
from click.testing import CliRunner

from pipeline import export, fuse, mesh
from pipeline.capture import CaptureTable
from pipeline.cli import cli
from pipeline.config import ExportConfig, MeshConfig
from pipeline.errors import PromptmeshError
from pipeline.export.ar import recenter_offset
from pipeline.export.fidelity import ColoredMesh, frame_psnr, glb_mesh
from pipeline.export.gltf import read_glb, srgb8_colors, unit_normals, write_glb
from pipeline.images import srgb8_to_linear
from pipeline.workdir import WorkDir
from test_fuse_mesh_eval import FUSE, ROOM_SIZE_M, build_workdir

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = REPO / "tools" / "node" / "validate_gltf.js"
CFG = ExportConfig(target_triangles=20_000, texture_size_px=1024)
CELL_M = 0.08


def checker(points: np.ndarray) -> np.ndarray:
    """(h,w,3) world points -> (h,w) 0.45 / 1.0 on an 8 cm 3-D checker (offset so that no wall lies on a cell
    border)."""
    parity = np.floor((points + 0.013) / CELL_M).astype(np.int64).sum(-1) % 2
    return np.where(parity == 1, 1.0, 0.45)


@pytest.fixture(scope="module")
def textured_room(tmp_path_factory):
    workdir = build_workdir(tmp_path_factory.mktemp("textured_room"), pattern=checker, with_gt_depth=False)
    fuse.run(FUSE, workdir, depth_model="lidar")
    mesh.run(MeshConfig(formats=("ply", "glb")), workdir)
    paths = export.run(CFG, workdir, "ar")
    return workdir, paths


def frames(workdir: Path, rows=None):
    """(rgb, K, camera_to_world) of the work directory's frames (every one, or `rows`)."""
    table = CaptureTable.load(workdir)
    for i in range(len(table)) if rows is None else rows:
        rgb = cv2.cvtColor(cv2.imread(str(table.root / table.rgb_path[i])), cv2.COLOR_BGR2RGB)
        yield rgb, table.K_rgb[i], table.camera_to_world[i]


def validate_gltf(path: Path) -> dict:
    import json

    if shutil.which("node") is None or not (REPO / "tools" / "node" / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("node or tools/node/node_modules/gltf-validator missing (bash tools/setup.sh installs them)")
    proc = subprocess.run(["node", str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout)


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
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 9, 0]], np.uint8)
    gltf, arrays, image = read_glb(write_glb(tmp_path / "m.glb", vertices, triangles, colors_rgb8=colors))
    assert image is None and all(v["byteOffset"] % 4 == 0 for v in gltf["bufferViews"])
    np.testing.assert_array_equal(arrays["POSITION"], vertices)
    np.testing.assert_array_equal(arrays["indices"], triangles)
    # COLOR_0 is linear (glTF): sRGB 128 -> ((128/255 + 0.055) / 1.055)^2.4 = 0.21586 -> 14146 of 65535;
    # 9 (below the linear segment's end, 0.04045 x 255) -> 9/255/12.92 = 0.0027318 -> 179
    color_0 = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    assert (color_0["componentType"], color_0["normalized"], color_0["type"]) == (5123, True, "VEC4")
    np.testing.assert_array_equal(arrays["COLOR_0"], [[65535, 0, 0, 65535], [0, 65535, 0, 65535],
                                                      [0, 0, 65535, 65535], [14146, 179, 0, 65535]])
    np.testing.assert_array_equal(srgb8_colors(arrays["COLOR_0"]), colors)
    every_level = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)  # each sRGB byte comes back
    np.testing.assert_array_equal(srgb8_colors(np.rint(np.c_[srgb8_to_linear(every_level), np.ones(256)] * 65535)),
                                  every_level)
    material = gltf["materials"][0]
    assert "KHR_materials_unlit" in material["extensions"] and material["pbrMetallicRoughness"]["metallicFactor"] == 0
    assert gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["max"] == [1, 1, 1]


# --------------------------------------------------------------------------- the ar preset on a textured room
def test_ar_files_budget_and_coordinates(textured_room):
    workdir, paths = textured_room
    out = WorkDir(workdir).export("ar")
    assert paths == [out / n for n in ("mesh.glb", "mesh.usdz", "mesh.obj", "mesh.mtl", "texture.jpg")]
    assert all(p.stat().st_size > 0 for p in paths)
    assert (workdir / "mesh.ply").exists() and (workdir / "mesh.glb").exists()  # exporting deletes nothing
    summary = export.ar.Manifest.read(out).summary
    _, arrays, image = read_glb(out / "mesh.glb")
    assert len(arrays["indices"]) == summary["triangles"] <= CFG.target_triangles < summary["triangles_full"]
    assert cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape == (1024, 1024, 3)
    assert image == (out / "texture.jpg").read_bytes()
    # decimation keeps the shape: the room's walls stay within millimetres
    assert summary["distance_to_full_mean_m"] < 0.003 and summary["distance_to_full_p95_m"] < 0.01
    # capture world, metres, not recentred: the box room spans [0, size] (marching cubes stops ~1 voxel short)
    np.testing.assert_allclose(arrays["POSITION"].min(0), [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(arrays["POSITION"].max(0), ROOM_SIZE_M, atol=0.05)


def test_glb_exports_pass_the_khronos_validator(textured_room):
    workdir, _ = textured_room
    for path in (WorkDir(workdir).export("ar") / "mesh.glb", workdir / "mesh.glb"):
        report = validate_gltf(path)
        assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
        assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    assert report["info"]["totalTriangleCount"] == len(mesh.read_ply(workdir / "mesh.ply").triangles)


@pytest.mark.filterwarnings("ignore:Use of UsdUtils.ComplianceChecker is deprecated")
def test_usdz_passes_arkit_compliance_and_binds_a_uv_texture(textured_room):
    pxr = pytest.importorskip("pxr")
    from pxr import Usd, UsdGeom, UsdShade, UsdUtils

    if not hasattr(UsdUtils, "ComplianceChecker"):
        pytest.skip(f"usd-core {Usd.GetVersion()} has no ComplianceChecker (setup.sh pins usd-core < 26.8)")
    path = WorkDir(textured_room[0]).export("ar") / "mesh.usdz"
    checker_ = UsdUtils.ComplianceChecker(arkit=True)
    checker_.CheckCompliance(str(path))
    assert checker_.GetErrors() == [] and checker_.GetFailedChecks() == [], (checker_.GetErrors(),
                                                                             checker_.GetFailedChecks())
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    material, _ = UsdShade.MaterialBindingAPI(meshes[0]).ComputeBoundMaterial()
    shaders = {UsdShade.Shader(p).GetIdAttr().Get() for p in Usd.PrimRange(material.GetPrim()) if p.IsA(UsdShade.Shader)}
    assert {"UsdPreviewSurface", "UsdUVTexture", "UsdPrimvarReader_float2"} <= shaders
    assert pxr is not None


def usdz_mesh(path: Path) -> ColoredMesh:
    """The USDZ's mesh with its st (bottom-left origin) turned into glTF UVs and its embedded texture."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    prim = next(p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh))
    m = UsdGeom.Mesh(prim)
    st = np.asarray(UsdGeom.PrimvarsAPI(m).GetPrimvar("st").Get(), np.float64)
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".jpg"))
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(z.read(name), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return ColoredMesh(np.asarray(m.GetPointsAttr().Get(), np.float64),
                       np.asarray(m.GetFaceVertexIndicesAttr().Get(), np.int64).reshape(-1, 3),
                       uv=np.stack([st[:, 0], 1 - st[:, 1]], 1), image=image)


def test_texture_beats_vertex_colours_and_every_format_has_the_uv_origin_right(textured_room, caplog):
    """Ray cast each export from the capture poses and compare with the frames on the same pixels. A texture
    looked up with the wrong v origin (the glTF / OBJ-USD flip) scores far lower, so a flip fails here."""
    workdir, _ = textured_room
    out = WorkDir(workdir).export("ar")
    glb = glb_mesh(out / "mesh.glb")
    flipped = dataclasses.replace(glb, uv=np.stack([glb.uv[:, 0], 1 - glb.uv[:, 1]], 1))
    obj = trimesh.load(out / "mesh.obj", process=False)  # trimesh keeps OBJ's bottom-left vt
    obj_mesh = ColoredMesh(obj.vertices, obj.faces, uv=np.stack([obj.visual.uv[:, 0], 1 - obj.visual.uv[:, 1]], 1),
                           image=np.asarray(obj.visual.material.image.convert("RGB")))
    meshes = {"glb": glb, "ply": glb_mesh(workdir / "mesh.glb"), "flipped": flipped, "obj": obj_mesh}
    if pytest.importorskip("pxr", reason="usd-core missing") is not None:
        meshes["usdz"] = usdz_mesh(out / "mesh.usdz")
    psnr, n_pixels = frame_psnr(meshes, frames(workdir, rows=[0, 3, 6, 9, 12]))
    logging.getLogger(__name__).info("texture fidelity: %s over %d pixels", psnr, n_pixels)
    assert n_pixels > 0.5 * 5 * 320 * 240
    assert psnr["glb"] >= psnr["ply"] + 1.0, psnr  # sharper than the full-resolution vertex colours
    assert psnr["flipped"] < psnr["glb"] - 5, psnr
    assert abs(psnr["obj"] - psnr["glb"]) < 0.2 and abs(psnr.get("usdz", psnr["glb"]) - psnr["glb"]) < 0.2, psnr


def test_obj_opens_with_its_texture_in_open3d(textured_room):
    out = WorkDir(textured_room[0]).export("ar")
    legacy = o3d.io.read_triangle_mesh(str(out / "mesh.obj"), enable_post_processing=False)
    assert len(legacy.triangles) == len(read_glb(out / "mesh.glb")[1]["indices"])
    material = np.unique(np.asarray(legacy.triangle_material_ids))
    assert legacy.has_triangle_uvs() and len(material) == 1  # Open3D lists an empty default material too
    assert np.asarray(legacy.textures[int(material[0])]).shape == (1024, 1024, 3)


def test_rerun_is_up_to_date_other_mesh_formats_keep_it_and_recenter_moves_it(textured_room, tmp_path, caplog):
    workdir, paths = textured_room
    work = tmp_path / "copy"
    shutil.copytree(workdir, work)
    out = WorkDir(work).export("ar")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    mesh.run(MeshConfig(formats=("obj",)), work)  # adds mesh.obj; the mesh itself is unchanged
    with caplog.at_level(logging.INFO, logger="pipeline"):
        export.run(CFG, work, "ar")
    assert "export ar: up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert (work / "mesh.ply").exists() and (work / "mesh.glb").exists() and (work / "mesh.obj").exists()
    # --recenter: the floor (y = 0 here already) stays at 0, the floor plan's centre moves to the origin
    export.run(dataclasses.replace(CFG, recenter=True), work, "ar")
    positions = read_glb(out / "mesh.glb")[1]["POSITION"]
    lo, hi = positions.min(0), positions.max(0)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[2] + hi[2]) / 2], [0, 0], atol=0.01)
    assert abs(np.percentile(positions[:, 1], 2)) < 0.02 and hi[1] == pytest.approx(ROOM_SIZE_M[1], abs=0.05)
    offset = export.ar.Manifest.read(out).summary["recenter_offset_m"]
    np.testing.assert_allclose(offset, [-ROOM_SIZE_M[0] / 2, 0, -ROOM_SIZE_M[2] / 2], atol=0.05)


def test_atlas_covers_each_triangle_once_at_one_texel_density():
    """Two unit squares facing +z and +x (four triangles): each triangle's texels are inside it, no texel is
    claimed twice, the UVs keep the world's proportions and the texel points lie on the triangles."""
    from pipeline.export.texture import build_atlas, split_vertices, texel_points

    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],  # z = 0 square, normal +z
                         [2, 0, 0], [2, 1, 0], [2, 1, 1], [2, 0, 1]], float)  # x = 2 square, normal +x
    triangles = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    atlas = build_atlas(vertices, triangles, size_px=64, padding_px=2)
    assert len(np.unique(atlas.texel)) == len(atlas.texel)
    assert set(atlas.chart[:2]).isdisjoint(atlas.chart[2:])  # other axis, other chart
    points, normals = texel_points(vertices, triangles, atlas)
    on_z = atlas.texel_triangle < 2
    np.testing.assert_allclose(points[on_z, 2], 0, atol=1e-6)
    np.testing.assert_allclose(points[~on_z, 0], 2, atol=1e-6)
    np.testing.assert_allclose(normals[on_z], [[0, 0, 1]] * on_z.sum(), atol=1e-6)
    # each square covers about texels_per_m^2 texels (one density for both)
    for mask in (on_z, ~on_z):
        assert mask.sum() == pytest.approx(atlas.texels_per_m ** 2, rel=0.15)
    edge_px = np.linalg.norm(np.diff(atlas.corner_uv[0][:2], axis=0)) * 64  # the (0,0,0)-(1,0,0) edge
    assert edge_px == pytest.approx(atlas.texels_per_m, rel=1e-6)
    source, uv, new_triangles = split_vertices(triangles, atlas)
    np.testing.assert_array_equal(source[new_triangles], triangles)  # same corners, one UV per (vertex, chart)
    assert len(uv) == len({(v, c) for t, c in zip(triangles, atlas.chart) for v in t}) and 0 <= uv.min() <= uv.max() <= 1
