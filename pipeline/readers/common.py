"""File helpers shared by the capture readers: decode one frame's files, or raise PromptmeshError naming the file.

Every loader here turns "missing", "truncated" and "wrong kind of image" into a one-line PromptmeshError
that names the file (through `pipeline.images`, with the fix `CAPTURE_FIX`), so that ingest can warn, skip the
frame and count it. Header readers (`png_size`,
`jpeg_size`) look at a few bytes only, so a reader can learn image sizes without decoding.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from ..errors import PromptmeshError
from ..geometry import pose_from_quaternion_translation
from .. import images

JPEG_EOI = b"\xff\xd9"
CAPTURE_FIX = "re-export the capture or delete this frame"
"""What to do about a damaged file of a capture."""

# FFmpeg (inside OpenCV's video reader) prints its own diagnostics ("moov atom not found") on stderr, around
# the one-line errors promptmesh gives for damaged videos; silence it unless the user asked otherwise.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def read_bytes(path: Path, what: str = "file") -> bytes:
    """`images.read_bytes` with the capture's fix."""
    return images.read_bytes(path, what, CAPTURE_FIX)


def load_json(path: Path, what: str = "metadata") -> Any:
    """Parse a JSON file; PromptmeshError naming it when missing or malformed."""
    data = read_bytes(path, what)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PromptmeshError(f"{path}: unreadable {what} JSON ({e}); re-export the capture") from None


def read_depth_png_m(path: Path) -> np.ndarray:
    """uint16 millimetre PNG (0 = no measurement) -> (h, w) float32 metres."""
    return images.depth_mm_to_m(images.decode_png_as(read_bytes(path, "depth PNG"), path, np.uint16, CAPTURE_FIX))


def read_uint8_png(path: Path, what: str = "confidence PNG") -> np.ndarray:
    """8-bit one-channel PNG (ARKit confidence 0/1/2) -> (h, w) uint8."""
    return images.decode_png_as(read_bytes(path, what), path, np.uint8, CAPTURE_FIX)


def decode_jpeg(data: bytes, name: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """JPEG bytes -> the image as OpenCV decodes it with `flags` (BGR, or grey at a reduced scale).

    A file cut short (no end-of-image marker) or not decodable is an error naming `name`."""
    # libjpeg decodes a truncated file into a grey-padded image without failing: check the EOI marker
    # (encoders may pad a few zero bytes after it).
    if JPEG_EOI not in data[-64:]:
        raise PromptmeshError(f"{name}: truncated JPEG (no end-of-image marker); {CAPTURE_FIX}")
    img = images.decode_image(data, flags)
    if img is None:
        raise PromptmeshError(f"{name}: unreadable JPEG; {CAPTURE_FIX}")
    return img


def decode_jpeg_rgb(data: bytes, name: str) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB. A file cut short (no end-of-image marker) is an error."""
    return cv2.cvtColor(decode_jpeg(data, name), cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR


def read_jpeg_rgb(path: Path) -> np.ndarray:
    return decode_jpeg_rgb(read_bytes(path, "RGB JPEG"), str(path))


def png_size(path: Path) -> tuple[int, int]:
    """(w, h) from a PNG's IHDR chunk (first 24 bytes)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise PromptmeshError(f"{path}: not a PNG file; re-export the capture")
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


def jpeg_size(path: Path) -> tuple[int, int]:
    """(W, H) from a JPEG's start-of-frame marker, reading only the headers before it."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise PromptmeshError(f"{path}: not a JPEG file; re-export the capture")
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                break
            (length,) = struct.unpack(">H", f.read(2) or b"\0\0")
            # SOF0..SOF15 carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
            if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                seg = f.read(5)
                h, w = struct.unpack(">HH", seg[1:5])
                return int(w), int(h)
            f.seek(length - 2, 1)
    raise PromptmeshError(f"{path}: JPEG without a frame header; re-export the capture")


def pose_or_nan(q_xyzw: np.ndarray, t_xyz: np.ndarray) -> np.ndarray:
    """(4,4) pose from a scalar-last quaternion and translation; all-NaN when the input is not finite or the
    quaternion is zero. Readers leave such frames to ingest, which skips non-rigid poses with a warning."""
    q = np.asarray(q_xyzw, np.float64)
    t = np.asarray(t_xyz, np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))) or np.linalg.norm(q) < 1e-12:
        return np.full((4, 4), np.nan)
    return pose_from_quaternion_translation(q, t)


def clean_depth_m(depth_m: np.ndarray) -> np.ndarray:
    """float depth in metres with NaN/inf/negative for 'no measurement' -> float32 with 0 there."""
    d = np.nan_to_num(np.asarray(depth_m, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    d[d < 0] = 0.0
    return d


class VideoCursor:
    """Sequential decoder of a video: frame i is reached by decoding 0..i-1 first (grabbed, not converted to an
    image); the last frame read is cached.

    Asking for an earlier frame than the cursor reopens the video (correct, but slow). `listed` says why frame i
    should exist, for the error when it does not ("odometry.csv lists it").
    """

    def __init__(self, path: Path, size: tuple[int, int], listed: str):
        self.path = path
        self.size = size
        self.listed = listed
        self.cap: Optional[cv2.VideoCapture] = None
        self.next_index = 0
        self.last: tuple[int, Optional[np.ndarray]] = (-1, None)
        self.lock = threading.Lock()

    def _reopen(self) -> None:
        self.close()
        self.cap = cv2.VideoCapture(str(self.path))
        self.next_index = 0
        if not self.cap.isOpened():
            raise PromptmeshError(f"{self.path}: cannot open the video; check that the file is complete")

    def read(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8 BGR, OpenCV's order (the last one read is kept: do not modify it)."""
        with self.lock:
            if self.last[0] == index:
                return self.last[1]
            if self.cap is None or index < self.next_index:
                self._reopen()
            while self.next_index < index:
                if not self.cap.grab():
                    break
                self.next_index += 1
            ok, bgr = self.cap.read() if self.next_index == index else (False, None)
            if not ok:
                raise PromptmeshError(f"{self.path}: no decodable video frame {index}, though {self.listed} (the video "
                                      "is cut short or damaged)")
            self.next_index += 1
            if bgr.shape[1::-1] != self.size:
                raise PromptmeshError(f"{self.path}: frame {index} is {bgr.shape[1]}x{bgr.shape[0]}, expected "
                                      f"{self.size[0]}x{self.size[1]}")
            self.last = (index, bgr)
            return bgr

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
        self.last = (-1, None)
