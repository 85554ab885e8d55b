"""Image files: the depth-map codec (uint16 millimetres in 16-bit PNG, 0 = invalid; `MM_PER_M`, `depth_m_to_mm`,
`depth_mm_to_m`) with libdeflate, and OpenCV decoding that reports failure as None or a one-line error, never a
traceback. This is the one read-or-raise layer: capture readers and stages alike read files through `read_bytes`,
`decode_png_as`, `read_image` and `read_depth_mm`, passing the `fix` their users should be told.

Depth maps are ordinary PNGs (one IHDR, one IDAT, IEND; every row filtered with Sub), so any PNG reader opens
them. libdeflate compresses and inflates about twice as fast as the zlib that OpenCV's libpng uses, and at
level 1 the files come out smaller, which matters when a stage handles thousands of maps (docs/benchmarks.md,
Fusion, measures both). `decode_png` takes the fast path for any non-interlaced 16-bit greyscale PNG whose rows
use the None or Sub filter (OpenCV writes those too) and hands everything else to OpenCV (`decode_image`).

Byte-level functions (`encode_depth_png`, `decode_png`, `decode_image`) are kept apart from the file helpers
(`read_bytes`, `read_depth_mm`, `read_image`), which turn every failure into a one-line error naming the file and
the fix.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Optional

import cv2
import deflate
import numpy as np

from .errors import PromptmeshError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE, FILTER_SUB = 0, 1
COMPRESSION_LEVEL = 1
"""libdeflate level: 1 is the fastest; higher levels shrink depth maps a few per cent for 1.3-4x the time."""
MAX_DEFLATE_RATIO = 1032
"""Deflate's largest possible expansion (bytes out per byte in)."""
MM_PER_M = 1000.0
"""Depth PNG units (millimetres) per metre: the one place the unit of every depth map on disk is written."""
MAX_DEPTH_MM = 65535
"""The largest depth a uint16 PNG holds (65.535 m)."""
REDO = "rerun the stage that writes it with --force"
"""The `fix` for a damaged work-directory file whose stage is not known to the reader."""


def srgb8_to_linear(rgb8: np.ndarray) -> np.ndarray:
    """sRGB-encoded uint8 colours -> linear-light float64 in [0, 1] (IEC 61966-2-1 transfer function)."""
    c = np.asarray(rgb8, np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear-light colours in [0, 1] -> sRGB-encoded uint8 (the inverse of `srgb8_to_linear`, rounded)."""
    c = np.clip(np.asarray(linear, np.float64), 0.0, 1.0)
    encoded = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.rint(encoded * 255.0).astype(np.uint8)


def depth_m_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """float metres (0/NaN/inf/negative = invalid) -> uint16 millimetres (0 = invalid, beyond 65.535 m too)."""
    mm = np.multiply(depth_m, MM_PER_M, dtype=np.float64)  # one float64 array, rounded and masked in place
    np.rint(mm, out=mm)
    mm[~((mm >= 0) & (mm <= MAX_DEPTH_MM))] = 0  # NaN and inf fail both tests
    return mm.astype(np.uint16)


def depth_mm_to_m(depth_mm: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """uint16 millimetres -> metres as `dtype` (0 stays 0 = invalid)."""
    return np.asarray(depth_mm).astype(dtype) / dtype(MM_PER_M)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))


def encode_depth_png(depth_mm: np.ndarray, level: int = COMPRESSION_LEVEL) -> bytes:
    """(H, W) uint16 -> PNG bytes (16-bit greyscale, big-endian samples as PNG requires, Sub filter)."""
    if depth_mm.ndim != 2 or depth_mm.dtype != np.uint16 or 0 in depth_mm.shape:
        raise ValueError(f"expected a non-empty (H, W) uint16 array, got {depth_mm.dtype} {depth_mm.shape}")
    h, w = depth_mm.shape
    samples = np.ascontiguousarray(depth_mm, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
    rows = np.empty((h, 2 * w + 1), np.uint8)
    rows[:, 0] = FILTER_SUB  # each byte minus the byte one pixel (2 bytes) to its left, modulo 256
    rows[:, 1:3] = samples[:, :2]
    np.subtract(samples[:, 2:], samples[:, :-2], out=rows[:, 3:])
    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)  # bit depth 16, greyscale, deflate, adaptive, no interlace
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", bytes(deflate.zlib_compress(rows, level)))
            + _chunk(b"IEND", b""))


def _decode_gray16(data: bytes) -> Optional[np.ndarray]:
    """The fast path of `decode_png`; None where it does not apply or the data does not parse."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, shape, idat = len(PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = view[pos + 8:pos + 8 + length]
        if len(payload) != length:
            return None  # truncated
        if kind == b"IHDR":
            crc, = struct.unpack_from(">I", data, pos + 8 + length)
            if length != 13 or crc != zlib.crc32(payload, zlib.crc32(kind)):
                return None
            w, h, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", payload)
            if (bit_depth, colour_type, interlace) != (16, 0, 0) or w == 0 or h == 0:
                return None
            shape = (h, w)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    else:
        return None  # no IEND: truncated
    if shape is None or not idat:
        return None
    h, w = shape
    compressed = b"".join(idat)
    raw_size = h * (2 * w + 1)
    if raw_size > MAX_DEFLATE_RATIO * len(compressed) + 1024:
        return None  # no deflate stream inflates that far: a damaged header, not an allocation to attempt
    try:
        raw = deflate.zlib_decompress(compressed, raw_size)  # checks the stream's Adler-32
    except deflate.DeflateError:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, 2 * w + 1)
    filters = rows[:, 0]
    samples = rows[:, 1:].reshape(h, w, 2)
    if np.all(filters == FILTER_SUB):
        samples = np.cumsum(samples, axis=1, dtype=np.uint8)  # undo Sub: running sum per byte lane, modulo 256
    elif np.all((filters == FILTER_SUB) | (filters == FILTER_NONE)):
        sub = filters == FILTER_SUB
        samples = samples.copy()
        samples[sub] = np.cumsum(samples[sub], axis=1, dtype=np.uint8)
    else:
        return None  # Up, Average or Paeth rows: leave them to libpng
    return np.ascontiguousarray(samples).view(">u2").reshape(h, w).astype(np.uint16)


def decode_image(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> Optional[np.ndarray]:
    """Image bytes (PNG, JPEG, ...) -> OpenCV's decoding with `flags`, or None if it cannot be decoded.

    OpenCV returns None for most damaged files but raises for some (a header claiming more pixels than it
    accepts); both are None here."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def decode_png(data: bytes) -> Optional[np.ndarray]:
    """PNG bytes -> the image as stored ((H, W) uint16 for depth maps), or None if it cannot be decoded."""
    image = _decode_gray16(data)
    return image if image is not None else decode_image(data)


def read_bytes(path: Path, what: str, fix: str) -> bytes:
    """The bytes of `path`; PromptmeshError naming the file, `what` it should be and `fix` (what to do) if it is
    missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise PromptmeshError(f"{path}: {what} missing or unreadable ({e.strerror}); {fix}") from None


def decode_png_as(data: bytes, name: object, dtype: type, fix: str) -> np.ndarray:
    """PNG bytes -> the (h, w) `dtype` image as stored (uint16 depth, uint8 confidence); PromptmeshError naming
    `name` and `fix` if it cannot be decoded or is another kind of image."""
    # A PNG ends with its IEND chunk; checking first keeps OpenCV from logging its own warning for a cut file.
    image = decode_png(data) if b"IEND" in data[-12:] else None
    if image is None:
        raise PromptmeshError(f"{name}: not a decodable PNG (corrupt or truncated); {fix}")
    if image.ndim != 2 or image.dtype != dtype:
        raise PromptmeshError(f"{name}: {image.dtype} {image.shape}, expected a single-channel {np.dtype(dtype).name} "
                              f"PNG; {fix}")
    return image


def read_image(path: Path, flags: int, what: str, fix: str) -> np.ndarray:
    """`path` decoded by OpenCV with `flags`; PromptmeshError naming the file, `what` it should be and `fix`
    (what to do) if it is missing or undecodable."""
    image = decode_image(read_bytes(path, what, fix), flags)
    if image is None:
        raise PromptmeshError(f"{path}: {what} not decodable (corrupt or truncated); {fix}")
    return image


def read_depth_mm(path: Path, fix: str) -> np.ndarray:
    """(H, W) uint16 millimetres from a depth PNG; PromptmeshError naming `path` and `fix` (what to do) if the
    file is missing, unreadable or not a single-channel 16-bit image."""
    return decode_png_as(read_bytes(path, "depth map", fix), path, np.uint16, fix)


def read_depth_m(path: Path, fix: str, dtype: type = np.float32) -> np.ndarray:
    """`read_depth_mm` in metres (0 = invalid), as `dtype`."""
    return depth_mm_to_m(read_depth_mm(path, fix), dtype)
