"""Bad input, class by class, through the real command line (a subprocess, so that anything a C library
prints on stderr counts too).

Each broken input either stops with one line on stderr naming the file and what to do (exit 1, no
traceback, no artifact of the failing stage left behind), or, where skipping is right (one bad frame
among many), runs to the end with a warning naming the frame and the count in ingest's manifest and the
run report. Captures are tiny synthetic ones (12 frames at 160x120) in the phone apps' own formats.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline.workdir import WorkDir

REPO = Path(__file__).resolve().parents[1]
N_FRAMES = 12
TINY_TOML = """
[fuse]
voxel_size_m = 0.05
[mesh]
min_component_triangles = 0
[eval]
sample_spacing_m = 0.05
downsample_m = 0.05
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """All four capture layouts of one 12-frame synthetic room, a GT mesh and a fast config."""
    from make_synthetic_capture import make_capture

    root = tmp_path_factory.mktemp("fuzz_base")
    make_capture(root, scene="easy", n_frames=N_FRAMES, width=160, height=120,
                 layouts=("stray", "r3d", "r3d-exr", "3dscannerapp"), gt_depth_size=(16, 12))
    (root / "tiny.toml").write_text(TINY_TOML)
    return root


@pytest.fixture
def capture(base, tmp_path):
    """copy(layout) -> a private copy of one layout of the base capture, to break."""

    def copy(layout: str) -> Path:
        src = base / {"stray": "stray", "r3d": "capture.r3d", "r3d-exr": "r3d_export",
                      "3dscannerapp": "3dscannerapp"}[layout]
        dst = tmp_path / src.name
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        return dst

    return copy


def promptmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def run(capture: Path, workdir: Path, base: Path, *extra: str) -> subprocess.CompletedProcess:
    return promptmesh("run", capture, "-o", workdir, "--config", base / "tiny.toml", "--depth-model", "lidar",
                      *extra)


LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d (INFO|WARNING)\] ")


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1; besides promptmesh's own log records, stderr holds exactly one line: the error, naming what
    it must name (no traceback, nothing printed by a C library)."""
    other = [ln for ln in result.stderr.strip().splitlines() if not LOG_LINE.match(ln)]
    assert result.returncode == 1, result.stderr
    assert len(other) == 1 and other[0].startswith("promptmesh: error: "), result.stderr
    for fragment in fragments:
        assert fragment in other[0], other[0]
    return other[0]


def assert_nothing_half_written(workdir: Path, stage_dir: str) -> None:
    """The failing stage left no outputs and no manifest, and no temporary file is anywhere."""
    stage = workdir / stage_dir
    assert not stage.exists() or not any(p.is_file() and p.name != ".fingerprint.json" for p in stage.rglob("*")), \
        sorted(stage.rglob("*"))
    assert not [p for p in workdir.rglob("*") if ".tmp" in p.name]


def assert_skipped(result: subprocess.CompletedProcess, workdir: Path, n_bad: int, *named: str) -> None:
    """The run finished, warned about each bad frame by name and counted them."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if "WARNING" in ln and "frame skipped" in ln]
    assert len(warnings) == n_bad, result.stderr
    for name in named:
        assert any(name in w for w in warnings), (name, warnings)
    summary = json.loads((WorkDir(workdir).capture / "manifest.json").read_text())["summary"]
    assert summary["skipped_bad"] == n_bad and summary["kept"] == N_FRAMES - n_bad
    assert f"{N_FRAMES - n_bad} of {N_FRAMES} frames used ({n_bad} bad frames skipped" in result.stdout
    assert WorkDir(workdir).mesh("ply").stat().st_size > 0


# --------------------------------------------------------------------------- JPEG
def test_truncated_and_corrupt_jpeg_frames_are_skipped(capture, base, tmp_path):
    cap = capture("3dscannerapp")
    jpg = cap / "frame_00003.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # cut short
    (cap / "frame_00007.jpg").write_bytes(b"\xff\xd8" + os.urandom(3000) + b"\xff\xd9")  # not a JPEG inside
    result = run(cap, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 2, "frame_00003.jpg: truncated JPEG", "frame_00007.jpg")


def test_ingest_command_reports_the_skipped_frames(capture, base, tmp_path):
    cap = capture("3dscannerapp")
    (cap / "frame_00005.jpg").write_bytes(b"\xff\xd8" + os.urandom(2000) + b"\xff\xd9")
    result = promptmesh("ingest", cap, "-o", tmp_path / "w", "--config", base / "tiny.toml")
    assert result.returncode == 0, result.stderr
    assert "frame_00005.jpg" in result.stderr and "frame skipped" in result.stderr
    assert (f"frames:  {N_FRAMES - 1} of {N_FRAMES} frames used (1 bad frames skipped" in result.stdout
            and str(WorkDir(tmp_path / "w").capture / "manifest.json") in result.stdout), result.stdout


def test_jpeg_of_another_size_is_skipped(capture, base, tmp_path):
    cap = capture("r3d-exr")
    small = cv2.resize(cv2.imread(str(cap / "rgb" / "5.jpg")), (80, 60))
    cv2.imwrite(str(cap / "rgb" / "5.jpg"), small)
    result = run(cap, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 1, "5.jpg: the image is about 80x60, the capture's RGB size is 160x120")


def test_all_jpegs_corrupt_is_one_line_error(capture, base, tmp_path):
    cap = capture("3dscannerapp")
    for jpg in cap.glob("frame_*.jpg"):
        jpg.write_bytes(jpg.read_bytes()[:100])
    result = run(cap, tmp_path / "w", base)
    # the reader needs the first frame's header for the RGB size: all cut -> no usable frame at all
    assert_one_line_error(result, str(cap), "re-export")
    assert_nothing_half_written(tmp_path / "w", "capture")


# --------------------------------------------------------------------------- PNG
def test_corrupt_depth_and_confidence_pngs_are_skipped(capture, base, tmp_path):
    cap = capture("stray")
    png = cap / "depth" / "000004.png"
    png.write_bytes(png.read_bytes()[:-30])  # lost its end
    (cap / "confidence" / "000009.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    result = run(cap, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 2, "000004.png: not a decodable PNG", "000009.png")


def test_png_header_claiming_a_huge_image_is_skipped(capture, base, tmp_path):
    cap = capture("stray")
    png = cap / "depth" / "000006.png"
    data = png.read_bytes()
    header = struct.pack(">IIBBBBB", 60000, 60000, 16, 0, 0, 0, 0)  # 3.6 G pixels, with a valid CRC
    ihdr = struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    png.write_bytes(data[:8] + ihdr + data[33:])
    result = run(cap, tmp_path / "w", base)  # OpenCV raises for it rather than returning None
    assert_skipped(result, tmp_path / "w", 1, "000006.png: not a decodable PNG")


def test_depth_png_of_another_size_is_skipped(capture, base, tmp_path):
    cap = capture("stray")
    mm = cv2.imread(str(cap / "depth" / "000002.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(cap / "depth" / "000002.png"), mm[:100, :120])
    result = run(cap, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 1, "000002.png: depth is (120, 100) (w,h)")


def test_every_depth_png_broken_is_one_line_error(capture, base, tmp_path):
    cap = capture("stray")
    for png in (cap / "depth").glob("*.png"):
        png.write_bytes(b"not a png")
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, str(cap / "depth" / "000000.png"), "not a PNG")
    assert_nothing_half_written(tmp_path / "w", "capture")


# --------------------------------------------------------------------------- video
def test_truncated_video_is_one_line_error(capture, base, tmp_path):
    cap = capture("stray")
    video = cap / "rgb.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # the index (moov) is at the end
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, str(video), "cannot open the video")
    assert_nothing_half_written(tmp_path / "w", "capture")


def test_damaged_video_data_is_named_per_frame_then_one_line_error(capture, base, tmp_path):
    cap = capture("stray")
    video = cap / "rgb.mp4"
    data = bytearray(video.read_bytes())
    start = data.find(b"mdat") + 200
    data[start:start + 4000] = os.urandom(4000)  # the coded frames, not the index: the file still opens
    video.write_bytes(bytes(data))
    result = run(cap, tmp_path / "w", base)
    warnings = [ln for ln in result.stderr.splitlines() if "WARNING" in ln]
    assert warnings and all(f"{video}: no decodable video frame" in w for w in warnings), result.stderr
    assert_one_line_error(result, str(cap), "no usable frames")
    assert_nothing_half_written(tmp_path / "w", "capture")


def test_video_with_fewer_frames_than_poses_skips_the_rest(capture, base, tmp_path):
    cap = capture("stray")
    lines = (cap / "odometry.csv").read_text().splitlines()
    last = lines[-1].split(",")
    extra = [",".join([f"{float(last[0]) + 0.1 * k:.6f}", str(N_FRAMES + k - 1), *last[2:]]) for k in (1, 2)]
    (cap / "odometry.csv").write_text("\n".join(lines + extra) + "\n")
    for k in (1, 2):  # their depth maps exist: only the video lacks the frames
        shutil.copy(cap / "depth" / "000000.png", cap / "depth" / f"{N_FRAMES + k - 1:06d}.png")
    result = run(cap, tmp_path / "w", base)
    assert result.returncode == 0, result.stderr
    summary = json.loads((WorkDir(tmp_path / "w").capture / "manifest.json").read_text())["summary"]
    assert summary["listed"] == N_FRAMES + 2 and summary["kept"] == N_FRAMES and summary["skipped_bad"] == 2
    assert "2 bad frames skipped" in result.stdout


# --------------------------------------------------------------------------- zip (.r3d)
def test_truncated_r3d_is_one_line_error(capture, base, tmp_path):
    r3d = capture("r3d")
    r3d.write_bytes(r3d.read_bytes()[: r3d.stat().st_size // 2])  # the zip directory is at the end
    result = run(r3d, tmp_path / "w", base)
    assert_one_line_error(result, str(r3d), "export")
    assert_nothing_half_written(tmp_path / "w", "capture")


def test_corrupt_member_of_r3d_is_skipped(capture, base, tmp_path):
    r3d = capture("r3d")
    with zipfile.ZipFile(r3d) as zf:
        info = zf.getinfo("rgbd/6.depth")
    data = bytearray(r3d.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10: start + 20] = os.urandom(10)  # bytes of the member's data: its CRC no longer matches
    r3d.write_bytes(bytes(data))
    result = run(r3d, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 1, "rgbd/6.depth")


# --------------------------------------------------------------------------- poses
def _set_pose_columns(odometry: Path, row: int, values: list[str]) -> None:
    lines = odometry.read_text().splitlines()
    cells = lines[row + 1].split(",")  # + header
    cells[2:9] = values
    lines[row + 1] = ",".join(cells)
    odometry.write_text("\n".join(lines) + "\n")


def test_nan_inf_and_non_rigid_poses_are_skipped(capture, base, tmp_path):
    cap = capture("stray")
    _set_pose_columns(cap / "odometry.csv", 1, ["nan", "0", "0", "0", "0", "0", "1"])
    _set_pose_columns(cap / "odometry.csv", 5, ["0", "inf", "0", "0", "0", "0", "1"])
    result = run(cap, tmp_path / "w", base)
    assert_skipped(result, tmp_path / "w", 2, "odometry.csv, frame 1: pose is not a finite rigid transform",
                   "odometry.csv, frame 5: pose is not a finite rigid transform")
    scanner = capture("3dscannerapp")
    meta = json.loads((scanner / "frame_00002.json").read_text())
    meta["cameraPoseARFrame"] = [2.0 * v for v in meta["cameraPoseARFrame"]]  # scale 2: not a rotation
    (scanner / "frame_00002.json").write_text(json.dumps(meta))
    result = run(scanner, tmp_path / "w2", base)
    assert_skipped(result, tmp_path / "w2", 1, "frame_00002.jpg: pose is not a finite rigid transform")


def test_all_poses_nan_is_one_line_error(capture, base, tmp_path):
    cap = capture("stray")
    for row in range(N_FRAMES):
        _set_pose_columns(cap / "odometry.csv", row, ["nan"] * 7)
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, str(cap), "no usable frames", f"{N_FRAMES} bad frames skipped")
    assert_nothing_half_written(tmp_path / "w", "capture")


# --------------------------------------------------------------------------- depth values
def test_zero_depth_everywhere_is_one_line_error_at_fuse(capture, base, tmp_path):
    cap = capture("stray")
    for png in (cap / "depth").glob("*.png"):
        cv2.imwrite(str(png), np.zeros((192, 256), np.uint16))
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, "depth/lidar", "no depth within", "lower fuse.min_confidence")
    assert (WorkDir(tmp_path / "w").depth("lidar") / "manifest.json").exists()  # earlier stages are complete
    assert_nothing_half_written(tmp_path / "w", "fuse")


def test_a_frame_without_depth_adds_nothing(capture, base, tmp_path):
    cap = capture("stray")
    cv2.imwrite(str(cap / "depth" / "000003.png"), np.zeros((192, 256), np.uint16))  # e.g. the lens covered
    result = run(cap, tmp_path / "w", base)
    assert result.returncode == 0, result.stderr
    assert "fuse: 1 frames have no depth" in result.stderr and "(000003)" in result.stderr
    assert json.loads((WorkDir(tmp_path / "w").fuse / "manifest.json").read_text())["summary"]["frames_without_depth"] == 1


def test_negative_nan_and_huge_depth_are_no_measurement(capture, base, tmp_path):
    import OpenEXR

    cap = capture("r3d-exr")
    for i, value in ((2, -1.0), (4, np.nan), (6, 1e30)):
        exr = cap / "depth" / f"{i}.exr"
        with OpenEXR.File(str(exr), separate_channels=True) as f:
            depth = np.array(f.channels()["R"].pixels, np.float32)
        depth[:, : depth.shape[1] // 2] = value
        OpenEXR.File({"type": OpenEXR.scanlineimage}, {"R": depth}).write(str(exr))
    result = run(cap, tmp_path / "w", base)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for i in (2, 4, 6):
        mm = cv2.imread(str(WorkDir(tmp_path / "w").capture / "lidar" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.all(mm[:, : mm.shape[1] // 2] == 0) and np.all(mm[:, mm.shape[1] // 2:] > 0)


# --------------------------------------------------------------------------- sizes, empty captures, metadata
def test_bad_camera_matrix_is_one_line_error(capture, base, tmp_path):
    cap = capture("stray")
    (cap / "camera_matrix.csv").write_text("100,0\n0,100\n")
    assert_one_line_error(run(cap, tmp_path / "w", base), str(cap / "camera_matrix.csv"), "3x3")


@pytest.mark.parametrize("emptiness", ["empty folder", "header only", "no depth maps", "no poses in r3d"])
def test_empty_captures_are_one_line_errors(capture, base, tmp_path, emptiness):
    if emptiness == "empty folder":
        cap = tmp_path / "empty"
        cap.mkdir()
        expected = "not a capture format"
    elif emptiness == "header only":
        cap = capture("stray")
        (cap / "odometry.csv").write_text("timestamp, frame, x, y, z, qx, qy, qz, qw\n")
        expected = "no pose rows"
    elif emptiness == "no depth maps":
        cap = capture("stray")
        shutil.rmtree(cap / "depth")
        (cap / "depth").mkdir()
        expected = "no frame has both a pose and a depth map"
    else:
        cap = capture("r3d")
        _rewrite_r3d_metadata(cap, lambda meta: {**meta, "poses": []})
        expected = "no poses"
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, str(cap), expected)
    assert_nothing_half_written(tmp_path / "w", "capture")


def _rewrite_r3d_metadata(r3d: Path, edit) -> None:
    with zipfile.ZipFile(r3d) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["metadata"] = json.dumps(edit(json.loads(members["metadata"]))).encode()
    with zipfile.ZipFile(r3d, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("layout, key", [("r3d", "K"), ("r3d", "dw"), ("r3d-exr", "poses"),
                                         ("3dscannerapp", "intrinsics"), ("stray", "qw")])
def test_missing_metadata_keys(capture, base, tmp_path, layout, key):
    cap = capture(layout)
    if layout == "r3d":
        _rewrite_r3d_metadata(cap, lambda meta: {k: v for k, v in meta.items() if k != key})
    elif layout == "r3d-exr":
        meta = json.loads((cap / "metadata.json").read_text())
        del meta[key]
        (cap / "metadata.json").write_text(json.dumps(meta))
    elif layout == "3dscannerapp":  # per-frame metadata: every frame loses it -> nothing usable
        for path in cap.glob("frame_*.json"):
            meta = json.loads(path.read_text())
            del meta[key]
            path.write_text(json.dumps(meta))
    else:
        lines = (cap / "odometry.csv").read_text().splitlines()
        header = [c.strip() for c in lines[0].split(",")]
        keep = [i for i, c in enumerate(header) if c != key]
        (cap / "odometry.csv").write_text("\n".join(",".join(ln.split(",")[i] for i in keep) for ln in lines) + "\n")
    result = run(cap, tmp_path / "w", base)
    assert_one_line_error(result, str(cap), key)
    assert_nothing_half_written(tmp_path / "w", "capture")


def test_one_frame_missing_its_metadata_key_is_skipped(capture, base, tmp_path):
    cap = capture("3dscannerapp")
    meta = json.loads((cap / "frame_00008.json").read_text())
    del meta["cameraPoseARFrame"]
    (cap / "frame_00008.json").write_text(json.dumps(meta))
    result = run(cap, tmp_path / "w", base)
    assert result.returncode == 0, result.stderr
    assert "frame_00008.json: missing or malformed" in result.stderr
    assert "1 bad frames skipped" in result.stdout


# --------------------------------------------------------------------------- GT mesh
@pytest.mark.parametrize("content", [b"", b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n",
                                     os.urandom(2000)])
def test_unreadable_gt_mesh_is_one_line_error(capture, base, tmp_path, content):
    cap = capture("stray")
    gt = tmp_path / "gt.ply"
    gt.write_bytes(content)
    result = run(cap, tmp_path / "w", base, "--gt-mesh", gt)
    assert_one_line_error(result, str(gt), "pass a")
    assert WorkDir(tmp_path / "w").mesh("ply").exists()  # the work before eval is complete and kept
    assert_nothing_half_written(tmp_path / "w", "eval")
    assert not WorkDir(tmp_path / "w").eval_json.exists()


def test_missing_gt_mesh_fails_before_any_work(capture, base, tmp_path):
    cap = capture("stray")
    result = run(cap, tmp_path / "w", base, "--gt-mesh", tmp_path / "nope.ply")
    assert_one_line_error(result, str(tmp_path / "nope.ply"), "not found")
    assert not WorkDir(tmp_path / "w").capture.exists()
