"""Stray Scanner folders (https://github.com/strayrobots/scanner, docs/format.md).

Layout and conventions, as the app writes them (StrayScanner/Helpers/*.swift):
- `rgb.mp4`: HEVC video of ARKit's captured images (1920x1440 on current iPhones), one video frame per row
  of odometry.csv. The video can end one frame early (the encoder drops the last frame): rows without a
  video frame are skipped and counted.
- `depth/NNNNNN.png`: uint16 millimetres, 256x192, 0 = no return (NNNNNN = the `frame` column). App
  versions from 2021 wrote `depth/NNNNNN.npy` instead (uint16 millimetres too); both are read.
- `confidence/NNNNNN.png`: uint8 ARKit confidence 0/1/2, same size as depth.
- `camera_matrix.csv`: 3x3 K, row-major, pixels at the RGB (video) resolution.
- `odometry.csv`: header `timestamp, frame, x, y, z, qx, qy, qz, qw` (versions before August 2021 wrote
  the last seven columns without a header). One camera-to-world pose per row: position in the ARKit
  world frame (metres, y up, gravity-aligned) and a scalar-last quaternion. The app stores
  `q_WA * q_AC` with `q_AC` a 180 degree rotation about x (OdometryEncoder.swift), i.e. ARKit's camera
  rotation with the camera y and z axes flipped: the rotation is ALREADY in OpenCV camera axes (x right,
  y down, z forward), so no ARKit->OpenCV flip is applied here.
- promptmesh extension: `gt_depth/NNNNNN.png` (uint16 millimetres, any size with the RGB aspect) holds
  ground-truth depth for synthetic captures.

RGB frames are decoded lazily and sequentially: `load_rgb` of frame i decodes the video up to i (one
decoder per `frames()` iteration, only the last decoded frame kept), so listing a capture costs no video
decoding and ingest's in-order calls decode each frame once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from .. import images
from .common import VideoCursor, png_size, pose_or_nan, read_depth_png_m, read_uint8_png

log = logging.getLogger(__name__)

POSE_COLUMNS = ("x", "y", "z", "qx", "qy", "qz", "qw")


@dataclass
class _Row:
    """One odometry.csv row that has its files."""

    video_index: int
    """Row position = frame number in rgb.mp4."""
    frame: int
    """The `frame` column: number of the depth/confidence files."""
    timestamp_s: float
    camera_to_world: np.ndarray
    depth_path: Path


def _read_camera_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise PromptmeshError(f"{path}: missing; a Stray Scanner folder needs camera_matrix.csv (export the whole "
                              "dataset folder from the app)")
    try:
        K = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise PromptmeshError(f"{path}: unreadable ({e}); expected 3 rows of 3 comma-separated numbers") from None
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise PromptmeshError(f"{path}: expected a 3x3 camera matrix with positive focal lengths, got {K.tolist()}")
    return K  # row-major, pixels at the RGB video resolution


def _read_odometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """odometry.csv -> (timestamps (N,) or NaN, frame numbers (N,), poses (N,7) x y z qx qy qz qw)."""
    if not path.is_file():
        raise PromptmeshError(f"{path}: missing; a Stray Scanner folder needs odometry.csv with the camera poses")
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise PromptmeshError(f"{path}: empty; the capture has no poses")
    first = [c.strip() for c in lines[0].split(",")]
    try:
        float(first[0])
        columns = list(POSE_COLUMNS)  # pre-2021-08 files: x, y, z, qx, qy, qz, qw without a header
        header_lines = 0
    except ValueError:
        columns = first
        header_lines = 1
    rows = lines[header_lines:]
    missing = [c for c in POSE_COLUMNS if c not in columns]
    if missing:
        raise PromptmeshError(f"{path}: header lacks columns {missing}; expected "
                              "'timestamp, frame, x, y, z, qx, qy, qz, qw'")
    table = np.full((len(rows), len(columns)), np.nan)
    for i, line in enumerate(rows):
        cells = line.split(",")
        if len(cells) != len(columns):
            raise PromptmeshError(f"{path}: line {i + 1 + header_lines} has {len(cells)} values, the header "
                                  f"has {len(columns)}; the file is damaged")
        try:
            table[i] = [float(c) for c in cells]
        except ValueError:
            raise PromptmeshError(f"{path}: line {i + 1 + header_lines} is not numeric: {line.strip()!r}") from None
    if not len(table):
        raise PromptmeshError(f"{path}: no pose rows; the capture has no frames")
    col = {c: j for j, c in enumerate(columns)}
    timestamps = table[:, col["timestamp"]] if "timestamp" in col else np.full(len(table), np.nan)
    frames = table[:, col["frame"]] if "frame" in col else np.arange(len(table), dtype=np.float64)
    if not np.all(np.isfinite(frames)) or np.any(frames < 0):
        raise PromptmeshError(f"{path}: the 'frame' column must hold non-negative frame numbers")
    poses = table[:, [col[c] for c in POSE_COLUMNS]]
    return timestamps, frames.astype(np.int64), poses


def _depth_size(path: Path) -> tuple[int, int]:
    if path.suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape  # reads the header only
        except (OSError, ValueError) as e:
            raise PromptmeshError(f"{path}: not a .npy depth map ({e}); re-export the capture") from None
        if len(shape) != 2:
            raise PromptmeshError(f"{path}: expected a 2-D depth array, got shape {shape}")
        return int(shape[1]), int(shape[0])
    return png_size(path)


def _read_depth_m(path: Path) -> np.ndarray:
    """depth/NNNNNN.png or .npy (uint16 millimetres, 0 = no return) -> float32 metres."""
    if path.suffix != ".npy":
        return read_depth_png_m(path)
    try:
        mm = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise PromptmeshError(f"{path}: unreadable or truncated .npy depth map ({e}); delete this frame") from None
    if mm.ndim != 2 or mm.dtype != np.uint16:
        raise PromptmeshError(f"{path}: expected a 2-D uint16 millimetre array, got {mm.dtype} {mm.shape}")
    return images.depth_mm_to_m(mm)


class StrayReader:
    name = "stray"
    description = "Stray Scanner folder (rgb.mp4, depth/, odometry.csv, camera_matrix.csv)"

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and ((path / "rgb.mp4").is_file() or (path / "odometry.csv").is_file())

    def open(self, path: Path) -> CaptureSource:
        path = Path(path)
        K_rgb = _read_camera_matrix(path / "camera_matrix.csv")
        timestamps, frame_numbers, poses = _read_odometry(path / "odometry.csv")
        video_path = path / "rgb.mp4"
        if not video_path.is_file():
            raise PromptmeshError(f"{video_path}: missing; a Stray Scanner folder needs the RGB video")
        cap = cv2.VideoCapture(str(video_path))
        try:
            if not cap.isOpened():
                raise PromptmeshError(f"{video_path}: cannot open the video (damaged, or a codec OpenCV lacks)")
            rgb_size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            video_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            video_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # container metadata; <= 0 when unknown
        finally:
            cap.release()
        depth_dir = path / "depth"
        if not depth_dir.is_dir():
            raise PromptmeshError(f"{depth_dir}: missing; a Stray Scanner folder needs the LiDAR depth maps")
        depth_names = {p.name for p in depth_dir.iterdir()}
        conf_dir = path / "confidence"
        has_confidence = conf_dir.is_dir()

        n_rows = len(poses)
        skipped: list[str] = []
        if 0 < video_frames < n_rows:
            # Known app behaviour: the video ends early (usually by one frame); the trailing rows have no RGB.
            msg = (f"{video_path}: {video_frames} video frames but odometry.csv lists {n_rows}; "
                   f"the last {n_rows - video_frames} rows have no RGB frame and are skipped")
            log.warning("stray: %s", msg)
            skipped += [f"{video_path} frame {i}: no video frame (video has {video_frames})"
                        for i in range(video_frames, n_rows)]
        elif video_frames > n_rows:
            log.warning("stray: %s has %d frames, odometry.csv %d rows; the extra video frames are ignored",
                        video_path, video_frames, n_rows)
        n_usable = min(n_rows, video_frames) if video_frames > 0 else n_rows

        fps = video_fps if video_fps > 0 else None
        if not np.all(np.isfinite(timestamps)):  # headerless odometry.csv: no timestamps, use the video rate
            timestamps = np.arange(n_rows) / (fps or 60.0)
        rows: list[_Row] = []
        for i in range(n_usable):
            stem = f"{frame_numbers[i]:06d}"
            name = next((n for n in (f"{stem}.png", f"{stem}.npy") if n in depth_names), None)
            if name is None:
                skipped.append(f"{depth_dir / (stem + '.png')}: missing; frame skipped")
                continue
            # Position (x, y, z) in the ARKit world; quaternion (qx, qy, qz, qw) scalar-last, already in OpenCV
            # camera axes (the app multiplies ARKit's rotation by a 180 degree turn about x): no flip here.
            camera_to_world = pose_or_nan(poses[i, 3:7], poses[i, 0:3])
            rows.append(_Row(i, int(frame_numbers[i]), float(timestamps[i]), camera_to_world, depth_dir / name))
        if not rows:
            raise PromptmeshError(f"{path}: no frame has both a pose and a depth map ({len(skipped)} skipped); "
                                  "check the depth/ folder")
        lidar_size = _depth_size(rows[0].depth_path)
        gt_dir = path / "gt_depth"

        def frames() -> Iterator[SourceFrame]:
            video = VideoCursor(video_path, rgb_size, "odometry.csv lists it")
            try:
                for r in rows:
                    conf_path = conf_dir / f"{r.frame:06d}.png"
                    yield SourceFrame(
                        frame_index=r.frame,
                        timestamp_s=r.timestamp_s,
                        camera_to_world=r.camera_to_world,
                        K_rgb=K_rgb,
                        rgb_size=rgb_size,
                        load_rgb=lambda i=r.video_index: cv2.cvtColor(video.read(i), cv2.COLOR_BGR2RGB),
                        load_bgr=lambda i=r.video_index: video.read(i),
                        load_depth_m=lambda p=r.depth_path: _read_depth_m(p),
                        load_confidence=(lambda p=conf_path: read_uint8_png(p)) if has_confidence else None,
                        rgb_jpeg_path=None,
                        source_name=f"{r.depth_path}",
                        pose_source=f"{path / 'odometry.csv'}, frame {r.frame}",
                    )
            except GeneratorExit:  # stopped early: nothing more will be read
                video.close()
                raise
            # exhausted: the consumer may still load the last frames it holds (keyframe selection decides a
            # neighbourhood after reading past it); closing here would make that decode the whole video again.
            # The decoder is released with the last frame that refers to it.

        def gt_depth(frame_index: int) -> Optional[np.ndarray]:
            p = gt_dir / f"{frame_index:06d}.png"
            return read_depth_png_m(p) if p.is_file() else None

        return CaptureSource(
            format=self.name, path=path, n_frames=n_rows, rgb_size=rgb_size, lidar_size=lidar_size, frames=frames,
            has_confidence=has_confidence, fps=fps, skipped=skipped,
            gt_depth=gt_depth if gt_dir.is_dir() else None,
        )
