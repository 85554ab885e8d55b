"""WORKDIR/fuse/poses.parquet: the pose each kept frame was fused with (after pose refinement).

Columns: frame_index (int32), camera_to_world (16 float64, row-major 4x4, OpenCV camera axes, capture
world, metres), correction_m / correction_deg (float64: how far refinement moved the pose from the
capture's), accepted (bool: refinement's correction was kept). Everything downstream of fusion that
projects frames (eval culling, exports, the viewer) reads poses through `fused_camera_to_world`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import atomic_output
from .capture import CaptureTable, read_parquet
from .errors import PromptmeshError
from .workdir import WorkDir, WorkDirLike

POSES_SCHEMA = pa.schema([
    ("frame_index", pa.int32()),
    ("camera_to_world", pa.list_(pa.float64(), 16)),
    ("correction_m", pa.float64()),
    ("correction_deg", pa.float64()),
    ("accepted", pa.bool_()),
])


def write_poses(path: Path, frame_index: np.ndarray, camera_to_world: np.ndarray,
                correction_m: Optional[np.ndarray] = None, correction_deg: Optional[np.ndarray] = None,
                accepted: Optional[np.ndarray] = None) -> Path:
    """Write poses.parquet atomically. `camera_to_world` is (N,4,4); missing corrections are 0, accepted False."""
    n = len(frame_index)
    camera_to_world = np.asarray(camera_to_world, np.float64).reshape(n, 16)
    zeros = np.zeros(n)
    table = pa.table({
        "frame_index": np.asarray(frame_index, np.int32),
        "camera_to_world": pa.FixedSizeListArray.from_arrays(pa.array(camera_to_world.ravel()), 16),
        "correction_m": zeros if correction_m is None else np.asarray(correction_m, np.float64),
        "correction_deg": zeros if correction_deg is None else np.asarray(correction_deg, np.float64),
        "accepted": np.zeros(n, bool) if accepted is None else np.asarray(accepted, bool),
    }, schema=POSES_SCHEMA)
    with atomic_output(Path(path)) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_poses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frame_index (N,) int64, camera_to_world (N,4,4) float64) from a poses.parquet."""
    path = Path(path)
    try:
        t = read_parquet(path, columns=["frame_index", "camera_to_world"])
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise PromptmeshError(f"{path}: unreadable ({e}); rerun `promptmesh fuse WORKDIR --force`") from None
    frame_index = np.asarray(t.column("frame_index").to_pylist(), np.int64)
    camera_to_world = np.asarray(t.column("camera_to_world").to_pylist(), np.float64).reshape(-1, 4, 4)
    return frame_index, camera_to_world


def fused_camera_to_world(workdir: WorkDirLike, table: CaptureTable) -> np.ndarray:
    """(N,4,4) pose of each row of `table`: the fused pose from poses.parquet when fusion wrote one, else
    the capture's own. A frame that poses.parquet does not list keeps the capture's pose."""
    wd = WorkDir(workdir)
    if not wd.poses_parquet.exists():
        return table.camera_to_world.copy()
    frame_index, camera_to_world = read_poses(wd.poses_parquet)
    by_index = dict(zip(frame_index.tolist(), camera_to_world))
    return np.stack([by_index.get(int(i), table.camera_to_world[k]) for k, i in enumerate(table.frame_index)])
