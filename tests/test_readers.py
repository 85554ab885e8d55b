"""Capture readers (pipeline/readers/) against the writers in tools/capture_writers.py, hand-written file
contents, a real 3D Scanner App export, broken inputs, and end to end through ingest and the CLI.

Ground truth is float32-exact where the formats store float32 (K entries, depth in millimetres / 1000), so
K and depth compare exactly; poses are stored as float32 by the apps, so they compare within 1e-5 (the
float32 rounding of a unit quaternion and of translations below 3 m is below 5e-7).
"""
from __future__ import annotations

import gc
import json
import math
import shutil
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from capture_writers import WriterFrame, write_3dscannerapp, write_r3d, write_r3d_export, write_stray
from pipeline import ingest
from pipeline.capture import CaptureTable
from pipeline.config import IngestConfig
from pipeline.errors import PromptmeshError
from pipeline.geometry import (FLIP_YZ, backproject, project_points, scale_intrinsics, trajectory_length_m,
                               transform_points)
from pipeline.info import describe
from pipeline.readers import open_capture
from pipeline.workdir import WorkDir

from conftest import SAMPLES

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SAMPLES / "3dscannerapp_corridor" / "All_Data"
"""A real LiDAR iPhone capture (tests/data/README.md)."""

N, W, H, w, h = 6, 160, 120, 32, 24  # non-square RGB and LiDAR, 4:3 like the phones
# cx != cy and fx != fy, all exactly representable in float32: a transposed K cannot go unnoticed.
K = np.array([[150.25, 0.0, 81.5], [0.0, 149.75, 57.25], [0.0, 0.0, 1.0]])
FORMATS = ["stray", "r3d", "r3d-exr", "3dscannerapp"]
JPEG_FORMATS = {"r3d", "r3d-exr", "3dscannerapp"}
WITH_CONFIDENCE = {"stray", "r3d", "3dscannerapp"}


class GT:
    """Known frames: random rigid OpenCV-axes poses, integer-millimetre depth, confidence, smooth RGB."""

    def __init__(self, n: int = N, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.camera_to_world = np.tile(np.eye(4), (n, 1, 1))
        self.camera_to_world[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
        self.camera_to_world[:, :3, 3] = rng.uniform(-3, 3, (n, 3))
        self.depth_mm = rng.integers(300, 9000, (n, h, w)).astype(np.uint16)
        self.depth_mm[rng.random((n, h, w)) < 0.05] = 0  # some pixels without a return
        self.confidence = rng.integers(0, 3, (n, h, w)).astype(np.uint8)
        self.timestamp_s = 100.0 + np.arange(n) / 30.0
        yy, xx = np.mgrid[0:H, 0:W]
        self.rgb = np.stack([np.stack([(200 - 40 * np.sin(xx / 17 + i)), 90 + xx / 4 + 10 * i, 40 + yy / 6], -1)
                             for i in range(n)]).astype(np.uint8)  # red > green > blue: a BGR swap shows

    def depth_m(self, i: int) -> np.ndarray:
        return self.depth_mm[i].astype(np.float32) / np.float32(1000.0)

    def frames(self, indices=None):
        for i in range(len(self.rgb)) if indices is None else indices:
            yield WriterFrame(rgb=self.rgb[i], depth_m=self.depth_m(i), confidence=self.confidence[i],
                              camera_to_world=self.camera_to_world[i], timestamp_s=float(self.timestamp_s[i]))


def write(fmt: str, tmp_path: Path, frames, **kw) -> Path:
    if fmt == "stray":
        return write_stray(tmp_path / "stray", frames, K, **kw)
    if fmt == "r3d":
        return write_r3d(tmp_path / "capture.r3d", frames, K, **kw)
    if fmt == "r3d-exr":
        return write_r3d_export(tmp_path / "exr", frames, K, **kw)
    return write_3dscannerapp(tmp_path / "All_Data", frames, K, **kw)


def rgb_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_recovers_poses_intrinsics_depth(fmt, tmp_path):
    gt = GT()
    src = open_capture(write(fmt, tmp_path, gt.frames()))
    assert (src.format, src.n_frames, src.rgb_size, src.lidar_size, src.skipped) == (fmt, N, (W, H), (w, h), [])
    assert src.has_confidence == (fmt in WITH_CONFIDENCE)
    frames = list(src.frames())
    assert [f.frame_index for f in frames] == list(range(N))
    for i, f in enumerate(frames):
        assert np.abs(f.camera_to_world - gt.camera_to_world[i]).max() < 1e-5, (fmt, i)
        np.testing.assert_array_equal(f.K_rgb, K)
        assert f.timestamp_s == pytest.approx(gt.timestamp_s[i], abs=1e-9)
        depth = f.load_depth_m()
        assert depth.dtype == np.float32 and depth.shape == (h, w)
        np.testing.assert_array_equal(np.rint(depth.astype(np.float64) * 1000), gt.depth_mm[i])
        if fmt in WITH_CONFIDENCE:
            np.testing.assert_array_equal(f.load_confidence(), gt.confidence[i])
        else:
            assert f.load_confidence is None
        rgb = f.load_rgb()
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert rgb_error(rgb, gt.rgb[i]) < 4.0, (fmt, i, rgb_error(rgb, gt.rgb[i]))  # JPEG q95 / HEVC crf 18
        assert (f.rgb_jpeg_path is not None) == (fmt in JPEG_FORMATS)
        if f.load_bgr is not None:  # the same image in OpenCV's order
            np.testing.assert_array_equal(f.load_bgr(), rgb[..., ::-1])


# The hand pose: camera at (1, 2, 3) looking along world +x, upright. OpenCV axes in world coordinates:
# x (right) = +z, y (down) = -y (gravity, ARKit world is y up), z (forward) = +x.
R_CV_HAND = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
T_HAND = np.eye(4)
T_HAND[:3, :3], T_HAND[:3, 3] = R_CV_HAND, [1.0, 2.0, 3.0]
S = math.sqrt(0.5)


def _same_quaternion(q, expected) -> bool:
    q, expected = np.asarray(q), np.asarray(expected)
    return np.abs(q - expected).max() < 1e-6 or np.abs(q + expected).max() < 1e-6


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_hold_the_app_conventions_for_a_hand_computed_pose(fmt, tmp_path):
    """Raw file contents against hand-written numbers, then the reader back to T_HAND: a writer and reader
    sharing a mistake (quaternion order, axis flip, K layout) would fail here."""
    gt = GT(n=1)
    gt.camera_to_world[0] = T_HAND
    path = write(fmt, tmp_path, gt.frames())
    if fmt == "stray":
        # Stored rotation has OpenCV camera axes (app: q_WA * q_AC): R_CV_HAND = 180 deg about (1,0,1)/sqrt2.
        row = [float(v) for v in (path / "odometry.csv").read_text().splitlines()[1].split(",")]
        assert row[2:5] == [1.0, 2.0, 3.0] and _same_quaternion(row[5:9], [S, 0, S, 0])
        K_rows = np.loadtxt(path / "camera_matrix.csv", delimiter=",")
        np.testing.assert_array_equal(K_rows[0], [150.25, 0, 81.5])  # row-major: first row fx, 0, cx
    elif fmt in ("r3d", "r3d-exr"):
        # OpenGL camera axes: R_gl = R_cv diag(1,-1,-1) = rotation of -90 deg about y -> (0, -sin45, 0, cos45).
        meta = (json.loads(zipfile.ZipFile(path).read("metadata")) if fmt == "r3d"
                else json.loads((path / "metadata.json").read_text()))
        pose = meta["poses"][0]
        assert _same_quaternion(pose[:4], [0, -S, 0, S]) and pose[4:] == [1.0, 2.0, 3.0]
        assert meta["K"] == [150.25, 0, 0, 0, 149.75, 0, 81.5, 57.25, 1]  # column-major
        assert (meta["w"], meta["h"], meta["dw"], meta["dh"]) == (W, H, w, h)
    else:
        meta = json.loads((path / "frame_00000.json").read_text())
        assert meta["cameraPoseARFrame"] == [0, 0, -1, 1, 0, 1, 0, 2, 1, 0, 0, 3, 0, 0, 0, 1]  # ARKit axes, row-major
        assert meta["intrinsics"] == [150.25, 0, 81.5, 0, 149.75, 57.25, 0, 0, 1]  # row-major
    T = next(open_capture(path).frames()).camera_to_world
    np.testing.assert_allclose(T, T_HAND, atol=1e-6)
    np.testing.assert_allclose(T[:3, 2], [1, 0, 0], atol=1e-6)  # looks along world +x
    np.testing.assert_allclose(T[:3, 1], [0, -1, 0], atol=1e-6)  # image down = gravity


def test_stray_mp4v_fallback_and_gt_depth_extension(tmp_path):
    gt = GT(n=3)
    gt_depth = [np.full((60, 80), 1.5 + i, np.float32) for i in range(3)]
    frames = (WriterFrame(**{**f.__dict__, "gt_depth_m": gt_depth[i]}) for i, f in enumerate(gt.frames()))
    src = open_capture(write_stray(tmp_path / "s", frames, K, codec="mp4v"))
    got = list(src.frames())
    assert len(got) == 3 and rgb_error(got[2].load_rgb(), gt.rgb[2]) < 8.0
    np.testing.assert_array_equal(src.gt_depth(1), gt_depth[1])
    assert src.gt_depth(7) is None


def test_stray_old_npy_depth_and_headerless_odometry(tmp_path):
    gt = GT(n=3)
    path = write_stray(tmp_path / "s", gt.frames(), K)
    for i in range(3):  # 2021 app versions: depth/NNNNNN.npy (uint16 mm), odometry without header/timestamps
        png = path / "depth" / f"{i:06d}.png"
        np.save(png.with_suffix(".npy"), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        png.unlink()
    lines = (path / "odometry.csv").read_text().splitlines()[1:]
    (path / "odometry.csv").write_text("\n".join(",".join(ln.split(",")[2:]) for ln in lines))
    src = open_capture(path)
    frames = list(src.frames())
    assert src.lidar_size == (w, h) and len(frames) == 3
    np.testing.assert_array_equal(np.rint(frames[2].load_depth_m() * 1000), gt.depth_mm[2])
    assert np.abs(frames[2].camera_to_world - gt.camera_to_world[2]).max() < 1e-5
    assert frames[2].timestamp_s == pytest.approx(2 / 30)  # from the video frame rate


def test_r3d_export_half_float_exr(tmp_path):
    gt = GT(n=2)
    frames = list(open_capture(write_r3d_export(tmp_path / "e", gt.frames(), K, exr_half=True)).frames())
    depth = frames[1].load_depth_m()
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, gt.depth_m(1), rtol=2 ** -11)  # half: 11 significant bits


def test_3dscannerapp_only_frames_with_a_jpg_are_listed(tmp_path):
    src = open_capture(write_3dscannerapp(tmp_path / "All_Data", GT().frames(), K, rgb_every=2))
    assert src.n_frames == 3 and [f.frame_index for f in src.frames()] == [0, 2, 4]
    assert open_capture(tmp_path).format == "3dscannerapp"  # the export's parent folder works too


# ----------------------------------------------------------------------------- real sample
def test_real_3dscannerapp_sample():
    src = open_capture(SAMPLE)
    assert (src.format, src.n_frames, src.rgb_size, src.lidar_size, src.skipped) == (
        "3dscannerapp", 16, (1920, 1440), (256, 192), [])
    frames = list(src.frames())
    assert [f.frame_index for f in frames] == list(range(0, 48, 3))
    np.testing.assert_allclose(frames[0].K_rgb[[0, 1, 0, 1], [0, 1, 2, 2]],
                               [1590.2056884765625, 1590.2056884765625, 947.3060913085938, 727.5515747070312])
    assert frames[0].load_rgb().shape == (1440, 1920, 3) and frames[0].rgb_jpeg_path.name == "frame_00000.jpg"
    depth = np.concatenate([f.load_depth_m().ravel() for f in frames])
    valid = depth[depth > 0]
    assert 0.3 < valid.min() < 2.0 and 1.5 < np.median(valid) < 5.0 and 5.0 < valid.max() < 20.0  # a corridor
    assert set(np.unique(frames[5].load_confidence())) <= {0, 1, 2}


def _reprojection_error_m(src, a, b, convert) -> float:
    """Median |z - depth_b| of frame a's LiDAR points seen by frame b (poses passed through `convert`)."""
    K_a = scale_intrinsics(a.K_rgb, src.rgb_size, src.lidar_size)
    K_b = scale_intrinsics(b.K_rgb, src.rgb_size, src.lidar_size)
    world = transform_points(convert(a.camera_to_world), backproject(a.load_depth_m(), K_a))
    uv, z = project_points(transform_points(np.linalg.inv(convert(b.camera_to_world)), world), K_b)
    u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])
    depth_b = b.load_depth_m()
    inside = (z > 0) & (u >= 0) & (v >= 0) & (u < depth_b.shape[1]) & (v < depth_b.shape[0])
    d = depth_b[v[inside].astype(int), u[inside].astype(int)]
    residual = np.abs(z[inside] - d)[d > 0]
    return float(np.median(residual)) if residual.size > 0.2 * len(z) else math.inf


def test_real_sample_pose_convention_by_reprojection():
    src = open_capture(SAMPLE)
    frames = list(src.frames())
    opencv = _reprojection_error_m(src, frames[0], frames[3], lambda T: T)
    not_converted = _reprojection_error_m(src, frames[0], frames[3], lambda T: T @ FLIP_YZ)  # raw ARKit axes
    assert opencv < 0.04, opencv  # measured 0.020 m
    assert not_converted > 3 * opencv, (opencv, not_converted)  # measured 0.144 m


def test_info_describes_the_real_sample():
    text = describe(SAMPLE)
    frames = list(open_capture(SAMPLE).frames())
    assert "3dscannerapp" in text and "16 listed, 16 readable" in text
    assert "RGB:               1920x1440" in text and "256x192 with confidence" in text
    length = trajectory_length_m(np.stack([f.camera_to_world for f in frames]))
    assert 1.0 < length < 20.0 and f"trajectory length: {length:.2f} m" in text
    duration = frames[-1].timestamp_s - frames[0].timestamp_s
    assert f"duration:          {duration:.2f} s at {15 / duration:.2f} fps" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("depth range"))
    lo, med, hi = (float(line.split(word)[1].split(" m")[0]) for word in ("min ", "median ", "max "))
    assert 0.3 < lo < med < hi < 20.0 and "16 frames sampled" in line


def test_info_on_a_synthetic_stray_capture(tmp_path):
    gt = GT()
    text = describe(write_stray(tmp_path / "s", gt.frames(), K))
    assert "stray" in text and f"{N} listed" in text and "160x120" in text and "32x24" in text
    assert f"duration:          {(N - 1) / 30:.2f} s at 30.00 fps" in text
    assert f"trajectory length: {trajectory_length_m(gt.camera_to_world):.2f} m" in text
    valid = gt.depth_mm[gt.depth_mm > 0] / 1000
    assert f"min {valid.min():.2f} m, median {np.median(valid):.2f} m, max {valid.max():.2f} m" in text


# ----------------------------------------------------------------------------- broken inputs
def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromptmeshError, match="empty"):
        open_capture(tmp_path / "empty")


def test_non_zip_r3d_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "broken.r3d").write_bytes(b"this is not a zip archive")
    with pytest.raises(PromptmeshError, match=r"broken\.r3d: not a zip"):
        open_capture(tmp_path / "broken.r3d")


def test_r3d_with_unreadable_metadata(tmp_path):
    path = write_r3d(tmp_path / "a.r3d", GT(n=1).frames(), K)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["metadata"])
    for damage, message in [(b"{not json", "unreadable JSON"), (json.dumps({**meta, "K": None}).encode(), "K"),
                            (json.dumps({k: v for k, v in meta.items() if k != "poses"}).encode(), "poses")]:
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in {**members, "metadata": damage}.items():
                zf.writestr(n, data)
        with pytest.raises(PromptmeshError, match=message):
            open_capture(path)


def test_stray_without_odometry(tmp_path):
    path = write_stray(tmp_path / "s", GT(n=2).frames(), K)
    (path / "odometry.csv").unlink()
    with pytest.raises(PromptmeshError, match=r"odometry\.csv: missing"):
        open_capture(path)


@pytest.mark.parametrize("fmt, damaged", [("stray", "depth/000002.png"), ("3dscannerapp", "depth_00002.png"),
                                          ("r3d-exr", "depth/2.exr"), ("r3d-exr", "rgb/2.jpg")])
def test_truncated_file_fails_only_its_frame(fmt, damaged, tmp_path):
    path = write(fmt, tmp_path, GT(n=4).frames())
    data = (path / damaged).read_bytes()
    (path / damaged).write_bytes(data[: len(data) // 2])
    frames = list(open_capture(path).frames())
    assert len(frames) == 4
    load = frames[2].load_rgb if damaged.endswith(".jpg") else frames[2].load_depth_m
    with pytest.raises(PromptmeshError, match=Path(damaged).name.replace(".", r"\.")):
        load()
    assert frames[3].load_depth_m().shape == (h, w) and frames[3].load_rgb().shape == (H, W, 3)


def test_stray_video_one_frame_shorter_than_odometry(tmp_path):
    gt = GT()
    path = write_stray(tmp_path / "s", gt.frames(), K)
    short = write_stray(tmp_path / "short", gt.frames(range(N - 1)), K)
    shutil.copy(short / "rgb.mp4", path / "rgb.mp4")
    src = open_capture(path)
    assert len(src.skipped) == 1 and "rgb.mp4" in src.skipped[0]
    frames = list(src.frames())
    assert [f.frame_index for f in frames] == list(range(N - 1))
    assert rgb_error(frames[-1].load_rgb(), gt.rgb[N - 2]) < 4.0
    ingest.run(IngestConfig(blur_select=False), path, tmp_path / "wd")
    manifest = json.loads((WorkDir(tmp_path / "wd").capture / "manifest.json").read_text())
    assert (manifest["summary"]["kept"], manifest["summary"]["skipped_bad"]) == (N - 1, 1)


def test_stray_missing_depth_frame_keeps_video_in_step(tmp_path):
    gt = GT()
    path = write_stray(tmp_path / "s", gt.frames(), K)
    (path / "depth" / "000003.png").unlink()
    src = open_capture(path)
    assert len(src.skipped) == 1 and "000003.png" in src.skipped[0]
    frames = list(src.frames())
    assert [f.frame_index for f in frames] == [0, 1, 2, 4, 5]
    for f in frames:  # each decoded video frame belongs to its row, also after the gap
        errors = [rgb_error(f.load_rgb(), gt.rgb[j]) for j in range(N)]
        assert int(np.argmin(errors)) == f.frame_index


def test_r3d_export_with_deleted_frames(tmp_path):
    path = write_r3d_export(tmp_path / "e", GT().frames(), K)
    (path / "rgb" / "1.jpg").unlink()
    (path / "depth" / "4.exr").unlink()
    src = open_capture(path)
    assert src.n_frames == N and len(src.skipped) == 2
    assert [f.frame_index for f in src.frames()] == [0, 2, 3, 5]


def test_nan_pose_is_left_to_ingest(tmp_path):
    path = write_r3d_export(tmp_path / "e", GT().frames(), K)
    meta = json.loads((path / "metadata.json").read_text())
    meta["poses"][2] = [float("nan")] * 7
    (path / "metadata.json").write_text(json.dumps(meta))
    frames = list(open_capture(path).frames())
    assert len(frames) == N and np.isnan(frames[2].camera_to_world).all()
    ingest.run(IngestConfig(blur_select=False), path, tmp_path / "wd")
    table = CaptureTable.load(tmp_path / "wd")
    assert list(table.frame_index) == [0, 1, 3, 4, 5]


# ----------------------------------------------------------------------------- streaming
def test_stray_decoding_keeps_one_frame(tmp_path):
    src = open_capture(write_stray(tmp_path / "s", GT().frames(), K))
    refs = []
    for f in src.frames():  # checked while the generator runs: once it ends, it releases everything anyway
        refs.append(weakref.ref(f.load_rgb()))
        gc.collect()
        assert [r() is None for r in refs[:-1]] == [True] * (len(refs) - 1), "an earlier frame is still held"
    assert len(refs) == N


def test_stray_frames_loaded_after_the_generator_ended_decode_no_frame_twice(tmp_path, monkeypatch):
    """Keyframe selection decides its last neighbourhood after reading past it: loading those frames must not
    reopen the video and decode it from the start again (it did: ingest decoded the whole video twice)."""
    from pipeline.readers import stray

    decoded = []
    real = cv2.VideoCapture

    class Counting:
        def __init__(self, *args):
            self.cap = real(*args)

        def grab(self):
            decoded.append("grab")
            return self.cap.grab()

        def read(self):
            decoded.append("read")
            return self.cap.read()

        def __getattr__(self, name):  # isOpened, get, release
            return getattr(self.cap, name)

    monkeypatch.setattr(stray.cv2, "VideoCapture", Counting)
    src = open_capture(write_stray(tmp_path / "s", GT().frames(), K))
    frames = []
    for f in src.frames():  # frames read while iterating, as selection reads them, but not the last two
        frames.append(f)
        if len(frames) <= N - 2:
            f.load_rgb()
    assert decoded == ["read"] * (N - 2)
    rgb = [f.load_rgb() for f in frames[-2:]]  # after the generator has ended
    assert decoded == ["read"] * N  # each frame decoded once: no reopening, no second pass
    assert rgb_error(rgb[1], GT().rgb[N - 1]) < 3.0


def test_r3d_temporary_jpeg_lives_as_long_as_its_frame(tmp_path):
    gt = GT(n=3)
    src = open_capture(write_r3d(tmp_path / "a.r3d", gt.frames(), K))
    it = src.frames()
    frame = next(it)
    jpg = frame.rgb_jpeg_path
    assert jpg.read_bytes() == zipfile.ZipFile(tmp_path / "a.r3d").read("rgbd/0.jpg")
    del frame
    assert not jpg.exists()
    it.close()


# ----------------------------------------------------------------------------- ingest and CLI
def test_ingest_stray_and_r3d_give_the_ground_truth(tmp_path):
    gt = GT()
    for fmt in ("stray", "r3d"):
        path = write(fmt, tmp_path, gt.frames())
        ingest.run(IngestConfig(blur_select=False), path, tmp_path / f"wd-{fmt}")
        table = CaptureTable.load(tmp_path / f"wd-{fmt}")
        assert list(table.frame_index) == list(range(N))
        assert np.abs(table.camera_to_world - gt.camera_to_world).max() < 1e-5, fmt
        np.testing.assert_array_equal(table.K_rgb[0], K)
        for i in range(N):
            lidar = cv2.imread(str(table.root / table.lidar_path[i]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(lidar, gt.depth_mm[i])  # exactly the source millimetres
            conf = cv2.imread(str(table.root / table.confidence_path[i]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(conf, gt.confidence[i])
        if fmt == "r3d":  # JPEG bytes copied, not re-encoded
            assert (table.root / table.rgb_path[1]).read_bytes() == zipfile.ZipFile(path).read("rgbd/1.jpg")
        else:  # video frames encoded by ingest, in the right channel order (red > green > blue: a swap shows)
            for i in range(N):
                rgb = cv2.cvtColor(cv2.imread(str(table.root / table.rgb_path[i])), cv2.COLOR_BGR2RGB)
                assert rgb_error(rgb, gt.rgb[i]) < 4.0, (i, rgb_error(rgb, gt.rgb[i]))


@pytest.mark.parametrize("broken", ["stray-without-odometry", "not-a-zip.r3d"])
def test_cli_ingest_of_a_broken_capture_prints_one_line(broken, tmp_path):
    if broken.endswith(".r3d"):
        path = tmp_path / broken
        path.write_bytes(b"PK but not really")
        name = broken
    else:
        path = write_stray(tmp_path / broken, GT(n=2).frames(), K)
        (path / "odometry.csv").unlink()
        name = "odometry.csv"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(path), "-o", str(tmp_path / "wd")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and name in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
