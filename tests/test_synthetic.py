"""tools/synthetic_scene.py and tools/make_synthetic_capture.py: GT depth is z-depth, the LiDAR simulator
behaves like the phone's (accurate on surfaces, flying pixels at edges, nothing from glass), drift is what
it claims, output is deterministic and reads back through the readers; the shipped sample capture is sane."""
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from make_synthetic_capture import iter_frames, main, make_capture
from pipeline.geometry import backproject, project_points, rotation_angle_deg, scale_intrinsics, transform_points
from pipeline.readers import detect, open_capture
from synthetic_scene import (Material, Renderer, SceneBuilder, arkit_intrinsics, camera_trajectory, drifted_poses,
                             easy_scene, hard_scene, lidar_intrinsics, simulate_lidar)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_captures" / "synthetic_room"


# ----------------------------------------------------------------------------- GT depth
def test_gt_depth_is_z_depth_of_a_tilted_plane():
    """Plane n.X = d seen by a camera at the origin looking down +z: z-depth at pixel (u, v) is
    d / (n . K^-1 [u, v, 1]) exactly, also in the image corners where the ray length is 30% longer."""
    b = SceneBuilder()
    n = np.array([0.3, -0.2, 1.0])
    n /= np.linalg.norm(n)
    d = 2.5
    # A big quad on the plane, centred where the optical axis meets it.
    c = n * d
    e1 = np.cross(n, [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    corners = [c + 20 * (sx * e1 + sy * e2) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    b.quad(*corners, Material("plane", (0.5, 0.5, 0.5)))
    scene = b.build("plane", light_position=np.zeros(3), walk_centre_xz=(0, 0), walk_radii_m=(1, 1))
    K = arkit_intrinsics(64, 48)
    r = Renderer(scene).render(np.eye(4), K, 64, 48)
    v, u = np.mgrid[0:48, 0:64]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    expected = d / (rays @ n)
    np.testing.assert_allclose(r.depth_m, expected, rtol=2e-6)
    assert expected[0, 0] / expected[24, 32] > 1.05  # the corners do test z vs. ray length


def test_gt_depth_backprojects_onto_the_mesh_and_matches_projected_vertices():
    scene = easy_scene()
    W, H = 160, 120
    K = arkit_intrinsics(W, H)
    T = camera_trajectory(scene, 8, 30.0, seed=0)[3]
    depth = Renderer(scene).render(T, K, W, H).depth_m
    assert (depth > 0).all()  # closed room: every ray hits
    # Every back-projected pixel lies on the mesh.
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(scene.vertices.astype(np.float32)), o3d.core.Tensor(scene.triangles.astype(np.uint32)))
    pts = transform_points(T, backproject(depth, K)).astype(np.float32)
    assert rs.compute_distance(o3d.core.Tensor(pts)).numpy().max() < 2e-3
    # Mesh vertices projected into the frame: z equals the GT depth near their pixel when visible and is
    # never in front of it.
    uv, z = project_points(transform_points(np.linalg.inv(T), scene.vertices), K)
    inside = (z > 0.1) & (uv[:, 0] > 1) & (uv[:, 0] < W - 2) & (uv[:, 1] > 1) & (uv[:, 1] < H - 2)
    assert inside.sum() >= 6
    visible = 0
    for (uu, vv), zz in zip(uv[inside], z[inside]):
        window = depth[int(round(vv)) - 1:int(round(vv)) + 2, int(round(uu)) - 1:int(round(uu)) + 2]
        assert window.min() <= zz * 1.01 + 0.01, (uu, vv, zz, window)
        visible += np.abs(window - zz).min() < 0.01 * zz
    assert visible >= 4


# ----------------------------------------------------------------------------- LiDAR simulation
def _lidar_frames(scene, n, seed=0, every=1):
    K = arkit_intrinsics(640, 480)
    K_lidar, size = lidar_intrinsics(K, (640, 480))
    assert size == (256, 192)
    renderer = Renderer(scene)
    poses = camera_trajectory(scene, n, 30.0, seed)
    for i in range(0, n, every):
        yield simulate_lidar(renderer, poses[i], K_lidar, size, np.random.default_rng([seed, i])), renderer, poses[i]


def test_lidar_accurate_on_surfaces_with_flying_pixels_at_edges():
    errs, flying, bad_confident, confident = [], 0, 0, 0
    for f, _, _ in _lidar_frames(easy_scene(), 12, every=2):
        gt, d = f.gt_depth_m, f.depth_m
        assert d.shape == gt.shape == f.confidence.shape == (192, 256) and d.dtype == np.float32
        high = (f.confidence == 2) & (d > 0)
        errs.append(np.abs(d - gt)[high])
        confident += high.sum()
        bad_confident += (np.abs(d - gt)[high] > 0.1).sum()
        lo = cv2.erode(gt, np.ones((9, 9)))
        hi = cv2.dilate(gt, np.ones((9, 9)))
        flying += ((hi - lo > 0.3) & (d > lo + 0.1) & (d < hi - 0.1) & (np.abs(d - gt) > 0.1)).sum()
    err = np.concatenate(errs)
    assert 0.002 < np.median(err) < 0.015  # noisy, but centimetre-accurate away from edges
    assert flying > 50  # interpolation across depth edges leaves points between foreground and background
    assert bad_confident < 0.005 * confident  # and confidence 2 avoids them


def test_lidar_glass_gives_no_return_and_dark_surfaces_drop_out():
    scene = hard_scene()
    dark_ids = [i for i, m in enumerate(scene.materials) if 0 < m.lidar_return < 1]
    glass_px = dark_px = dark_zero = plain_px = plain_zero = 0
    for f, renderer, T in _lidar_frames(scene, 40, every=3):
        K_lidar, size = lidar_intrinsics(arkit_intrinsics(640, 480), (640, 480))
        view = renderer.render(T, K_lidar, *size)
        glass_px += view.glass.sum()
        assert (f.depth_m[view.glass] == 0).all() and (f.confidence[view.glass] == 0).all()
        assert (view.depth_m[view.glass] > 0).all()  # the glass is in the GT depth
        dark = np.isin(view.material, dark_ids) & ~view.glass
        near_plain = ~dark & ~view.glass & (view.depth_m < 4.0)
        dark_px += dark.sum()
        dark_zero += (f.depth_m[dark] == 0).sum()
        plain_px += near_plain.sum()
        plain_zero += (f.depth_m[near_plain] == 0).sum()
    assert glass_px > 1000 and dark_px > 1000
    assert dark_zero > 0.2 * dark_px
    assert plain_zero < 0.02 * plain_px  # ordinary surfaces in range return (holes only bleed over from dark ones)


# ----------------------------------------------------------------------------- poses
def test_drift_reaches_its_budget_at_the_end_and_is_zero_for_easy():
    true = camera_trajectory(hard_scene(), 50, 30.0, seed=3)
    written = drifted_poses(true, 0.015, 0.3, seed=3)
    centre_err = np.linalg.norm(written[:, :3, 3] - true[:, :3, 3], axis=1)
    angle_err = [rotation_angle_deg(w[:3, :3] @ t[:3, :3].T) for w, t in zip(written, true)]
    assert centre_err[0] == 0 and angle_err[0] == pytest.approx(0, abs=1e-6)
    assert centre_err[-1] == pytest.approx(0.015, abs=1e-9)
    assert angle_err[-1] == pytest.approx(0.3, abs=1e-4)
    assert np.all(np.diff(centre_err) > 0) and np.all(np.diff(angle_err) > 0)
    easy = easy_scene()
    assert (easy.drift_m, easy.drift_deg) == (0, 0)
    np.testing.assert_array_equal(drifted_poses(true, 0.0, 0.0, seed=3), true)


def test_trajectory_is_smooth_rigid_and_inside_the_room():
    scene = easy_scene()
    poses = camera_trajectory(scene, 90, 30.0, seed=0)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    c = poses[:, :3, 3]
    assert (np.abs(c[:, 0]) < 1.5).all() and (np.abs(c[:, 2]) < 2.0).all() and (np.abs(c[:, 1] - 1.45) < 0.05).all()
    step = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert step.max() < 0.1 and step.max() < 2 * step.min()  # no jumps
    # Upright (camera y = image down points to world -y), mostly looking down a little, small roll.
    assert (R[:, 1, 1] < -0.8).all()
    assert (R[:, 1, 2] < 0).mean() > 0.9
    assert np.abs(R[:, 1, 0]).max() < np.sin(np.radians(5))


def test_frames_are_deterministic_by_seed():
    scene = hard_scene()
    K = arkit_intrinsics(160, 120)

    def frames(seed):
        poses = camera_trajectory(scene, 3, 30.0, seed)
        return list(iter_frames(scene, poses, drifted_poses(poses, 0.015, 0.3, seed), K, (160, 120), 30.0, seed))

    a, b, c = frames(5), frames(5), frames(6)
    for fa, fb in zip(a, b):
        for name in ("rgb", "depth_m", "confidence", "camera_to_world", "gt_depth_m"):
            np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name))
    assert not np.array_equal(a[1].depth_m, c[1].depth_m)
    assert not np.allclose(a[1].camera_to_world, c[1].camera_to_world)


# ----------------------------------------------------------------------------- written captures
def test_make_capture_reads_back_in_every_layout(tmp_path):
    n = 4
    paths = make_capture(tmp_path, scene="hard", n_frames=n, width=320, height=240, seed=1,
                         layouts=("stray", "r3d", "r3d-exr", "3dscannerapp"), gt_depth_size=(160, 120))
    written = np.load(paths["written_poses"])
    true = np.load(paths["gt_poses"])
    K = np.load(paths["K_rgb"])
    assert written.shape == true.shape == (n, 4, 4)
    np.testing.assert_allclose(K, arkit_intrinsics(320, 240))
    for layout in ("stray", "r3d", "r3d-exr", "3dscannerapp"):
        assert detect(paths[layout]).name == layout
        src = open_capture(paths[layout])
        assert (src.n_frames, src.rgb_size, src.lidar_size) == (n, (320, 240), (256, 192)), layout
        frames = list(src.frames())
        got = np.stack([f.camera_to_world for f in frames])
        np.testing.assert_allclose(got, written, atol=1e-5, err_msg=layout)
        np.testing.assert_allclose(frames[0].K_rgb, K, rtol=1e-6, err_msg=layout)
        assert frames[-1].load_rgb().shape == (240, 320, 3)
    # Stray carries GT depth at the requested size, equal (to the millimetre) to a render from the true pose.
    src = open_capture(paths["stray"])
    gt = src.gt_depth(n - 1)
    K_gt = scale_intrinsics(K, (320, 240), (160, 120))
    expected = Renderer(hard_scene()).render(true[-1], K_gt, 160, 120).depth_m
    assert gt.shape == (120, 160)
    np.testing.assert_allclose(gt, expected, atol=0.0006)
    # GT mesh: the hard room, metres, y up, with the corridor reaching z = 7.5.
    mesh = o3d.io.read_triangle_mesh(str(paths["gt_mesh"]))
    np.testing.assert_allclose(mesh.get_min_bound(), [-2.2, 0.0, -3.0], atol=1e-6)
    np.testing.assert_allclose(mesh.get_max_bound(), [2.2, 2.7, 7.5], atol=1e-6)


def test_cli_flat_stray_capture_keeps_gt_files_inside(tmp_path):
    out = tmp_path / "room"
    assert main([str(out), "--scene", "easy", "--frames", "3", "--width", "160", "--height", "120", "--flat",
                 "--codec", "mp4v"]) == 0
    for name in ("rgb.mp4", "odometry.csv", "camera_matrix.csv", "gt_mesh.ply", "gt_poses.npy", "depth/000002.png",
                 "gt_depth/000002.png"):
        assert (out / name).is_file(), name
    assert detect(out).name == "stray"
    np.testing.assert_array_equal(np.load(out / "gt_poses.npy"), np.load(out / "written_poses.npy"))  # easy: no drift
    with pytest.raises(SystemExit):
        main([str(out), "--flat", "--layouts", "stray,r3d"])


def test_sample_capture_is_small_readable_and_has_ground_truth():
    if not SAMPLE.exists():
        pytest.skip("sample_captures/synthetic_room not generated")
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size <= 8 * 1024 * 1024
    assert (SAMPLE / "README.md").is_file() and (SAMPLE / "gt_mesh.ply").is_file()
    src = open_capture(SAMPLE)
    assert src.format == "stray" and src.n_frames >= 20 and src.gt_depth is not None
    first = next(iter(src.frames()))
    rgb = first.load_rgb()
    assert rgb.shape == (src.rgb_size[1], src.rgb_size[0], 3) and rgb.std() > 10  # HEVC decodes to an image
    np.testing.assert_allclose(first.camera_to_world, np.load(SAMPLE / "written_poses.npy")[0], atol=1e-5)
