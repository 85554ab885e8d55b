"""fuse -> mesh -> eval on a tiny synthetic work directory built by hand (a box room rendered by ray casting).

The work directory holds what ingest and the depth stage would write (frames.parquet, RGB JPEGs, LiDAR and
confidence PNGs, GT depth, depth/lidar/ with a manifest), so these tests do not depend on those stages.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
import trimesh

from pipeline import evaluate, fuse, mesh
from pipeline.artifacts import Manifest, write_png_atomic
from pipeline.capture import CaptureTable, FrameRow, write_frames_table
from pipeline.config import EvalConfig, FuseConfig, MeshConfig
from pipeline.errors import PromptmeshError
from pipeline.export.gltf import read_glb, srgb8_colors
from pipeline.geometry import camera_rays, scale_intrinsics, subsample_depth
from pipeline.images import depth_m_to_mm
from pipeline.workdir import WorkDir

ROOM_SIZE_M = np.array([4.0, 2.5, 3.0])  # x, y (up, floor at y = 0), z
RGB_WH, DEPTH_WH = (320, 240), (160, 120)
K_RGB = np.array([[200.0, 0, 160.0], [0, 200.0, 120.0], [0, 0, 1]])  # 77 x 62 degree field of view
FACE_COLORS = {  # RGB per wall, by the axis and sign of its inward normal
    (0, 1): (200, 40, 40), (0, -1): (40, 200, 40), (1, 1): (230, 230, 230),  # y+ normal: floor, light grey
    (1, -1): (40, 40, 200), (2, 1): (200, 200, 40), (2, -1): (40, 200, 200),
}
FUSE = FuseConfig(voxel_size_m=0.02)
MESH = MeshConfig(formats=("ply", "obj", "glb"))
EVAL = EvalConfig(sample_spacing_m=0.01)


def box_room(offset=(0.0, 0.0, 0.0)) -> o3d.geometry.TriangleMesh:
    room = o3d.geometry.TriangleMesh.create_box(*ROOM_SIZE_M)
    room.translate(np.asarray(offset, float))
    return room


def look_at(eye: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """camera_to_world (OpenCV axes) at `eye`, looking at yaw (about world y) and pitch (up positive)."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), -np.cos(yaw) * np.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward], 1)
    T[:3, 3] = eye
    return T


def camera_poses(offset) -> list[np.ndarray]:
    eye = np.array([2.0, 1.4, 1.5]) + offset
    poses = [look_at(eye, yaw, -20) for yaw in range(0, 360, 45)]
    poses += [look_at(eye, yaw, 45) for yaw in (0, 90, 180, 270)]
    poses += [look_at(eye, yaw, -75) for yaw in (0, 180)]
    return poses


def render(room: o3d.geometry.TriangleMesh, camera_to_world: np.ndarray, K: np.ndarray, wh, pattern=None) -> tuple:
    """(z-depth metres (inf = miss), RGB uint8 from the wall colours) through pixel centres; `pattern`, if
    given, maps (h,w,3) world points of the hits to (h,w) factors in [0, 1] that the colours are scaled by."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room))
    rays = camera_rays(K, camera_to_world, wh)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    depth = hit["t_hit"].numpy()  # rays have camera z = 1: the ray parameter is the z-depth
    dirs = rays[..., 3:].astype(np.float64)
    w, h = wh
    normals = hit["primitive_normals"].numpy()
    inward = -np.sign(np.einsum("hwc,hwc->hw", normals, dirs))[..., None] * normals
    rgb = np.zeros((h, w, 3), np.uint8)
    for (axis, sign), color in FACE_COLORS.items():
        rgb[np.abs(inward[..., axis] - sign) < 0.5] = color
    if pattern is not None:
        points = camera_to_world[:3, 3] + np.where(np.isfinite(depth), depth, 0)[..., None] * dirs
        rgb = np.clip(np.rint(rgb * pattern(points)[..., None]), 0, 255).astype(np.uint8)
    return depth, rgb


def build_workdir(root: Path, offset=(0.0, 0.0, 0.0), with_gt_depth=True, pattern=None) -> Path:
    """A work directory as ingest + `depth lidar` would leave it, for a box room shifted by `offset` (its RGB
    frames' colours scaled by `pattern`, see render)."""
    offset = np.asarray(offset, float)
    room = box_room(offset)
    cap = WorkDir(root).capture
    K_depth = scale_intrinsics(K_RGB, RGB_WH, DEPTH_WH)
    rows = []
    for i, pose in enumerate(camera_poses(offset)):
        stem = f"{i:06d}"
        depth_m, _ = render(room, pose, K_depth, DEPTH_WH)
        gt_m, rgb = render(room, pose, K_RGB, RGB_WH, pattern)
        depth_mm = depth_m_to_mm(np.where(np.isfinite(depth_m), depth_m, 0))
        (cap / "rgb").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cap / "rgb" / f"{stem}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        write_png_atomic(cap / "lidar" / f"{stem}.png", depth_mm)
        write_png_atomic(cap / "confidence" / f"{stem}.png", np.full(depth_mm.shape, 2, np.uint8))
        if with_gt_depth:
            write_png_atomic(cap / "gt_depth" / f"{stem}.png", depth_m_to_mm(np.where(np.isfinite(gt_m), gt_m, 0)))
        write_png_atomic(WorkDir(root).depth("lidar") / f"{stem}.png", depth_mm)
        rows.append(FrameRow(i, 0.1 * i, f"rgb/{stem}.jpg", f"lidar/{stem}.png", f"confidence/{stem}.png",
                             *RGB_WH, *DEPTH_WH, K_RGB[0, 0], K_RGB[1, 1], K_RGB[0, 2], K_RGB[1, 2],
                             pose.reshape(-1).tolist()))
    write_frames_table(cap / "frames.parquet", rows)
    Manifest("depth", "depth-lidar-v1", outputs=[f"{i:06d}.png" for i in range(len(rows))],
             settings={"model": "lidar"}).write(WorkDir(root).depth("lidar"))
    o3d.io.write_triangle_mesh(str(root / "gt_room.ply"), room)
    return root


def run_all(workdir: Path, fuse_cfg=FUSE, mesh_cfg=MESH, eval_cfg=EVAL) -> dict:
    fuse.run(fuse_cfg, workdir, depth_model="lidar")
    paths = mesh.run(mesh_cfg, workdir)
    ev = evaluate.run(eval_cfg, workdir, gt_mesh=workdir / "gt_room.ply")
    return {"meshes": paths, "eval": json.loads(ev.read_text())}


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> tuple[Path, dict]:
    workdir = build_workdir(tmp_path_factory.mktemp("room"))
    return workdir, run_all(workdir)


def artifact_mtimes(workdir: Path, every: bool = True) -> dict[str, int]:
    """Modification times of the fused volume, mesh.ply and eval.json (and, with `every`, the other exports and
    the F-score curve), keyed by their path in the work directory."""
    wd = WorkDir(workdir)
    paths = [wd.tsdf, wd.mesh("ply"), wd.eval_json] + ([wd.mesh("obj"), wd.mesh("glb"), wd.eval_curve] if every else [])
    return {str(p.relative_to(wd.root)): p.stat().st_mtime_ns for p in paths}


# --------------------------------------------------------------------------- quality and contracts
def test_eval_json_contract_and_scores(room):
    workdir, res = room
    ev = res["eval"]
    assert set(ev) == {"threshold_m", "downsample_m", "n_frames", "culled", "unculled", "depth"}
    assert (ev["threshold_m"], ev["downsample_m"], ev["n_frames"]) == (0.05, 0.02, 14)
    keys = {"accuracy_m", "completeness_m", "precision", "recall", "fscore"}
    assert set(ev["culled"]) == keys and set(ev["unculled"]) == keys
    assert ev["culled"]["fscore"] > 0.95 and ev["unculled"]["fscore"] > 0.9
    assert ev["culled"]["accuracy_m"] < 0.01 and ev["unculled"]["accuracy_m"] < 0.01
    # depth/lidar is the GT depth rendered at half size: nearest upsampling errs only at slanted pixels
    assert set(ev["depth"]) == {"l1_m", "rmse_m", "absrel", "delta_0.5"}
    assert 0 < ev["depth"]["l1_m"] < 0.01 and ev["depth"]["delta_0.5"] > 0.98
    curve = json.loads(WorkDir(workdir).eval_curve.read_text())
    assert curve["thresholds_m"] == pytest.approx([0.01 * k for k in range(1, 11)])
    assert curve["culled"]["fscore"][4] == pytest.approx(ev["culled"]["fscore"])
    assert np.all(np.diff(curve["unculled"]["recall"]) >= 0)


def test_mesh_in_world_frame_with_wall_colours(room):
    workdir, _ = room
    m = trimesh.load(WorkDir(workdir).mesh("ply"), process=False)
    v = np.asarray(m.vertices)
    # the fused walls lie on the room's walls (bounds within a voxel)
    np.testing.assert_allclose(v.min(0), [0, 0, 0], atol=0.02)
    np.testing.assert_allclose(v.max(0), ROOM_SIZE_M, atol=0.02)
    # vertices lie on the walls: exact depth fuses to within ~1 mm (a half-pixel projection error in the
    # intrinsics handed to Open3D would move the floor, seen from above at a slant, by ~5 mm)
    to_walls = np.minimum(np.abs(v), np.abs(v - ROOM_SIZE_M))  # distance to each axis' two walls
    assert np.mean(to_walls.min(1)) < 0.002
    floor_y = v[(v[:, 1] < 0.05) & (np.abs(v[:, 0] - 2) < 1.5) & (np.abs(v[:, 2] - 1.5) < 1), 1]
    assert abs(np.mean(floor_y)) < 0.0015
    colors = np.asarray(m.visual.vertex_colors)[:, :3].astype(int)
    floor = (v[:, 1] < 0.01) & (np.abs(v[:, 0] - 2) < 1.5) & (np.abs(v[:, 2] - 1.5) < 1)
    assert floor.sum() > 1000
    np.testing.assert_allclose(np.median(colors[floor], axis=0), FACE_COLORS[(1, 1)], atol=10)


def test_exports_reload_with_same_vertices_and_colours(room):
    workdir, res = room
    wd = WorkDir(workdir)
    assert res["meshes"] == [wd.mesh("ply"), wd.mesh("obj"), wd.mesh("glb")]
    ref = trimesh.load(wd.mesh("ply"), process=False)
    obj = trimesh.load(wd.mesh("obj"), force="mesh", process=False)
    assert (len(obj.vertices), len(obj.faces)) == (len(ref.vertices), len(ref.faces))
    np.testing.assert_allclose(obj.vertices, ref.vertices, atol=1e-5)
    np.testing.assert_allclose(np.asarray(obj.visual.vertex_colors)[:, :3],
                               np.asarray(ref.visual.vertex_colors)[:, :3], atol=1)
    # the GLB is glTF 2.0 with per-vertex colours and unit normals, and opens in trimesh
    gltf, arrays, _ = read_glb(wd.mesh("glb"))
    assert {"POSITION", "COLOR_0", "NORMAL"} <= set(arrays)
    np.testing.assert_allclose(arrays["POSITION"], ref.vertices, atol=1e-5)
    np.testing.assert_array_equal(arrays["indices"], ref.faces)
    np.testing.assert_array_equal(srgb8_colors(arrays["COLOR_0"]), np.asarray(ref.visual.vertex_colors)[:, :3])
    np.testing.assert_allclose(np.linalg.norm(arrays["NORMAL"], axis=1), 1, atol=1e-5)
    assert len(trimesh.load(wd.mesh("glb"), force="mesh", process=False).faces) == len(ref.faces)
    manifest = Manifest.read(wd.mesh_stage)
    assert manifest.outputs == ["../mesh.ply", "../mesh.obj", "../mesh.glb"]
    assert manifest.summary["vertices"] == len(ref.vertices)


# --------------------------------------------------------------------------- caching
def test_second_run_does_no_work(room, caplog):
    workdir, _ = room
    before = artifact_mtimes(workdir)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_all(workdir)
    assert artifact_mtimes(workdir) == before
    text = caplog.text
    assert "fuse: up to date" in text and "mesh: up to date" in text and "eval: up to date" in text


def test_changed_voxel_size_reruns_fuse_and_after(tmp_path):
    workdir = build_workdir(tmp_path, with_gt_depth=False)
    coarse = FuseConfig(voxel_size_m=0.04)
    mesh_cfg = MeshConfig(min_component_triangles=50)
    first = run_all(workdir, coarse, mesh_cfg)
    assert "depth" not in first["eval"]  # no GT depth in this work directory
    before = artifact_mtimes(workdir, every=False)
    n_coarse = Manifest.read(WorkDir(workdir).mesh_stage).summary["triangles"]
    run_all(workdir, dataclasses.replace(coarse, voxel_size_m=0.03), mesh_cfg)
    after = artifact_mtimes(workdir, every=False)
    assert all(after[k] != before[k] for k in before)
    assert Manifest.read(WorkDir(workdir).mesh_stage).summary["triangles"] > 1.5 * n_coarse
    # a changed mesh setting reruns mesh and eval, not fuse
    run_all(workdir, dataclasses.replace(coarse, voxel_size_m=0.03), dataclasses.replace(mesh_cfg, weight_threshold=2))
    again = artifact_mtimes(workdir, every=False)
    assert again["fuse/tsdf.npz"] == after["fuse/tsdf.npz"]
    assert again["mesh.ply"] != after["mesh.ply"] and again["eval.json"] != after["eval.json"]
    # a new depth stage fingerprint reruns fuse
    m = Manifest.read(WorkDir(workdir).depth("lidar"))
    Manifest("depth", "depth-lidar-v2", m.outputs, m.settings).write(WorkDir(workdir).depth("lidar"))
    fuse.run(dataclasses.replace(coarse, voxel_size_m=0.03), workdir, depth_model="lidar")
    assert WorkDir(workdir).tsdf.stat().st_mtime_ns != again["fuse/tsdf.npz"]
    # a missing depth map is named, and the stage is left not done
    (WorkDir(workdir).depth("lidar") / "000005.png").unlink()
    with pytest.raises(PromptmeshError, match="000005.png"):
        fuse.run(coarse, workdir, depth_model="lidar")
    assert Manifest.read(WorkDir(workdir).fuse) is None


def test_mesh_follows_a_shifted_world(room, tmp_path):
    workdir, _ = room
    shift = np.array([10.0, -3.0, 5.0])
    shifted = build_workdir(tmp_path, offset=shift, with_gt_depth=False)
    fuse.run(FUSE, shifted, depth_model="lidar")
    mesh.run(MeshConfig(), shifted)
    v0 = np.asarray(trimesh.load(WorkDir(workdir).mesh("ply"), process=False).vertices)
    v1 = np.asarray(trimesh.load(WorkDir(shifted).mesh("ply"), process=False).vertices)
    np.testing.assert_allclose(v1.min(0), v0.min(0) + shift, atol=0.02)
    np.testing.assert_allclose(v1.max(0), v0.max(0) + shift, atol=0.02)
    np.testing.assert_allclose(v1.mean(0), v0.mean(0) + shift, atol=0.02)


def test_out_folder_keeps_variants_apart(room, tmp_path):
    workdir, _ = room
    out = tmp_path / "variant"
    variant = WorkDir(workdir, out)  # capture and depth from workdir, fusion onwards in out
    assert fuse.run(FUSE, variant, depth_model="lidar") == out / "fuse"
    assert mesh.run(MeshConfig(), variant) == [out / "mesh.ply"]
    ev = json.loads(evaluate.run(EVAL, variant, gt_mesh=workdir / "gt_room.ply").read_text())
    assert ev["culled"]["fscore"] > 0.95
    assert Manifest.read(variant.mesh_stage).outputs == ["../mesh.ply"]
    # another format of the same mesh is added without redoing it; mesh.ply (which eval read) stays
    ply_mtime = (out / "mesh.ply").stat().st_mtime_ns
    assert mesh.run(MeshConfig(formats=("glb",)), variant) == [out / "mesh.ply", out / "mesh.glb"]
    assert (out / "mesh.ply").stat().st_mtime_ns == ply_mtime
    assert sorted(Manifest.read(variant.mesh_stage).outputs) == ["../mesh.glb", "../mesh.ply"]
    assert len(trimesh.load(out / "mesh.glb", force="mesh").faces) == len(mesh.read_ply(out / "mesh.ply").triangles)
    eval_mtime = (out / "eval.json").stat().st_mtime_ns
    evaluate.run(EVAL, variant, gt_mesh=workdir / "gt_room.ply")
    assert (out / "eval.json").stat().st_mtime_ns == eval_mtime  # the mesh did not change: eval is up to date
    # a changed mesh removes the old one's other formats (stale) and keeps only what it rewrote
    mesh.run(MeshConfig(min_component_triangles=1), variant)
    assert (out / "mesh.ply").exists() and not (out / "mesh.glb").exists()


def test_compare_model_layout():
    wd = WorkDir("/w").compare_model("guided")
    assert (wd.capture, wd.depth("guided"), wd.fuse, wd.mesh("glb"), wd.eval_json, wd.eval_curve) == (
        Path("/w/capture"), Path("/w/depth/guided"), Path("/w/compare/guided/fuse"),
        Path("/w/compare/guided/mesh.glb"), Path("/w/compare/guided/eval.json"),
        Path("/w/compare/guided/eval/curve.json"))
    assert WorkDir(wd) == wd and WorkDir("/w").scene("s1").frames_parquet == Path("/w/scenes/s1/capture/frames.parquet")


# --------------------------------------------------------------------------- pieces
def test_mask_depth_mm_drops_out_of_range_and_low_confidence():
    cfg = FuseConfig(depth_min_m=0.2, depth_max_m=3.0, min_confidence=1)
    depth_mm = np.array([[100, 200, 1500], [3000, 3001, 0]], np.uint16)
    conf = np.array([[2, 2, 0], [1, 2, 2]], np.uint8)
    np.testing.assert_array_equal(fuse.mask_depth_mm(depth_mm, conf, cfg), [[0, 200, 0], [3000, 0, 0]])
    keep_all = dataclasses.replace(cfg, min_confidence=0)
    np.testing.assert_array_equal(fuse.mask_depth_mm(depth_mm, conf, keep_all), [[0, 200, 1500], [3000, 0, 0]])
    np.testing.assert_array_equal(fuse.mask_depth_mm(depth_mm, None, cfg), [[0, 200, 1500], [3000, 0, 0]])


def test_block_estimate_covers_the_fused_blocks(room):
    workdir, _ = room
    estimate = fuse.estimate_block_count(CaptureTable.load(workdir), FUSE)
    fused = Manifest.read(WorkDir(workdir).fuse).summary["blocks"]
    assert fused <= estimate <= 3 * fused


def test_remove_small_components_and_decimate():
    # a 10 x 10 grid of quads (200 triangles) plus a lone triangle far away
    n = 11
    y, x = np.mgrid[0:n, 0:n]
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], -1).astype(float)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    vertices = np.concatenate([vertices, [[50, 50, 0], [51, 50, 0], [50, 51, 0]]])
    triangles = np.concatenate([triangles, [[121, 122, 123]]])
    colors = np.zeros((len(vertices), 3), np.uint8)
    colors[:121] = (10, 20, 30)
    colors[121:] = (255, 0, 0)
    m = mesh.MeshArrays(vertices, triangles, colors)
    cleaned, removed = mesh.remove_small_components(m, 2)
    assert removed == 1 and len(cleaned.triangles) == 200 and len(cleaned.vertices) == 121
    np.testing.assert_array_equal(cleaned.vertices, vertices[:121])
    assert np.all(cleaned.colors == (10, 20, 30))
    assert mesh.remove_small_components(m, 0)[0] is m
    small = mesh.decimate(cleaned, 50)
    assert len(small.triangles) <= 50 and len(small.vertices) < 121
    assert np.all(small.colors == (10, 20, 30))
    np.testing.assert_allclose(small.vertices.min(0), [0, 0, 0])  # corners survive a planar collapse
    np.testing.assert_allclose(small.vertices.max(0), [10, 10, 0])


def test_bad_gt_mesh_names_the_file(room, tmp_path):
    workdir, _ = room
    broken = tmp_path / "broken.ply"
    broken.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00\x01")
    with pytest.raises(PromptmeshError, match="broken.ply"):
        evaluate.run(EVAL, workdir, gt_mesh=broken, force=True)
    empty = tmp_path / "points.ply"
    o3d.io.write_point_cloud(str(empty), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.rand(10, 3))))
    with pytest.raises(PromptmeshError, match="points.ply"):
        evaluate.run(EVAL, workdir, gt_mesh=empty, force=True)
    with pytest.raises(PromptmeshError, match="missing.ply"):
        evaluate.run(EVAL, workdir, gt_mesh=tmp_path / "missing.ply")


def test_gt_mesh_in_another_frame_is_reported(room, tmp_path):
    workdir, _ = room
    out = tmp_path / "far"  # a copy of the finished mesh stage, so the shared work directory stays as it is
    shutil.copytree(WorkDir(workdir).mesh_stage, out / "mesh")
    shutil.copytree(WorkDir(workdir).fuse, out / "fuse", ignore=shutil.ignore_patterns("*.npz"))
    shutil.copy(WorkDir(workdir).mesh("ply"), out / "mesh.ply")
    far = tmp_path / "far_room.ply"  # 50 m straight above the cameras: outside every view
    o3d.io.write_triangle_mesh(str(far), o3d.geometry.TriangleMesh.create_box().translate((1.5, 50.0, 1.0)))
    with pytest.raises(PromptmeshError, match="world frame"):
        evaluate.run(EVAL, WorkDir(workdir, out), gt_mesh=far)


def test_weight_threshold_counts_observations():
    """One frame gives every voxel weight 1: threshold 1 keeps the surface, 2 needs a second view."""
    grid = fuse.new_grid(FuseConfig(voxel_size_m=0.01), 1024, o3d.core.Device("CPU:0"))
    depth = o3d.t.geometry.Image(o3d.core.Tensor(np.full((60, 80), 1500, np.uint16)))
    color = o3d.t.geometry.Image(o3d.core.Tensor(np.full((60, 80, 3), 128, np.uint8)))
    K = o3d.core.Tensor(fuse.open3d_intrinsics(np.array([[50.0, 0, 40], [0, 50.0, 30], [0, 0, 1]])))
    E = o3d.core.Tensor(np.eye(4))
    blocks = grid.compute_unique_block_coordinates(depth, K, E, 1000.0, 5.0, 4.0)
    grid.integrate(blocks, depth, color, K, K, E, 1000.0, 5.0, 4.0)
    once = mesh.extract(grid, 1)
    assert len(once.triangles) > 1000
    np.testing.assert_allclose(once.vertices[:, 2], 1.5, atol=1e-3)
    assert np.all(np.abs(once.colors.astype(int) - 128) <= 1)
    assert len(mesh.extract(grid, 2).triangles) == 0


def test_automatic_voxel_size_follows_the_scene_depth(tmp_path):
    """voxel_size_m = 0: 0.3 % of the median LiDAR depth (a room seen at 3.3 m -> 1 cm), at least 4 mm with a
    truncation of at least 3 cm; an explicit voxel size is kept as given."""
    assert fuse.auto_voxel_size_m(3.3, FuseConfig()) == 0.01
    assert fuse.auto_voxel_size_m(0.3, FuseConfig()) == 0.004
    assert fuse.auto_voxel_size_m(6.0, FuseConfig()) == 0.018
    assert fuse.auto_voxel_size_m(float("nan"), FuseConfig()) == 0.01
    capture = tmp_path / "capture"
    (capture / "lidar").mkdir(parents=True)
    rows = []
    for i, depth_mm in enumerate((300, 320, 340)):  # frames' median depths 0.30, 0.32, 0.34 m
        d = np.full((12, 16), depth_mm, np.uint16)
        d[:3] = 0  # no return: not part of the median
        d[3:5] = 5000  # a far strip: a minority of the valid pixels
        cv2.imwrite(str(capture / "lidar" / f"{i:06d}.png"), d)
        rows.append(FrameRow(i, i / 30, f"rgb/{i:06d}.jpg", f"lidar/{i:06d}.png", None, 64, 48, 16, 12, 50.0, 50.0,
                             32.0, 24.0, np.eye(4).reshape(-1).tolist()))
    write_frames_table(capture / "frames.parquet", rows)
    table = CaptureTable.load(tmp_path)
    assert fuse.scene_depth_m(table) == pytest.approx(0.32)
    chosen, depth_m = fuse.resolve_voxel_size(FuseConfig(), fuse.scene_depth_m(table))
    assert depth_m == pytest.approx(0.32) and chosen.voxel_size_m == 0.004
    assert chosen.sdf_trunc_voxels * chosen.voxel_size_m == pytest.approx(0.03)
    given, none = fuse.resolve_voxel_size(FuseConfig(voxel_size_m=0.02), 0.32)
    assert none is None and given == FuseConfig(voxel_size_m=0.02)


def _fused_plane_offset_m(depth_mm: np.ndarray, K: np.ndarray, plane) -> float:
    """Mean signed distance of the mesh fused from one depth map (world = camera) to the plane n.x = d."""
    n, d = plane
    grid = fuse.new_grid(FuseConfig(voxel_size_m=0.01), 4096, o3d.core.Device("CPU:0"))
    rgb = np.full(depth_mm.shape + (3,), 128, np.uint8)
    frame = fuse.PreparedFrame(0, depth_mm, rgb, K, K, int(np.count_nonzero(depth_mm)))
    assert fuse.integrate_frame(grid, frame, np.eye(4), FuseConfig(voxel_size_m=0.01), o3d.core.Device("CPU:0"))
    v = mesh.extract(grid, 1).vertices.astype(np.float64)
    inner = (np.abs(v[:, 0]) < 0.3) & (np.abs(v[:, 1]) < 0.3)
    return float(np.mean(v[inner] @ n - d))


def test_subsampled_depth_fuses_where_every_pixel_does():
    """A plane slanted 56 degrees to the view, its depth exact at pixel centres (integer coordinates): fused from
    every pixel or from every 2nd (`subsample_depth`, as `prepare_frame` does), the surface lands on the plane
    (within 1 mm: one pixel per voxel samples the slant coarsely). A half-pixel slip of the subsampled grid (K / 2
    for the grid of odd pixels) moves it by 4.5 mm."""
    W, H, f = 480, 360, 400.0
    K = np.array([[f, 0, W / 2 - 0.3], [0, f, H / 2 + 0.2], [0, 0, 1]])
    slope, z0 = 1.5, 2.0  # the plane z = z0 + slope * x
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    z = z0 / (1 - slope * (u - K[0, 2]) / f)
    depth_mm = np.where((z > 0.3) & (z < 4.5), np.rint(z * 1000), 0).astype(np.uint16)
    plane = (np.array([-slope, 0.0, 1.0]) / np.hypot(slope, 1), z0 / np.hypot(slope, 1))
    assert fuse.depth_step(0.01, z0, f, 1.0, max_step=4) == 2  # 2 px per 1 cm voxel at 2 m
    small, K_small = subsample_depth(depth_mm, K, 2)
    assert small.shape == (H // 2, W // 2)
    assert abs(_fused_plane_offset_m(depth_mm, K, plane)) < 4e-4
    assert abs(_fused_plane_offset_m(small, K_small, plane)) < 1e-3


def test_depth_step_leaves_enough_pixels_per_voxel():
    # one pixel spans depth / f: at f = 800 px and 2 m, 2.5 mm; a 1 cm voxel spans 4 of them
    assert fuse.depth_step(0.01, 2.0, 800.0, 1.0, max_step=8) == 4
    assert fuse.depth_step(0.01, 2.0, 800.0, 1.0, max_step=3) == 3  # no fewer pixels than the LiDAR's
    assert fuse.depth_step(0.01, 2.0, 800.0, 1.5, max_step=8) == 2
    assert fuse.depth_step(0.01, 5.0, 800.0, 1.0, max_step=8) == 1  # never below one pixel per step
    assert fuse.depth_step(0.01, 2.0, 800.0, 0.0, max_step=8) == 1  # 0: every pixel
    assert fuse.depth_step(0.01, float("nan"), 800.0, 1.0, max_step=8) == 1  # unknown scene depth
