"""Keyframe selection: keep a frame when it sees enough that the kept frames don't (pure; no I/O).

A phone records 30-60 frames a second, so consecutive frames mostly see the same surfaces. A frame becomes a
keyframe when, against each of the `recent` last keyframes, it is novel in one of three ways:

- moved:   its camera centre is at least `translation_ratio` x its depth scale from every recent keyframe's.
           The depth scale (`depth_scale_m`) is the median LiDAR depth d it looks at, and below `close_range_m`
           d x sqrt(d / close_range_m): scaled by depth, the same rule keeps a keyframe every few centimetres
           across a room and every few millimetres on a close-up (the views change as fast there); closer
           than `close_range_m` it keeps denser still, because the LiDAR's noise does not shrink with depth
           there (a floor of a few millimetres) while the automatic voxel stops at 4 mm, so each surface needs
           more views to average it out.
- turned:  its orientation differs from every recent keyframe's by at least `rotation_deg`.
- new surface: less than `min_overlap` of its LiDAR footprint (the LiDAR points it sees, in world
           coordinates) was seen by the recent keyframes (projected into their LiDAR maps, nearest pixel,
           depth within `depth_tolerance_ratio` of the keyframe's).

"moved or turned" must hold against every recent keyframe (a frame near any of them is not new by pose).
A novel frame opens a neighbourhood: it and the frames after it that stay within `neighbourhood_fraction`
of the thresholds of it (at most `neighbourhood_frames`). The sharpest of the neighbourhood becomes the
keyframe (sharpness is measured only there, lazily); the others are dropped as blurrier neighbours. The
first frame (or the first after keyframes were rejected as blurry) is always novel.

Conventions: camera_to_world (4,4) with OpenCV camera axes (x right, y down, z forward), metres; depth maps
are z-depth in metres, 0 = no measurement, with K (3,3) in pixels at that map's size (pixel centres at
integer coordinates).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, Iterator, Optional, TypeVar

import numpy as np

from .geometry import backproject, project_points, rotation_angle_deg, subsample_depth, transform_points

Item = TypeVar("Item")

FIRST, MOVED, TURNED, NEW_SURFACE = "first", "moved", "turned", "new surface"
"""Why a frame was kept."""
REDUNDANT, BLURRIER_NEIGHBOUR = "redundant", "blurrier neighbour"
"""Why a frame was not: it sees nothing the recent keyframes don't; a sharper frame of its neighbourhood won."""


@dataclass(frozen=True)
class KeyframeSettings:
    """The thresholds of the module docstring; their defaults are IngestConfig's keyframe_* defaults."""

    translation_ratio: float = 0.04
    """Camera-centre distance to every recent keyframe, as a fraction of the frame's depth scale (metres/metre)."""
    close_range_m: float = 1.0
    """Median depth below which the depth scale shrinks faster than the depth (`depth_scale_m`), metres."""
    rotation_deg: float = 10.0
    """Orientation difference to every recent keyframe, degrees."""
    min_overlap: float = 0.85
    """A frame whose LiDAR footprint the recent keyframes saw less than this fraction of is novel (0 = off)."""
    recent: int = 5
    """Number of most recent keyframes a frame is compared with."""
    neighbourhood_frames: int = 6
    """Most frames a neighbourhood holds (the novel frame included); 1 = keep the novel frame itself."""
    neighbourhood_fraction: float = 0.3
    """Frames stay in a neighbourhood while within this fraction of the thresholds of its first frame."""
    depth_tolerance_ratio: float = 0.1
    """A footprint point counts as seen by a keyframe when its depth there is within this fraction of the
    keyframe's LiDAR depth at that pixel."""


@dataclass
class View:
    """What selection needs of a frame: its pose and a small LiDAR map (see `View.from_depth`)."""

    camera_to_world: np.ndarray
    """(4,4) float64, OpenCV camera axes, metres."""
    depth_m: np.ndarray
    """(h,w) float32 small LiDAR depth map, metres, 0 = no measurement."""
    K_depth: np.ndarray
    """(3,3) intrinsics at depth_m's size, pixels."""
    median_depth_m: float = field(init=False)
    """Median of the valid depths, metres (NaN without any)."""
    footprint_world: np.ndarray = field(init=False)
    """(N,3) world points of every `FOOTPRINT_STEP`-th valid depth pixel."""

    FOOTPRINT_STEP = 2

    def __post_init__(self) -> None:
        valid = self.depth_m[self.depth_m > 0]
        self.median_depth_m = float(np.median(valid)) if valid.size else math.nan
        small, K_small = subsample_depth(self.depth_m, self.K_depth, self.FOOTPRINT_STEP)
        self.footprint_world = transform_points(self.camera_to_world, backproject(small, K_small))

    @classmethod
    def from_depth(cls, camera_to_world: np.ndarray, depth_m: np.ndarray, K_depth: np.ndarray,
                   step: int = 4) -> "View":
        """A View from a full LiDAR map (e.g. 256x192) sampled every `step` pixels (64x48)."""
        small, K_small = subsample_depth(np.asarray(depth_m, np.float32), K_depth, step)
        return cls(np.asarray(camera_to_world, np.float64), small, K_small)


def seen_fraction(points_world: np.ndarray, keyframes: Iterable[View], depth_tolerance_ratio: float) -> float:
    """Share of `points_world` (N,3) that some keyframe saw: inside its small LiDAR map, in front of it, with
    a valid depth there within `depth_tolerance_ratio` of the point's depth. 1.0 for no points."""
    if len(points_world) == 0:
        return 1.0
    seen = np.zeros(len(points_world), bool)
    for kf in keyframes:
        world_to_camera = np.linalg.inv(kf.camera_to_world)
        uv, z = project_points(transform_points(world_to_camera, points_world), kf.K_depth)
        h, w = kf.depth_m.shape
        with np.errstate(invalid="ignore"):
            u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])  # nearest pixel centre
            inside = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = np.zeros(len(z), np.float32)
        d[inside] = kf.depth_m[v[inside].astype(int), u[inside].astype(int)]
        seen |= inside & (d > 0) & (np.abs(z - d) <= depth_tolerance_ratio * d)
    return float(seen.mean())


def depth_scale_m(depth_m: float, s: KeyframeSettings) -> float:
    """What camera motion is measured against for a view at median depth `depth_m`: depth_m, and closer than
    s.close_range_m depth_m x sqrt(depth_m / s.close_range_m) (metres; module docstring)."""
    return depth_m * math.sqrt(min(1.0, depth_m / s.close_range_m))


@dataclass
class Novelty:
    """How a view compares with the recent keyframes."""

    translation_ratio: float
    """Distance to the nearest recent keyframe centre / the view's depth scale (inf without keyframes)."""
    rotation_deg: float
    """Smallest orientation difference to a recent keyframe, degrees."""
    pose_novel: bool
    """Moved or turned against every recent keyframe."""
    overlap: Optional[float]
    """Share of the view's footprint the recent keyframes saw; None when the view is pose-novel (not needed)."""


def novelty(view: View, keyframes: list[View], s: KeyframeSettings, fallback_depth_m: float) -> Novelty:
    """Compare `view` with `keyframes`; a view without valid depth is scaled by `fallback_depth_m`."""
    scale = depth_scale_m(view.median_depth_m if view.median_depth_m > 0 else fallback_depth_m, s)
    c = view.camera_to_world[:3, 3]
    trans = [float(np.linalg.norm(c - kf.camera_to_world[:3, 3])) / scale for kf in keyframes]
    rot = [float(rotation_angle_deg(kf.camera_to_world[:3, :3].T @ view.camera_to_world[:3, :3])) for kf in keyframes]
    pose_novel = all(t >= s.translation_ratio or r >= s.rotation_deg for t, r in zip(trans, rot))
    overlap = (None if pose_novel else
               seen_fraction(view.footprint_world, keyframes, s.depth_tolerance_ratio) if s.min_overlap > 0 else 1.0)
    return Novelty(min(trans, default=math.inf), min(rot, default=180.0), pose_novel, overlap)


class KeyframeSelector:
    """Online keyframe test against the recent keyframes (the state of `select`)."""

    def __init__(self, settings: KeyframeSettings):
        self.s = settings
        self.recent: deque[View] = deque(maxlen=settings.recent)
        self.last_depth_m = 1.0
        """Median depth of the last keyframe with depth (scales views without any), metres."""

    def novel(self, view: View) -> Optional[str]:
        """Why `view` is a keyframe candidate (MOVED, TURNED, NEW_SURFACE, FIRST) or None if it is not."""
        if not self.recent:
            return FIRST
        n = novelty(view, list(self.recent), self.s, self.last_depth_m)
        if n.pose_novel:
            return MOVED if n.translation_ratio >= self.s.translation_ratio else TURNED
        if n.overlap < self.s.min_overlap:
            return NEW_SURFACE
        return None

    def near(self, first: View, view: View) -> bool:
        """Whether `view` is within `neighbourhood_fraction` of the pose thresholds of `first`."""
        f = self.s.neighbourhood_fraction
        scale = depth_scale_m(first.median_depth_m if first.median_depth_m > 0 else self.last_depth_m, self.s)
        moved = float(np.linalg.norm(view.camera_to_world[:3, 3] - first.camera_to_world[:3, 3])) / scale
        turned = float(rotation_angle_deg(first.camera_to_world[:3, :3].T @ view.camera_to_world[:3, :3]))
        return moved < f * self.s.translation_ratio and turned < f * self.s.rotation_deg

    def add(self, view: View) -> None:
        self.recent.append(view)
        if view.median_depth_m > 0:
            self.last_depth_m = view.median_depth_m


@dataclass
class Decision(Generic[Item]):
    item: Item
    kept: bool
    reason: str
    """FIRST / MOVED / TURNED / NEW_SURFACE when kept, REDUNDANT / BLURRIER_NEIGHBOUR (or the caller's
    rejection) when not."""


def select(items: Iterable[Item], view_of: Callable[[Item], View], settings: KeyframeSettings,
           sharpness_of: Optional[Callable[[Item], float]] = None,
           accept: Optional[Callable[[Item], Optional[str]]] = None) -> Iterator[Decision[Item]]:
    """A decision for every item, in order (delayed by at most one neighbourhood).

    `view_of(item)` is asked once per item; `sharpness_of(item)` (higher = sharper; None = all equal, the
    first of a neighbourhood wins) only for items in a neighbourhood of two or more. `accept(item)`: a last
    check of the winner (e.g. blur rejection) returning a reason to reject it, or None; a rejected winner is
    not a keyframe, so the next frame is compared with the same keyframes as before.
    """
    selector = KeyframeSelector(settings)
    window: list[tuple[Item, View]] = []
    reason = ""

    def flush() -> Iterator[Decision[Item]]:
        best = 0
        if sharpness_of is not None and len(window) > 1:
            scores = [sharpness_of(item) for item, _ in window]
            best = int(np.argmax(scores))
        rejected = accept(window[best][0]) if accept is not None else None
        if rejected is None:
            selector.add(window[best][1])
        for k, (item, _) in enumerate(window):
            if k == best:
                yield Decision(item, rejected is None, reason if rejected is None else rejected)
            else:
                yield Decision(item, False, BLURRIER_NEIGHBOUR)
        window.clear()

    for item in items:
        view = view_of(item)
        if window:
            if len(window) < settings.neighbourhood_frames and selector.near(window[0][1], view):
                window.append((item, view))
                continue
            yield from flush()
        why = selector.novel(view)
        if why is None:
            yield Decision(item, False, REDUNDANT)
            continue
        window.append((item, view))
        reason = why
        if settings.neighbourhood_frames <= 1:
            yield from flush()
    if window:
        yield from flush()
