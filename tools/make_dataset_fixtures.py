"""Small synthetic scenes in the exact on-disk layouts of ScanNet++ (iPhone) and ARKitScenes (raw), for reader
and benchmark tests. The datasets themselves cannot be redistributed.

Written from the format facts (see pipeline/readers/scannetpp.py and arkitscenes.py docstrings for their
sources), not by calling reader code, so that a round trip catches a convention flipped on either side:
rotations go through scipy (`Rotation`), quaternions in COLMAP's (w, x, y, z) order, axis-angle for .traj.
Scenes are rendered with tools/synthetic_scene.py (ray casting a synthetic room).

ScanNet++ fixtures put the laser-scan ("mesh") frame z up, rotated and shifted from the synthetic y-up world, so
that a pose read in the wrong frame or direction misses the GT mesh. The raw ARKit `pose` is written in a third
frame (ARKit camera axes) that a reader must not use. Optional lens distortion makes the COLMAP cameras
OPENCV with k1, k2, p1, p2 and renders every image (RGB, LiDAR, GT depth) through it.

    python tools/make_dataset_fixtures.py OUT [--scenes 3] [--frames 8]

writes OUT/scannetpp/data/<scene>/... and OUT/arkitscenes/raw/Validation/<video_id>/...
"""
from __future__ import annotations

import argparse
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import lz4.block
import numpy as np
import open3d as o3d
import trimesh
from scipy.spatial.transform import Rotation

from synthetic_scene import (SCENES, Renderer, arkit_intrinsics, camera_rays, camera_trajectory, drifted_poses,
                             scene_mesh, shade, simulate_lidar)  # tools/ is on sys.path (script, or tests/conftest.py)

DEPTH_WH = (256, 192)
"""The iPhone LiDAR map size both datasets store."""
FPS = 60.0
_FLIP_CAMERA_YZ = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> ARKit camera axes (its own inverse)


def mesh_from_world(angle_deg: float = 90.0, shift_m=(3.0, -1.5, 0.4)) -> np.ndarray:
    """(4,4) synthetic y-up world -> a z-up "laser scan" frame: rotation about x, then a shift."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("x", angle_deg, degrees=True).as_matrix()
    T[:3, 3] = shift_m
    return T


def _rays(K: np.ndarray, size: tuple[int, int], dist: np.ndarray) -> np.ndarray:
    """(h, w, 3) camera rays (z = 1) through the pixels of a camera with OpenCV distortion `dist`."""
    w, h = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    if not np.any(dist):
        return camera_rays(K, u, v)
    pts = np.stack([u.ravel(), v.ravel()], -1).reshape(-1, 1, 2)
    xy = cv2.undistortPoints(pts, K, dist, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    xy = xy.reshape(h, w, 2)
    return np.concatenate([xy, np.ones((h, w, 1))], -1).astype(np.float32)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise RuntimeError(f"could not write {path}")


def _mm(depth_m: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(depth_m * 1000.0), 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------------------- ScanNet++
@dataclass
class ScanNetPPTruth:
    scene_dir: Path
    gt_mesh: Path
    camera_to_world: np.ndarray
    """(N,4,4) true poses, OpenCV axes, mesh frame."""
    aligned_pose: np.ndarray
    """(N,4,4) what pose_intrinsic_imu.json holds (true poses plus drift, if any)."""
    K_raw: np.ndarray
    """(3,3) the physical camera, OpenCV pixel convention, at RGB size."""
    dist: np.ndarray
    """(4,) k1 k2 p1 p2."""
    colmap_frames: list[int]
    merged_frames: list[int]
    depth_m: np.ndarray
    """(N,192,256) the LiDAR maps written into depth.bin (after the encoding's quantisation)."""


DepthEncoding = Literal["lz4", "zlib", "stream"]


def write_depth_bin(path: Path, depth_m: np.ndarray, encoding: DepthEncoding) -> np.ndarray:
    """depth.bin in one of the toolkit's encodings; returns what a decoder should get back (metres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(depth_m, np.float32)
    if encoding == "stream":  # the whole file: one raw-deflate stream of float32 metres
        co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        path.write_bytes(co.compress(frames.astype("<f4").tobytes()) + co.flush())
        return frames
    out = bytearray()
    for d in frames:
        if encoding == "lz4":  # uint16 millimetres, lz4 block without a size header
            block = lz4.block.compress(_mm(d).astype("<u2").tobytes(), store_size=False)
        else:  # float32 metres, raw deflate
            co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            block = co.compress(d.astype("<f4").tobytes()) + co.flush()
        out += struct.pack("<I", len(block)) + block
    path.write_bytes(bytes(out))
    return _mm(frames).astype(np.float32) / 1000.0 if encoding == "lz4" else frames


def _colmap_params(K: np.ndarray, dist: np.ndarray) -> list[float]:
    """OPENCV params: fx fy cx cy k1 k2 p1 p2, with COLMAP's pixel centres at +0.5."""
    return [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, *dist]


def _qvec_tvec(camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP image pose: world-to-camera as (qw, qx, qy, qz) and t."""
    w2c = np.linalg.inv(camera_to_world)
    x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()  # scipy is scalar-last
    return np.array([w, x, y, z]), w2c[:3, 3]


def write_colmap_text(folder: Path, size: tuple[int, int], K: np.ndarray, dist: np.ndarray,
                      images: list[tuple[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    params = " ".join(repr(float(p)) for p in _colmap_params(K, dist))
    (folder / "cameras.txt").write_text("# Camera list with one line of data per camera:\n"
                                        f"1 OPENCV {size[0]} {size[1]} {params}\n")
    lines = ["# Image list with two lines of data per image:"]
    for i, (name, c2w) in enumerate(images, start=1):
        q, t = _qvec_tvec(c2w)
        lines += [" ".join([str(i), *(repr(float(v)) for v in (*q, *t)), "1", name]), ""]
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "points3D.txt").write_text("# 3D point list\n")


def write_colmap_binary(folder: Path, cameras: list[tuple[int, int, tuple[int, int], list[float]]],
                        images: list[tuple[str, int, np.ndarray]]) -> None:
    """cameras.bin / images.bin / points3D.bin; cameras as (id, model_id, (w, h), params)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = struct.pack("<Q", len(cameras))
    for cam_id, model_id, (w, h), params in cameras:
        buf += struct.pack("<iiQQ", cam_id, model_id, w, h) + struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(buf)
    buf = struct.pack("<Q", len(images))
    for i, (name, cam_id, c2w) in enumerate(images, start=1):
        q, t = _qvec_tvec(c2w)
        buf += struct.pack("<i7di", i, *q, *t, cam_id) + name.encode() + b"\0"
        buf += struct.pack("<Q", 1) + struct.pack("<ddq", 10.0, 20.0, -1)  # one unmatched 2D point
    (folder / "images.bin").write_bytes(buf)
    (folder / "points3D.bin").write_bytes(struct.pack("<Q", 0))


def make_scannetpp_scene(root: Path, scene_id: str, n_frames: int = 8, rgb_size: tuple[int, int] = (320, 240),
                         depth_encoding: DepthEncoding = "lz4", rgb: Literal["jpeg", "video", "both"] = "jpeg",
                         colmap_every: int = 2, merged_every: int = 1, dist=(0.0, 0.0, 0.0, 0.0),
                         drift_m: float = 0.0, drift_deg: float = 0.0, scene: str = "easy",
                         gt_max_edge_m: float = 0.08, seed: int = 0) -> ScanNetPPTruth:
    """ROOT/<scene_id>/ in the ScanNet++ release layout (plus merge_dslr_iphone/); see the module doc."""
    syn = SCENES[scene]()
    renderer = Renderer(syn)
    out = Path(root) / scene_id
    if out.exists():
        shutil.rmtree(out)
    iphone = out / "iphone"
    T = mesh_from_world()
    dist = np.asarray(dist, np.float64)

    # the laser-scan mesh is dense (PromptDA's protocol scores its vertices): split edges to <= gt_max_edge_m
    mesh = scene_mesh(syn).transform(T)
    vertices, triangles = trimesh.remesh.subdivide_to_size(np.asarray(mesh.vertices), np.asarray(mesh.triangles),
                                                           max_edge=gt_max_edge_m, max_iter=20)
    gt_mesh = out / "scans" / "mesh_aligned_0.05.ply"
    gt_mesh.parent.mkdir(parents=True)
    trimesh.Trimesh(vertices, triangles, process=False).export(gt_mesh)

    c2w_world = camera_trajectory(syn, n_frames, FPS, seed)
    c2w_true = T @ c2w_world
    aligned = T @ drifted_poses(c2w_world, drift_m, drift_deg, seed)
    K = arkit_intrinsics(*rgb_size)
    K_depth = np.diag([DEPTH_WH[0] / rgb_size[0], DEPTH_WH[1] / rgb_size[1], 1.0]) @ K
    rays_rgb, rays_depth = _rays(K, rgb_size, dist), _rays(K_depth, DEPTH_WH, dist)
    session = np.eye(4)  # the raw ARKit session frame of "pose": y up, turned and shifted from the world
    session[:3, :3] = Rotation.from_euler("y", 37.0, degrees=True).as_matrix()
    session[:3, 3] = [0.7, 0.0, -1.2]

    meta, depths, rgbs, gts = {}, [], [], []
    for i in range(n_frames):
        r = renderer.cast(c2w_world[i], rays_rgb)
        rgbs.append(shade(syn, r, c2w_world[i][:3, 3], seed))
        gts.append(r.depth_m)
        depths.append(renderer.cast(c2w_world[i], rays_depth).depth_m)
        meta[f"frame_{i:06d}"] = {
            "timestamp": 1000.0 + i / FPS,
            "intrinsic": K.tolist(),
            "pose": (session @ c2w_world[i] @ _FLIP_CAMERA_YZ).tolist(),  # ARKit camera axes, session frame
            "aligned_pose": aligned[i].tolist(),
            "imu": {"rotate_rate": [0.0, 0.0, 0.0], "acceleration": [0.0, 0.0, 0.0], "gravity": [0.0, -1.0, 0.0]},
        }
    iphone.mkdir(parents=True)
    (iphone / "pose_intrinsic_imu.json").write_text(json.dumps(meta))
    decoded = write_depth_bin(iphone / "depth.bin", np.stack(depths), depth_encoding)
    if rgb in ("jpeg", "both"):
        for i, im in enumerate(rgbs):
            _write_jpeg(iphone / "rgb" / f"frame_{i:06d}.jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    if rgb in ("video", "both"):
        writer = cv2.VideoWriter(str(iphone / "rgb.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), FPS, rgb_size)
        for im in rgbs:
            writer.write(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        writer.release()

    colmap_frames = list(range(0, n_frames, colmap_every))
    write_colmap_text(iphone / "colmap", rgb_size, K, dist,
                      [(f"frame_{i:06d}.jpg", c2w_true[i]) for i in colmap_frames])
    for i in colmap_frames:  # the toolkit's common/render.py output for the COLMAP frames
        _write_png(iphone / "render_depth" / f"frame_{i:06d}.png", _mm(gts[i]))

    merged_frames = list(range(0, n_frames, merged_every)) if merged_every else []
    if merged_frames:
        merged = out / "merge_dslr_iphone"
        dslr_K = [600.0, 600.0, 400.5, 300.5]
        write_colmap_binary(
            merged / "colmap" / "sparse_render_rgb",
            [(1, 1, (800, 600), dslr_K), (2, 4, rgb_size, _colmap_params(K, dist))],
            [("dslr/DSC00001.JPG", 1, c2w_true[0])] + [(f"iphone/frame_{i:06d}.jpg", 2, c2w_true[i])
                                                      for i in merged_frames])
        for i in merged_frames:
            _write_jpeg(merged / "images" / "iphone" / f"frame_{i:06d}.jpg",
                               cv2.cvtColor(rgbs[i], cv2.COLOR_RGB2BGR))
            _write_png(merged / "render_depth" / f"frame_{i:06d}.png", _mm(gts[i]))
    return ScanNetPPTruth(out, gt_mesh, c2w_true, aligned, K, dist, colmap_frames, merged_frames, decoded)


def _write_jpeg(path: Path, bgr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise RuntimeError(f"could not write {path}")


# ----------------------------------------------------------------------------- ARKitScenes
@dataclass
class ARKitScenesTruth:
    video_dir: Path
    timestamps_s: np.ndarray
    """(N,) of the lowres_wide frames (as written, 3 decimals)."""
    camera_to_world: np.ndarray
    """(N,4,4) true poses, OpenCV axes, ARKit world (y up)."""
    traj_frames: list[int]
    """Frames whose time has a .traj row (the others are interpolated)."""
    highres_frames: list[int]
    K: np.ndarray
    mesh: o3d.geometry.TriangleMesh
    """The scene in the world frame of the poses (not part of the layout)."""


def make_arkitscenes_video(root: Path, video_id: str = "41069021", n_frames: int = 12, traj_every: int = 3,
                           highres_every: int = 4, highres_size: tuple[int, int] = (512, 384),
                           loop_frames: int = 240, scene: str = "easy", seed: int = 0) -> ARKitScenesTruth:
    """ROOT/<video_id>/ in the raw ARKitScenes layout (lowres_wide at 256x192 and 60 fps, LiDAR, confidence,
    .pincam, lowres_wide.traj with a row every `traj_every` frames, highres_depth every `highres_every`
    frames with its timestamp 1 ms off). The camera walks the first `n_frames` of a `loop_frames` loop, so
    poses between .traj rows are close to their interpolation."""
    syn = SCENES[scene]()
    renderer = Renderer(syn)
    out = Path(root) / video_id
    if out.exists():
        shutil.rmtree(out)
    c2w = camera_trajectory(syn, max(loop_frames, n_frames), FPS, seed)[:n_frames]
    K = arkit_intrinsics(*DEPTH_WH)
    K_hi = np.diag([highres_size[0] / DEPTH_WH[0], highres_size[1] / DEPTH_WH[1], 1.0]) @ K
    t = np.round(6845.706 + np.arange(n_frames) / FPS, 3)
    rng = np.random.default_rng(seed)
    traj_frames = list(range(0, n_frames, traj_every))
    if traj_frames[-1] != n_frames - 1:
        traj_frames.append(n_frames - 1)
    highres_frames = list(range(0, n_frames, highres_every))
    name = lambda ts: f"{video_id}_{ts:.3f}"  # noqa: E731
    for i in range(n_frames):
        r = renderer.render(c2w[i], K, *DEPTH_WH)
        _write_png(out / "lowres_wide" / f"{name(t[i])}.png", cv2.cvtColor(shade(syn, r, c2w[i][:3, 3], seed),
                                                                           cv2.COLOR_RGB2BGR))
        (out / "lowres_wide_intrinsics").mkdir(parents=True, exist_ok=True)
        (out / "lowres_wide_intrinsics" / f"{name(t[i])}.pincam").write_text(
            f"{DEPTH_WH[0]} {DEPTH_WH[1]} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
        lidar = simulate_lidar(renderer, c2w[i], K, DEPTH_WH, rng)
        _write_png(out / "lowres_depth" / f"{name(t[i])}.png", _mm(lidar.depth_m))
        _write_png(out / "confidence" / f"{name(t[i])}.png", lidar.confidence)
        if i in highres_frames:
            hi = renderer.render(c2w[i], K_hi, *highres_size).depth_m
            _write_png(out / "highres_depth" / f"{name(t[i] + 0.001)}.png", _mm(hi))
    rows = []
    for i in traj_frames:  # world-to-camera: axis-angle (radians) and translation
        w2c = np.linalg.inv(c2w[i])
        rows.append(" ".join(f"{v:.9f}" for v in (t[i], *Rotation.from_matrix(w2c[:3, :3]).as_rotvec(),
                                                  *w2c[:3, 3])))
    (out / "lowres_wide.traj").write_text("\n".join(rows) + "\n")
    return ARKitScenesTruth(out, t, c2w, traj_frames, highres_frames, K, scene_mesh(syn))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--scenes", type=int, default=3, help="Scenes per dataset.")
    ap.add_argument("--frames", type=int, default=8, help="Frames per ScanNet++ scene (ARKitScenes: 1.5x).")
    args = ap.parse_args()
    for k in range(args.scenes):
        make_scannetpp_scene(args.out / "scannetpp" / "data", f"synth{k:04d}ab", n_frames=args.frames,
                             scene="easy" if k % 2 == 0 else "hard", seed=k)
        make_arkitscenes_video(args.out / "arkitscenes" / "raw" / "Validation", str(41069021 + k),
                               n_frames=int(1.5 * args.frames), seed=k)
    print(args.out)


if __name__ == "__main__":
    main()
