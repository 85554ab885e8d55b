"""ScanNet++ iPhone reader: a scene folder of the ScanNet++ release -> CaptureSource (OpenCV axes, metres).

Layout (facts from the public toolkit, scannetpp/scannetpp: common/scene_release.py,
iphone/prepare_iphone_data.py, common/render.py, common/utils/colmap.py):

    <scene_id>/
      iphone/rgb.mkv                    60 fps video, 1920x1440 (or extracted rgb/frame_NNNNNN.jpg, frame
                                        N = video frame N, as the toolkit's ffmpeg `-start_number 0` writes them)
      iphone/depth.bin                  LiDAR depth, 256x192, one of two encodings (both decoded here):
                                          - the whole file is one raw-deflate (zlib, wbits=-15) stream of
                                            float32 metres, frames back to back;
                                          - per frame: a 4-byte little-endian byte count, then an lz4 block of
                                            uint16 millimetres or a raw-deflate block of float32 metres.
      iphone/pose_intrinsic_imu.json    {"frame_NNNNNN": {"timestamp", "intrinsic" 3x3 at 1920x1440,
                                         "pose", "aligned_pose" 4x4, "imu"}}
      iphone/colmap/{cameras,images}.txt  COLMAP text model of a subset of the frames: world-to-camera
                                        (qvec w,x,y,z; tvec), OPENCV camera (fx fy cx cy k1 k2 p1 p2)
      iphone/render_depth/frame_NNNNNN.png  optional: the GT mesh rendered with the COLMAP cameras (uint16 mm)
      scans/mesh_aligned_0.05.ply       the FARO laser-scan mesh (GT), metres
      merge_dslr_iphone/                optional (PromptDA's poses, HF dataset haotongl/scannetpp_zipnerf):
        colmap/sparse_render_rgb/{cameras,images}.bin|.txt   COLMAP re-run on DSLR + iPhone images together
        images/iphone/frame_NNNNNN.jpg  the iPhone frames of that model
        render_depth/frame_NNNNNN.png   GT mesh rendered for them (uint16 mm)

Conventions, as this reader resolves them:
- `aligned_pose` is camera-to-world with OpenCV camera axes in the frame of the laser-scan mesh. The toolkit
  never parses the JSON; this is what public users of the file do (they ray-cast mesh_aligned_0.05.ply with
  `aligned_pose` as camera-to-world and `intrinsic` as a pinhole K), and the fixture tests check exactly this
  reading. `pose` (not used) is the raw ARKit trajectory in its own session frame.
- COLMAP images are world-to-camera in the mesh frame (common/render.py renders the mesh with them).
  COLMAP puts the centre of the top-left pixel at (0.5, 0.5), OpenCV at (0, 0): cx, cy lose 0.5.
- COLMAP cameras carry lens distortion. With a COLMAP pose source every frame's images (RGB, LiDAR, GT depth)
  are taken to be in that distorted camera and are remapped to one pinhole camera, K_rect =
  cv2.getOptimalNewCameraMatrix(K, dist, alpha=0) at the same size (every output pixel valid; RGB bilinear,
  depth nearest). ARKit intrinsics are pinhole already.
- ScanNet++ has no LiDAR confidence maps.
"""
from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Literal, Optional

import cv2
import lz4.block
import numpy as np

from ..capture import CaptureSource, SourceFrame
from ..errors import PromptmeshError
from ..geometry import intrinsics_matrix, quaternion_to_matrix, scale_intrinsics
from .. import images
from .common import VideoCursor, clean_depth_m, jpeg_size, load_json, read_bytes, read_depth_png_m, read_jpeg_rgb

log = logging.getLogger(__name__)

DEPTH_WH = (256, 192)
"""(w, h) of the iPhone LiDAR maps in depth.bin."""
VIDEO_FPS = 60.0
"""Frame rate of iphone/rgb.mkv; timestamps fall back to frame / VIDEO_FPS when the JSON has none."""
MERGED_DIR = "merge_dslr_iphone"
MERGED_MODEL = Path(MERGED_DIR) / "colmap" / "sparse_render_rgb"
GT_MESH = Path("scans") / "mesh_aligned_0.05.ply"
PoseSource = Literal["arkit", "colmap", "merged"]
POSE_SOURCES: tuple[str, ...] = ("arkit", "colmap", "merged")

_FRAME_RE = re.compile(r"frame_(\d+)")


def frame_number(name: str) -> int:
    """'frame_000123', 'iphone/frame_000123.jpg' -> 123."""
    m = _FRAME_RE.search(Path(name).name)
    if m is None:
        raise ValueError(f"not a ScanNet++ frame name: {name!r}")
    return int(m.group(1))


def gt_mesh_path(scene_dir: Path) -> Path:
    """The FARO laser-scan mesh of a scene (the benchmark's ground truth)."""
    return Path(scene_dir) / GT_MESH


# ----------------------------------------------------------------------------- depth.bin
class DepthBin:
    """iphone/depth.bin in either encoding (module doc); frames are (192, 256) float32 metres, 0 = none.

    The per-frame encoding is recognised by its byte counts chaining exactly to the end of the file (cheap:
    seeks only); anything else is read as one raw-deflate stream, which can only be decoded in order.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise PromptmeshError(f"{self.path}: depth.bin missing; download the scene's iphone data")
        self.offsets = self._record_offsets()
        self.kind = "records" if self.offsets is not None else "stream"

    @property
    def frame_bytes(self) -> int:
        return DEPTH_WH[0] * DEPTH_WH[1]

    def _record_offsets(self) -> Optional[list[tuple[int, int]]]:
        """[(offset, size)] when the file is a chain of size-prefixed records, else None."""
        total = self.path.stat().st_size
        offsets, pos = [], 0
        with open(self.path, "rb") as f:
            while pos < total:
                head = f.read(4)
                if len(head) < 4:
                    return None
                (size,) = struct.unpack("<I", head)
                if size == 0 or pos + 4 + size > total:
                    return None
                offsets.append((pos + 4, size))
                pos += 4 + size
                f.seek(pos)
        return offsets or None

    def decode_record(self, data: bytes, index: int) -> np.ndarray:
        """One record: lz4 uint16 millimetres, else raw-deflate float32 metres (the toolkit's order)."""
        n = self.frame_bytes
        try:
            raw = lz4.block.decompress(data, uncompressed_size=2 * n)
        except lz4.block.LZ4BlockError:
            raw = b""
        if len(raw) == 2 * n:
            return images.depth_mm_to_m(np.frombuffer(raw, "<u2").reshape(DEPTH_WH[::-1]))
        try:
            raw = zlib.decompress(data, wbits=-zlib.MAX_WBITS)
        except zlib.error:
            raw = b""
        if len(raw) != 4 * n:
            raise PromptmeshError(f"{self.path}: depth frame {index} is neither an lz4 uint16 nor a raw-deflate "
                                  "float32 256x192 block; re-download depth.bin")
        return clean_depth_m(np.frombuffer(raw, "<f4").reshape(DEPTH_WH[::-1]))

    def read(self, index: int) -> np.ndarray:
        """Frame `index` of a per-frame file (random access)."""
        assert self.offsets is not None, "random access needs the per-frame encoding"
        if index >= len(self.offsets):
            raise PromptmeshError(f"{self.path}: no depth frame {index} (file has {len(self.offsets)})")
        offset, size = self.offsets[index]
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return self.decode_record(data, index)

    def stream(self, chunk_bytes: int = 1 << 20) -> Iterator[np.ndarray]:
        """Frames of a raw-deflate stream file, in order, decoded incrementally (memory stays one chunk)."""
        frame = 4 * self.frame_bytes
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        buf = bytearray()
        with open(self.path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                try:
                    buf += inflater.decompress(chunk)
                except zlib.error as e:
                    raise PromptmeshError(f"{self.path}: corrupt depth stream ({e}); re-download the scene") from None
                while len(buf) >= frame:
                    yield clean_depth_m(np.frombuffer(bytes(buf[:frame]), "<f4").reshape(DEPTH_WH[::-1]))
                    del buf[:frame]
            buf += inflater.flush()
        while len(buf) >= frame:
            yield clean_depth_m(np.frombuffer(bytes(buf[:frame]), "<f4").reshape(DEPTH_WH[::-1]))
            del buf[:frame]


# ----------------------------------------------------------------------------- COLMAP models
@dataclass
class ColmapCamera:
    width: int
    height: int
    K: np.ndarray
    """(3,3) pinhole part, OpenCV pixel-centre convention (COLMAP cx, cy minus 0.5)."""
    dist: np.ndarray
    """(5,) OpenCV distortion k1 k2 p1 p2 k3 (zeros for pinhole models)."""


# model id -> (name, number of params); only the models that map onto OpenCV's distortion are supported.
_COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                  4: ("OPENCV", 8)}
_COLMAP_NPARAMS = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12}


def _colmap_camera(model: str, width: int, height: int, params: list[float], where: str) -> ColmapCamera:
    p = [float(v) for v in params]
    dist = np.zeros(5)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist[: len(p) - 3] = p[3:]  # SIMPLE_RADIAL: k1; RADIAL: k1 k2
    elif model in ("PINHOLE", "OPENCV"):
        fx, fy, cx, cy = p[:4]
        dist[: len(p) - 4] = p[4:]  # OPENCV: k1 k2 p1 p2
    else:
        raise PromptmeshError(f"{where}: COLMAP camera model {model} is not supported; use PINHOLE or OPENCV")
    return ColmapCamera(int(width), int(height), intrinsics_matrix(fx, fy, cx - 0.5, cy - 0.5), dist)


def _world_to_camera(qvec_wxyz, tvec) -> np.ndarray:
    q = np.asarray(qvec_wxyz, np.float64)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.r_[q[1:], q[0]])  # COLMAP stores (w, x, y, z); ours is scalar-last
    T[:3, 3] = np.asarray(tvec, np.float64)
    return T


def read_colmap_model(folder: Path) -> tuple[dict[int, ColmapCamera], list[tuple[str, int, np.ndarray]]]:
    """cameras.{bin,txt} and images.{bin,txt} of a COLMAP model.

    Returns ({camera_id: camera}, [(image name, camera_id, (4,4) world_to_camera)]).
    """
    folder = Path(folder)
    if (folder / "cameras.bin").is_file() and (folder / "images.bin").is_file():
        return _read_cameras_bin(folder / "cameras.bin"), _read_images_bin(folder / "images.bin")
    if (folder / "cameras.txt").is_file() and (folder / "images.txt").is_file():
        return _read_cameras_txt(folder / "cameras.txt"), _read_images_txt(folder / "images.txt")
    raise PromptmeshError(f"{folder}: no COLMAP model (cameras/images .bin or .txt); download the scene's "
                          "colmap folder or choose another pose source")


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for line in read_bytes(path, "COLMAP cameras").decode().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        e = line.split()
        cams[int(e[0])] = _colmap_camera(e[1], int(e[2]), int(e[3]), e[4:], str(path))
    return cams


def _read_images_txt(path: Path) -> list[tuple[str, int, np.ndarray]]:
    lines = [ln for ln in read_bytes(path, "COLMAP images").decode().splitlines() if not ln.startswith("#")]
    out = []
    for line in lines[::2]:  # every image has a second line of 2D points
        e = line.split()
        if len(e) < 10:
            continue
        out.append((e[9], int(e[8]), _world_to_camera([float(v) for v in e[1:5]], [float(v) for v in e[5:8]])))
    return out


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    data = read_bytes(path, "COLMAP cameras")
    (n,), pos = struct.unpack_from("<Q", data, 0), 8
    cams = {}
    for _ in range(n):
        cam_id, model_id, w, h = struct.unpack_from("<iiQQ", data, pos)
        pos += 24
        k = _COLMAP_NPARAMS.get(model_id)
        if k is None:
            raise PromptmeshError(f"{path}: unknown COLMAP camera model id {model_id}; the file may be corrupt")
        params = struct.unpack_from(f"<{k}d", data, pos)
        pos += 8 * k
        name = _COLMAP_MODELS.get(model_id, (f"model id {model_id}",))[0]
        cams[cam_id] = _colmap_camera(name, w, h, list(params), str(path))
    return cams


def _read_images_bin(path: Path) -> list[tuple[str, int, np.ndarray]]:
    data = read_bytes(path, "COLMAP images")
    (n,), pos = struct.unpack_from("<Q", data, 0), 8
    out = []
    for _ in range(n):
        vals = struct.unpack_from("<i7di", data, pos)
        pos += 64
        end = data.index(b"\0", pos)
        name = data[pos:end].decode()
        pos = end + 1
        (n_points,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + 24 * n_points  # x, y (double), point3D id (int64)
        out.append((name, vals[8], _world_to_camera(vals[1:5], vals[5:8])))
    return out


# ----------------------------------------------------------------------------- undistortion
class Undistorter:
    """Remap images of a distorted COLMAP camera to the pinhole camera K_rect (same size, alpha=0).

    Works at any image size with the camera's aspect (RGB, the 256x192 LiDAR map, GT depth): K scales with
    the size, the distortion coefficients (normalised coordinates) do not.
    """

    def __init__(self, cam: ColmapCamera):
        self.size = (cam.width, cam.height)
        self.K_raw = cam.K
        self.dist = cam.dist
        K_rect, _ = cv2.getOptimalNewCameraMatrix(cam.K, cam.dist, self.size, 0, self.size)
        self.K_rect = np.asarray(K_rect, np.float64)
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, image: np.ndarray, nearest: bool) -> np.ndarray:
        wh = (image.shape[1], image.shape[0])
        if wh not in self._maps:
            self._maps[wh] = cv2.initUndistortRectifyMap(
                scale_intrinsics(self.K_raw, self.size, wh), self.dist, None,
                scale_intrinsics(self.K_rect, self.size, wh), wh, cv2.CV_32FC1)
        mx, my = self._maps[wh]
        return cv2.remap(image, mx, my, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ----------------------------------------------------------------------------- reader
@dataclass
class _Pose:
    camera_to_world: np.ndarray
    K_rgb: np.ndarray
    undistort: Optional[Undistorter] = None
    rgb_path: Optional[Path] = None
    """A JPEG of this frame outside iphone/rgb (merged model images)."""


@dataclass(frozen=True)
class ScanNetPPReader:
    """ScanNet++ scene folder -> CaptureSource. `pose_source` picks the camera poses (module doc):

    - "arkit":  iphone/pose_intrinsic_imu.json `aligned_pose` + `intrinsic`, every frame (default);
    - "colmap": iphone/colmap, the toolkit's COLMAP model (a subset of frames, undistorted);
    - "merged": merge_dslr_iphone/colmap/sparse_render_rgb, the DSLR+iPhone COLMAP re-run PromptDA used.
    """

    pose_source: PoseSource = "arkit"
    name: ClassVar[str] = "scannetpp"
    description: ClassVar[str] = ("ScanNet++ scene folder (iphone/ with depth.bin, rgb.mkv or rgb/, "
                                  "pose_intrinsic_imu.json or colmap/)")

    def __post_init__(self):
        if self.pose_source not in POSE_SOURCES:
            raise PromptmeshError(f"ScanNet++ pose source {self.pose_source!r}: choose one of {list(POSE_SOURCES)}")

    def sniff(self, path: Path) -> bool:
        iphone = Path(path) / "iphone"
        return (iphone / "depth.bin").is_file() and ((iphone / "pose_intrinsic_imu.json").is_file()
                                                     or (iphone / "colmap").is_dir())

    def open(self, path: Path) -> CaptureSource:
        scene = Path(path)
        iphone = scene / "iphone"
        depth_bin = DepthBin(iphone / "depth.bin")
        meta_path = iphone / "pose_intrinsic_imu.json"
        meta = load_json(meta_path, "pose/intrinsics") if meta_path.is_file() else {}
        timestamps = {frame_number(k): float(v["timestamp"]) for k, v in meta.items() if "timestamp" in v}
        poses = self._poses(scene, meta, meta_path)
        if not poses:
            raise PromptmeshError(f"{scene}: no frames with a pose from the {self.pose_source} source; try "
                                  "another pose source")
        rgb_dir = iphone / "rgb"
        video = iphone / "rgb.mkv"
        first = poses[min(poses)]
        if first.rgb_path is not None:
            rgb_size = jpeg_size(first.rgb_path)
        elif rgb_dir.is_dir() and any(rgb_dir.glob("frame_*.jpg")):
            rgb_size = jpeg_size(next(rgb_dir.glob("frame_*.jpg")))
        elif video.is_file():
            rgb_size = _video_size(video)
        else:
            raise PromptmeshError(f"{iphone}: neither rgb.mkv nor rgb/frame_*.jpg; download the iphone video")
        gt_dir = scene / MERGED_DIR / "render_depth" if self.pose_source == "merged" else iphone / "render_depth"
        log.info("scannetpp: %s, %d posed frames (%s poses), depth.bin %s", scene.name, len(poses),
                 self.pose_source, depth_bin.kind)

        def gt_depth(frame_index: int) -> Optional[np.ndarray]:
            p = gt_dir / f"frame_{frame_index:06d}.png"
            if not p.is_file():
                return None
            d = read_depth_png_m(p)
            und = poses[frame_index].undistort if frame_index in poses else None
            return und(d, nearest=True) if und is not None else d

        def frames() -> Iterator[SourceFrame]:
            return self._frames(scene, poses, timestamps, depth_bin, rgb_size)

        return CaptureSource(format=self.name, path=scene, n_frames=len(poses), rgb_size=rgb_size,
                             lidar_size=DEPTH_WH, frames=frames, has_confidence=False, fps=VIDEO_FPS,
                             gt_depth=gt_depth if gt_dir.is_dir() else None)

    # -- poses
    def _poses(self, scene: Path, meta: dict, meta_path: Path) -> dict[int, _Pose]:
        if self.pose_source == "arkit":
            if not meta:
                raise PromptmeshError(f"{meta_path}: missing; it holds the ARKit poses (or use pose source colmap)")
            out = {}
            for key, v in meta.items():
                try:
                    c2w = np.asarray(v["aligned_pose"], np.float64).reshape(4, 4)
                    K = np.asarray(v["intrinsic"], np.float64).reshape(3, 3)
                except (KeyError, ValueError, TypeError):
                    raise PromptmeshError(f"{meta_path}: {key} lacks a 4x4 aligned_pose or 3x3 intrinsic; "
                                          "re-download the file") from None
                out[frame_number(key)] = _Pose(c2w, K)  # already camera-to-world, OpenCV axes, mesh frame
            return dict(sorted(out.items()))
        folder = scene / "iphone" / "colmap" if self.pose_source == "colmap" else scene / MERGED_MODEL
        cams, images = read_colmap_model(folder)
        undistorters = {cid: Undistorter(c) for cid, c in cams.items() if np.any(c.dist != 0)}
        out = {}
        for name, cam_id, w2c in images:
            if self.pose_source == "merged" and not name.startswith("iphone/"):
                continue  # DSLR images of the merged model
            if cam_id not in cams:
                raise PromptmeshError(f"{folder}: image {name} uses camera {cam_id}, which is not in the model")
            und = undistorters.get(cam_id)
            K = und.K_rect if und is not None else cams[cam_id].K
            rgb = scene / MERGED_DIR / "images" / name if self.pose_source == "merged" else None
            out[frame_number(name)] = _Pose(np.linalg.inv(w2c), K, und, rgb)  # COLMAP: world-to-camera
        return dict(sorted(out.items()))

    # -- frames
    def _frames(self, scene: Path, poses: dict[int, _Pose], timestamps: dict[int, float], depth_bin: DepthBin,
                rgb_size: tuple[int, int]) -> Iterator[SourceFrame]:
        iphone = scene / "iphone"
        rgb_dir = iphone / "rgb"
        from_video = not (rgb_dir.is_dir() and any(rgb_dir.glob("frame_*.jpg"))) and all(
            p.rgb_path is None for p in poses.values())
        # video frames are decoded when asked for, in order (`VideoCursor`): the frames ingest does not keep are
        # grabbed, never converted to images
        video = VideoCursor(iphone / "rgb.mkv", rgb_size, "the scene has a pose for it") if from_video else None
        depth_stream = enumerate(depth_bin.stream()) if depth_bin.kind == "stream" else None
        try:
            for index, pose in poses.items():
                jpeg = pose.rgb_path or rgb_dir / f"frame_{index:06d}.jpg"
                if video is not None:
                    load_bgr = _video_loader(video, index, pose.undistort)
                    load_rgb = lambda b=load_bgr: cv2.cvtColor(b(), cv2.COLOR_BGR2RGB)
                else:
                    load_bgr, load_rgb = None, _jpeg_loader(jpeg, pose.undistort)
                if depth_stream is not None:
                    depth_now = _advance(depth_stream, index)
                    load_depth = _checked_depth(depth_now, f"{depth_bin.path} frame {index}", pose.undistort)
                else:
                    load_depth = _record_loader(depth_bin, index, pose.undistort)
                yield SourceFrame(
                    frame_index=index, timestamp_s=timestamps.get(index, index / VIDEO_FPS),
                    camera_to_world=pose.camera_to_world, K_rgb=pose.K_rgb, rgb_size=rgb_size,
                    load_rgb=load_rgb, load_bgr=load_bgr, load_depth_m=load_depth,
                    rgb_jpeg_path=jpeg if video is None and pose.undistort is None else None,
                    source_name=f"{scene.name}/frame_{index:06d}")
        except GeneratorExit:  # stopped early: nothing more will be read
            if video is not None:
                video.close()
            raise
        # exhausted: the consumer may still load the frames it holds (as in the Stray reader); the decoder is
        # released with the last frame that refers to it


def _video_size(video: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise PromptmeshError(f"{video}: cannot open the video; check the file or extract rgb/ with the toolkit")
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def _advance(stream: Iterator[tuple[int, np.ndarray]], index: int) -> Optional[np.ndarray]:
    """Next frame `index` of an in-order (i, depth) stream; None when the stream ended before it."""
    for i, depth in stream:
        if i == index:
            return depth
    return None


def _video_loader(video: VideoCursor, index: int, und: Optional[Undistorter]) -> Callable[[], np.ndarray]:
    """Frame `index` of the video, BGR (OpenCV's order), undistorted when the camera needs it; do not modify it
    (without undistortion it is the cursor's cached frame)."""
    def load() -> np.ndarray:
        bgr = video.read(index)
        return und(bgr, nearest=False) if und is not None else bgr
    return load


def _checked_depth(depth: Optional[np.ndarray], name: str, und: Optional[Undistorter]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        if depth is None:
            raise PromptmeshError(f"{name}: depth.bin ends before this frame; re-download depth.bin")
        return und(depth, nearest=True) if und is not None else depth
    return load


def _jpeg_loader(path: Path, und: Optional[Undistorter]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        rgb = read_jpeg_rgb(path)
        return und(rgb, nearest=False) if und is not None else rgb
    return load


def _record_loader(depth_bin: DepthBin, index: int, und: Optional[Undistorter]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        d = depth_bin.read(index)
        return und(d, nearest=True) if und is not None else d
    return load


def scene_dirs(root: Path) -> dict[str, Path]:
    """Scene folders under a ScanNet++ root: ROOT/data/<scene> (the release layout) or ROOT/<scene>."""
    root = Path(root)
    base = root / "data" if (root / "data").is_dir() else root
    reader = ScanNetPPReader()
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir() and reader.sniff(p)} if base.is_dir() else {}
