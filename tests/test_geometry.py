"""Camera conventions and pose math (pipeline/geometry.py) against hand-computed cases."""
import numpy as np
import pytest

from pipeline import geometry as g


def test_quaternion_scalar_last_90_about_y():
    # 90 deg about +y: x -> -z, z -> +x. Scalar-last (qx, qy, qz, qw) = (0, sin45, 0, cos45).
    R = g.quaternion_to_matrix([0.0, np.sqrt(0.5), 0.0, np.sqrt(0.5)])
    np.testing.assert_allclose(R, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    # Reading the same numbers scalar-first would be a different rotation: the order matters.
    R_wrong = g.quaternion_to_matrix([np.sqrt(0.5), 0.0, np.sqrt(0.5), 0.0])
    assert np.abs(R - R_wrong).max() > 0.5


def test_quaternion_round_trip_and_normalisation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q
        R = g.quaternion_to_matrix(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(g.matrix_to_quaternion(R), q, atol=1e-10)
    np.testing.assert_allclose(g.quaternion_to_matrix([0, 0, 0, 2.0]), np.eye(3))
    with pytest.raises(ValueError):
        g.quaternion_to_matrix([0, 0, 0, 0])


def test_arkit_to_opencv_flips_camera_y_and_z():
    # ARKit camera looking down world -z with y up (identity pose): in OpenCV axes the camera's
    # forward (+z) must point to world -z and its down (+y) to world -y.
    T = g.arkit_to_opencv(np.eye(4))
    forward_world = T[:3, :3] @ [0, 0, 1]
    down_world = T[:3, :3] @ [0, 1, 0]
    np.testing.assert_allclose(forward_world, [0, 0, -1])
    np.testing.assert_allclose(down_world, [0, -1, 0])
    # translation (camera centre) is untouched, and the conversion is an involution
    P = np.eye(4)
    P[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(g.arkit_to_opencv(P)[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(g.arkit_to_opencv(g.arkit_to_opencv(P)), P)


def test_valid_pose():
    assert g.is_valid_pose(np.eye(4))
    bad = np.eye(4)
    bad[0, 0] = np.nan
    assert not g.is_valid_pose(bad)
    scaled = np.diag([2.0, 1, 1, 1])
    assert not g.is_valid_pose(scaled)
    mirrored = np.diag([-1.0, 1, 1, 1])  # det -1: not a rotation
    assert not g.is_valid_pose(mirrored)


def test_scale_intrinsics_and_output_size():
    K = g.intrinsics_matrix(1500.0, 1500.0, 960.0, 720.0)
    K2 = g.scale_intrinsics(K, (1920, 1440), (256, 192))
    np.testing.assert_allclose(K2, [[200, 0, 128], [0, 200, 96], [0, 0, 1]])
    assert g.output_size(1920, 1440, 1008) == (1008, 756)
    assert g.output_size(1440, 1920, 1008) == (756, 1008)
    assert g.output_size(640, 480, 1008) == (640, 480)  # never upscaled


def test_backproject_project_round_trip():
    K = g.intrinsics_matrix(100.0, 120.0, 32.0, 24.0)
    depth = np.zeros((48, 64), np.float32)
    depth[10, 20] = 2.0
    depth[30, 50] = 3.5
    pts = g.backproject(depth, K)
    np.testing.assert_allclose(pts[0], [(20 - 32) * 2.0 / 100, (10 - 24) * 2.0 / 120, 2.0], rtol=1e-6)
    uv, z = g.project_points(pts, K)
    np.testing.assert_allclose(uv, [[20, 10], [50, 30]], atol=1e-9)
    np.testing.assert_allclose(z, [2.0, 3.5])


def test_trajectory_length():
    T = np.tile(np.eye(4), (3, 1, 1))
    T[1, :3, 3] = [3, 4, 0]
    T[2, :3, 3] = [3, 4, 1]
    assert g.trajectory_length_m(T) == pytest.approx(6.0)


def test_subsampled_depth_keeps_the_pixel_centre_convention():
    """Pixel (i, j) of the subsampled map is pixel (2 + 4i, 2 + 4j) of the full one: a point seen at full
    pixel (14, 6) projects with the subsampled K to (3, 1) exactly (a half-pixel slip would show)."""
    K = g.intrinsics_matrix(200.0, 210.0, 127.3, 95.6)
    depth = np.arange(256 * 192, dtype=np.float32).reshape(192, 256)
    small, K_small = g.subsample_depth(depth, K, 4)
    assert small.shape == (48, 64) and small[1, 3] == depth[6, 14]
    x = np.array([(14 - K[0, 2]) / K[0, 0], (6 - K[1, 2]) / K[1, 1], 1.0])
    np.testing.assert_allclose((K_small @ x)[:2], [3.0, 1.0], atol=1e-12)
