"""Pure camera math: axis conventions, quaternions, intrinsics. Arrays in, arrays out; no I/O.

Conventions used across promptmesh:
- Camera axes are OpenCV: x right, y down, z forward. ARKit / OpenGL camera axes are x right, y up,
  z backward; converting a camera-to-world pose between them flips the camera's y and z axes
  (right-multiply by diag(1, -1, -1, 1)).
- `camera_to_world` is a 4x4 float64 matrix mapping camera coordinates (metres) to world coordinates;
  `world_to_camera` is its inverse (Open3D's "extrinsic").
- `K` is a 3x3 pinhole matrix in pixels at the size of the image it belongs to (`K_rgb`, `K_depth`).
- Quaternions are scalar-last `(qx, qy, qz, qw)` unless a name says otherwise (ARKit, Record3D, Stray).
"""
from __future__ import annotations

import numpy as np

# Right-multiplying an ARKit/OpenGL camera-to-world pose by this gives the OpenCV one (and back).
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def arkit_to_opencv(camera_to_world_arkit: np.ndarray) -> np.ndarray:
    """(4,4) camera-to-world with ARKit camera axes (y up, z back) -> OpenCV camera axes (y down, z fwd)."""
    return np.asarray(camera_to_world_arkit, np.float64) @ FLIP_YZ


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) (..., 4) scalar-last (qx, qy, qz, qw) -> rotation matrices (..., 3, 3).

    The quaternion is normalised first; a zero quaternion raises ValueError.
    """
    q = np.asarray(q_xyzw, np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12) or not np.all(np.isfinite(q)):
        raise ValueError(f"invalid quaternion(s): {q[np.any(~np.isfinite(q), -1) | (norm[..., 0] < 1e-12)][:3]}")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3,3) -> unit quaternion (qx, qy, qz, qw) with qw >= 0."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = s / 4
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    return q if q[3] >= 0 else -q


def pose_from_quaternion_translation(q_xyzw: np.ndarray, t_xyz: np.ndarray) -> np.ndarray:
    """(4,4) rigid transform from a scalar-last quaternion and a translation."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(q_xyzw)
    T[:3, 3] = np.asarray(t_xyz, np.float64)
    return T


def rigid_error(T: np.ndarray) -> float:
    """How far the 3x3 block of a 4x4 pose is from a rotation: max |R^T R - I| (plus last-row error)."""
    T = np.asarray(T, np.float64)
    R = T[:3, :3]
    return float(max(np.abs(R.T @ R - np.eye(3)).max(), np.abs(T[3] - [0, 0, 0, 1]).max(),
                     abs(np.linalg.det(R) - 1.0)))


def is_valid_pose(T: np.ndarray, tol: float = 1e-3) -> bool:
    """Finite, rigid (orthonormal rotation, det +1, last row 0 0 0 1) within `tol`."""
    T = np.asarray(T, np.float64)
    return T.shape == (4, 4) and bool(np.all(np.isfinite(T))) and rigid_error(T) < tol


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """K at image size `from_wh` -> K at `to_wh`: fx' = fx W'/W, cx' = cx W'/W (likewise y).

    With pixel centres at integer coordinates, pixel (x', y') at `to_wh` sees the ray of pixel (x' W/W', y' H/H')
    at `from_wh`. That is where an iPhone's LiDAR map looks (K is reported at RGB size): on the real samples its
    depth edges meet the RGB edges at this mapping (+0.5 RGB pixels), not at the area-aligned one of OpenCV's
    `resize` (+3.25 from 256 to 1920); tests/test_lidar_alignment.py. Depth models' outputs follow it too.
    """
    sx = to_wh[0] / from_wh[0]
    sy = to_wh[1] / from_wh[1]
    S = np.diag([sx, sy, 1.0])
    return S @ np.asarray(K, np.float64)


def subsample_depth(depth: np.ndarray, K: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `step`-th pixel of a depth map, starting at (step // 2, step // 2), and K for that grid.

    Pixel (i, j) of the result is pixel (step//2 + step*i, step//2 + step*j) of the input, so u' = (u - step//2)
    / step exactly (pixel centres at integer coordinates; point sampling, no averaging of depths across edges)."""
    o = step // 2
    K_small = np.array(K, np.float64)
    K_small[:2] /= step
    K_small[0, 2] = (K[0, 2] - o) / step
    K_small[1, 2] = (K[1, 2] - o) / step
    return np.ascontiguousarray(depth[o::step, o::step]), K_small


def output_size(width: int, height: int, long_side_px: int) -> tuple[int, int]:
    """(W', H') with the long side `long_side_px` (never upscaled past the input) and the same aspect."""
    long_side_px = min(long_side_px, max(width, height))
    s = long_side_px / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def backproject(depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H,W) depth in metres (0 = invalid) -> (N,3) points in OpenCV camera coordinates, valid pixels only.

    Pixel centres are at integer coordinates (u, v).
    """
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u].astype(np.float64)
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], -1)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N,3) points."""
    return points @ T[:3, :3].T + T[:3, 3]


def project_points(points_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) OpenCV camera points -> ((N,2) pixel coordinates, (N,) depth z)."""
    z = points_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * points_cam[:, 0] / z + K[0, 2]
        v = K[1, 1] * points_cam[:, 1] / z + K[1, 2]
    return np.stack([u, v], -1), z


def camera_rays(K: np.ndarray, camera_to_world: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(h,w,6) float32 rays (world origin, world direction) through every pixel centre (integer coordinates) of a
    pinhole camera, OpenCV axes. Directions have camera z = 1, so a ray parameter is the z-depth."""
    w, h = size_wh
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    dirs_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    dirs_world = dirs_cam @ camera_to_world[:3, :3].T
    origins = np.broadcast_to(camera_to_world[:3, 3], dirs_world.shape)
    return np.concatenate([origins, dirs_world], -1).astype(np.float32)


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle of (...,3,3) rotation matrices, degrees in [0, 180] (the angle between R_a and R_b is that of
    R_a.T @ R_b)."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def trajectory_length_m(camera_to_world: np.ndarray) -> float:
    """Sum of distances between consecutive camera centres, (N,4,4) -> metres."""
    c = np.asarray(camera_to_world)[:, :3, 3]
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0
