"""Record3D `.r3d` files (https://record3d.app; format described by its author in marek-simonik/record3d
issues #27, #33, #36, #93, #108).

A `.r3d` file is a zip archive holding:
- `metadata`: JSON. `w`, `h` = RGB size; `dw`, `dh` = depth size (LiDAR: 192x256, portrait); `K` = 9 numbers,
  the 3x3 intrinsics stored COLUMN-major ([fx, 0, 0, 0, fy, 0, cx, cy, 1]), pixels at the RGB resolution
  (Record3D >= 1.6); `poses` = one [qx, qy, qz, qw, tx, ty, tz] per frame: scalar-last quaternion and
  translation of the camera-to-world transform, camera axes OpenGL/ARKit (x right, y up, z backward), world
  = the first frame's camera (the app zeroes the initial pose, so the world is not gravity-aligned);
  `fps`; `frameTimestamps` (seconds).
- `rgbd/N.jpg`: RGB frame N (N from 0, no padding).
- `rgbd/N.depth`: LZFSE-compressed float32 depth in metres, row-major (dh, dw).
- `rgbd/N.conf`: LZFSE-compressed uint8 ARKit confidence 0/1/2, (dh, dw) (absent in some versions).

Here K is transposed to row-major, poses are converted to OpenCV camera axes (`arkit_to_opencv`), depth
NaN/negative becomes 0. The zip is read by the `frames()` generator only (one thread); each frame's JPEG
is copied to a temporary file that lives as long as its SourceFrame (ingest copies its bytes unchanged).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import lzfse
import numpy as np

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from ..geometry import arkit_to_opencv
from .common import clean_depth_m, decode_jpeg_rgb, pose_or_nan, read_bytes

log = logging.getLogger(__name__)


class Record3DMetadata:
    """The parts of Record3D's metadata JSON promptmesh uses, in promptmesh conventions."""

    def __init__(self, meta: Any, where: str):
        if not isinstance(meta, dict):
            raise PromptmeshError(f"{where}: metadata is not a JSON object; re-export from Record3D")
        missing = [k for k in ("w", "h", "dw", "dh", "K", "poses") if k not in meta]
        if missing:
            raise PromptmeshError(f"{where}: metadata lacks {missing}; re-export from Record3D (LiDAR recording)")
        try:
            self.rgb_size = (int(meta["w"]), int(meta["h"]))
            self.lidar_size = (int(meta["dw"]), int(meta["dh"]))
            K_col_major = np.asarray(meta["K"], np.float64)
            poses = np.asarray(meta["poses"], np.float64)
        except (TypeError, ValueError) as e:
            raise PromptmeshError(f"{where}: malformed metadata ({e}); re-export from Record3D") from None
        if K_col_major.size != 9:
            raise PromptmeshError(f"{where}: metadata K has {K_col_major.size} numbers, expected 9")
        if poses.size == 0:
            raise PromptmeshError(f"{where}: metadata lists no poses; the recording is empty")
        if poses.ndim != 2 or poses.shape[1] != 7:
            raise PromptmeshError(f"{where}: metadata poses should be [qx, qy, qz, qw, tx, ty, tz] per frame, got "
                                  f"shape {poses.shape}")
        # K is stored column-major: reshape gives K^T, transpose back to the row-major pinhole matrix.
        self.K_rgb = K_col_major.reshape(3, 3).T
        # [qx, qy, qz, qw] scalar-last + [tx, ty, tz]; camera-to-world with OpenGL camera axes -> OpenCV axes.
        self.camera_to_world = [arkit_to_opencv(pose_or_nan(p[:4], p[4:])) for p in poses]
        self.n_frames = len(poses)
        fps = meta.get("fps")
        self.fps: Optional[float] = float(fps) if isinstance(fps, (int, float)) and fps > 0 else None
        stamps = meta.get("frameTimestamps")
        if isinstance(stamps, list) and len(stamps) == self.n_frames:
            self.timestamp_s = np.asarray(stamps, np.float64)
        else:
            if stamps is not None:
                log.warning("%s: %d frameTimestamps for %d poses; timestamps from fps instead", where,
                            len(stamps) if isinstance(stamps, list) else -1, self.n_frames)
            self.timestamp_s = np.arange(self.n_frames) / (self.fps or 60.0)


def decode_lzfse(data: bytes, name: str, dtype: type, size_wh: tuple[int, int]) -> np.ndarray:
    """LZFSE-compressed raw array (row-major, (h, w) of `dtype`) -> ndarray."""
    try:
        raw = lzfse.decompress(data)
    except lzfse.error:
        raise PromptmeshError(f"{name}: corrupt LZFSE data; re-export the recording or delete this frame") from None
    w, h = size_wh
    arr = np.frombuffer(raw, dtype)
    if arr.size != w * h:
        raise PromptmeshError(f"{name}: {arr.size} values, expected {w}x{h} from the metadata")
    return arr.reshape(h, w)


def _temporary_jpeg(data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix="promptmesh-r3d-", suffix=".jpg")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(tmp)


def _member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise PromptmeshError(f"{path}:{name}: unreadable in the archive ({e}); export the recording again") from None


def _unreadable_frame(i: int, meta: Record3DMetadata, error: PromptmeshError, name: str) -> SourceFrame:
    """A frame whose loaders re-raise `error`, so that ingest warns, skips and counts it."""

    def fail():
        raise error

    return SourceFrame(frame_index=i, timestamp_s=float(meta.timestamp_s[i]), camera_to_world=meta.camera_to_world[i],
                       K_rgb=meta.K_rgb, rgb_size=meta.rgb_size, load_rgb=fail, load_depth_m=fail, source_name=name)


def _frame(path: Path, i: int, meta: Record3DMetadata, jpeg: bytes, depth: bytes,
           conf: Optional[bytes]) -> SourceFrame:
    """Frame i from its archive members. Its JPEG is copied to a temporary file that is deleted as soon as
    nothing references the frame (so the caller must not keep the frame in a local across a yield)."""
    base = f"{path}:rgbd/{i}"
    jpeg_path = _temporary_jpeg(jpeg)
    frame = SourceFrame(
        frame_index=i,
        timestamp_s=float(meta.timestamp_s[i]),
        camera_to_world=meta.camera_to_world[i],  # OpenCV axes (converted in Record3DMetadata)
        K_rgb=meta.K_rgb,  # row-major (transposed from the stored column-major K)
        rgb_size=meta.rgb_size,
        load_rgb=lambda: decode_jpeg_rgb(read_bytes(jpeg_path), f"{base}.jpg"),
        # float32 metres, row-major (dh, dw); NaN / negative = no return -> 0
        load_depth_m=lambda: clean_depth_m(decode_lzfse(depth, f"{base}.depth", np.float32, meta.lidar_size)),
        load_confidence=(lambda: decode_lzfse(conf, f"{base}.conf", np.uint8, meta.lidar_size).copy())
        if conf is not None else None,
        rgb_jpeg_path=jpeg_path,
        source_name=f"{base}.jpg",
    )
    weakref.finalize(frame, _unlink_quiet, jpeg_path)
    return frame


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class R3DReader:
    name = "r3d"
    description = "Record3D .r3d file (a zip: metadata, rgbd/N.jpg, N.depth, N.conf)"

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        return path.is_file() and path.suffix.lower() == ".r3d"

    def open(self, path: Path) -> CaptureSource:
        path = Path(path)
        if not zipfile.is_zipfile(path):
            raise PromptmeshError(f"{path}: not a zip archive, so not a Record3D .r3d file (damaged or renamed); "
                                  "export the recording again from Record3D as .r3d")
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                meta_name = "metadata" if "metadata" in names else "metadata.json"
                if meta_name not in names:
                    raise PromptmeshError(f"{path}: no 'metadata' inside the archive; export again from Record3D")
                raw = zf.read(meta_name)
        except (zipfile.BadZipFile, OSError) as e:
            raise PromptmeshError(f"{path}: damaged zip archive ({e}); export again from Record3D") from None
        try:
            meta = Record3DMetadata(json.loads(raw), f"{path}:{meta_name}")
        except (ValueError, UnicodeDecodeError) as e:
            raise PromptmeshError(f"{path}:{meta_name}: unreadable JSON ({e}); export again from Record3D") from None

        skipped: list[str] = []
        kept: list[int] = []
        for i in range(meta.n_frames):
            lacking = [f"rgbd/{i}.{ext}" for ext in ("jpg", "depth") if f"rgbd/{i}.{ext}" not in names]
            if lacking:
                skipped.append(f"{path}:{lacking[0]}: missing; frame skipped")
            else:
                kept.append(i)
        if not kept:
            raise PromptmeshError(f"{path}: no frame has both rgbd/N.jpg and rgbd/N.depth; export again with depth")
        has_confidence = any(f"rgbd/{i}.conf" in names for i in kept)

        def frames() -> Iterator[SourceFrame]:
            with zipfile.ZipFile(path) as zf:
                for i in kept:
                    try:
                        depth = _member(zf, f"rgbd/{i}.depth", path)
                        conf = _member(zf, f"rgbd/{i}.conf", path) if f"rgbd/{i}.conf" in names else None
                        jpeg = _member(zf, f"rgbd/{i}.jpg", path)
                    except PromptmeshError as e:
                        yield _unreadable_frame(i, meta, e, f"{path}:rgbd/{i}.jpg")
                        continue
                    yield _frame(path, i, meta, jpeg, depth, conf)  # no local reference: see _frame

        return CaptureSource(format=self.name, path=path, n_frames=meta.n_frames, rgb_size=meta.rgb_size,
                             lidar_size=meta.lidar_size, frames=frames, has_confidence=has_confidence,
                             fps=meta.fps, skipped=skipped)
