"""ScanNet++ and ARKitScenes readers on synthetic fixtures in the datasets' own layouts.

Every convention is checked against geometry, not against the fixture writer's code: LiDAR (and GT) depth
back-projected with the pose and K a reader returns must land on the ground-truth surface. A negative
control shows that the same check fails by decimetres when a pose is read the other way round.
"""
import re

import cv2
import numpy as np
import open3d as o3d
import pytest

from pipeline import ingest
from pipeline.capture import CaptureTable
from pipeline.config import IngestConfig
from pipeline.errors import PromptmeshError
from pipeline.geometry import FLIP_YZ, backproject, scale_intrinsics, transform_points
from pipeline.readers import READERS, detect
from pipeline.readers.arkitscenes import ARKitScenesReader
from pipeline.readers.scannetpp import DepthBin, ScanNetPPReader, gt_mesh_path, scene_dirs
from pipeline.workdir import WorkDir
from make_dataset_fixtures import make_arkitscenes_video, make_scannetpp_scene

DIST = (0.06, -0.03, 0.002, -0.001)  # k1 k2 p1 p2: about 8 px at the corners of a 320x240 image


def _distance_to(mesh: o3d.geometry.TriangleMesh):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return lambda p: scene.compute_distance(o3d.core.Tensor(np.asarray(p, np.float32))).numpy()


def _median_miss_m(distance, depth_m, K_rgb, rgb_size, camera_to_world) -> float:
    """Median distance to the GT surface of a depth map back-projected with K (scaled to its size) and pose."""
    K = scale_intrinsics(K_rgb, rgb_size, depth_m.shape[::-1])
    return float(np.median(distance(transform_points(camera_to_world, backproject(depth_m, K)))))


@pytest.fixture(scope="module")
def snpp(tmp_path_factory):
    """Two scenes: pinhole camera with drifting ARKit poses, and a distorted camera."""
    root = tmp_path_factory.mktemp("scannetpp") / "data"
    plain = make_scannetpp_scene(root, "0a1b2c3d4e", n_frames=6, rgb="both", drift_m=0.05, drift_deg=1.0)
    distorted = make_scannetpp_scene(root, "5f6a7b8c9d", n_frames=4, dist=DIST, depth_encoding="stream", seed=1)
    return root, plain, distorted


@pytest.fixture(scope="module")
def ark(tmp_path_factory):
    return make_arkitscenes_video(tmp_path_factory.mktemp("arkitscenes") / "raw" / "Validation", n_frames=12)


# ----------------------------------------------------------------------------- ScanNet++
@pytest.mark.parametrize("encoding", ["lz4", "zlib", "stream"])
def test_depth_bin_encodings_decode_to_the_written_metres(tmp_path, encoding):
    from make_dataset_fixtures import write_depth_bin

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 6.0, size=(3, 192, 256)).astype(np.float32)
    depth[:, :5] = 0.0
    expected = write_depth_bin(tmp_path / "depth.bin", depth, encoding)
    db = DepthBin(tmp_path / "depth.bin")
    assert db.kind == ("stream" if encoding == "stream" else "records")
    frames = list(db.stream()) if encoding == "stream" else [db.read(i) for i in range(3)]
    assert len(frames) == 3
    for got, want in zip(frames, expected):
        assert got.shape == (192, 256) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # lz4 stores millimetres: within half a millimetre of the metres written
    assert np.abs(np.stack(frames) - depth).max() <= (5e-4 + 1e-6 if encoding == "lz4" else 0)


def test_depth_bin_corrupt_record_names_the_file(tmp_path):
    (tmp_path / "depth.bin").write_bytes(b"\x04\x00\x00\x00abcd")
    with pytest.raises(PromptmeshError, match="depth.bin: depth frame 0"):
        DepthBin(tmp_path / "depth.bin").read(0)


def test_scannetpp_detected_and_listed(snpp):
    root, plain, distorted = snpp
    assert detect(plain.scene_dir).name == "scannetpp"
    assert list(scene_dirs(root.parent)) == ["0a1b2c3d4e", "5f6a7b8c9d"]  # ROOT/data/<scene> layout
    assert gt_mesh_path(plain.scene_dir) == plain.gt_mesh and plain.gt_mesh.is_file()


@pytest.mark.parametrize("source", ["arkit", "colmap", "merged"])
def test_scannetpp_pose_sources_put_lidar_on_the_scan(snpp, source):
    _, plain, _ = snpp
    cs = ScanNetPPReader(pose_source=source).open(plain.scene_dir)
    frames = list(cs.frames())
    expected = {"arkit": range(6), "colmap": plain.colmap_frames, "merged": plain.merged_frames}[source]
    assert [f.frame_index for f in frames] == list(expected)
    assert cs.rgb_size == (320, 240) and cs.lidar_size == (256, 192) and not cs.has_confidence
    truth = plain.aligned_pose if source == "arkit" else plain.camera_to_world
    distance = _distance_to(o3d.io.read_triangle_mesh(str(plain.gt_mesh)))
    for f in frames:
        np.testing.assert_allclose(f.camera_to_world, truth[f.frame_index], atol=1e-9)
        np.testing.assert_allclose(f.K_rgb, plain.K_raw, atol=1e-9)  # COLMAP's +0.5 pixel centre undone
        assert f.timestamp_s == pytest.approx(1000.0 + f.frame_index / 60.0)
        miss = _median_miss_m(distance, f.load_depth_m(), f.K_rgb, cs.rgb_size, f.camera_to_world)
        # ARKit poses drift up to 5 cm / 1 deg over the capture; COLMAP ones are exact
        assert miss < (0.06 if source == "arkit" else 0.002), (f.frame_index, miss)
    with_gt = plain.merged_frames if source == "merged" else plain.colmap_frames  # render_depth written for
    assert [i for i in range(6) if cs.gt_depth(i) is not None] == with_gt


def test_scannetpp_reading_a_pose_the_other_way_misses_the_scan(snpp):
    """Negative control: the check above has power against each plausible convention slip."""
    _, plain, _ = snpp
    f = list(ScanNetPPReader("colmap").open(plain.scene_dir).frames())[1]
    distance = _distance_to(o3d.io.read_triangle_mesh(str(plain.gt_mesh)))
    depth = f.load_depth_m()
    for wrong in (np.linalg.inv(f.camera_to_world), f.camera_to_world @ FLIP_YZ):
        assert _median_miss_m(distance, depth, f.K_rgb, (320, 240), wrong) > 0.2


def test_scannetpp_video_frames_match_the_extracted_jpegs(snpp, tmp_path):
    _, plain, _ = snpp
    import shutil

    scene = tmp_path / plain.scene_dir.name
    shutil.copytree(plain.scene_dir, scene, ignore=shutil.ignore_patterns("rgb"))  # rgb.mkv only
    from_video = list(ScanNetPPReader().open(scene).frames())
    from_jpeg = list(ScanNetPPReader().open(plain.scene_dir).frames())
    assert all(f.rgb_jpeg_path is None for f in from_video)
    for i, f in enumerate(from_video):
        rgb = f.load_rgb().astype(float)
        assert np.abs(rgb - from_jpeg[i].load_rgb()).mean() < 3.0  # lossless video vs quality-95 JPEG
        other = from_jpeg[(i + 1) % len(from_jpeg)].load_rgb()
        assert np.abs(rgb - other).mean() > 10.0  # and the frame order is right
        np.testing.assert_array_equal(f.load_bgr(), f.load_rgb()[..., ::-1])  # OpenCV's order, for ingest's JPEG
    in_order = [f.load_rgb() for f in from_video]
    backwards = list(ScanNetPPReader().open(scene).frames())
    for i in reversed(range(len(backwards))):  # decoded on demand: an earlier frame reopens the video
        np.testing.assert_array_equal(backwards[i].load_rgb(), in_order[i])


def test_scannetpp_video_cut_short_names_the_video_and_frame(snpp, tmp_path):
    _, plain, _ = snpp
    import shutil

    scene = tmp_path / plain.scene_dir.name
    shutil.copytree(plain.scene_dir, scene, ignore=shutil.ignore_patterns("rgb"))
    video = scene / "iphone" / "rgb.mkv"
    frames = list(ScanNetPPReader().open(scene).frames())
    cap = cv2.VideoCapture(str(video))
    kept = [cap.read()[1] for _ in range(frames[1].frame_index + 1)]
    cap.release()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 60, (320, 240))
    for bgr in kept:  # the video now ends with the second posed frame
        writer.write(bgr)
    writer.release()
    frames = list(ScanNetPPReader().open(scene).frames())
    assert frames[1].load_rgb().shape == (240, 320, 3)
    with pytest.raises(PromptmeshError, match=rf"{re.escape(str(video))}: no decodable video frame {frames[2].frame_index}"):
        frames[2].load_rgb()


def test_scannetpp_distorted_colmap_camera_is_undistorted_consistently(snpp):
    _, _, dist = snpp
    cs = ScanNetPPReader("colmap").open(dist.scene_dir)
    distance = _distance_to(o3d.io.read_triangle_mesh(str(dist.gt_mesh)))
    for f in cs.frames():
        assert f.rgb_jpeg_path is None  # undistorted: the source JPEG cannot be copied
        assert f.load_rgb().shape == (240, 320, 3)
        assert not np.allclose(f.K_rgb, dist.K_raw)  # a new pinhole camera
        lidar, gt = f.load_depth_m(), cs.gt_depth(f.frame_index)
        assert gt.shape == (240, 320) and (gt > 0).mean() > 0.99  # alpha=0: every output pixel is seen
        assert _median_miss_m(distance, lidar, f.K_rgb, cs.rgb_size, f.camera_to_world) < 0.004
        assert _median_miss_m(distance, gt, f.K_rgb, cs.rgb_size, f.camera_to_world) < 0.002
        # ignoring the distortion misplaces points by centimetres towards the corners
        raw = ScanNetPPReader("arkit").open(dist.scene_dir)
        f_raw = next(g for g in raw.frames() if g.frame_index == f.frame_index)
        K_small = scale_intrinsics(dist.K_raw, (320, 240), (256, 192))
        pts = transform_points(f.camera_to_world, backproject(f_raw.load_depth_m(), K_small))
        assert np.percentile(distance(pts), 90) > 0.005


def test_scannetpp_merged_skips_dslr_images_and_reads_its_own_jpegs(snpp):
    _, plain, _ = snpp
    frames = list(ScanNetPPReader("merged").open(plain.scene_dir).frames())
    assert all("merge_dslr_iphone/images/iphone" in str(f.rgb_jpeg_path) for f in frames)


def test_scannetpp_errors_name_the_problem(snpp, tmp_path):
    with pytest.raises(PromptmeshError, match="pose source"):
        ScanNetPPReader(pose_source="slam")
    empty = tmp_path / "scene" / "iphone"
    empty.mkdir(parents=True)
    (empty / "depth.bin").write_bytes(b"")
    with pytest.raises(PromptmeshError, match="pose_intrinsic_imu.json: missing"):
        ScanNetPPReader().open(tmp_path / "scene")


# ----------------------------------------------------------------------------- ARKitScenes
def test_arkitscenes_detected_and_not_confused_with_other_formats(ark, snpp, tmp_path):
    assert detect(ark.video_dir).name == "arkitscenes"
    assert not ARKitScenesReader().sniff(snpp[1].scene_dir)
    assert not ScanNetPPReader().sniff(ark.video_dir)
    stray_like = tmp_path / "stray"
    (stray_like / "depth").mkdir(parents=True)
    for name in ("camera_matrix.csv", "odometry.csv", "rgb.mp4"):
        (stray_like / name).write_text("")
    assert not ARKitScenesReader().sniff(stray_like) and not ScanNetPPReader().sniff(stray_like)
    assert {"scannetpp", "arkitscenes"} <= set(READERS)


def test_arkitscenes_traj_is_world_to_camera_and_interpolated(ark):
    cs = ARKitScenesReader().open(ark.video_dir)
    frames = list(cs.frames())
    assert [f.frame_index for f in frames] == list(range(12)) and not cs.skipped
    assert cs.rgb_size == (256, 192) and cs.lidar_size == (256, 192) and cs.has_confidence
    distance = _distance_to(ark.mesh)
    for f in frames:
        assert f.timestamp_s == pytest.approx(ark.timestamps_s[f.frame_index])
        np.testing.assert_allclose(f.K_rgb, ark.K, atol=1e-6)
        true = ark.camera_to_world[f.frame_index]
        if f.frame_index in ark.traj_frames:  # exact on .traj rows
            np.testing.assert_allclose(f.camera_to_world, true, atol=1e-6)
        else:  # slerp / linear between rows 50 ms apart: close to the smooth true path
            cos = (np.trace(f.camera_to_world[:3, :3].T @ true[:3, :3]) - 1) / 2
            assert np.degrees(np.arccos(min(cos, 1.0))) < 0.5
            assert np.linalg.norm(f.camera_to_world[:3, 3] - true[:3, 3]) < 0.002
        depth = np.where(f.load_confidence() == 2, f.load_depth_m(), 0)
        assert _median_miss_m(distance, depth, f.K_rgb, cs.rgb_size, f.camera_to_world) < 0.01
    wrong = np.linalg.inv(frames[0].camera_to_world)  # the .traj row itself, taken as camera-to-world
    assert _median_miss_m(distance, frames[0].load_depth_m(), ark.K, cs.rgb_size, wrong) > 0.2


def test_arkitscenes_highres_depth_is_the_gt_depth(ark):
    cs = ARKitScenesReader().open(ark.video_dir)
    distance = _distance_to(ark.mesh)
    with_gt = [i for i in range(12) if cs.gt_depth(i) is not None]
    assert with_gt == ark.highres_frames  # matched across the 1 ms timestamp offset
    f = next(g for g in cs.frames() if g.frame_index == with_gt[1])
    gt = cs.gt_depth(f.frame_index)
    assert gt.shape == (384, 512)
    assert _median_miss_m(distance, gt, f.K_rgb, cs.rgb_size, f.camera_to_world) < 0.003


def test_arkitscenes_frames_outside_the_trajectory_are_skipped(ark, tmp_path):
    import shutil

    video = tmp_path / ark.video_dir.name
    shutil.copytree(ark.video_dir, video)
    rows = (video / "lowres_wide.traj").read_text().splitlines()
    (video / "lowres_wide.traj").write_text("\n".join(rows[:3]) + "\n")  # poses up to frame 6
    cs = ARKitScenesReader().open(video)
    assert [f.frame_index for f in cs.frames()] == list(range(7))
    assert len(cs.skipped) == 5 and all("no pose" in s for s in cs.skipped)


# ----------------------------------------------------------------------------- through ingest
def test_ingest_writes_both_datasets_with_gt_depth(snpp, ark, tmp_path):
    cfg = IngestConfig(blur_select=False, all_frames=True)  # the readers, not the selection, are tested here
    ingest.run(cfg, snpp[1].scene_dir, tmp_path / "snpp")
    table = CaptureTable.load(tmp_path / "snpp")
    assert len(table) == 6 and table.rgb_size == (320, 240)
    np.testing.assert_allclose(table.camera_to_world, snpp[1].aligned_pose, atol=1e-9)
    assert sorted(p.name for p in WorkDir(tmp_path / "snpp").gt_depth.iterdir()) == [
        f"{i:06d}.png" for i in snpp[1].colmap_frames]  # iphone/render_depth of the COLMAP frames
    ingest.run(cfg, ark.video_dir, tmp_path / "ark")
    table = CaptureTable.load(tmp_path / "ark")
    assert len(table) == 12 and table.confidence_path[0] is not None
    assert sorted(p.name for p in WorkDir(tmp_path / "ark").gt_depth.iterdir()) == [
        f"{i:06d}.png" for i in ark.highres_frames]
