"""ARKitScenes reader: one video folder of the raw release -> CaptureSource (OpenCV axes, metres).

Layout (facts from apple/ARKitScenes: DATA.md, raw/README.md, download_data.py,
threedod/benchmark_scripts/utils/tenFpsDataLoader.py); every frame file is named <video_id>_<timestamp>.<ext>
with the timestamp in seconds (3 decimals):

    <video_id>/
      lowres_wide/*.png              RGB of the wide camera, 256x192, 60 fps
      lowres_wide_intrinsics/*.pincam  one line: width height fx fy cx cy (pixels at that image's size)
      lowres_depth/*.png             LiDAR ("AppleDepth") depth, 256x192, uint16 millimetres
      confidence/*.png               its confidence, uint8 0 (low) .. 2 (high)
      lowres_wide.traj               one line per pose: timestamp, axis-angle rotation (3, radians),
                                     translation (3, metres) -- a world-to-camera transform
      highres_depth/*.png            GT depth rendered from the FARO scans, 1920x1440, uint16 mm, 10 fps subset
                                     (upsampling video ids only)
      vga_wide/, vga_wide_intrinsics/  optional 640x480 RGB at 30 fps (rgb_asset="vga_wide")

Conventions, as this reader resolves them:
- .traj rows are world-to-camera: the toolkit builds [R|t] from a row (cv2.Rodrigues of the axis-angle) and
  inverts it to get the pose it back-projects depth with.
- Camera axes are OpenCV (x right, y down, z forward): the toolkit back-projects pixels with K^-1 (u d, v d, d)
  and applies that pose directly, with no axis flip.
- The world frame is the ARKit session's (gravity-aligned); images are stored as captured (sky direction is
  not undone), and K belongs to the stored image.
- Poses are sampled more sparsely than the 60 fps frames: a frame's pose is interpolated between the two
  nearest rows (rotation slerp, linear camera centre); frames outside the trajectory, or between rows more
  than `max_pose_gap_s` apart, are skipped.
- Depth, confidence, intrinsics and GT depth are matched to an RGB frame by nearest timestamp within
  `match_tolerance_s`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Literal, Optional

import cv2
import numpy as np

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from ..geometry import intrinsics_matrix
from ..images import decode_image
from .common import png_size, read_bytes, read_depth_png_m, read_uint8_png

log = logging.getLogger(__name__)

TRAJ = "lowres_wide.traj"
RgbAsset = Literal["lowres_wide", "vga_wide"]


def timestamp_of(path: Path) -> float:
    """'<video_id>_<timestamp>.png' -> timestamp in seconds."""
    try:
        return float(Path(path).stem.rsplit("_", 1)[-1])
    except ValueError:
        raise PromptmeshError(f"{path}: expected <video_id>_<seconds>.<ext>; not an ARKitScenes frame name") from None


def read_traj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """lowres_wide.traj -> (timestamps (N,) seconds, camera_to_world (N,4,4) OpenCV axes), sorted by time."""
    rows = []
    for i, line in enumerate(read_bytes(path, "trajectory").decode().splitlines()):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            vals = []
        if len(vals) != 7:
            raise PromptmeshError(f"{path}: line {i + 1} is not 'timestamp rx ry rz tx ty tz'; re-download the file")
        rows.append(vals)
    if not rows:
        raise PromptmeshError(f"{path}: no poses; re-download lowres_wide.traj")
    from scipy.spatial.transform import Rotation  # where used: commands start ~0.5 s sooner (tests/test_imports.py)

    a = np.asarray(rows, np.float64)
    a = a[np.argsort(a[:, 0], kind="stable")]
    world_to_camera = np.tile(np.eye(4), (len(a), 1, 1))
    world_to_camera[:, :3, :3] = Rotation.from_rotvec(a[:, 1:4]).as_matrix()  # axis-angle, radians (Rodrigues)
    world_to_camera[:, :3, 3] = a[:, 4:7]
    return a[:, 0], np.linalg.inv(world_to_camera)  # rows are world-to-camera; we keep camera-to-world


def interpolate_poses(traj_t: np.ndarray, traj_c2w: np.ndarray, t: np.ndarray,
                      max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """camera_to_world at times `t` (slerp rotation, linear centre) -> ((M,4,4), (M,) bool ok).

    ok is False outside [traj_t[0], traj_t[-1]] and where the bracketing rows are more than max_gap_s apart.
    A single-row trajectory only serves times within 1 ms of it.
    """
    from scipy.spatial.transform import Rotation, Slerp

    t = np.asarray(t, np.float64)
    out = np.tile(np.eye(4), (len(t), 1, 1))
    if len(traj_t) == 1:
        ok = np.abs(t - traj_t[0]) < 1e-3
        out[ok] = traj_c2w[0]
        return out, ok
    hi = np.clip(np.searchsorted(traj_t, t), 1, len(traj_t) - 1)
    ok = (t >= traj_t[0] - 1e-6) & (t <= traj_t[-1] + 1e-6) & (traj_t[hi] - traj_t[hi - 1] <= max_gap_s)
    if ok.any():
        tc = np.clip(t[ok], traj_t[0], traj_t[-1])
        out[ok, :3, :3] = Slerp(traj_t, Rotation.from_matrix(traj_c2w[:, :3, :3]))(tc).as_matrix()
        for k in range(3):
            out[ok, k, 3] = np.interp(tc, traj_t, traj_c2w[:, k, 3])
    return out, ok


def read_pincam(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    """.pincam -> ((w, h), K 3x3 at that size)."""
    try:
        w, h, fx, fy, cx, cy = (float(v) for v in read_bytes(path, "intrinsics").decode().split())
    except ValueError:
        raise PromptmeshError(f"{path}: expected 'width height fx fy cx cy'; re-download the intrinsics") from None
    return (int(w), int(h)), intrinsics_matrix(fx, fy, cx, cy)


class _TimeIndex:
    """Files of one asset folder by timestamp; nearest lookup within a tolerance."""

    def __init__(self, folder: Path, suffix: str):
        files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        t = np.asarray([timestamp_of(p) for p in files], np.float64)
        order = np.argsort(t, kind="stable")
        self.t, self.files = t[order], [files[i] for i in order]

    def __len__(self) -> int:
        return len(self.files)

    def nearest(self, t: float, tolerance_s: float) -> Optional[Path]:
        if not self.files:
            return None
        i = int(np.clip(np.searchsorted(self.t, t), 1, len(self.t) - 1)) if len(self.t) > 1 else 0
        j = i - 1 if i > 0 and abs(self.t[i - 1] - t) <= abs(self.t[i] - t) else i
        return self.files[j] if abs(self.t[j] - t) <= tolerance_s else None


@dataclass(frozen=True)
class ARKitScenesReader:
    """ARKitScenes raw video folder -> CaptureSource; RGB from `rgb_asset`, LiDAR from lowres_depth."""

    rgb_asset: RgbAsset = "lowres_wide"
    match_tolerance_s: float = 0.005
    """Largest time difference between an RGB frame and the depth/intrinsics/GT files matched to it."""
    max_pose_gap_s: float = 0.5
    """Frames between trajectory rows further apart than this are skipped (no pose to interpolate)."""
    name: ClassVar[str] = "arkitscenes"
    description: ClassVar[str] = "ARKitScenes video folder (lowres_wide/, lowres_depth/, lowres_wide.traj)"

    def sniff(self, path: Path) -> bool:
        p = Path(path)
        return (p / TRAJ).is_file() and (p / "lowres_depth").is_dir()

    def open(self, path: Path) -> CaptureSource:
        folder = Path(path)
        traj_t, traj_c2w = read_traj(folder / TRAJ)
        rgb = _TimeIndex(folder / self.rgb_asset, ".png")
        if not len(rgb):
            raise PromptmeshError(f"{folder / self.rgb_asset}: no RGB frames; download the {self.rgb_asset} asset")
        depth = _TimeIndex(folder / "lowres_depth", ".png")
        intr = _TimeIndex(folder / f"{self.rgb_asset}_intrinsics", ".pincam")
        gt = _TimeIndex(folder / "highres_depth", ".png")
        c2w, pose_ok = interpolate_poses(traj_t, traj_c2w, rgb.t, self.max_pose_gap_s)

        entries, skipped = [], []
        for i, (t, rgb_path) in enumerate(zip(rgb.t, rgb.files)):
            depth_path = depth.nearest(t, self.match_tolerance_s)
            pincam = intr.nearest(t, self.match_tolerance_s)
            why = ("no pose (outside the trajectory or in a gap)" if not pose_ok[i] else
                   "no lowres_depth frame at this time" if depth_path is None else
                   "no intrinsics (.pincam) at this time" if pincam is None else None)
            if why:
                skipped.append(f"{rgb_path.name}: {why}")
                continue
            entries.append((i, float(t), rgb_path, depth_path, pincam, c2w[i]))
        if not entries:
            raise PromptmeshError(f"{folder}: no frame has RGB, depth, intrinsics and a pose ({skipped[:1]}); "
                                  "check the downloaded assets")
        rgb_size, _ = read_pincam(entries[0][4])
        lidar_size = png_size(entries[0][3])
        gt_by_index = {i: gt.nearest(t, self.match_tolerance_s) for i, t, *_ in entries} if len(gt) else {}
        log.info("arkitscenes: %s, %d frames (%d skipped), RGB %s %dx%d, %d with GT depth", folder.name,
                 len(entries), len(skipped), self.rgb_asset, *rgb_size,
                 sum(p is not None for p in gt_by_index.values()))

        def gt_depth(frame_index: int) -> Optional[np.ndarray]:
            p = gt_by_index.get(frame_index)
            return read_depth_png_m(p) if p is not None else None

        def frames() -> Iterator[SourceFrame]:
            for i, t, rgb_path, depth_path, pincam, camera_to_world in entries:
                size, K = read_pincam(pincam)
                if size != rgb_size:
                    raise PromptmeshError(f"{pincam}: image size {size} differs from the first frame's {rgb_size}")
                conf_path = folder / "confidence" / depth_path.name
                yield SourceFrame(
                    frame_index=i, timestamp_s=t, camera_to_world=camera_to_world, K_rgb=K, rgb_size=rgb_size,
                    load_rgb=_png_rgb_loader(rgb_path), load_depth_m=_depth_loader(depth_path),
                    load_confidence=_conf_loader(conf_path) if conf_path.is_file() else None,
                    source_name=rgb_path.name)

        return CaptureSource(format=self.name, path=folder, n_frames=len(rgb), rgb_size=rgb_size,
                             lidar_size=lidar_size, frames=frames,
                             has_confidence=(folder / "confidence").is_dir(), skipped=skipped,
                             gt_depth=gt_depth if gt_by_index else None)


def _png_rgb_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        bgr = decode_image(read_bytes(path, "RGB PNG"), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PromptmeshError(f"{path}: unreadable RGB PNG; re-download the frame or delete it")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR
    return load


def _depth_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: read_depth_png_m(path)


def _conf_loader(path: Path) -> Callable[[], np.ndarray]:
    return lambda: read_uint8_png(path)


def scene_dirs(root: Path) -> dict[str, Path]:
    """Video folders under an ARKitScenes root, up to three levels down (ROOT/raw/Training/<video_id>)."""
    root = Path(root)
    reader = ARKitScenesReader()
    found: dict[str, Path] = {}
    level = [root]
    for _ in range(4):
        nxt = []
        for d in level:
            if reader.sniff(d):
                found.setdefault(d.name, d)
            elif d.is_dir():
                nxt += sorted(p for p in d.iterdir() if p.is_dir())
        level = nxt
    return dict(sorted(found.items()))
