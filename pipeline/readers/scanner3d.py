"""3D Scanner App (Laan Labs) "All Data" exports.

Files per frame NNNNN (zero-padded to 5 digits), all in one folder (`All_Data/`, which may be given
directly or as the export's parent folder):
- `frame_NNNNN.json`: `intrinsics` (9 numbers, 3x3 ROW-major, pixels at the RGB resolution, e.g. 1920x1440),
  `cameraPoseARFrame` (16 numbers, 4x4 ROW-major camera-to-world, ARKit camera axes x right, y up,
  z backward; ARKit world, y up, gravity-aligned, metres), `time` (seconds, device clock).
- `frame_NNNNN.jpg`: RGB. The app writes one only every few frames; only frames with a JPG become
  SourceFrames (the others are depth-only and not counted as listed frames).
- `depth_NNNNN.png`: uint16 millimetres, 256x192, 0 = no return. `conf_NNNNN.png`: uint8 confidence 0/1/2.

The pose convention was checked on a real export (tests/data/samples/3dscannerapp_corridor, PROVENANCE.md):
reprojecting one frame's depth into another agrees to ~3 cm with ARKit camera axes. Poses are converted to
OpenCV camera axes here (`arkit_to_opencv`), K is used as stored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from ..geometry import arkit_to_opencv
from .common import jpeg_size, load_json, png_size, read_depth_png_m, read_jpeg_rgb, read_uint8_png

FRAME_JPG = re.compile(r"^frame_(\d+)\.jpg$")


@dataclass
class _Frame:
    index: int
    stem: str
    timestamp_s: float
    camera_to_world: np.ndarray
    K_rgb: np.ndarray


def _data_dir(path: Path) -> Optional[Path]:
    """The folder holding frame_*.json: `path` itself or its `All_Data/` subfolder."""
    for d in (path, path / "All_Data"):
        if d.is_dir() and next(d.glob("frame_*.json"), None) is not None:
            return d
    return None


def _parse_frame_json(path: Path, index: int, stem: str) -> _Frame:
    meta = load_json(path, "frame metadata")
    try:
        K_rgb = np.asarray(meta["intrinsics"], np.float64).reshape(3, 3)  # stored row-major
        pose_arkit = np.asarray(meta["cameraPoseARFrame"], np.float64).reshape(4, 4)  # row-major, camera-to-world
        timestamp_s = float(meta["time"])
    except (KeyError, TypeError, ValueError) as e:
        raise PromptmeshError(f"{path}: missing or malformed intrinsics / cameraPoseARFrame / time ({e!r})") from None
    # ARKit camera axes (y up, z backward) -> OpenCV (y down, z forward): flip the camera's y and z axes.
    # A non-finite pose passes through as NaN; ingest skips it with a warning.
    camera_to_world = arkit_to_opencv(pose_arkit)
    return _Frame(index, stem, timestamp_s, camera_to_world, K_rgb)


def _image_sizes(root: Path, frames_meta: list[_Frame]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(RGB (W, H), depth (w, h)) from the headers of the first frame whose JPG and depth PNG both have one (a
    damaged frame is skipped later, at ingest, rather than failing the whole capture)."""
    errors = []
    for f in frames_meta:
        try:
            return jpeg_size(root / f"frame_{f.stem}.jpg"), png_size(root / f"depth_{f.stem}.png")
        except PromptmeshError as e:
            errors.append(str(e))
    raise PromptmeshError(f"{root}: no frame has a readable JPG and depth PNG header (the first: {errors[0]}); "
                          "re-export 'All Data'")


class Scanner3DReader:
    name = "3dscannerapp"
    description = "3D Scanner App 'All Data' export folder (frame_NNNNN.json/.jpg, depth_NNNNN.png)"

    def sniff(self, path: Path) -> bool:
        return _data_dir(Path(path)) is not None

    def open(self, path: Path) -> CaptureSource:
        path = Path(path)
        root = _data_dir(path)
        if root is None:
            raise PromptmeshError(f"{path}: no frame_NNNNN.json files; pass the 'All Data' export folder")
        names = {p.name for p in root.iterdir()}
        jpgs = sorted((int(m.group(1)), m.group(1)) for n in names if (m := FRAME_JPG.match(n)))
        if not jpgs:
            raise PromptmeshError(f"{root}: no frame_NNNNN.jpg; export 'All Data' with images from 3D Scanner App")
        skipped: list[str] = []
        frames_meta: list[_Frame] = []
        for index, stem in jpgs:
            json_path = root / f"frame_{stem}.json"
            if f"depth_{stem}.png" not in names:
                skipped.append(f"{root / f'depth_{stem}.png'}: missing; frame skipped")
                continue
            if json_path.name not in names:
                skipped.append(f"{json_path}: missing (no pose for frame_{stem}.jpg); frame skipped")
                continue
            try:
                frames_meta.append(_parse_frame_json(json_path, index, stem))
            except PromptmeshError as e:
                skipped.append(f"{e}; frame skipped")
        if not frames_meta:
            raise PromptmeshError(f"{root}: no frame has a JPG, a depth PNG and a readable JSON ({len(skipped)} "
                                  f"skipped, the first: {skipped[0] if skipped else '-'}); re-export 'All Data'")
        rgb_size, lidar_size = _image_sizes(root, frames_meta)
        has_confidence = any(f"conf_{f.stem}.png" in names for f in frames_meta)

        def frames() -> Iterator[SourceFrame]:
            for f in frames_meta:
                jpg = root / f"frame_{f.stem}.jpg"
                conf = root / f"conf_{f.stem}.png"
                yield SourceFrame(
                    frame_index=f.index,
                    timestamp_s=f.timestamp_s,
                    camera_to_world=f.camera_to_world,
                    K_rgb=f.K_rgb,
                    rgb_size=rgb_size,
                    load_rgb=lambda p=jpg: read_jpeg_rgb(p),
                    load_depth_m=lambda p=root / f"depth_{f.stem}.png": read_depth_png_m(p),
                    load_confidence=(lambda p=conf: read_uint8_png(p)) if has_confidence else None,
                    rgb_jpeg_path=jpg,
                    source_name=str(jpg),
                )

        return CaptureSource(format=self.name, path=path, n_frames=len(jpgs), rgb_size=rgb_size,
                             lidar_size=lidar_size, frames=frames, has_confidence=has_confidence, fps=None,
                             skipped=skipped)
