"""The `nerfstudio` export preset: transforms.json conventions (OpenGL camera axes, pixel centres at + 0.5,
millimetre depth at the image size) checked by back-projecting the exported depth the way nerfstudio casts rays.

The work directory is built by hand: a 4 x 2.5 x 3 m box room, cameras inside it (yawed, pitched and rolled),
depth rendered from the room in promptmesh's convention (OpenCV axes, pixel centres at integer coordinates).
The capture's poses are off by 10 cm and the fused poses (fuse/poses.parquet) are the true ones, so only an
export that uses the fused poses lands on the room.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
from click.testing import CliRunner

from make_synthetic_capture import make_capture
from pipeline import evaluate, export, runner
from pipeline.artifacts import Manifest, write_png_atomic
from pipeline.capture import CaptureTable, FrameRow, write_frames_table
from pipeline.cli import cli
from pipeline.config import ExportConfig, PipelineConfig, override
from pipeline.errors import PromptmeshError
from pipeline.export.nerfstudio import depth_at_image_size, nerfstudio_intrinsics, transforms
from pipeline.geometry import backproject, scale_intrinsics, transform_points
from pipeline.images import depth_m_to_mm, read_depth_m
from pipeline.mesh import MeshArrays, write_ply
from pipeline.poses import fused_camera_to_world, write_poses
from pipeline.workdir import WorkDir

ROOM_M = (4.0, 2.5, 3.0)
IMAGE_WH = (64, 48)
K_RGB = np.array([[40.0, 0, 31.3], [0, 41.0, 24.6], [0, 0, 1]])  # 77 x 61 degrees, principal point off centre


def room() -> o3d.geometry.TriangleMesh:
    return o3d.geometry.TriangleMesh.create_box(*ROOM_M)


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Columns = camera x (right), y (down), z (forward) in the world (+y up) for a camera looking at yaw (about
    +y), pitch (up positive), rolled about its forward axis."""
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), -np.cos(yaw) * np.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, forward], 1)


def true_poses() -> np.ndarray:
    poses = []
    for k, (yaw, pitch, roll) in enumerate([(0, -20, 0), (70, 25, 15), (160, -45, -30), (250, 10, 40)]):
        T = np.eye(4)
        T[:3, :3] = rotation(yaw, pitch, roll)
        T[:3, 3] = [2.0 + 0.2 * k, 1.3, 1.5 - 0.1 * k]
        poses.append(T)
    return np.stack(poses)


def make_workdir(root: Path, depth_wh=IMAGE_WH, refined=True) -> tuple[WorkDir, np.ndarray]:
    """A finished work directory (capture, depth/guided/, fused poses, mesh); returns it and the true poses."""
    wd = WorkDir(root)
    poses = true_poses()
    captured = poses.copy()
    captured[:, :3, 3] += [0.1, 0.0, 0.0] if refined else 0.0  # what refinement corrected
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room()))
    K_depth = scale_intrinsics(K_RGB, IMAGE_WH, depth_wh)
    rows = []
    for k, T in enumerate(poses):
        stem = f"{k:06d}"
        rgb = np.random.default_rng(k).integers(0, 255, (IMAGE_WH[1], IMAGE_WH[0], 3), np.uint8)
        (wd.capture / "rgb").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(wd.capture / "rgb" / f"{stem}.jpg"), rgb)
        depth_m = evaluate.render_depth(scene, K_depth, T, depth_wh)
        write_png_atomic(wd.depth("guided") / f"{stem}.png", depth_m_to_mm(depth_m))
        rows.append(FrameRow(k, 0.1 * k, f"rgb/{stem}.jpg", f"lidar/{stem}.png", None, *IMAGE_WH, 16, 12,
                             K_RGB[0, 0], K_RGB[1, 1], K_RGB[0, 2], K_RGB[1, 2], captured[k].ravel().tolist()))
    write_frames_table(wd.frames_parquet, rows)
    write_poses(wd.poses_parquet, np.arange(len(poses)), poses)
    Manifest("fuse", "fuse-test", ["poses.parquet"], {"depth_model": "guided"}).write(wd.fuse)
    mesh = room()
    vertices = np.asarray(mesh.vertices)
    write_ply(MeshArrays(vertices, np.asarray(mesh.triangles, np.int64),
                         np.full((len(vertices), 3), 200, np.uint8)), wd.mesh("ply"))
    Manifest("mesh", "mesh-test", ["../mesh.ply"], {}).write(wd.mesh_stage)
    return wd, poses


def nerfstudio_points(meta: dict, frame: dict, depth_m: np.ndarray) -> np.ndarray:
    """World points of every valid pixel as nerfstudio casts rays: through the pixel centre (j + 0.5, i + 0.5),
    camera looking down -z with y up, z-depth along -z."""
    intr = {k: frame.get(k, meta.get(k)) for k in ("fl_x", "fl_y", "cx", "cy")}
    i, j = np.nonzero(depth_m > 0)
    z = depth_m[i, j]
    x, y = (j + 0.5 - intr["cx"]) / intr["fl_x"], -(i + 0.5 - intr["cy"]) / intr["fl_y"]
    dirs = np.stack([x, y, -np.ones_like(z)], 1)
    T = np.asarray(frame["transform_matrix"])
    return T[:3, 3] + (dirs * z[:, None]) @ T[:3, :3].T


def distances_to_room(points: np.ndarray) -> np.ndarray:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room()))
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def exported(wd: WorkDir) -> tuple[dict, Path]:
    folder = wd.export("nerfstudio")
    return json.loads((folder / "transforms.json").read_text()), folder


def test_depth_back_projected_the_nerfstudio_way_lands_on_the_room(tmp_path):
    wd, poses = make_workdir(tmp_path)
    export.run(ExportConfig(), tmp_path, "nerfstudio")
    meta, folder = exported(wd)
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == IMAGE_WH
    assert (meta["cx"], meta["cy"]) == (K_RGB[0, 2] + 0.5, K_RGB[1, 2] + 0.5)
    wrong = {"y not flipped": np.diag([1.0, 1, -1, 1]), "z not flipped": np.diag([1.0, -1, 1, 1])}
    for k, frame in enumerate(meta["frames"]):
        depth_mm = cv2.imread(str(folder / frame["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        assert depth_mm.dtype == np.uint16 and depth_mm.shape == IMAGE_WH[::-1]
        assert (depth_mm > 0).all()  # a closed room: every pixel sees a wall
        depth_m = depth_mm * 1e-3  # nerfstudio's default depth_unit_scale_factor
        d = distances_to_room(nerfstudio_points(meta, frame, depth_m))
        assert np.percentile(d, 99) < 1.5e-3 and d.max() < 4e-3, (k, np.percentile(d, 99), d.max())
        # the same check catches each convention slip: an axis not flipped, pixel centres at integers
        for name, flip in wrong.items():
            bad = {**frame, "transform_matrix": (np.asarray(frame["transform_matrix"]) @ flip).tolist()}
            assert np.median(distances_to_room(nerfstudio_points(meta, bad, depth_m))) > 0.05, name
        integer_centres = {**meta, "cx": meta["cx"] - 0.5, "cy": meta["cy"] - 0.5}
        assert np.percentile(distances_to_room(nerfstudio_points(integer_centres, frame, depth_m)), 99) > 3e-3
        # the refined pose, not the capture's (10 cm off)
        np.testing.assert_allclose(np.asarray(frame["transform_matrix"]) @ np.diag([1.0, -1, -1, 1]), poses[k],
                                   atol=1e-12)


def test_images_depth_and_point_cloud_beside_transforms(tmp_path):
    wd, _ = make_workdir(tmp_path, depth_wh=(32, 24))
    paths = export.run(ExportConfig(point_cloud_points=5), tmp_path, "nerfstudio")
    meta, folder = exported(wd)
    assert [p.name for p in paths] == ["transforms.json", "images", "depth", "sparse_pc.ply"]
    assert [f["file_path"] for f in meta["frames"]] == [f"images/{k:06d}.jpg" for k in range(4)]
    for k, frame in enumerate(meta["frames"]):
        assert (folder / frame["file_path"]).read_bytes() == (wd.capture / "rgb" / f"{k:06d}.jpg").read_bytes()
        small = cv2.imread(str(wd.depth("guided") / f"{k:06d}.png"), cv2.IMREAD_UNCHANGED)
        full = cv2.imread(str(folder / frame["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(full, depth_at_image_size(small, 64, 48))
        np.testing.assert_array_equal(full[::2, ::2], small)  # pixel (2x, 2y) sees depth pixel (x, y)
    cloud = o3d.io.read_point_cloud(str(folder / meta["ply_file_path"]))
    assert len(cloud.points) == 5 and np.allclose(np.asarray(cloud.colors), 200 / 255)
    corners = np.asarray(room().vertices)
    assert all(np.min(np.linalg.norm(corners - p, axis=1)) < 1e-6 for p in np.asarray(cloud.points))


def test_depth_at_image_size_keeps_holes_unblended():
    depth_mm = np.array([[0, 1000], [2000, 65535]], np.uint16)
    # output (x, y) takes the depth at (x / 3, y / 2), the nearest pixel's across edges and holes
    up = depth_at_image_size(depth_mm, 6, 4)
    np.testing.assert_array_equal(up, [[0, 0, 1000, 1000, 1000, 1000]] + [[2000, 2000, 65535, 65535, 65535, 65535]] * 3)
    # on a smooth surface, the bilinear depth: x / 3 = 0, 1/3, 2/3, 1, ... between 1000 and 1010
    ramp = depth_at_image_size(np.array([[1000, 1010]] * 2, np.uint16), 6, 2)
    np.testing.assert_array_equal(ramp[0], [1000, 1003, 1007, 1010, 1010, 1010])
    assert depth_at_image_size(depth_mm, 2, 2) is depth_mm


def test_per_frame_intrinsics_when_frames_differ():
    K = np.stack([K_RGB, K_RGB * [[1.01], [1.01], [1]]])
    table = CaptureTable(Path("."), np.arange(2), np.zeros(2), ["a.jpg", "b.jpg"], ["", ""], [None, None],
                         np.array([64, 64]), np.array([48, 48]), np.array([16, 16]), np.array([12, 12]), K,
                         np.stack([np.eye(4)] * 2))
    meta = transforms(table, table.camera_to_world, ["images/a.jpg", "images/b.jpg"], ["d/a.png", "d/b.png"], None)
    assert "fl_x" not in meta and "ply_file_path" not in meta
    assert [f["fl_x"] for f in meta["frames"]] == [40.0, 40.4]
    assert meta["frames"][1] | nerfstudio_intrinsics(K[1], 64, 48) == meta["frames"][1]
    np.testing.assert_array_equal(meta["frames"][0]["transform_matrix"], np.diag([1.0, -1, -1, 1]))


def test_rerun_is_up_to_date_and_cli_exports(tmp_path):
    wd, _ = make_workdir(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--preset", "nerfstudio"])
    assert result.exit_code == 0, result.output
    assert f"export: {wd.export('nerfstudio') / 'transforms.json'}" in result.output
    stamp_ns = Manifest.path_in(wd.export("nerfstudio")).stat().st_mtime_ns
    export.run(ExportConfig(), tmp_path, "nerfstudio")
    assert Manifest.path_in(wd.export("nerfstudio")).stat().st_mtime_ns == stamp_ns
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--preset", "nerfstudio", "--point-cloud-points", "0"])
    assert result.exit_code == 0, result.output
    meta, folder = exported(wd)
    assert "ply_file_path" not in meta and not (folder / "sparse_pc.ply").exists()


def test_missing_depth_map_names_the_file(tmp_path):
    wd, _ = make_workdir(tmp_path)
    (wd.depth("guided") / "000002.png").unlink()
    with pytest.raises(PromptmeshError, match=r"000002\.png.*promptmesh depth"):
        export.run(ExportConfig(), tmp_path, "nerfstudio")


def test_after_a_real_run_the_export_lands_on_the_ground_truth(tmp_path):
    """ingest -> depth (lidar at half the image size) -> fuse (pose refinement on) -> mesh, then the export:
    nerfstudio's back-projection of the exported depth lies on the scene's ground-truth mesh."""

    capture = make_capture(tmp_path / "syn", scene="easy", n_frames=8, width=160, height=120, seed=5)
    cfg = override(override(PipelineConfig(), "fuse", voxel_size_m=0.03), "depth", model="lidar", long_side_px=80)
    cfg = override(override(cfg, "ingest", blur_select=False), "export", point_cloud_points=1000)
    runner.run(cfg, capture["stray"], tmp_path / "wd")
    export.run(cfg.export, tmp_path / "wd", "nerfstudio")
    meta, folder = exported(WorkDir(tmp_path / "wd"))
    gt = o3d.io.read_triangle_mesh(str(capture["gt_mesh"]))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(gt))

    def median_to_gt(frames) -> float:
        d = [scene.compute_distance(o3d.core.Tensor(nerfstudio_points(
            meta, f, cv2.imread(str(folder / f["depth_file_path"]), cv2.IMREAD_UNCHANGED) * 1e-3).astype(np.float32)))
            .numpy() for f in frames]
        return float(np.median(np.concatenate(d)))

    # the same maps back-projected as fusion does (OpenCV axes, integer pixel centres, at the depth map's size)
    table, wd = CaptureTable.load(WorkDir(tmp_path / "wd")), WorkDir(tmp_path / "wd")
    own = []
    for i, camera_to_world in enumerate(fused_camera_to_world(wd, table)):
        depth_m = read_depth_m(wd.depth("lidar") / f"{table.stem(i)}.png", "")
        points = transform_points(camera_to_world, backproject(depth_m, scale_intrinsics(
            table.K_rgb[i], table.rgb_size, depth_m.shape[::-1])))
        own.append(scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy())
    own_median_m = float(np.median(np.concatenate(own)))

    assert len(meta["frames"]) == 8 and (meta["w"], meta["h"]) == (160, 120)
    export_median_m = median_to_gt(meta["frames"])
    assert export_median_m < min(0.02, own_median_m * 1.1 + 0.001), (export_median_m, own_median_m)
    flipped = [{**f, "transform_matrix": (np.asarray(f["transform_matrix"]) @ np.diag([1.0, 1, -1, 1])).tolist()}
               for f in meta["frames"]]
    assert median_to_gt(flipped) > 0.1
