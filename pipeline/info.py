"""`promptmesh info CAPTURE`: what a capture holds, read in one streaming pass over its frames.

Poses and timestamps of every listed frame are collected (small); depth is decoded only for an evenly spaced
sample of at most `DEPTH_SAMPLE` frames; RGB is never decoded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import PromptmeshError
from .geometry import is_valid_pose, trajectory_length_m
from .readers import open_capture

log = logging.getLogger(__name__)

DEPTH_SAMPLE = 20
"""Frames whose depth is decoded for the depth range."""


def describe(capture_path: Path) -> str:
    """A few lines: format, frames listed/skipped, RGB and LiDAR sizes, duration, fps, trajectory length, depth
    range (min / median / max of valid LiDAR depth over a sample of frames)."""
    source = open_capture(Path(capture_path))
    step = max(1, -(-source.n_frames // DEPTH_SAMPLE))  # ceil: at most DEPTH_SAMPLE sampled frames
    timestamps, poses, depth_samples = [], [], []
    n_yielded = n_bad_pose = n_bad_depth = 0
    for position, frame in enumerate(source.frames()):
        n_yielded += 1
        timestamps.append(frame.timestamp_s)
        if is_valid_pose(frame.camera_to_world):
            poses.append(np.asarray(frame.camera_to_world, np.float64))
        else:
            n_bad_pose += 1
        if position % step == 0 and len(depth_samples) < DEPTH_SAMPLE:
            try:
                d = frame.load_depth_m()
            except PromptmeshError as e:
                log.warning("info: %s", e)
                n_bad_depth += 1
                continue
            depth_samples.append(d[d > 0])

    t = np.asarray(timestamps, np.float64)
    duration_s = float(t.max() - t.min()) if len(t) > 1 else 0.0
    fps: Optional[float] = source.fps
    if fps is None and duration_s > 0:
        fps = (len(t) - 1) / duration_s  # frames actually listed, e.g. only those with RGB
    lines = [
        f"format:            {source.format} ({source.path})",
        f"frames:            {source.n_frames} listed, {n_yielded} readable"
        + (f", {len(source.skipped)} skipped while listing" if source.skipped else "")
        + (f", {n_bad_pose} with an invalid pose" if n_bad_pose else ""),
        f"RGB:               {source.rgb_size[0]}x{source.rgb_size[1]}",
        f"LiDAR depth:       {source.lidar_size[0]}x{source.lidar_size[1]}"
        + (" with confidence" if source.has_confidence else " (no confidence maps)"),
        f"duration:          {duration_s:.2f} s" + (f" at {fps:.2f} fps" if fps else ""),
        f"trajectory length: {trajectory_length_m(np.asarray(poses)) if poses else 0.0:.2f} m",
    ]
    values = np.concatenate(depth_samples) if depth_samples else np.zeros(0)
    sampled = f"{len(depth_samples)} frames sampled" + (f", {n_bad_depth} unreadable" if n_bad_depth else "")
    if values.size:
        lines.append(f"depth range:       min {values.min():.2f} m, median {np.median(values):.2f} m, "
                     f"max {values.max():.2f} m ({sampled})")
    else:
        lines.append(f"depth range:       no valid depth ({sampled})")
    if source.gt_depth is not None:
        lines.append("ground truth:      per-frame GT depth available")
    return "\n".join(lines)
