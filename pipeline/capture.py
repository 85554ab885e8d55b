"""The one normalised capture type, as readers produce it and as `WORKDIR/capture/` stores it.

Readers (pipeline/readers/) turn every format into a `CaptureSource` that yields `SourceFrame`s in
promptmesh conventions: camera_to_world in OpenCV camera axes (x right, y down, z forward), world =
the capture's own world frame (ARKit: y up, gravity-aligned), metres; K at RGB resolution in pixels;
depth in metres (float32, 0 = no measurement). Nothing downstream of a reader knows the format.

`ingest` writes the kept frames to WORKDIR/capture/ (docs/workdir.md); `CaptureTable` reads that back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import atomic_output
from .errors import PromptmeshError
from .workdir import WorkDir, WorkDirLike

FRAMES_SCHEMA = pa.schema(
    [
        ("frame_index", pa.int32()),
        ("timestamp_s", pa.float64()),
        ("rgb_path", pa.string()),
        ("lidar_path", pa.string()),
        ("confidence_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("lidar_width", pa.int32()),
        ("lidar_height", pa.int32()),
        ("fx", pa.float64()),
        ("fy", pa.float64()),
        ("cx", pa.float64()),
        ("cy", pa.float64()),
        ("camera_to_world", pa.list_(pa.float64(), 16)),
    ]
)


@dataclass
class SourceFrame:
    """One frame of a capture, as a reader yields it (already in promptmesh conventions).

    Image data is loaded lazily so that a reader can list a long capture without holding it in
    memory; loaders raise PromptmeshError naming the file when a frame's data is unreadable.
    """

    frame_index: int
    """Index of the frame in the source capture."""
    timestamp_s: float
    camera_to_world: np.ndarray
    """(4,4) float64, OpenCV camera axes, world frame of the capture, metres."""
    K_rgb: np.ndarray
    """(3,3) float64 pinhole intrinsics at RGB resolution, pixels."""
    rgb_size: tuple[int, int]
    """(W, H) of the RGB image."""
    load_rgb: Callable[[], np.ndarray]
    """-> (H,W,3) uint8, RGB channel order."""
    load_depth_m: Callable[[], np.ndarray]
    """-> (h,w) float32 LiDAR depth, metres, 0 = no measurement."""
    load_confidence: Optional[Callable[[], np.ndarray]] = None
    """-> (h,w) uint8 ARKit confidence 0 (low) / 1 / 2 (high), or None when the capture has none."""
    rgb_jpeg_path: Optional[Path] = None
    """Source JPEG of this frame when it can be copied unchanged (no re-encoding); None for video."""
    load_bgr: Optional[Callable[[], np.ndarray]] = None
    """-> the same image in OpenCV's BGR order, for readers that decode with OpenCV: ingest measures sharpness
    and encodes the JPEG from it without two colour conversions. None: ingest converts load_rgb's image."""
    source_name: str = ""
    """Human-readable name of the frame's main file, for warnings."""
    pose_source: str = ""
    """Where the frame's pose was read from, for warnings about it ('' = `source_name`), e.g.
    "odometry.csv, frame 3"."""


@dataclass
class CaptureSource:
    """A capture opened by a reader: metadata plus a lazily evaluated stream of frames."""

    format: str
    """Reader name: "stray", "r3d", "r3d-exr", "3dscannerapp", ..."""
    path: Path
    n_frames: int
    """Frames listed by the capture (poses), before any are skipped."""
    rgb_size: tuple[int, int]
    """(W, H)."""
    lidar_size: tuple[int, int]
    """(w, h) of the LiDAR depth map."""
    frames: Callable[[], Iterator[SourceFrame]]
    """Call to get a fresh iterator over the frames (in capture order)."""
    has_confidence: bool = True
    fps: Optional[float] = None
    skipped: list[str] = field(default_factory=list)
    """Frames the reader had to drop while listing (each 'name: reason'); ingest reports them."""
    gt_depth: Optional[Callable[[int], Optional[np.ndarray]]] = None
    """frame_index -> (H',W') float32 GT depth in metres (0 invalid) for datasets/synthetic captures."""


def read_parquet(path: Path, columns: Optional[list[str]] = None) -> pa.Table:
    """One Parquet file as a table. Through `pq.ParquetFile`: `pq.read_table` imports pyarrow.dataset
    (~0.1-0.2 s, under the import lock, in each thread of `run` that loads the capture first)."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


@dataclass
class CaptureTable:
    """The normalised capture on disk (WORKDIR/capture/frames.parquet), loaded as columns."""

    root: Path
    """WORKDIR/capture."""
    frame_index: np.ndarray
    timestamp_s: np.ndarray
    rgb_path: list[str]
    lidar_path: list[str]
    confidence_path: list[Optional[str]]
    width: np.ndarray
    height: np.ndarray
    lidar_width: np.ndarray
    lidar_height: np.ndarray
    K_rgb: np.ndarray
    """(N,3,3) at RGB resolution."""
    camera_to_world: np.ndarray
    """(N,4,4) OpenCV camera axes."""

    def __len__(self) -> int:
        return len(self.frame_index)

    @property
    def rgb_size(self) -> tuple[int, int]:
        return int(self.width[0]), int(self.height[0])

    def stem(self, i: int) -> str:
        """File stem shared by a frame's artifacts (frame_index zero-padded to 6 digits)."""
        return Path(self.rgb_path[i]).stem

    @classmethod
    def load(cls, workdir: WorkDirLike) -> "CaptureTable":
        """The ingested capture of a work directory (its frames.parquet); paths in it are relative to `root`."""
        wd = WorkDir(workdir)
        capture_dir, path = wd.capture, wd.frames_parquet
        if not path.exists():
            raise PromptmeshError(f"{path}: not found; run `promptmesh ingest CAPTURE -o WORKDIR` first")
        try:
            t = read_parquet(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise PromptmeshError(f"{path}: unreadable ({e}); delete WORKDIR/capture and rerun ingest") from None
        missing = set(FRAMES_SCHEMA.names) - set(t.column_names)
        if missing:
            raise PromptmeshError(f"{path}: missing columns {sorted(missing)}; rerun ingest")
        if t.num_rows == 0:
            raise PromptmeshError(f"{path}: no frames; rerun ingest on a capture with frames")
        c = {n: t.column(n).to_pylist() for n in FRAMES_SCHEMA.names}
        fx, fy, cx, cy = (np.asarray(c[k], np.float64) for k in ("fx", "fy", "cx", "cy"))
        K = np.zeros((t.num_rows, 3, 3))
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
        return cls(
            root=capture_dir,
            frame_index=np.asarray(c["frame_index"], np.int64),
            timestamp_s=np.asarray(c["timestamp_s"], np.float64),
            rgb_path=c["rgb_path"],
            lidar_path=c["lidar_path"],
            confidence_path=c["confidence_path"],
            width=np.asarray(c["width"], np.int64),
            height=np.asarray(c["height"], np.int64),
            lidar_width=np.asarray(c["lidar_width"], np.int64),
            lidar_height=np.asarray(c["lidar_height"], np.int64),
            K_rgb=K,
            camera_to_world=np.asarray(c["camera_to_world"], np.float64).reshape(-1, 4, 4),
        )


@dataclass
class FrameRow:
    """One row of frames.parquet, built by ingest."""

    frame_index: int
    timestamp_s: float
    rgb_path: str
    lidar_path: str
    confidence_path: Optional[str]
    width: int
    height: int
    lidar_width: int
    lidar_height: int
    fx: float
    fy: float
    cx: float
    cy: float
    camera_to_world: list[float]


def write_frames_table(path: Path, rows: list[FrameRow]) -> Path:
    """Write frames.parquet atomically with the contract schema."""
    cols = {f.name: [getattr(r, f.name) for r in rows] for f in dataclasses.fields(FrameRow)}
    table = pa.table(cols, schema=FRAMES_SCHEMA)
    with atomic_output(Path(path)) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
