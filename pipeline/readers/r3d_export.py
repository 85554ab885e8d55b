"""Record3D "EXR + JPG" export folders (marek-simonik/record3d issues #53, #67, #121).

Layout:
- `metadata.json`: the same metadata as inside a `.r3d` file (see `r3d.py`: w, h, dw, dh, column-major K
  at RGB resolution, poses [qx, qy, qz, qw, tx, ty, tz] camera-to-world in OpenGL/ARKit camera axes,
  fps, frameTimestamps).
- `rgb/N.jpg`: RGB frame N (portrait, e.g. 1440x1920 with "higher-quality LiDAR recording").
- `depth/N.exr`: depth in metres, one channel `R`, (dh, dw), e.g. 192x256. The app's author describes it
  as float32; half-float files are read as well. NaN / negative = no return -> 0.
- No confidence maps.

Users delete frames from such folders: a frame whose JPG or EXR is missing while metadata.json still lists
its pose is skipped and counted in `CaptureSource.skipped`. The EXR files are read with the `OpenEXR`
package (OpenCV's wheel has no EXR support).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import OpenEXR

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from .common import clean_depth_m, load_json, read_jpeg_rgb
from .r3d import Record3DMetadata


def read_exr_depth_m(path: Path, size_wh: tuple[int, int]) -> np.ndarray:
    """depth/N.exr (one channel `R`, float32 or half, metres) -> (h, w) float32 metres, 0 = no return."""
    if not path.is_file():
        raise PromptmeshError(f"{path}: depth EXR missing; delete this frame or re-export")
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = f.channels()
            name = "R" if "R" in channels else (next(iter(channels)) if len(channels) == 1 else None)
            if name is None:
                raise PromptmeshError(f"{path}: no 'R' channel among {sorted(channels)}; expected Record3D depth")
            depth = np.array(channels[name].pixels, dtype=np.float32)  # half or float32 -> float32 metres
    except PromptmeshError:
        raise
    except Exception as e:  # OpenEXR raises RuntimeError/ValueError/... for damaged files
        raise PromptmeshError(f"{path}: unreadable or truncated EXR ({e}); delete this frame or re-export") from None
    if depth.shape != (size_wh[1], size_wh[0]):
        raise PromptmeshError(f"{path}: depth is {depth.shape[1]}x{depth.shape[0]}, metadata.json says "
                              f"{size_wh[0]}x{size_wh[1]}")
    return clean_depth_m(depth)


class R3DExportReader:
    name = "r3d-exr"
    description = "Record3D EXR+JPG export folder (metadata.json, rgb/N.jpg, depth/N.exr)"

    def sniff(self, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and (path / "metadata.json").is_file() and (
            (path / "rgb").is_dir() or (path / "depth").is_dir())

    def open(self, path: Path) -> CaptureSource:
        path = Path(path)
        meta_path = path / "metadata.json"
        meta = Record3DMetadata(load_json(meta_path, "Record3D metadata"), str(meta_path))
        rgb_names = {p.name for p in (path / "rgb").iterdir()} if (path / "rgb").is_dir() else set()
        depth_names = {p.name for p in (path / "depth").iterdir()} if (path / "depth").is_dir() else set()
        skipped: list[str] = []
        kept: list[int] = []
        for i in range(meta.n_frames):
            if f"{i}.jpg" not in rgb_names:
                skipped.append(f"{path / 'rgb' / f'{i}.jpg'}: missing (pose listed in metadata.json); frame skipped")
            elif f"{i}.exr" not in depth_names:
                skipped.append(f"{path / 'depth' / f'{i}.exr'}: missing (pose listed in metadata.json); frame skipped")
            else:
                kept.append(i)
        if not kept:
            raise PromptmeshError(f"{path}: no frame has both rgb/N.jpg and depth/N.exr ({meta.n_frames} poses "
                                  "listed); export again as EXR + JPG")

        def frames() -> Iterator[SourceFrame]:
            for i in kept:
                jpg = path / "rgb" / f"{i}.jpg"
                yield SourceFrame(
                    frame_index=i,
                    timestamp_s=float(meta.timestamp_s[i]),
                    camera_to_world=meta.camera_to_world[i],  # OpenCV axes (converted in Record3DMetadata)
                    K_rgb=meta.K_rgb,  # row-major (transposed from the stored column-major K)
                    rgb_size=meta.rgb_size,
                    load_rgb=lambda p=jpg: read_jpeg_rgb(p),
                    load_depth_m=lambda p=path / "depth" / f"{i}.exr": read_exr_depth_m(p, meta.lidar_size),
                    load_confidence=None,
                    rgb_jpeg_path=jpg,
                    source_name=str(jpg),
                )

        return CaptureSource(format=self.name, path=path, n_frames=meta.n_frames, rgb_size=meta.rgb_size,
                             lidar_size=meta.lidar_size, frames=frames, has_confidence=False, fps=meta.fps,
                             skipped=skipped)
