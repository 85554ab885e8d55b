"""Stage 1, ingest: any supported capture -> the normalised capture in WORKDIR/capture/ (docs/workdir.md).

Frames stream from the reader one at a time (memory does not grow with capture length); RGB JPEGs are
copied byte for byte when the source has them, video frames are encoded once. Encoding and writing
run on a small bounded thread pool so that decoding the next frame overlaps them.

Resuming: each frame's PNGs are written before its RGB JPEG (all atomically), so a frame whose JPEG exists
is complete. After an interruption, a rerun with the same fingerprint (`artifacts.start_or_resume`) decodes
and selects the frames again (selection needs them) but does not write again the frames already there.

Frame selection: one frame per window of `stride` frames; with `blur_select` the sharpest (variance of
the Laplacian) instead of the first, and a kept frame far blurrier than the running median is dropped.
A frame whose data is unreadable or whose pose is not a finite rigid transform is skipped with a
warning naming its file, and counted in the summary.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from .artifacts import (Manifest, atomic_write_bytes, fingerprint, invalidate, is_current, remove_tree,
                        source_fingerprint, start_or_resume, write_png_atomic)
from .capture import CaptureSource, FrameRow, SourceFrame, write_frames_table
from .config import IngestConfig
from .errors import PromptmeshError
from .geometry import is_valid_pose
from .images import depth_m_to_mm
from .readers import CaptureReader, open_capture
from .readers.common import decode_jpeg, read_bytes
from .streams import prefetch
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

STAGE = "ingest"


def sharpness(rgb_or_gray: np.ndarray, long_side_px: int = 480) -> float:
    """Variance of the Laplacian of the (downscaled) grey image: higher = sharper."""
    g = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2GRAY)
    s = long_side_px / max(g.shape)
    if s < 1:
        g = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


@dataclass
class _Candidate:
    frame: SourceFrame
    sharpness: float
    rgb: Optional[np.ndarray]
    """Decoded RGB kept only when the frame has no JPEG to copy."""
    jpeg: Optional[bytes] = None
    """The source JPEG's bytes (checked: complete, decodable, the capture's RGB size), to copy unchanged."""


@dataclass
class IngestSummary:
    listed: int = 0
    kept: int = 0
    skipped_bad: list[str] = field(default_factory=list)
    dropped_blurry: int = 0
    not_selected: int = 0
    reused: int = 0
    """Frames an interrupted run with the same fingerprint had already written (not written again)."""

    def counts(self) -> dict:
        """The counts as the stage's manifest summary holds them."""
        return {"listed": self.listed, "kept": self.kept, "skipped_bad": len(self.skipped_bad),
                "dropped_blurry": self.dropped_blurry, "not_selected": self.not_selected}


def summary_line(counts: dict, capture_folder: Optional[Path] = None) -> str:
    """What ingest kept, from `IngestSummary.counts()` or the ingest manifest's summary; with
    `capture_folder`, where the skipped frames are named."""
    bad = counts.get("skipped_bad", 0)
    return (f"{counts.get('kept', '?')} of {counts.get('listed', '?')} frames used ({bad} bad frames skipped, "
            f"{counts.get('dropped_blurry', 0)} dropped as blurry, {counts.get('not_selected', 0)} not selected by "
            "stride/limit)" + (f"; the bad ones are named in the warnings and {capture_folder / 'manifest.json'}"
                               if bad and capture_folder is not None else ""))


def _select(frames: Iterator[SourceFrame], cfg: IngestConfig, summary: IngestSummary,
            warn) -> Iterator[_Candidate]:
    """Stride windows, sharpest-of-window, blur rejection, max_frames; skips unreadable frames."""
    history: deque[float] = deque(maxlen=cfg.blur_history)
    window: list[_Candidate] = []
    emitted = 0

    def best_of(window: list[_Candidate]) -> Optional[_Candidate]:
        if not window:
            return None
        best = max(window, key=lambda c: c.sharpness) if cfg.blur_select else window[0]
        summary.not_selected += len(window) - 1
        median = float(np.median(history)) if len(history) >= 3 else 0.0
        if cfg.blur_select and best.sharpness < cfg.blur_ratio * median:
            summary.dropped_blurry += 1
            return None
        return best

    position = 0
    for frame in frames:
        position += 1
        if cfg.max_frames and emitted >= cfg.max_frames:
            summary.not_selected += 1
            continue
        if not is_valid_pose(frame.camera_to_world):
            warn(f"{frame.pose_source or frame.source_name or frame.frame_index}: pose is not a finite rigid "
                 "transform; frame skipped")
            continue
        try:
            rgb, jpeg = None, None
            if frame.rgb_jpeg_path is not None:
                jpeg = read_bytes(frame.rgb_jpeg_path, "RGB JPEG")
                gray = _checked_quarter_gray(jpeg, str(frame.rgb_jpeg_path), frame.rgb_size)
            else:
                rgb = gray = frame.load_rgb()
            s = sharpness(gray) if cfg.blur_select else 0.0
        except PromptmeshError as e:
            warn(f"{e}; frame skipped")
            continue
        history.append(s)
        window.append(_Candidate(frame, s, rgb, jpeg))
        if len(window) == cfg.stride:
            best = best_of(window)
            window = []
            if best is not None:
                emitted += 1
                yield best
    if window and not (cfg.max_frames and emitted >= cfg.max_frames):
        best = best_of(window)
        if best is not None:
            yield best


def _checked_quarter_gray(jpeg: bytes, name: str, size_wh: tuple[int, int]) -> np.ndarray:
    """A JPEG decoded at 1/4 scale in grey (for sharpness), after checking that it is complete, decodable and
    `size_wh` (W, H) in size; PromptmeshError naming `name` otherwise."""
    gray = decode_jpeg(jpeg, name, cv2.IMREAD_REDUCED_GRAYSCALE_4)
    W, H = size_wh
    if gray.shape != (-(-H // 4), -(-W // 4)):  # libjpeg's reduced size is ceil(size / 4)
        raise PromptmeshError(f"{name}: the image is about {gray.shape[1] * 4}x{gray.shape[0] * 4}, the capture's RGB "
                              f"size is {W}x{H}; re-export the capture or delete this frame")
    return gray


def _write_frame(cand: _Candidate, out: Path, source: CaptureSource, jpeg_quality: int,
                 gt_depth, reuse: bool) -> tuple[FrameRow, bool]:
    """Write one frame's files atomically, the RGB JPEG last (so an existing JPEG means the frame is complete);
    with `reuse`, a frame whose JPEG exists (an interrupted run with the same fingerprint) is not written again.
    Returns (its row, whether it was reused); PromptmeshError if its data is bad."""
    f = cand.frame
    stem = f"{f.frame_index:06d}"
    rgb_rel, lidar_rel, conf_rel = f"rgb/{stem}.jpg", f"lidar/{stem}.png", f"confidence/{stem}.png"
    reused = reuse and (out / rgb_rel).exists()
    if reused:
        has_confidence = (out / conf_rel).exists()
    else:
        has_confidence = _write_frame_files(cand, out, source, jpeg_quality, gt_depth, rgb_rel, lidar_rel, conf_rel)
    W, H = source.rgb_size
    K = f.K_rgb
    return FrameRow(
        frame_index=int(f.frame_index), timestamp_s=float(f.timestamp_s), rgb_path=rgb_rel, lidar_path=lidar_rel,
        confidence_path=conf_rel if has_confidence else None, width=int(W), height=int(H),
        lidar_width=int(source.lidar_size[0]), lidar_height=int(source.lidar_size[1]), fx=float(K[0, 0]),
        fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
        camera_to_world=[float(v) for v in np.asarray(f.camera_to_world).reshape(-1)],
    ), reused


def _write_frame_files(cand: _Candidate, out: Path, source: CaptureSource, jpeg_quality: int, gt_depth,
                       rgb_rel: str, lidar_rel: str, conf_rel: str) -> bool:
    """LiDAR, confidence and GT depth PNGs, then the RGB JPEG; returns whether a confidence map was written."""
    f = cand.frame
    W, H = source.rgb_size
    depth_m = f.load_depth_m()
    if depth_m.ndim != 2 or depth_m.shape[::-1] != tuple(source.lidar_size):
        raise PromptmeshError(f"{f.source_name}: depth is {depth_m.shape[::-1]} (w,h), the capture's LiDAR size "
                              f"is {tuple(source.lidar_size)}")
    conf = f.load_confidence() if f.load_confidence is not None else None
    if conf is not None and conf.shape != depth_m.shape:
        raise PromptmeshError(f"{f.source_name}: confidence map {conf.shape} differs from depth {depth_m.shape}")
    if cand.jpeg is not None:
        jpeg = cand.jpeg  # checked in _select: copied unchanged
    else:
        rgb = cand.rgb if cand.rgb is not None else f.load_rgb()
        if rgb.shape[:2] != (H, W):
            raise PromptmeshError(f"{f.source_name}: RGB is {rgb.shape[1]}x{rgb.shape[0]}, expected {W}x{H}")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for frame {f.frame_index}")
        jpeg = buf.tobytes()
    write_png_atomic(out / lidar_rel, depth_m_to_mm(depth_m))
    if conf is not None:
        write_png_atomic(out / conf_rel, np.clip(conf, 0, 2).astype(np.uint8))
    if gt_depth is not None:
        gt = gt_depth(f.frame_index)
        if gt is not None:
            write_png_atomic(out / f"gt_depth/{Path(rgb_rel).stem}.png", depth_m_to_mm(gt))
    atomic_write_bytes(out / rgb_rel, jpeg)  # last: the frame's files are complete once its JPEG exists
    return conf is not None


def run(cfg: IngestConfig, capture_path: Path, workdir: WorkDirLike, force: bool = False,
        reader: Optional[CaptureReader] = None) -> Path:
    """Ingest `capture_path` into WORKDIR/capture/; returns the path of frames.parquet.

    `reader`: a configured reader (e.g. ScanNetPPReader("merged")) instead of format detection; its
    settings are part of the stage's fingerprint."""
    capture_path = Path(capture_path)
    if not capture_path.exists():
        raise PromptmeshError(f"{capture_path}: no such file or folder; pass the capture folder or .r3d file")
    wd = WorkDir(workdir)
    out = wd.capture
    stamp = fingerprint(STAGE, {"cfg": cfg, "source": str(capture_path.resolve()),
                                "files": source_fingerprint(capture_path),
                                **({"reader": [reader.name, reader]} if reader is not None else {})})
    done = is_current(out, stamp)
    if done and not force:
        log.info("ingest: up to date (%s, %d frames)", out, done.summary.get("kept", 0))
        return wd.frames_parquet

    source = reader.open(capture_path) if reader is not None else open_capture(capture_path)
    log.info("ingest: %s capture %s, %d frames listed, RGB %dx%d, LiDAR %dx%d (stride %d, max %s, blur select %s)",
             source.format, capture_path, source.n_frames, *source.rgb_size, *source.lidar_size, cfg.stride,
             cfg.max_frames or "all", cfg.blur_select)
    t0 = time.perf_counter()
    # stale artifacts of other settings must not survive; those of an interrupted run with these are kept
    resumed = start_or_resume(out, stamp, {"format": source.format, "cfg": cfg}, force)
    invalidate(out)
    summary = IngestSummary(listed=source.n_frames)

    def warn(msg: str) -> None:
        summary.skipped_bad.append(msg)
        log.warning("ingest: %s", msg)

    def write(cand: _Candidate) -> tuple[FrameRow, bool] | PromptmeshError:
        try:
            return _write_frame(cand, out, source, cfg.jpeg_quality, source.gt_depth, reuse=resumed)
        except PromptmeshError as e:  # a bad frame: skipped and counted, not fatal
            return e

    for msg in source.skipped:
        warn(msg)
    rows: list[FrameRow] = []
    bar = tqdm(total=source.n_frames, desc="ingest", unit="frame", disable=None, leave=False)
    try:
        selected = _select(_count_progress(source.frames(), bar), cfg, summary, warn)
        # decoding (in _select) on this thread; encoding and writing on two threads, a few frames in flight
        with closing(prefetch(write, selected, max_waiting=4, name="ingest-write")) as written:
            for result in written:
                if isinstance(result, PromptmeshError):
                    warn(f"{result}; frame skipped")
                else:
                    rows.append(result[0])
                    summary.reused += result[1]
        summary.kept = len(rows)
        if not rows:
            raise PromptmeshError(f"{capture_path}: no usable frames ({summary_line(summary.counts())}); check the capture")
    except PromptmeshError:
        remove_tree(out)  # nothing half-written stays behind
        raise
    finally:
        bar.close()
    rows.sort(key=lambda r: r.frame_index)
    table = write_frames_table(wd.frames_parquet, rows)
    seconds = time.perf_counter() - t0
    Manifest(STAGE, stamp, outputs=[wd.frames_parquet.name], settings={"format": source.format, "cfg": cfg.__dict__},
             summary={"format": source.format, **summary.counts(), "reused": summary.reused,
                      "seconds": round(seconds, 3), "warnings": summary.skipped_bad[:50]}).write(out)
    log.info("ingest: %s in %.1f s%s -> %s", summary_line(summary.counts()), seconds,
             f" ({summary.reused} frames kept from an interrupted run)" if summary.reused else "", out)
    return table


def _count_progress(frames: Iterator[SourceFrame], bar: tqdm) -> Iterator[SourceFrame]:
    for f in frames:
        bar.update(1)
        yield f

