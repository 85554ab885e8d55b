"""Classical depth models (pipeline/depth/classical.py): `lidar` resize and the `guided` upsampler."""
import json

import cv2
import numpy as np
import pytest

from pipeline.depth.classical import (GuidedParams, _sample_grid, coverage, edge_aware_smooth, fit_planes,
                                      flying_pixels, guided_upsample, refine_lidar, resize_linear, resize_lidar,
                                      snap_upsample)


def step_scene(seed: int = 0, H: int = 192, W: int = 256, noise_m: float = 0.01):
    """A box 1.2 m away in front of a slanted, textured wall at ~3 m, seen at RGB size (H, W).

    LiDAR (H/4, W/4): the GT sampled on a grid twice coarser still and bilinearly upsampled, as depth sensors
    smooth their sparse returns, so samples at the box outline mix box and wall (flying pixels) and the
    outline is displaced; plus Gaussian noise and a hole with no return. Returns (rgb, gt_m, lidar_m).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    gt = 3.0 + 0.002 * x
    rgb = np.empty((H, W, 3), np.float32)
    rgb[:] = (170, 160, 140)
    rgb += 12 * np.sin(x / 5.0)[..., None]  # wall texture
    box = (x >= 70) & (x < 150) & (y >= 50) & (y < 140)
    gt[box] = 1.2
    rgb[box] = (60, 90, 160)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    h, w = H // 4, W // 4
    coarse = gt[::8, ::8]  # LiDAR pixel (x, y) sees RGB pixel (4 x, 4 y) (`geometry.scale_intrinsics`)
    lidar = resize_linear(coarse, (h, w)) + rng.normal(0, noise_m, (h, w))
    lidar[5:8, 5:9] = 0
    return rgb, gt, lidar.astype(np.float32)


def l1_and_bad(depth_m, gt_m):
    valid = depth_m > 0
    err = np.abs(depth_m - gt_m)[valid]
    return float(err.mean()), int((err > 0.10).sum())


def test_coverage_counts_valid_pixels():
    assert coverage(np.array([[0.0, 1.0], [np.nan, 2.0]])) == 0.5
    assert coverage(np.zeros((3, 3))) == 0.0


def test_resize_lidar_hand_computed():
    # output pixel x' samples input x' * 2 / 4 = 0, 0.5, 1, 1.5 (`geometry.scale_intrinsics`; the last input
    # pixel is repeated beyond its centre), in both axes
    np.testing.assert_allclose(resize_lidar(np.array([[1.0, 3.0]], np.float32), (1, 4)), [[1, 2, 3, 3]])
    np.testing.assert_allclose(resize_lidar(np.array([[1.0], [3.0]], np.float32), (4, 1)), [[1], [2], [3], [3]])
    # a zero (no return) never pulls depth towards 0: valid share 1, .5, 0, 0 -> 2, 2, invalid, invalid
    np.testing.assert_allclose(resize_lidar(np.array([[2.0, 0.0]], np.float32), (1, 4)), [[2, 2, 0, 0]])


def test_resize_lidar_keeps_holes_and_values():
    d = np.full((12, 16), 1.5, np.float32)
    d[4:8, 4:8] = 0
    out = resize_lidar(d, (48, 64))
    assert set(np.unique(out).round(5)) == {0.0, 1.5}
    # the 4-pixel hole's footprint spans LiDAR x 3.5..7.5 = output x 14..30: 15 output pixels have a valid share
    # below 0.5 (at 14 and 30 it is 0.5), so the hole is 15 x 15 pixels where 16 x 16 would be exact
    assert (out == 0).sum() == 15 * 15
    assert coverage(out) == pytest.approx(coverage(d), abs=0.015)


def test_flying_pixels_flags_mixed_samples_not_slopes():
    row = np.array([[1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]], np.float32)
    assert flying_pixels(row, 0.08, 2).tolist() == [[False, False, False, True, False, False, False]]
    slope = (2.0 * 1.03 ** np.arange(20, dtype=np.float32))[None]  # 3 % per pixel: a slanted plane
    assert not flying_pixels(slope, 0.08, 2).any()


def test_guided_is_exact_on_a_smooth_surface():
    H, W = 96, 128
    y, x = np.mgrid[0:H, 0:W]
    gt = (1.0 / (0.4 + 0.001 * x + 0.0005 * y)).astype(np.float32)  # a plane: inverse depth is affine
    lidar = gt[::4, ::4]  # LiDAR pixel (x, y) sees output pixel (4 x, 4 y) (`geometry.scale_intrinsics`)
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)  # colour must not matter here
    out = guided_upsample(rgb, lidar, None, (H, W))
    assert coverage(out) == 1.0
    assert np.abs(out - gt).mean() < 0.003


def test_snap_upsample_mean_and_edges_equal_the_per_sample_definition():
    """Away from depth edges an output pixel is the weighted mean of log depth over its (2r)^2 samples
    (weight = valid * Gaussian(row) * Gaussian(column)); it is an edge pixel when its valid samples span more
    than jump_log. Checked against that definition sample by sample."""
    rng = np.random.default_rng(5)
    h, w, H, W = 9, 12, 27, 40
    depth = rng.uniform(1.0, 1.03, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.25] = 0.0  # holes change the weights pixel by pixel
    depth[:, 8:] *= 2.0  # a depth step: edge pixels there
    p = GuidedParams()
    rgb = np.zeros((H, W, 3), np.uint8)
    out = snap_upsample(rgb, depth, (H, W), p)
    iy, wy = _sample_grid(H, h, p.radius_lr, p.sigma_spatial_lr)
    ix, wx = _sample_grid(W, w, p.radius_lr, p.sigma_spatial_lr)
    checked_mean = checked_edges = 0
    for Y in range(H):
        for X in range(W):
            logs, weights = [], []
            for a in range(len(iy)):
                for b in range(len(ix)):
                    d = depth[iy[a][Y], ix[b][X]]
                    if d > 0 and wy[a][Y] * wx[b][X] > 0:
                        logs.append(np.log(d))
                        weights.append(wy[a][Y] * wx[b][X])
            if not logs or out[Y, X] == 0:
                continue
            if max(logs) - min(logs) > p.jump_log:
                checked_edges += 1  # snapped to one side of the step, not averaged across it
                mid = (min(logs) + max(logs)) / 2
                near, far = [v for v in logs if v < mid], [v for v in logs if v >= mid]
                value = np.log(out[Y, X])
                assert any(min(side) - 1e-6 <= value <= max(side) + 1e-6 for side in (near, far))
            else:
                checked_mean += 1
                assert np.log(out[Y, X]) == pytest.approx(np.average(logs, weights=weights), abs=1e-5)
    assert checked_mean > 300 and checked_edges > 20


@pytest.mark.parametrize("with_confidence", [False, True])
def test_guided_beats_lidar_on_step_edges(with_confidence):
    rgb, gt, lidar = step_scene()
    confidence = None
    if with_confidence:  # ARKit-like: low confidence where depth jumps, medium on a patch, high elsewhere
        grad = np.abs(cv2.Laplacian(lidar, cv2.CV_32F))
        confidence = np.where(grad > 0.2, 0, 2).astype(np.uint8)
        confidence[30:40, 40:60] = 1
    base = resize_lidar(lidar, gt.shape)
    out = guided_upsample(rgb, lidar, confidence, gt.shape)
    l1_base, bad_base = l1_and_bad(base, gt)
    l1, bad = l1_and_bad(out, gt)
    assert l1 <= 0.9 * l1_base, (l1, l1_base)
    assert coverage(out) >= coverage(base) - 0.01
    assert bad <= 0.5 * bad_base, (bad, bad_base)  # flying pixels removed, not smoothed in
    assert (base == 0).sum() > 100 and (out[base == 0] > 0).all()  # and the no-return hole in the wall is filled


def test_guided_depth_edge_follows_rgb_edge():
    rgb, gt, lidar = step_scene(seed=3, noise_m=0.0)
    out = guided_upsample(rgb, lidar, None, gt.shape)
    row = 100  # crosses the box's left edge at x = 70 and right edge at x = 150
    wrong = np.abs(out[row] - gt[row]) > 0.10
    assert wrong.sum() <= 2, np.nonzero(wrong)
    params = GuidedParams(sigma_color=1e6, fit_sigma_color=1e6)  # colour ignored: surfaces picked by weight
    blind = guided_upsample(rgb, lidar, None, gt.shape, params)
    assert (np.abs(blind[row] - gt[row]) > 0.10).sum() > wrong.sum()


def two_colour_scene(h=24, w=32):
    """LiDAR-size (h, w) scene: left half a wall 1 m away (dark RGB), right half 3 m away (bright RGB)."""
    rgb = np.full((h, w, 3), 200, np.uint8)
    rgb[:, : w // 2] = (40, 60, 80)
    depth = np.full((h, w), 3.0, np.float32)
    depth[:, : w // 2] = 1.0
    return rgb, depth


def test_edge_aware_smooth_keeps_constants_and_stops_at_colour_edges():
    rgb, _ = two_colour_scene()
    left = (np.arange(32) < 16).astype(np.float64)[None].repeat(24, 0)
    out = edge_aware_smooth(np.stack([np.full((24, 32), 7.0), left]), rgb, sigma_spatial=10, sigma_color=30)
    np.testing.assert_allclose(out[0], 7.0, rtol=1e-9)
    assert out[1][:, :16].min() > 0.999 and out[1][:, 16:].max() < 0.001
    blind = edge_aware_smooth(left[None], np.zeros_like(rgb), sigma_spatial=10, sigma_color=30)[0]
    assert blind[:, 16].mean() > 0.3  # without a colour edge it spreads


def test_fit_planes_extrapolates_a_plane_within_its_colour_region():
    h, w = 24, 32
    y, x = np.mgrid[0:h, 0:w]
    disparity = 0.4 + 0.004 * x + 0.002 * y  # a plane (inverse depth is affine in the image)
    weight = (x < 20).astype(np.float64)  # samples only on the left; same colour everywhere
    est, support = fit_planes(disparity, weight, np.full((h, w, 3), 128, np.uint8), GuidedParams())
    np.testing.assert_allclose(est[:, 20:], disparity[:, 20:], rtol=0.01)
    assert support[:, :20].min() > support[:, 31].max() > 0  # support fades away from the samples


def test_refine_snaps_bleeding_to_the_surface_of_its_colour_and_fills_holes():
    rgb, gt = two_colour_scene()
    lidar = gt.copy()
    lidar[:, 16:19] = 1.0  # the near wall's depth bleeds 3 pixels into the far one ...
    confidence = np.full(gt.shape, 2, np.uint8)
    confidence[:, 13:22] = 0  # ... where the sensor's confidence is low
    lidar[5:9, 24:28] = 0  # no return inside the far wall
    out = refine_lidar(rgb, lidar, confidence)
    np.testing.assert_allclose(out, gt, rtol=0.01)
    plain = refine_lidar(rgb, lidar, None)  # without confidence the bleeding is not detectable
    assert np.allclose(plain[:, 16:19], 1.0)


def test_refine_drops_unresolvable_blends_but_keeps_thin_structures():
    rgb, gt = two_colour_scene()
    rgb[:, 24:26] = (250, 30, 30)  # a thin red pole in front of the far wall ...
    lidar = gt.copy()
    lidar[:, 24] = 1.5  # ... measured at one column (its own sample) ...
    lidar[:, 25] = 2.2  # ... and blended with the wall at the next
    confidence = np.full(gt.shape, 2, np.uint8)
    confidence[:, 22:28] = 0
    out = refine_lidar(rgb, lidar, confidence)
    assert np.allclose(out[:, 24], 1.5)  # nearest return: kept
    assert (out[:, 25] == 0).all()  # a blend no reliable sample of its colour explains: dropped
    np.testing.assert_allclose(out[:, 22:24], 3.0, rtol=0.01)  # low confidence but supported: the wall
    np.testing.assert_allclose(out[:, 26:28], 3.0, rtol=0.01)


@pytest.mark.slow
def test_guided_beats_lidar_on_the_hard_synthetic_room(tmp_path):
    """The issue's acceptance check: on the hard synthetic room, depth L1 >= 10 % lower and culled mesh F@5cm
    >= 0.03 higher than `lidar`, without dropping valid pixels wholesale.

    Small for the test suite (20 frames, 640x480, 2 cm voxels; ~40 s). Both with the default fusion settings:
    `lidar` is fused with the LiDAR-confidence mask (its best: without it flying pixels cost precision);
    `guided` declares that it already used the confidence, so fusion takes its maps whole.
    """
    from make_synthetic_capture import make_capture
    from pipeline import depth, evaluate, fuse, ingest, mesh
    from pipeline.artifacts import Manifest
    from pipeline.config import DepthConfig, EvalConfig, FuseConfig, IngestConfig, MeshConfig
    from pipeline.workdir import WorkDir

    capture = make_capture(tmp_path / "room", scene="hard", n_frames=20, width=640, height=480, codec="mp4v")
    wd = tmp_path / "work"
    ingest.run(IngestConfig(), capture["stray"], wd)
    result = {}
    for model in ("lidar", "guided"):
        depth_dir = depth.run(DepthConfig(model=model), wd)
        out = WorkDir(wd).compare_model(model)
        fuse.run(FuseConfig(voxel_size_m=0.02), out, depth_model=model)
        mesh.run(MeshConfig(), out)
        report = json.loads(evaluate.run(EvalConfig(sample_spacing_m=0.01), out, gt_mesh=capture["gt_mesh"]).read_text())
        result[model] = (report["depth"]["l1_m"], report["culled"]["fscore"],
                         Manifest.read(depth_dir).summary["coverage_mean_computed"])
    (l1_lidar, f_lidar, cov_lidar), (l1, f, cov) = result["lidar"], result["guided"]
    # measured: L1 3.60 -> 2.61 cm, F 0.784 -> 0.822, coverage 0.891 -> 0.870
    assert l1 <= 0.9 * l1_lidar, result
    assert f >= f_lidar + 0.03, result
    assert cov >= cov_lidar - 0.03, result
