"""images: depth PNGs written with libdeflate are standard PNGs, read back exactly; other PNGs still read."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from pipeline.artifacts import write_png_atomic
from pipeline.errors import PromptmeshError
from pipeline.images import (_chunk, decode_png, depth_m_to_mm, depth_mm_to_m, encode_depth_png, read_depth_m,
                             read_depth_mm, read_image)

SHAPES = [(1, 1), (1, 7), (9, 1), (37, 53), (192, 256)]


def _depth(shape, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 65536, shape, dtype=np.uint16)  # full range: both bytes, carries in the Sub filter
    d[rng.random(shape) < 0.2] = 0
    return d


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_and_libpng_agrees(shape):
    d = _depth(shape)
    data = encode_depth_png(d)
    np.testing.assert_array_equal(decode_png(data), d)
    by_libpng = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # checks CRCs, filters, zlib
    assert by_libpng.dtype == np.uint16
    np.testing.assert_array_equal(by_libpng.reshape(shape), d)


@pytest.mark.parametrize("level", [0, 1, 3, 9])
def test_opencv_written_pngs_read_exactly(level):
    d = _depth((48, 64), seed=level)
    ok, buf = cv2.imencode(".png", d, [cv2.IMWRITE_PNG_COMPRESSION, level])
    np.testing.assert_array_equal(decode_png(buf.tobytes()), d)


def _png_with_filter(d: np.ndarray, filter_type: int) -> bytes:
    """A 16-bit greyscale PNG whose rows all use `filter_type` 0 (None) or 2 (Up), built by hand."""
    h, w = d.shape
    samples = d.astype(">u2").view(np.uint8).reshape(h, 2 * w)
    body = samples.copy()
    if filter_type == 2:
        body[1:] = samples[1:] - samples[:-1]  # Up: minus the byte above, modulo 256
    rows = np.concatenate([np.full((h, 1), filter_type, np.uint8), body], axis=1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes())) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("filter_type", [0, 2])
def test_other_row_filters(filter_type):
    d = _depth((20, 30), seed=3)
    np.testing.assert_array_equal(decode_png(_png_with_filter(d, filter_type)), d)


def test_mixed_none_and_sub_rows():
    d = _depth((6, 5), seed=4)
    # rows 1 and 4 with filter None, the others Sub, built by hand
    h, w = d.shape
    samples = d.astype(">u2").view(np.uint8).reshape(h, 2 * w)
    rows = np.concatenate([np.ones((h, 1), np.uint8), samples], axis=1)
    rows[:, 3:] = samples[:, 2:] - samples[:, :-2]
    rows[:, 1:3] = samples[:, :2]
    rows[[1, 4], 0] = 0
    rows[[1, 4], 1:] = samples[[1, 4]]
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes())) + _chunk(b"IEND", b""))
    np.testing.assert_array_equal(decode_png(data), d)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), d)


def test_write_png_atomic_uses_the_depth_encoder_for_uint16_only(tmp_path):
    d = _depth((30, 40))
    write_png_atomic(tmp_path / "d.png", d)
    assert (tmp_path / "d.png").read_bytes() == encode_depth_png(d)
    np.testing.assert_array_equal(read_depth_mm(tmp_path / "d.png", "fix it"), d)
    conf = (d % 3).astype(np.uint8)
    write_png_atomic(tmp_path / "c.png", conf)  # uint8 confidence: OpenCV
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED), conf)
    with pytest.raises(PromptmeshError, match=r"c\.png: uint8 \(30, 40\), expected a single-channel uint16.*; fix it"):
        read_depth_mm(tmp_path / "c.png", "fix it")


def test_damaged_files_give_one_line_errors(tmp_path):
    data = encode_depth_png(_depth((64, 64)))
    with pytest.raises(PromptmeshError, match=r"missing\.png: depth map missing or unreadable .*; rerun it"):
        read_depth_mm(tmp_path / "missing.png", "rerun it")
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PromptmeshError, match=r"cut\.png: not a decodable PNG .*; rerun it"):
        read_depth_mm(cut, "rerun it")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the compressed data: zlib's checksum or libpng's CRC catches it
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(PromptmeshError, match=r"bad\.png: not a decodable PNG"):
        read_depth_mm(bad, "rerun it")
    huge = tmp_path / "huge.png"  # a header (valid CRC) claiming 60000 x 60000: refused, not allocated
    huge.write_bytes(data[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 16, 0, 0, 0, 0)) + data[33:])
    with pytest.raises(PromptmeshError, match=r"huge\.png: not a decodable PNG"):
        read_depth_mm(huge, "rerun it")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(PromptmeshError, match=r"text\.png: not a decodable PNG"):
        read_depth_mm(tmp_path / "text.png", "rerun it")


def test_encoder_rejects_what_is_not_a_depth_map():
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16), np.zeros((0, 4), np.uint16)):
        with pytest.raises(ValueError):
            encode_depth_png(bad)


def test_read_image_errors_name_the_file_what_and_the_fix(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "f.jpg").write_bytes(buf.tobytes())
    assert read_image(tmp_path / "f.jpg", cv2.IMREAD_COLOR, "RGB frame", "fix").shape == (8, 8, 3)
    with pytest.raises(PromptmeshError, match=r"gone\.jpg: RGB frame missing or unreadable .*; rerun ingest"):
        read_image(tmp_path / "gone.jpg", cv2.IMREAD_COLOR, "RGB frame", "rerun ingest")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(PromptmeshError, match=r"bad\.jpg: RGB frame not decodable .*; rerun ingest"):
        read_image(tmp_path / "bad.jpg", cv2.IMREAD_COLOR, "RGB frame", "rerun ingest")


def test_depth_unit_conversions():
    d = np.array([[0.0, np.nan, -1.0, 1.2344], [np.inf, 70.0, 0.0004, 2.0]], np.float32)
    mm = depth_m_to_mm(d)
    np.testing.assert_array_equal(mm, [[0, 0, 0, 1234], [0, 0, 0, 2000]])  # invalid and beyond 65.535 m -> 0
    assert mm.dtype == np.uint16
    m = depth_mm_to_m(mm)
    assert m.dtype == np.float32 and m[0, 3] == np.float32(1.234) and m[1, 3] == 2.0 and m[0, 0] == 0.0


def test_read_depth_m_is_millimetres_over_1000(tmp_path):
    mm = np.array([[0, 1, 1500], [65535, 999, 2]], np.uint16)
    (tmp_path / "d.png").write_bytes(encode_depth_png(mm))
    np.testing.assert_array_equal(read_depth_m(tmp_path / "d.png", "fix"), mm.astype(np.float32) / np.float32(1000))
    assert read_depth_m(tmp_path / "d.png", "fix", np.float64)[0, 2] == 1.5
