"""Write captures in the phone apps' own formats: the inverse of pipeline/readers/, for synthetic captures
and reader tests.

Written from the format facts (app sources and their authors' descriptions, see each reader's docstring),
not by calling reader code, so that a round trip catches a convention flipped on either side. Rotations use
scipy (`Rotation.as_quat`, scalar-last), not pipeline.geometry.

Input frames are promptmesh conventions (`WriterFrame`): camera_to_world with OpenCV camera axes (x right,
y down, z forward) in a world with y up; depth in metres (0 = no return); K at RGB resolution. Frames are
consumed once, one at a time (a long capture is never held in memory). Numbers the apps store as float32
(poses, K) are rounded to float32 here too: a pose read back differs from its input by up to about
6e-8 * |translation| metres and 1e-7 in rotation; K entries exactly representable in float32 read back
exactly.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import cv2
import lzfse
import numpy as np
import OpenEXR
from scipy.spatial.transform import Rotation

# ARKit / OpenGL camera axes (y up, z backward) <-> OpenCV camera axes (y down, z forward): right-multiply a
# camera-to-world pose by this (it is its own inverse).
_FLIP_CAMERA_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
JPEG_QUALITY = 95


@dataclass
class WriterFrame:
    rgb: np.ndarray
    """(H, W, 3) uint8 RGB."""
    depth_m: np.ndarray
    """(h, w) float32 metres, 0 = no return."""
    confidence: np.ndarray
    """(h, w) uint8 0/1/2."""
    camera_to_world: np.ndarray
    """(4, 4) OpenCV camera axes (x right, y down, z forward), world y up."""
    timestamp_s: float
    gt_depth_m: Optional[np.ndarray] = None
    """Optional ground-truth depth (any size with the RGB aspect), metres; promptmesh extension (Stray only)."""


# ----------------------------------------------------------------------------- small encoders
def _f32(x) -> float:
    """Round to float32 (as the apps store it) and back to a Python float."""
    return float(np.float32(x))


def _f32_str(x) -> str:
    """Shortest text that reads back as the same float32 (what Swift prints for a Float)."""
    return str(np.float32(x))


def _depth_mm(depth_m: np.ndarray) -> np.ndarray:
    """metres (0 / NaN = no return) -> uint16 millimetres, rounded, 0 = no return."""
    d = np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(d * 1000.0), 0, 65535).astype(np.uint16)


def _png(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _opengl_pose(camera_to_world_cv: np.ndarray) -> np.ndarray:
    """OpenCV-axes camera-to-world -> the same camera with ARKit/OpenGL axes (y up, z backward)."""
    return np.asarray(camera_to_world_cv, np.float64) @ _FLIP_CAMERA_YZ


def _quat_xyzw(R: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(R).as_quat()  # scipy: scalar-last (x, y, z, w)


def _record3d_metadata(K_rgb, rgb_wh, depth_wh, fps, poses, stamps) -> dict:
    K = np.asarray(K_rgb, np.float64)
    return {
        "w": int(rgb_wh[0]), "h": int(rgb_wh[1]), "dw": int(depth_wh[0]), "dh": int(depth_wh[1]),
        "K": [_f32(v) for v in K.T.reshape(-1)],  # column-major: [fx, 0, 0, 0, fy, 0, cx, cy, 1]
        "fps": fps, "poses": poses, "frameTimestamps": stamps,
        "initPose": poses[0] if poses else [0, 0, 0, 1, 0, 0, 0], "cameraType": 1,
    }


def _record3d_pose(camera_to_world_cv: np.ndarray) -> list[float]:
    """[qx, qy, qz, qw, tx, ty, tz] of the camera-to-world pose with OpenGL camera axes, float32-rounded."""
    T = _opengl_pose(camera_to_world_cv)
    return [_f32(v) for v in (*_quat_xyzw(T[:3, :3]), *T[:3, 3])]


# ----------------------------------------------------------------------------- Stray Scanner
class _VideoSink:
    """rgb.mp4 writer: HEVC through an ffmpeg pipe (libx265), or MPEG-4 Part 2 through OpenCV."""

    def __init__(self, path: Path, size_wh: tuple[int, int], fps: float, codec: str):
        self.path, self.size = path, size_wh
        if codec == "hevc" and shutil.which("ffmpeg") is None:
            codec = "mp4v"
        self.codec = codec
        if codec == "hevc":
            if size_wh[0] % 2 or size_wh[1] % 2:
                raise ValueError(f"HEVC (yuv420p) needs even frame sizes, got {size_wh}")
            self.log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                 "-s", f"{size_wh[0]}x{size_wh[1]}", "-r", f"{fps}", "-i", "-", "-c:v", "libx265", "-preset", "fast",
                 "-crf", "18", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
                 str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)
        elif codec == "mp4v":
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size_wh)
            if not self.writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path} with mp4v")
        else:
            raise ValueError(f"codec must be 'hevc' or 'mp4v', got {codec!r}")

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[1::-1] != self.size:
            raise ValueError(f"RGB frame is {rgb.shape[1]}x{rgb.shape[0]}, the video is {self.size}")
        if self.codec == "hevc":
            self.proc.stdin.write(np.ascontiguousarray(rgb, np.uint8).tobytes())
        else:
            self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.codec == "hevc":
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                self.log.seek(0)
                raise RuntimeError(f"ffmpeg failed writing {self.path}: {self.log.read().decode(errors='replace')}")
            self.log.close()
        else:
            self.writer.release()


def write_stray(out_dir, frames: Iterable[WriterFrame], K_rgb, fps: float = 30.0, codec: str = "hevc") -> Path:
    """Stray Scanner folder: rgb.mp4, depth/ and confidence/ NNNNNN.png, camera_matrix.csv, odometry.csv.

    codec "hevc" encodes with ffmpeg/libx265 like the phone (falls back to "mp4v" through OpenCV when ffmpeg is
    missing). odometry.csv stores, as the app does (OdometryEncoder.swift: q_WA * q_AC, q_AC = 180 degrees
    about x), the rotation with OpenCV camera axes, i.e. camera_to_world's rotation unchanged. `gt_depth_m`,
    when given, goes to gt_depth/NNNNNN.png (uint16 mm, promptmesh extension).
    """
    out = Path(out_dir)
    for sub in ("depth", "confidence"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    video: Optional[_VideoSink] = None
    try:
        with open(out / "odometry.csv", "w") as odo:
            odo.write("timestamp, frame, x, y, z, qx, qy, qz, qw\n")
            for i, f in enumerate(frames):
                if video is None:
                    video = _VideoSink(out / "rgb.mp4", (f.rgb.shape[1], f.rgb.shape[0]), fps, codec)
                video.write(f.rgb)
                T = np.asarray(f.camera_to_world, np.float64)
                q = _quat_xyzw(T[:3, :3])  # OpenCV camera axes, as the app stores them
                values = ", ".join(_f32_str(v) for v in (*T[:3, 3], *q))
                odo.write(f"{f.timestamp_s!r}, {i:06d}, {values}\n")
                _png(out / "depth" / f"{i:06d}.png", _depth_mm(f.depth_m))
                _png(out / "confidence" / f"{i:06d}.png", np.asarray(f.confidence, np.uint8))
                if f.gt_depth_m is not None:
                    (out / "gt_depth").mkdir(exist_ok=True)
                    _png(out / "gt_depth" / f"{i:06d}.png", _depth_mm(f.gt_depth_m))
    finally:
        if video is not None:
            video.close()
    K = np.asarray(K_rgb, np.float64)
    (out / "camera_matrix.csv").write_text("\n".join(", ".join(_f32_str(v) for v in row) for row in K) + "\n")
    return out


# ----------------------------------------------------------------------------- Record3D
def write_r3d(out_path, frames: Iterable[WriterFrame], K_rgb, fps: float = 30.0) -> Path:
    """Record3D .r3d: a zip with `metadata` (JSON), rgbd/N.jpg, rgbd/N.depth (LZFSE float32 metres, (dh, dw)
    row-major) and rgbd/N.conf (LZFSE uint8). Poses become [qx, qy, qz, qw, tx, ty, tz] with OpenGL camera
    axes; K is stored column-major."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    poses, stamps, rgb_wh, depth_wh = [], [], (0, 0), (0, 0)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i, f in enumerate(frames):
            rgb_wh, depth_wh = (f.rgb.shape[1], f.rgb.shape[0]), (f.depth_m.shape[1], f.depth_m.shape[0])
            zf.writestr(f"rgbd/{i}.jpg", _jpeg_bytes(f.rgb))
            zf.writestr(f"rgbd/{i}.depth", lzfse.compress(np.ascontiguousarray(f.depth_m, np.float32).tobytes()))
            zf.writestr(f"rgbd/{i}.conf", lzfse.compress(np.ascontiguousarray(f.confidence, np.uint8).tobytes()))
            poses.append(_record3d_pose(f.camera_to_world))
            stamps.append(float(f.timestamp_s))
        zf.writestr("metadata", json.dumps(_record3d_metadata(K_rgb, rgb_wh, depth_wh, fps, poses, stamps)))
    return out


def _write_exr(path: Path, depth_m: np.ndarray, half: bool) -> None:
    pixels = np.ascontiguousarray(depth_m, np.float16 if half else np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": pixels}) as f:
        f.write(str(path))


def write_r3d_export(out_dir, frames: Iterable[WriterFrame], K_rgb, fps: float = 30.0,
                     exr_half: bool = False) -> Path:
    """Record3D "EXR + JPG" export: metadata.json (as in .r3d), rgb/N.jpg, depth/N.exr (one channel R, metres).

    The app's author describes the EXR depth as float32 (the default here); `exr_half=True` writes half floats
    (about 3 significant digits: 2 mm steps at 3 m)."""
    out = Path(out_dir)
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(exist_ok=True)
    poses, stamps, rgb_wh, depth_wh = [], [], (0, 0), (0, 0)
    for i, f in enumerate(frames):
        rgb_wh, depth_wh = (f.rgb.shape[1], f.rgb.shape[0]), (f.depth_m.shape[1], f.depth_m.shape[0])
        (out / "rgb" / f"{i}.jpg").write_bytes(_jpeg_bytes(f.rgb))
        _write_exr(out / "depth" / f"{i}.exr", f.depth_m, exr_half)
        poses.append(_record3d_pose(f.camera_to_world))
        stamps.append(float(f.timestamp_s))
    (out / "metadata.json").write_text(json.dumps(_record3d_metadata(K_rgb, rgb_wh, depth_wh, fps, poses, stamps)))
    return out


# ----------------------------------------------------------------------------- 3D Scanner App
def write_3dscannerapp(out_dir, frames: Iterable[WriterFrame], K_rgb, rgb_every: int = 1) -> Path:
    """3D Scanner App "All Data": frame_NNNNN.json (row-major intrinsics, row-major cameraPoseARFrame with ARKit
    camera axes, time), frame_NNNNN.jpg, depth_NNNNN.png (uint16 mm), conf_NNNNN.png.

    `rgb_every` > 1 writes a JPG only every that many frames, like the app (which writes one every third)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    K = np.asarray(K_rgb, np.float64)
    for i, f in enumerate(frames):
        pose_arkit = _opengl_pose(f.camera_to_world)
        meta = {
            "intrinsics": [_f32(v) for v in K.reshape(-1)],  # row-major
            "cameraPoseARFrame": [_f32(v) for v in pose_arkit.reshape(-1)],  # row-major, ARKit camera axes
            "time": float(f.timestamp_s), "frame_index": i, "motionQuality": 1,
        }
        (out / f"frame_{i:05d}.json").write_text(json.dumps(meta))
        if i % rgb_every == 0:
            (out / f"frame_{i:05d}.jpg").write_bytes(_jpeg_bytes(f.rgb))
        _png(out / f"depth_{i:05d}.png", _depth_mm(f.depth_m))
        _png(out / f"conf_{i:05d}.png", np.asarray(f.confidence, np.uint8))
    return out
