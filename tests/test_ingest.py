"""Frame selection and writing in the ingest stage, on a fake in-memory capture."""
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import ingest
from pipeline.capture import FRAMES_SCHEMA, CaptureSource, CaptureTable, SourceFrame
from pipeline.config import IngestConfig
from pipeline.errors import PromptmeshError
from pipeline.workdir import WorkDir

W, H, w, h = 64, 48, 16, 12
K = np.array([[50.0, 0, 31.0], [0, 52.0, 23.5], [0, 0, 1]])


def _textured(seed: int, blur: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), blur) if blur else img


def _frame(i: int, blur: int = 0, bad_depth: bool = False, pose=None) -> SourceFrame:
    T = np.eye(4) if pose is None else pose
    T = T.copy()
    T[:3, 3] = [0.1 * i, 0, 0] if pose is None else T[:3, 3]
    depth = np.full((h, w), 1.0 + 0.001 * i, np.float32)
    depth[0, 0] = 0.0

    def load_depth():
        if bad_depth:
            raise PromptmeshError(f"depth/{i:06d}.png: truncated PNG")
        return depth

    return SourceFrame(frame_index=i, timestamp_s=i / 30, camera_to_world=T, K_rgb=K, rgb_size=(W, H),
                       load_rgb=lambda: _textured(i, blur), load_depth_m=load_depth,
                       load_confidence=lambda: np.full((h, w), 2, np.uint8), source_name=f"frame {i}")


def _source(frames) -> CaptureSource:
    return CaptureSource(format="fake", path=Path("fake"), n_frames=len(frames), rgb_size=(W, H),
                         lidar_size=(w, h), frames=lambda: iter(frames))


def _run(monkeypatch, tmp_path, frames, cfg) -> CaptureTable:
    monkeypatch.setattr(ingest, "open_capture", lambda p: _source(frames))
    (tmp_path / "cap").mkdir(exist_ok=True)
    ingest.run(cfg, tmp_path / "cap", tmp_path / "wd", force=True)
    return CaptureTable.load(tmp_path / "wd")


def test_sharpest_of_each_window(monkeypatch, tmp_path):
    blur = [3, 0, 3, 3, 3, 0, 0, 3, 3]  # sharp frames: 1, 5, 6
    frames = [_frame(i, b) for i, b in enumerate(blur)]
    t = _run(monkeypatch, tmp_path, frames, IngestConfig(stride=3, blur_ratio=0.0))
    assert t.frame_index.tolist() == [1, 5, 6]
    t = _run(monkeypatch, tmp_path, frames, IngestConfig(stride=3, blur_select=False))
    assert t.frame_index.tolist() == [0, 3, 6]


def test_blurry_frames_dropped_and_max_frames(monkeypatch, tmp_path):
    blur = [0] * 6 + [6] + [0] * 5  # frame 6 far blurrier than its neighbours
    frames = [_frame(i, b) for i, b in enumerate(blur)]
    t = _run(monkeypatch, tmp_path, frames, IngestConfig())
    assert 6 not in t.frame_index.tolist() and len(t) == 11
    t = _run(monkeypatch, tmp_path, frames, IngestConfig(max_frames=4))
    assert t.frame_index.tolist() == [0, 1, 2, 3]


def test_bad_frames_skipped_named_and_counted(monkeypatch, tmp_path, caplog):
    nan_pose = np.eye(4)
    nan_pose[0, 1] = np.nan
    frames = [_frame(0), _frame(1, bad_depth=True), _frame(2, pose=nan_pose), _frame(3)]
    t = _run(monkeypatch, tmp_path, frames, IngestConfig(blur_select=False))
    assert t.frame_index.tolist() == [0, 3]
    assert "depth/000001.png: truncated PNG" in caplog.text and "frame 2: pose" in caplog.text
    from pipeline.artifacts import Manifest
    m = Manifest.read(WorkDir(tmp_path / "wd").capture)
    assert m.summary["skipped_bad"] == 2 and m.summary["kept"] == 2


def test_written_table_and_files(monkeypatch, tmp_path):
    frames = [_frame(i) for i in range(3)]
    t = _run(monkeypatch, tmp_path, frames, IngestConfig(blur_select=False))
    schema = pq.read_schema(WorkDir(tmp_path / "wd").frames_parquet)
    assert schema.remove_metadata().equals(FRAMES_SCHEMA)
    np.testing.assert_allclose(t.K_rgb[1], K)
    np.testing.assert_allclose(t.camera_to_world[2][:3, 3], [0.2, 0, 0])
    assert t.rgb_path[2] == "rgb/000002.jpg" and t.lidar_path[2] == "lidar/000002.png"
    lidar = cv2.imread(str(t.root / t.lidar_path[2]), cv2.IMREAD_UNCHANGED)
    assert lidar.dtype == np.uint16 and lidar[0, 0] == 0 and lidar[5, 5] == 1002
    conf = cv2.imread(str(t.root / t.confidence_path[0]), cv2.IMREAD_UNCHANGED)
    assert conf.shape == (h, w) and (conf == 2).all()


def test_all_frames_bad_is_an_error(monkeypatch, tmp_path):
    frames = [_frame(i, bad_depth=True) for i in range(3)]
    with pytest.raises(PromptmeshError, match="no usable frames"):
        _run(monkeypatch, tmp_path, frames, IngestConfig())
    assert not WorkDir(tmp_path / "wd").frames_parquet.exists()


def test_interrupted_ingest_resumes_without_rewriting_finished_frames(monkeypatch, tmp_path):
    cfg = IngestConfig(stride=1, blur_select=False)
    frames = [_frame(i) for i in range(12)]
    (tmp_path / "ref").mkdir()
    reference = _run(monkeypatch, tmp_path / "ref", frames, cfg)

    def interrupted_at_7(i: int) -> SourceFrame:
        f = _frame(i)
        if i == 7:
            def stop():
                raise KeyboardInterrupt  # Ctrl-C while frame 7 is decoded
            f = SourceFrame(**{**f.__dict__, "load_rgb": stop})
        return f

    monkeypatch.setattr(ingest, "open_capture", lambda p: _source([interrupted_at_7(i) for i in range(12)]))
    (tmp_path / "cap").mkdir()
    with pytest.raises(KeyboardInterrupt):
        ingest.run(cfg, tmp_path / "cap", tmp_path / "wd")
    out = WorkDir(tmp_path / "wd").capture
    done = sorted(p.name for p in (out / "rgb").glob("*.jpg"))
    assert done == [f"{i:06d}.jpg" for i in range(7)]  # every frame handed to the writers was finished
    assert ingest.Manifest.read(out) is None and not (out / "frames.parquet").exists()
    (out / "rgb" / "000003.jpg").unlink()  # as if killed between frame 3's PNGs and its JPEG
    kept_mtime = {n: (out / "rgb" / n).stat().st_mtime_ns for n in done if n != "000003.jpg"}

    written = []
    write_files = ingest._write_frame_files
    monkeypatch.setattr(ingest, "_write_frame_files",
                        lambda cand, *a: written.append(cand.frame.frame_index) or write_files(cand, *a))
    monkeypatch.setattr(ingest, "open_capture", lambda p: _source(frames))
    ingest.run(cfg, tmp_path / "cap", tmp_path / "wd")
    table = CaptureTable.load(tmp_path / "wd")
    assert sorted(written) == [3, *range(7, 12)]
    assert {n: (out / "rgb" / n).stat().st_mtime_ns for n in kept_mtime} == kept_mtime
    assert ingest.Manifest.read(out).summary["reused"] == 6
    assert table.frame_index.tolist() == reference.frame_index.tolist() == list(range(12))
    assert table.confidence_path == reference.confidence_path
    ref_out = tmp_path / "ref" / "wd" / "capture"
    for rel in [*table.rgb_path, *table.lidar_path, *table.confidence_path]:
        assert (out / rel).read_bytes() == (ref_out / rel).read_bytes(), rel
