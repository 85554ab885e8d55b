"""Stage 3, fuse: WORKDIR/depth/<model>/ + poses -> a TSDF volume in OUT/fuse/tsdf.npz.

The poses are first refined against ARKit's drift (`pipeline/refine.py`, from the LiDAR maps of
WORKDIR/capture; off with refine_poses = false) and written to OUT/fuse/poses.parquet (`pipeline/poses.py`),
refined or not: the pose each frame is fused with, which every later stage that projects frames reads.

Open3D's tensor `VoxelBlockGrid` (attributes tsdf, weight, color; all float32) does the work, on CUDA
when Open3D has it and the config allows, else on the CPU. (The legacy ScalableTSDFVolume mishandles
float depth in Open3D 0.20, so it is not used.)

Conventions:
- Depth maps are uint16 millimetres, 0 = invalid, any size (w, h) with the RGB aspect, with K_rgb scaled by
  (w/W, h/H) (`geometry.scale_intrinsics`: depth pixel (x, y) sees RGB pixel (x W/w, y H/h)). Each frame is integrated at every n-th
  pixel of its map (`depth_step`: the largest n that leaves depth_px_per_voxel pixels per voxel edge at the
  scene's median depth, and no fewer pixels than the LiDAR map has; point samples with K for their grid,
  `geometry.subsample_depth`): Open3D reads one depth pixel per voxel and frame, so pixels much finer than
  the voxel cost time. Colour is the RGB frame decoded at a reduced JPEG scale no smaller than half the depth
  map's full size (`_read_colour`), with K_rgb scaled to that size; the LiDAR confidence map is resized to
  (w, h) with nearest neighbour, and the depth is masked before it is subsampled.
- Depth outside [depth_min_m, depth_max_m] and pixels with LiDAR confidence < min_confidence are
  dropped (set to 0), not clamped: clamping would fabricate surface at the bounds.
- Open3D's extrinsic is world_to_camera = inverse(camera_to_world); camera axes are OpenCV already.
  Its intrinsics get the principal point shifted by half a pixel (`open3d_intrinsics`).
- Truncation = sdf_trunc_voxels * voxel_size_m.

Before integrating, fusion chooses the voxel size, pre-sizes the grid (`presize_grid`) and refines the poses.
Both need only the capture, so `promptmesh run` does them on threads while the depth stage runs
(`presize_meanwhile`, `refine_meanwhile`). After integrating, `run` can hand the grid to the mesh stage in
memory, which saves the volume on a thread once it has extracted the surface (hand_to_mesh, `LiveGrid`).
docs/benchmarks.md ("Overlap") measures each; the outputs are the same either way.

Speed: frames are read and decoded (PNG/JPEG, resize, masking) by two background threads feeding a bounded,
ordered queue, so that integration is the only limit (depth maps the depth stage kept in memory for this stage,
`depth.take_maps`, are not read again); the voxel hash map is pre-sized
(`estimate_block_count`) so that it never rehashes mid-run. Memory: at most PREFETCH_FRAMES decoded frames
wait; the block estimate keeps only distinct block keys; the volume is saved in slices.

The saved volume (`save_volume`, read by `load_grid`) is compact, not Open3D's own `VoxelBlockGrid.save`
(20 bytes per voxel, seconds to write): an uncompressed npz holding, for the allocated blocks sorted by key,
    block_keys (N,3) int32         block coordinates (block edge = voxel_size_m * block_resolution)
    tsdf       (N,R,R,R) float32   signed distance / truncation, in [-1, 1], as Open3D holds it
    weight     (N,R,R,R) uint16    observation count (integration adds 1 per frame), clipped at 65535
    color      (N,R,R,R,3) uint8   RGB, the weighted mean of the observations rounded to the nearest level
    voxel_size_m, block_resolution
9 bytes per voxel. The geometry is kept exactly (16-bit distances would move vertices by millimetres on
edges where the distance barely changes); only colours are rounded. The mesh stage always extracts from
this file, so rerunning the mesh stage alone gives the same mesh as the run that fused it. Sorting by key
makes the file identical between runs (Open3D allocates blocks in a thread-dependent order).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import time
import zipfile
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np
from tqdm import tqdm

from . import ahead
from .artifacts import Manifest, atomic_output, fingerprint, invalidate, is_current, upstream_fingerprint
from .capture import CaptureTable
from .config import FuseConfig
from .depth import take_maps
from .errors import PromptmeshError
from .geometry import scale_intrinsics, subsample_depth, transform_points
from .images import MM_PER_M, REDO, read_depth_mm, read_image
from .poses import write_poses
from .refine import RefinedPoses, refine_poses
from .streams import prefetch
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

STAGE = "fuse"
HANDOFF = ("depth_model",)
"""What the manifest declares for eval: the depth model whose maps were fused."""
VOLUME_FORMAT = 2
"""Version of the saved volume's layout (module docstring); part of the fingerprint, so older files are redone."""
PREFETCH_FRAMES = 4
"""Decoded frames waiting for integration at most (bounds memory)."""
PREFETCH_WORKERS = 2
"""Threads reading and decoding frames (PNG/JPEG decoding releases the GIL)."""
SAVE_SLICE_BLOCKS = 4096
"""Blocks converted at a time when saving or loading the volume (bounds the temporary copies to ~60 MB at 8^3
voxels)."""
ESTIMATE_FLUSH_KEYS = 1 << 19
"""Block keys gathered (distinct per frame) before the estimate reduces them to distinct ones over all frames
(bounds its memory to a few MB plus the distinct blocks)."""


def select_device(requested: str):
    """Open3D device for fusion: CUDA:0 when available and `requested` is auto or cuda, else CPU:0."""
    import open3d as o3d

    if requested in ("auto", "cuda") and o3d.core.cuda.is_available():
        return o3d.core.Device("CUDA:0")
    if requested == "cuda":
        log.warning("fuse: CUDA requested but this Open3D build has no CUDA device; using the CPU")
    return o3d.core.Device("CPU:0")


def new_grid(cfg: FuseConfig, block_count: int, device):
    """An empty VoxelBlockGrid with float32 tsdf, weight and colour (RGB in [0, 1]) per voxel."""
    import open3d as o3d

    f32 = o3d.core.float32
    return o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(f32, f32, f32), attr_channels=((1), (1), (3)),
        voxel_size=cfg.voxel_size_m, block_resolution=cfg.block_resolution, block_count=int(block_count),
        device=device)


def open3d_intrinsics(K: np.ndarray) -> np.ndarray:
    """K with pixel centres at integer coordinates (promptmesh, OpenCV) -> K for Open3D's TSDF kernels.

    Open3D's integration reads the depth pixel floor(u), floor(v) of a voxel's projection, i.e. it takes
    pixel i to span [i, i+1). Shifting the principal point by +0.5 px makes that pick the nearest pixel
    centre, round(u); without it, surfaces slanted to the view move by half a pixel's depth change (2.5 mm
    for a 1:2 slope at 1 m and f = 100 px).
    """
    K = np.array(K, np.float64)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


# --------------------------------------------------------------------------- per-frame preparation
def mask_depth_mm(depth_mm: np.ndarray, confidence: Optional[np.ndarray], cfg: FuseConfig) -> np.ndarray:
    """Zero the depth pixels fusion must ignore: outside [depth_min_m, depth_max_m] or low confidence.

    depth_mm: (h,w) uint16 millimetres, 0 = invalid. confidence: (h,w) uint8 0/1/2 at the same size, or
    None (no confidence: keep all). Returns a new (h,w) uint16 array.
    """
    d = np.asarray(depth_mm, np.uint16)
    lowest_mm = max(0, math.ceil(cfg.depth_min_m * MM_PER_M))  # d >= min <=> d >= ceil(min) for integers
    highest_mm = min(65535, math.floor(cfg.depth_max_m * MM_PER_M))
    keep = cv2.inRange(d, lowest_mm, highest_mm)  # 255 = keep (OpenCV: ~10x faster than numpy masks here)
    if confidence is not None and cfg.min_confidence > 0:
        keep = cv2.bitwise_and(keep, cv2.inRange(confidence, cfg.min_confidence, 255))
    return cv2.bitwise_and(d, d, mask=keep)


@dataclass
class PreparedFrame:
    """One frame ready for integration: depth at the size it is integrated at (w, h), colour at its own size."""

    index: int
    depth_mm: np.ndarray
    """(h,w) uint16 millimetres, masked (0 = ignore)."""
    rgb: np.ndarray
    """(h',w',3) uint8 RGB, at least half the depth map's full size (`_read_colour`)."""
    K_depth: np.ndarray
    """(3,3) intrinsics at (w, h), pixels."""
    K_color: np.ndarray
    """(3,3) intrinsics at the colour image's size (w', h'), pixels."""
    n_valid: int
    """Depth pixels left after masking."""


def _imread(path: Path, flags: int, what: str) -> np.ndarray:
    return read_image(path, flags, what, REDO)


def _read_colour(path: Path, depth_wh: tuple[int, int], full_wh: tuple[int, int]) -> np.ndarray:
    """The RGB frame at the smallest JPEG decoding scale (1/8, 1/4, 1/2 or 1) that is still at least half the
    depth map's size in each direction; not resized (the colour intrinsics follow its size).

    Colour is averaged per voxel, and half the depth resolution still gives several colour pixels per voxel;
    decoding at a reduced scale is much cheaper than decoding full size (and shrinking)."""
    flags = cv2.IMREAD_COLOR
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if 2 * (full_wh[0] // factor) >= depth_wh[0] and 2 * (full_wh[1] // factor) >= depth_wh[1]:
            flags = reduced
            break
    bgr = _imread(path, flags, "RGB frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second image


def read_confidence(table: CaptureTable, i: int, size_wh: tuple[int, int]) -> Optional[np.ndarray]:
    """Frame i's ARKit confidence (0/1/2) resized (nearest) to size_wh, or None when the capture has none."""
    if table.confidence_path[i] is None:
        return None
    confidence = _imread(table.root / table.confidence_path[i], cv2.IMREAD_UNCHANGED, "confidence map")
    return cv2.resize(confidence, size_wh, interpolation=cv2.INTER_NEAREST)


def depth_step(voxel_size_m: float, scene_depth_m: float, fx_px: float, px_per_voxel: float,
               max_step: int) -> int:
    """The subsampling step for fusing a depth map of focal length fx_px: the largest n <= max_step that leaves
    at least `px_per_voxel` pixels per voxel edge at `scene_depth_m` (one pixel spans depth / fx metres there);
    1 when px_per_voxel is 0 or the depth is unknown (NaN)."""
    if not (px_per_voxel > 0 and scene_depth_m > 0):
        return 1
    return max(1, min(max_step, int(voxel_size_m * fx_px / (scene_depth_m * px_per_voxel))))


def prepare_frame(table: CaptureTable, i: int, depth_dir: Path, cfg: FuseConfig,
                  depth_mm: Optional[np.ndarray] = None, scene_depth_m: float = math.nan) -> PreparedFrame:
    """Read frame i's depth (depth_dir/<stem>.png, unless given as `depth_mm`: its contents, uint16 mm), colour
    and confidence, masked; depth subsampled by `depth_step` at `scene_depth_m` (NaN: every pixel)."""
    if depth_mm is None:
        depth_mm = read_depth_mm(depth_dir / f"{table.stem(i)}.png", "rerun `promptmesh depth WORKDIR --force`")
    h, w = depth_mm.shape
    rgb_wh = (int(table.width[i]), int(table.height[i]))
    confidence = read_confidence(table, i, (w, h)) if cfg.min_confidence > 0 else None
    depth_mm = mask_depth_mm(depth_mm, confidence, cfg)
    K_depth = scale_intrinsics(table.K_rgb[i], rgb_wh, (w, h))
    step = depth_step(cfg.voxel_size_m, scene_depth_m, K_depth[0, 0], cfg.depth_px_per_voxel,
                      max_step=w // int(table.lidar_width[i]))  # never fewer pixels than the LiDAR measured
    if step > 1:  # last: each kept pixel is masked as it would be at full size
        depth_mm, K_depth = subsample_depth(depth_mm, K_depth, step)
    rgb = _read_colour(table.root / table.rgb_path[i], (w, h), rgb_wh)
    return PreparedFrame(
        index=i,
        depth_mm=depth_mm,
        rgb=rgb,
        K_depth=K_depth,
        K_color=scale_intrinsics(table.K_rgb[i], rgb_wh, (rgb.shape[1], rgb.shape[0])),
        n_valid=int(np.count_nonzero(depth_mm)),
    )


def integrate_frame(grid, frame: PreparedFrame, world_to_camera: np.ndarray, cfg: FuseConfig, device) -> bool:
    """Integrate one prepared frame into `grid` (allocating the blocks it touches first); False (and nothing
    done) for a frame without valid depth, which Open3D would refuse.

    world_to_camera: (4,4) OpenCV camera axes. The depth and colour arrays are wrapped, not copied, on the CPU.
    """
    import open3d as o3d

    if frame.n_valid == 0:
        return False
    depth = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(frame.depth_mm)).to(device)
    color = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(frame.rgb)).to(device)
    K = o3d.core.Tensor(open3d_intrinsics(frame.K_depth))  # float64 on the CPU, as Open3D wants
    K_color = o3d.core.Tensor(open3d_intrinsics(frame.K_color))
    extrinsic = o3d.core.Tensor(np.ascontiguousarray(world_to_camera, np.float64))
    trunc_voxels = float(cfg.sdf_trunc_voxels)
    blocks = grid.compute_unique_block_coordinates(depth, K, extrinsic, MM_PER_M, cfg.depth_max_m, trunc_voxels)
    grid.integrate(blocks, depth, color, K, K_color, extrinsic, MM_PER_M, cfg.depth_max_m, trunc_voxels)
    return True


# --------------------------------------------------------------------------- automatic voxel size
AUTO_VOXEL_FRAMES = 200
"""At most this many frames (evenly spread) are read for the scene depth of the automatic voxel size."""


def scene_depth_m(table: CaptureTable) -> float:
    """The depth the capture looks at: the median over frames (at most AUTO_VOXEL_FRAMES) of each LiDAR map's
    median valid depth, metres; NaN when no map has any (unreadable maps are left out: fusion reports them)."""
    medians = []
    for i in np.unique(np.linspace(0, len(table) - 1, min(len(table), AUTO_VOXEL_FRAMES)).round().astype(int)):
        try:
            depth_mm = read_depth_mm(table.root / table.lidar_path[i], "left out of the automatic voxel size")
        except PromptmeshError:
            continue
        valid = depth_mm[::2, ::2][depth_mm[::2, ::2] > 0]
        if valid.size:
            medians.append(float(np.median(valid)) / MM_PER_M)
    return float(np.median(medians)) if medians else math.nan


def auto_voxel_size_m(depth_m: float, cfg: FuseConfig) -> float:
    """cfg.auto_voxel_depth_ratio x depth_m, at least cfg.auto_voxel_min_m, rounded to 0.5 mm; 1 cm for an
    unknown depth (NaN)."""
    if not depth_m > 0:
        return 0.01
    return max(cfg.auto_voxel_min_m, round(cfg.auto_voxel_depth_ratio * depth_m * 2000) / 2000)


def resolve_voxel_size(cfg: FuseConfig, depth_m: float) -> tuple[FuseConfig, Optional[float]]:
    """(cfg with the voxel size, and the truncation in voxels, chosen from the scene depth `depth_m`
    (`scene_depth_m`) when the voxel is automatic (0); depth_m when it was chosen, None when it was given)."""
    if cfg.voxel_size_m > 0:
        return cfg, None
    voxel_m = auto_voxel_size_m(depth_m, cfg)
    return dataclasses.replace(cfg, voxel_size_m=voxel_m,
                               sdf_trunc_voxels=max(cfg.sdf_trunc_voxels, cfg.auto_trunc_min_m / voxel_m)), depth_m


def voxel_line(voxel_size_m: float, auto_depth_m: Optional[float]) -> str:
    """'10 mm' or '4.5 mm (automatic, for a median depth of 1.12 m)'."""
    return f"{round(voxel_size_m * 1000, 1):g} mm" + ("" if auto_depth_m is None else
                                           f" (automatic, for a median depth of {auto_depth_m:.2f} m)")


def fused_voxel_line(summary: dict) -> Optional[str]:
    """`voxel_line` of the voxel a fuse manifest's summary says was fused with; None when it does not say."""
    if "voxel_size_m" not in summary:
        return None
    return voxel_line(summary["voxel_size_m"], summary.get("voxel_auto_depth_m"))


# --------------------------------------------------------------------------- pre-sizing
def estimate_block_count(table: CaptureTable, cfg: FuseConfig, samples_per_row: int = 64,
                         margin: float = 1.5) -> int:
    """Number of voxel blocks the fusion will touch, estimated from the capture's LiDAR maps (cheap).

    Blocks are allocated only near observed surfaces (within the truncation distance along each ray),
    not in the free space of the camera frusta, so the estimate back-projects a grid of about
    `samples_per_row` pixels per row of each LiDAR map, at depth - trunc, depth and depth + trunc along
    each ray, counts the distinct blocks these points fall in over all frames and adds `margin` (denser
    depth maps, surface between the sampled pixels). Frames whose LiDAR map is unreadable are left out.
    Memory is bounded by the number of distinct blocks, not the number of frames. At the capture's poses:
    fusion pre-sizes while pose refinement may still run. Refinement's corrections (a few cm at most) align
    repeated views of a surface, so they make fewer distinct blocks, not more (the benchmark room: 57928 at
    the capture's poses, 57766 at the refined ones).
    """
    camera_to_world = table.camera_to_world
    block_m = cfg.voxel_size_m * cfg.block_resolution
    trunc_m = cfg.sdf_trunc_voxels * cfg.voxel_size_m
    keys: list[np.ndarray] = []
    n_gathered = 0
    for i in range(len(table)):
        try:
            depth_mm = read_depth_mm(table.root / table.lidar_path[i], "left out of the estimate")
        except PromptmeshError:  # the depth stage reports it
            continue
        h, w = depth_mm.shape
        stride = max(1, w // samples_per_row)
        K = scale_intrinsics(table.K_rgb[i], (int(table.width[i]), int(table.height[i])), (w, h))
        v, u = np.mgrid[0:h:stride, 0:w:stride]
        z = depth_mm[v, u].astype(np.float64) / MM_PER_M
        ok = (z >= cfg.depth_min_m) & (z <= cfg.depth_max_m) & (z > 0)
        u, v, z = u[ok], v[ok], z[ok]
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(z)], -1)
        step = trunc_m / np.linalg.norm(rays, axis=1)  # trunc along the ray, in units of z
        frame_keys = [_pack_block_keys(np.floor(transform_points(camera_to_world[i], rays * (z + dz)[:, None])
                                                / block_m).astype(np.int64)) for dz in (-step, 0.0, step)]
        keys.append(np.unique(np.concatenate(frame_keys)))
        n_gathered += len(keys[-1])
        if n_gathered > ESTIMATE_FLUSH_KEYS:
            keys = [np.unique(np.concatenate(keys))]
            n_gathered = len(keys[0])
    if not keys:
        return 1024
    return max(1024, int(len(np.unique(np.concatenate(keys))) * margin))


def _pack_block_keys(block: np.ndarray) -> np.ndarray:
    """(N,3) int64 block coordinates (|c| < 2**20 blocks) -> (N,) int64 keys, one per block."""
    b = block + (1 << 20)
    return (b[:, 0] << 42) | (b[:, 1] << 21) | b[:, 2]


@dataclass
class PresizedGrid:
    """What fusion decides before integrating: the voxel (automatic or given) and an empty grid sized for it."""

    cfg: FuseConfig
    """The config with the voxel size (and truncation) chosen (`resolve_voxel_size`)."""
    scene_depth_m: float
    auto_depth_m: Optional[float]
    """The scene depth the voxel was chosen for; None when it was given."""
    block_count: int
    """The grid's capacity (`estimate_block_count`)."""
    device: object
    """The Open3D device fusion runs on (`select_device`)."""
    grid: object
    """The empty VoxelBlockGrid (`new_grid`) on `device`."""


def presize_grid(table: CaptureTable, cfg: FuseConfig) -> PresizedGrid:
    """Choose the voxel from the capture's LiDAR depth, estimate the blocks at the capture's poses and allocate
    the grid: needs only the capture, so `run` does it while the depth stage runs (`presize_meanwhile`)."""
    depth_m = scene_depth_m(table)
    cfg, auto_depth_m = resolve_voxel_size(cfg, depth_m)
    block_count = estimate_block_count(table, cfg)
    device = select_device(cfg.device)
    return PresizedGrid(cfg, depth_m, auto_depth_m, block_count, device, new_grid(cfg, block_count, device))


def _presize_inputs(cfg: FuseConfig) -> FuseConfig:
    """The settings the grid is pre-sized ahead with and taken under: the config as given, less the confidence
    mask (which the depth model's handoff may change after the work started, and which pre-sizing ignores)."""
    return dataclasses.replace(cfg, min_confidence=0)


def presize_meanwhile(workdir: WorkDirLike, cfg: FuseConfig) -> None:
    """Start `presize_grid` on a thread now, for the next fuse stage on this work directory to take (its capture
    must be ingested). The runner calls this after ingest, while depth runs."""
    wd = WorkDir(workdir)
    ahead.start([("fuse.presized", wd.fuse)], _presize_inputs(cfg),
                lambda: presize_grid(CaptureTable.load(wd), cfg), name="fuse-presize")


def _presized_grid(cfg: FuseConfig, table: CaptureTable, out: Path) -> tuple[PresizedGrid, bool]:
    """(The grid pre-sized by `presize_meanwhile` with the same settings, or pre-sized now; whether it was
    pre-sized ahead)."""
    presized = ahead.take(("fuse.presized", out), _presize_inputs(cfg))
    return (presized, True) if presized is not None else (presize_grid(table, cfg), False)


# --------------------------------------------------------------------------- poses
def _refine_inputs(cfg: FuseConfig) -> FuseConfig:
    """The settings pose refinement is started with ahead (`refine_meanwhile`) and taken under: the config as
    given (voxel possibly automatic), less the confidence mask, which the depth model's handoff may change after
    refinement was started (refinement uses its own), and the device."""
    return dataclasses.replace(cfg, min_confidence=0, device="auto")


def refine_meanwhile(workdirs: list[WorkDirLike], cfg: FuseConfig) -> None:
    """Start importing Open3D and refining the poses (`refine_poses`) on a thread now, once, for the next `run`
    on each of these work directories to take (`pipeline.ahead`); nothing with refine_poses off. They must
    share one ingested capture (compare: one per depth model). Refinement needs only the capture (its LiDAR
    maps and poses), so the runner calls this after ingest, while depth runs."""
    if not cfg.refine_poses:
        return
    wds = [WorkDir(w) for w in workdirs]

    def refine() -> RefinedPoses:
        importlib.import_module("open3d")
        return refine_poses(CaptureTable.load(wds[0]), cfg)

    ahead.start([("fuse.refined", wd.fuse) for wd in wds], _refine_inputs(cfg), refine, name="refine-poses")


def _refined_poses(cfg: FuseConfig, table: CaptureTable, out: Path) -> tuple[Optional[RefinedPoses], bool]:
    """(Pose refinement's result, or None with refine_poses off; whether it was computed ahead, by
    `refine_meanwhile`). `cfg` as the stage was given it (`_refine_inputs`)."""
    if not cfg.refine_poses:
        return None, False
    refined = ahead.take(("fuse.refined", out), _refine_inputs(cfg))
    return (refined, True) if refined is not None else (refine_poses(table, cfg), False)


@dataclass
class LiveGrid:
    """The grid fusion just integrated, handed to the mesh stage in memory (`run` with hand_to_mesh), which
    starts the volume's save on a thread once it has extracted the surface. Its weights and colours are rounded
    as the saved volume stores them, so it meshes exactly as the saved file does."""

    grid: object
    fingerprint: str
    """The fuse manifest's fingerprint (written when the save completes)."""
    save: Callable[[], None]
    """Writes tsdf.npz, poses.parquet and then the manifest."""
    saved: Optional[Future] = None

    def start_save(self) -> Future:
        """`save` on a thread, started on the first call; completes (or raises) when the files are written."""
        if self.saved is None:
            self.saved = ahead.in_thread(self.save, name="fuse-save")
        return self.saved


def take_live_grid(workdir: WorkDirLike) -> Optional[LiveGrid]:
    """The grid `run` handed over for this work directory's mesh stage, or None (load the saved volume)."""
    return ahead.take(("fuse.live_grid", WorkDir(workdir).fuse), None)


def round_as_saved(grid) -> None:
    """Round a CPU grid's weights and colours in place as `save_volume` stores them (uint16, uint8 levels)."""
    weight, color = grid.attribute("weight").numpy(), grid.attribute("color").numpy()  # views on the CPU
    np.minimum(np.rint(weight, out=weight), 65535, out=weight)
    np.rint(np.clip(color, 0.0, 255.0, out=color), out=color)


# --------------------------------------------------------------------------- stage
def run(cfg: FuseConfig, workdir: WorkDirLike, depth_model: str, force: bool = False,
        hand_to_mesh: bool = False) -> Path:
    """Fuse WORKDIR/depth/<depth_model>/ into OUT/fuse/tsdf.npz (OUT = the WorkDir's `out`); returns OUT/fuse.

    The fingerprint covers the config (except `device`, which does not change the result) and the depth
    stage's manifest fingerprint, which in turn covers the capture. The depth manifest's handoff says whether
    to drop low-confidence pixels; this stage's handoff names the depth model for eval. Poses refined ahead
    by `refine_meanwhile` with the same settings are used instead of refining here.

    hand_to_mesh (CPU fusion only): return as soon as the frames are integrated, leaving the grid for the mesh
    stage (`take_live_grid`) with the saving of the volume, the poses and then the manifest; the caller must run
    `mesh.run` next, which saves them on a thread and waits for that (until then the stage is not done: its
    manifest is not written).
    """
    wd = WorkDir(workdir)
    out = wd.fuse
    depth_dir = wd.depth(depth_model)
    upstream = upstream_fingerprint(depth_dir, "depth")
    handed_maps = take_maps(depth_dir, upstream)  # the depth stage's maps, if it kept them in memory for us
    depth_manifest = Manifest.read(depth_dir)
    if not depth_manifest.handoff.get("fuse_confidence_mask", True) and cfg.min_confidence > 0:
        log.info("fuse: depth/%s declares its maps repaired (fuse_confidence_mask false): min_confidence %d -> 0",
                 depth_model, cfg.min_confidence)
        cfg = dataclasses.replace(cfg, min_confidence=0)  # the model already used or repaired those pixels
    settings = {"cfg": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "device"},
                "depth_model": depth_model, "volume_format": VOLUME_FORMAT}
    stamp = fingerprint(STAGE, settings, [upstream])
    if not force and is_current(out, stamp, HANDOFF):
        ahead.discard(("fuse.refined", out))
        ahead.discard(("fuse.presized", out))
        log.info("fuse: up to date (%s)", out)
        return out

    table = CaptureTable.load(wd)
    t0 = time.perf_counter()
    invalidate(out)  # an interrupted rerun must not leave the old manifest vouching for new files
    given_cfg = cfg
    presized, presized_ahead = _presized_grid(cfg, table, out)  # while refinement may still run
    cfg, depth_m, auto_depth_m, block_count, device, grid = (
        presized.cfg, presized.scene_depth_m, presized.auto_depth_m, presized.block_count, presized.device,
        presized.grid)
    del presized  # the grid's only holder is `grid` (the save thread may free it)
    t_refine = time.perf_counter()
    refined, refined_ahead = _refined_poses(given_cfg, table, out)
    camera_to_world = table.camera_to_world if refined is None else refined.camera_to_world
    log.info("fuse: %d frames of depth/%s on %s; voxel %s, trunc %.2f cm, depth %.2f-%.1f m, min confidence "
             "%d, %d blocks pre-sized%s", len(table), depth_model, device,
             voxel_line(cfg.voxel_size_m, auto_depth_m), cfg.sdf_trunc_voxels * cfg.voxel_size_m * 100,
             cfg.depth_min_m, cfg.depth_max_m, cfg.min_confidence, block_count,
             "; poses refined while depth ran" if refined_ahead else "")
    world_to_camera = np.linalg.inv(camera_to_world)
    n_valid_px = 0
    fused_wh = None  # the fused depth size (after `depth_step`), for the summary
    empty = []
    n_handed = len(handed_maps)

    def prepare(i: int) -> PreparedFrame:
        return prepare_frame(table, i, depth_dir, cfg, handed_maps.pop(table.stem(i), None), depth_m)

    t_integrate = time.perf_counter()
    with closing(prefetch(prepare, range(len(table)), PREFETCH_FRAMES, PREFETCH_WORKERS, name="fuse-read")) as frames:
        for f in tqdm(frames, total=len(table), desc="fuse", unit="frame", disable=None, leave=False):
            if not integrate_frame(grid, f, world_to_camera[f.index], cfg, device):
                empty.append(table.stem(f.index))
            n_valid_px += f.n_valid
            fused_wh = f.depth_mm.shape[::-1]
            log.debug("fuse: frame %s, %d valid depth pixels, %d blocks", table.stem(f.index), f.n_valid,
                      grid.hashmap().size())
    if empty:
        log.warning("fuse: %d frames have no depth within [%g, %g] m and confidence >= %d, so add nothing (%s)",
                    len(empty), cfg.depth_min_m, cfg.depth_max_m, cfg.min_confidence,
                    ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else ""))
    t_save = time.perf_counter()
    n_blocks = int(grid.hashmap().size())
    if n_blocks == 0:
        raise PromptmeshError(f"{depth_dir}: no depth within [{cfg.depth_min_m}, {cfg.depth_max_m}] m and confidence "
                              f">= {cfg.min_confidence} in any frame; check the depth maps or lower fuse.min_confidence")

    import open3d as o3d

    hand_over = hand_to_mesh and device.get_type() == o3d.core.Device.DeviceType.CPU

    def save() -> None:
        """The volume, the poses, then the manifest (last: it vouches for the other two)."""
        t_saving = time.perf_counter()
        save_volume(grid, cfg, wd.tsdf)
        if refined is None:
            write_poses(wd.poses_parquet, table.frame_index, camera_to_world)
        else:
            write_poses(wd.poses_parquet, table.frame_index, camera_to_world, refined.correction_m,
                        refined.correction_deg, refined.accepted)
        t_end = time.perf_counter()
        Manifest(STAGE, stamp, outputs=[wd.tsdf.name, wd.poses_parquet.name], settings=settings,
                 summary={"frames": len(table), "frames_without_depth": len(empty), "blocks": n_blocks,
                          "voxel_size_m": cfg.voxel_size_m, "voxel_auto_depth_m": auto_depth_m,
                          "sdf_trunc_m": cfg.sdf_trunc_voxels * cfg.voxel_size_m,
                          "blocks_presized": block_count, "depth_fused_wh": list(fused_wh),
                          "valid_depth_pixels": n_valid_px, "device": str(device), "seconds": round(t_end - t0, 3),
                          "refine": refined.summary if refined is not None else None,
                          "refined_ahead": refined_ahead, "presized_ahead": presized_ahead,
                          "depth_maps_from_memory": n_handed,
                          "seconds_refine": refined.summary["seconds"] if refined is not None else 0.0,
                          "seconds_presize": round(t_refine - t0, 3),
                          "seconds_integrate": round(t_save - t_integrate, 3),
                          "seconds_save": round(t_end - t_saving, 3), "saved_while_meshing": hand_over},
                 handoff={"depth_model": depth_model}).write(out)
        log.info("fuse: %d frames in %.1f s (integration %.1f frames/s, depth at %dx%d), %d blocks (%d pre-sized) "
                 "-> %s", len(table), t_end - t0, len(table) / max(t_save - t_integrate, 1e-9), *fused_wh, n_blocks,
                 block_count, wd.tsdf)

    if not hand_over:
        save()
        return out
    round_as_saved(grid)
    ahead.put(("fuse.live_grid", out), None, LiveGrid(grid, stamp, save))
    return out


# --------------------------------------------------------------------------- the saved volume
def _gather_blocks(buffer, buf_indices: np.ndarray) -> np.ndarray:
    """Rows `buf_indices` of an Open3D attribute buffer (capacity, R, R, R, C) as a numpy array."""
    import open3d as o3d

    if buffer.device.get_type() == o3d.core.Device.DeviceType.CPU:
        return buffer.numpy()[buf_indices]  # numpy view of the buffer, then one gather
    return buffer[o3d.core.Tensor(buf_indices, device=buffer.device)].cpu().numpy()


def save_volume(grid, cfg: FuseConfig, path: Path) -> Path:
    """Write `grid`'s allocated blocks atomically in the compact format of the module docstring, streamed a
    slice of blocks at a time (no full copy of the volume is ever held)."""
    import open3d as o3d

    hashmap = grid.hashmap()
    buf_indices = hashmap.active_buf_indices().to(o3d.core.int64).cpu().numpy()
    keys = _gather_blocks(hashmap.key_tensor(), buf_indices).astype(np.int32)
    order = np.lexsort(keys.T[::-1])  # by x, then y, then z: the same file whatever the allocation order
    keys, buf_indices = keys[order], buf_indices[order]
    n, r = len(keys), cfg.block_resolution

    def sliced(name: str, convert: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
        buffer = grid.attribute(name)
        for lo in range(0, n, SAVE_SLICE_BLOCKS):
            yield convert(_gather_blocks(buffer, buf_indices[lo:lo + SAVE_SLICE_BLOCKS]))

    members = {
        "block_keys": ((n, 3), np.int32, [keys]),
        "tsdf": ((n, r, r, r), np.float32, sliced("tsdf", lambda t: t[..., 0])),
        "weight": ((n, r, r, r), np.uint16, sliced("weight", lambda w: np.minimum(np.rint(w[..., 0]), 65535))),
        "color": ((n, r, r, r, 3), np.uint8, sliced("color", lambda c: np.rint(np.clip(c, 0.0, 255.0)))),
        "voxel_size_m": ((), np.float64, [np.float64(cfg.voxel_size_m)]),
        "block_resolution": ((), np.int64, [np.int64(r)]),
    }
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype, parts) in members.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:  # what np.savez writes, in pieces
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
                for part in parts:
                    f.write(np.ascontiguousarray(part, dtype).tobytes())
    return path


def load_grid(workdir: WorkDirLike, device: str = "CPU:0"):
    """The VoxelBlockGrid saved by `run` in OUT/fuse/ (see the module docstring), on `device`."""
    import open3d as o3d

    path = WorkDir(workdir).tsdf
    fix = "rerun `promptmesh fuse WORKDIR --force`"
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("block_keys", "tsdf", "weight", "color", "voxel_size_m", "block_resolution")}
    except FileNotFoundError:
        raise PromptmeshError(f"{path}: TSDF volume missing; {fix}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut file, missing member
        raise PromptmeshError(f"{path}: unreadable TSDF volume ({type(e).__name__}: {e}); {fix}") from None
    n, r = len(arrays["block_keys"]), int(arrays["block_resolution"])
    cfg = FuseConfig(voxel_size_m=float(arrays["voxel_size_m"]), block_resolution=r)
    dev = o3d.core.Device(device)
    grid = new_grid(cfg, max(n, 1), dev)
    hashmap = grid.hashmap()
    for lo in range(0, n, SAVE_SLICE_BLOCKS):  # in slices: the float copies stay small
        part = slice(lo, lo + SAVE_SLICE_BLOCKS)
        values = [arrays["tsdf"][part, ..., None], arrays["weight"][part, ..., None].astype(np.float32),
                  arrays["color"][part].astype(np.float32)]
        hashmap.insert(_tensor(arrays["block_keys"][part], dev), [_tensor(v, dev) for v in values])
    return grid


def _tensor(array: np.ndarray, device):
    """A numpy array as an Open3D tensor on `device` (no copy on the CPU)."""
    import open3d as o3d

    return o3d.core.Tensor.from_numpy(np.ascontiguousarray(array)).to(device)
