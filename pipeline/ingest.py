"""Stage 1, ingest: any supported capture -> the normalised capture in WORKDIR/capture/ (docs/workdir.md).

Frames stream from the reader one at a time (memory does not grow with capture length); RGB JPEGs are
copied byte for byte when the source has them, video frames are encoded once. Encoding and writing
run on a small bounded thread pool so that decoding the next frame overlaps them.

Resuming: each frame's PNGs are written before its RGB JPEG (all atomically), so a frame whose JPEG exists
is complete. After an interruption, a rerun with the same fingerprint (`artifacts.start_or_resume`) decodes
and selects the frames again (selection needs them) but does not write again the frames already there.

Frame selection (`_select`): one frame per window of `stride` frames (with `blur_select` the sharpest, by
the variance of the Laplacian); then, unless `all_frames`, keyframe selection (pipeline/keyframes.py: a frame
is kept when it sees enough that the recent keyframes don't, judged from its pose and LiDAR map; the
sharpest of its neighbourhood wins); a selected frame far blurrier than the running median is dropped.
Only selected frames are read as images: sharpness comes from a 1/4-scale grey JPEG decode (or the
decoded video frame, measured at 480 px), and a frame that is not kept is never encoded or written, so
the depth and fuse stages never see it. A frame whose data is unreadable or whose pose is not a finite
rigid transform is skipped with a warning naming its file, and counted in the summary.
"""
from __future__ import annotations

import logging
import math
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
from . import keyframes
from .config import IngestConfig
from .errors import PromptmeshError
from .geometry import is_valid_pose, scale_intrinsics
from .images import depth_m_to_mm
from .readers import CaptureReader, open_capture
from .readers.common import decode_jpeg, read_bytes
from .streams import prefetch
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

STAGE = "ingest"


def sharpness(bgr_or_gray: np.ndarray, long_side_px: int = 480) -> float:
    """Variance of the Laplacian of the (downscaled) grey image: higher = sharper. Colour in OpenCV's BGR order."""
    g = bgr_or_gray if bgr_or_gray.ndim == 2 else cv2.cvtColor(bgr_or_gray, cv2.COLOR_BGR2GRAY)
    s = long_side_px / max(g.shape)
    if s < 1:
        g = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


@dataclass
class _Candidate:
    frame: SourceFrame
    bgr: Optional[np.ndarray] = None
    """The decoded image in OpenCV's BGR order (sources without a JPEG to copy), decoded on the reading thread."""
    jpeg: Optional[bytes] = None
    """The source JPEG's bytes (checked: complete, decodable, the capture's RGB size), to copy unchanged."""
    depth_m: Optional[np.ndarray] = None
    """LiDAR depth, metres, when keyframe selection has loaded it (written as is)."""
    sharpness: Optional[float] = None
    """Variance of the Laplacian at about 480 px, once measured."""
    error: Optional[str] = None
    """Why the frame's data is unusable, once found out."""


@dataclass
class IngestSummary:
    listed: int = 0
    kept: int = 0
    skipped_bad: list[str] = field(default_factory=list)
    dropped_blurry: int = 0
    redundant: int = 0
    """Keyframe selection: frames that see nothing the recent keyframes don't."""
    blurrier_neighbour: int = 0
    """Keyframe selection: frames of a neighbourhood whose sharpest frame was kept instead."""
    kept_because: dict[str, int] = field(default_factory=dict)
    """Keyframe selection: kept frames by reason (first, moved, turned, new surface)."""
    reused: int = 0
    """Frames an interrupted run with the same fingerprint had already written (not written again)."""

    @property
    def not_selected(self) -> int:
        """Frames left out by stride windows or max_frames: those in no other count."""
        return max(0, self.listed - self.kept - len(self.skipped_bad) - self.dropped_blurry - self.redundant
                   - self.blurrier_neighbour)

    def counts(self) -> dict:
        """The counts as the stage's manifest summary holds them."""
        return {"listed": self.listed, "kept": self.kept, "skipped_bad": len(self.skipped_bad),
                "dropped_blurry": self.dropped_blurry, "redundant": self.redundant,
                "blurrier_neighbour": self.blurrier_neighbour, "not_selected": self.not_selected,
                "kept_because": dict(self.kept_because)}


def summary_line(counts: dict, capture_folder: Optional[Path] = None) -> str:
    """What ingest kept and why the others were not, from `IngestSummary.counts()` or the ingest manifest's
    summary; with `capture_folder`, where the skipped frames are named."""
    bad = counts.get("skipped_bad", 0)
    because = counts.get("kept_because") or {}
    keyframes_part = (f", {counts.get('redundant', 0)} seeing nothing the keyframes don't, "
                      f"{counts.get('blurrier_neighbour', 0)} blurrier than a kept neighbour" if because else "")
    return (f"{counts.get('kept', '?')} of {counts.get('listed', '?')} frames used ({bad} bad frames skipped, "
            f"{counts.get('dropped_blurry', 0)} dropped as blurry{keyframes_part}, {counts.get('not_selected', 0)} "
            "not selected by stride/limit" + ("; keyframes: " + ", ".join(f"{n} {why}" for why, n in because.items())
                                             if because else "") + ")"
            + (f"; the bad ones are named in the warnings and {capture_folder / 'manifest.json'}"
               if bad and capture_folder is not None else ""))


def keyframe_settings(cfg: IngestConfig) -> keyframes.KeyframeSettings:
    """The keyframe thresholds of an ingest config."""
    return keyframes.KeyframeSettings(
        translation_ratio=cfg.keyframe_translation_depth_ratio, close_range_m=cfg.keyframe_close_range_m,
        rotation_deg=cfg.keyframe_rotation_deg,
        min_overlap=cfg.keyframe_min_overlap_ratio, recent=cfg.keyframe_recent_count,
        neighbourhood_frames=cfg.keyframe_neighbourhood_frames)


def _load_image(cand: _Candidate) -> None:
    """Read the frame's RGB as the writer needs it (JPEG bytes, checked; or the decoded video frame), on the
    reading thread (video decoding is sequential); PromptmeshError if unusable."""
    f = cand.frame
    if f.rgb_jpeg_path is not None:
        if cand.jpeg is None:
            cand.jpeg = read_bytes(f.rgb_jpeg_path, "RGB JPEG")
            gray = _checked_quarter_gray(cand.jpeg, str(f.rgb_jpeg_path), f.rgb_size)
            if cand.sharpness is None:
                cand.sharpness = sharpness(gray)
    elif cand.bgr is None:
        cand.bgr = _load_bgr(f)


def _load_bgr(f: SourceFrame) -> np.ndarray:
    return f.load_bgr() if f.load_bgr is not None else cv2.cvtColor(f.load_rgb(), cv2.COLOR_RGB2BGR)


def _measure_sharpness(cand: _Candidate) -> float:
    """The candidate's sharpness (reading its image first); -inf, with `error` set, when its data is bad."""
    if cand.sharpness is None and cand.error is None:
        try:
            _load_image(cand)
            if cand.sharpness is None:
                cand.sharpness = sharpness(cand.bgr)
        except PromptmeshError as e:
            cand.error = str(e)
    return -math.inf if cand.error is not None else cand.sharpness


def _readable(frames: Iterator[SourceFrame], cfg: IngestConfig, warn) -> Iterator[_Candidate]:
    """Frames with a valid pose; for keyframe selection their LiDAR depth is loaded (a frame whose depth is
    unreadable is skipped with a warning)."""
    for frame in frames:
        if not is_valid_pose(frame.camera_to_world):
            warn(f"{frame.pose_source or frame.source_name or frame.frame_index}: pose is not a finite rigid "
                 "transform; frame skipped")
            continue
        cand = _Candidate(frame)
        if not cfg.all_frames:
            try:
                cand.depth_m = frame.load_depth_m()
            except PromptmeshError as e:
                warn(f"{e}; frame skipped")
                continue
        yield cand


def _stride_winners(candidates: Iterator[_Candidate], cfg: IngestConfig, warn) -> Iterator[_Candidate]:
    """The sharpest (with blur_select, else the first) readable frame of each window of `stride` frames."""
    window: list[_Candidate] = []

    def best_of(window: list[_Candidate]) -> Optional[_Candidate]:
        if cfg.blur_select and cfg.stride > 1:
            for c in window:
                _measure_sharpness(c)
        for c in [c for c in window if c.error is not None]:
            warn(f"{c.error}; frame skipped")
            window.remove(c)
        if not window:
            return None
        return max(window, key=lambda c: c.sharpness) if cfg.blur_select and cfg.stride > 1 else window[0]

    for cand in candidates:
        window.append(cand)
        if len(window) == cfg.stride:
            best = best_of(window)
            window = []
            if best is not None:
                yield best
    if window:
        best = best_of(window)
        if best is not None:
            yield best


def _select(frames: Iterator[SourceFrame], cfg: IngestConfig, summary: IngestSummary,
            warn) -> Iterator[_Candidate]:
    """Readable frames -> stride windows -> keyframe selection (unless all_frames) -> blur rejection ->
    max_frames; every kept candidate has its image read (`_load_image`). Counts the others in `summary`."""
    history: deque[float] = deque(maxlen=cfg.blur_history)

    def blurry(cand: _Candidate) -> Optional[str]:
        """Rejection of a selected frame: unreadable, or far blurrier than the running median."""
        if cfg.blur_select:
            _measure_sharpness(cand)
        else:
            try:
                _load_image(cand)
            except PromptmeshError as e:
                cand.error = str(e)
        if cand.error is not None:
            return "bad"
        if not cfg.blur_select:
            return None
        median = float(np.median(history)) if len(history) >= 3 else 0.0
        history.append(cand.sharpness)
        return "blurry" if cand.sharpness < cfg.blur_ratio * median else None

    winners = _stride_winners(_readable(frames, cfg, warn), cfg, warn)
    if cfg.all_frames:
        decisions = (keyframes.Decision(c, (why := blurry(c)) is None, why or "all frames") for c in winners)
    else:
        settings = keyframe_settings(cfg)

        def view_of(cand: _Candidate) -> keyframes.View:
            f = cand.frame
            lidar_wh = cand.depth_m.shape[::-1]
            return keyframes.View.from_depth(f.camera_to_world, cand.depth_m,
                                             scale_intrinsics(f.K_rgb, f.rgb_size, lidar_wh))

        decisions = keyframes.select(winners, view_of, settings,
                                     sharpness_of=_measure_sharpness if cfg.blur_select else None, accept=blurry)
    emitted = 0
    for d in decisions:
        cand = d.item
        if cand.error is not None:  # found unreadable while measured
            warn(f"{cand.error}; frame skipped")
        elif d.kept:
            emitted += 1
            if not cfg.all_frames:
                summary.kept_because[d.reason] = summary.kept_because.get(d.reason, 0) + 1
            yield cand
            if cfg.max_frames and emitted >= cfg.max_frames:
                break
        elif d.reason == "blurry":
            summary.dropped_blurry += 1
        elif d.reason == keyframes.REDUNDANT:
            summary.redundant += 1
        elif d.reason == keyframes.BLURRIER_NEIGHBOUR:
            summary.blurrier_neighbour += 1


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
    depth_m = cand.depth_m if cand.depth_m is not None else f.load_depth_m()
    if depth_m.ndim != 2 or depth_m.shape[::-1] != tuple(source.lidar_size):
        raise PromptmeshError(f"{f.source_name}: depth is {depth_m.shape[::-1]} (w,h), the capture's LiDAR size "
                              f"is {tuple(source.lidar_size)}")
    conf = f.load_confidence() if f.load_confidence is not None else None
    if conf is not None and conf.shape != depth_m.shape:
        raise PromptmeshError(f"{f.source_name}: confidence map {conf.shape} differs from depth {depth_m.shape}")
    if cand.jpeg is not None:
        jpeg = cand.jpeg  # checked in _select: copied unchanged
    else:
        bgr = cand.bgr if cand.bgr is not None else _load_bgr(f)
        if bgr.shape[:2] != (H, W):
            raise PromptmeshError(f"{f.source_name}: RGB is {bgr.shape[1]}x{bgr.shape[0]}, expected {W}x{H}")
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
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

