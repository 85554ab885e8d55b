"""Hand-computed cases for pipeline.metrics (pure functions)."""
import numpy as np
import pytest

from pipeline.metrics import (DELTA_0_5, DepthErrorSums, depth_metrics, fscore, fscore_curve, mesh_metrics,
                              metrics_from_distances, nearest_distances, point_distances, sample_surface,
                              voxel_downsample)


def grid_plane(x_max: float, y_max: float, spacing: float, z: float) -> np.ndarray:
    """Points at cell centres of a regular grid on the plane z, covering [0,x_max) x [0,y_max)."""
    xs = np.arange(spacing / 2, x_max, spacing)
    ys = np.arange(spacing / 2, y_max, spacing)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], -1)


def square_mesh(z: float, size: float = 1.0):
    v = np.array([[0, 0, z], [size, 0, z], [size, size, z], [0, size, z]], float)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_parallel_planes_3cm_apart_exact_grid():
    pred = grid_plane(1.0, 1.0, 0.01, 0.0)
    gt = grid_plane(1.0, 1.0, 0.01, 0.03)
    m5 = mesh_metrics(pred, gt, 0.05)
    assert m5["accuracy_m"] == pytest.approx(0.03, abs=1e-12)
    assert m5["completeness_m"] == pytest.approx(0.03, abs=1e-12)
    assert (m5["precision"], m5["recall"], m5["fscore"]) == (1.0, 1.0, 1.0)
    m2 = mesh_metrics(pred, gt, 0.02)
    assert (m2["precision"], m2["recall"], m2["fscore"]) == (0.0, 0.0, 0.0)


def test_parallel_planes_sampled_and_downsampled():
    """Same planes through the evaluation path: area sampling then 2 cm voxel centroids."""
    pred = voxel_downsample(sample_surface(*square_mesh(0.0), spacing_m=0.005, seed=0), 0.02)
    gt = voxel_downsample(sample_surface(*square_mesh(0.03), spacing_m=0.005, seed=1), 0.02)
    m = mesh_metrics(pred, gt, 0.05)
    # lateral offsets between centroids of different samples are ~1 mm: sqrt(0.03^2 + 0.001^2) - 0.03 < 0.1 mm
    assert m["accuracy_m"] == pytest.approx(0.03, abs=5e-4)
    assert m["completeness_m"] == pytest.approx(0.03, abs=5e-4)
    assert m["fscore"] == 1.0
    assert mesh_metrics(pred, gt, 0.02)["fscore"] == 0.0


def test_half_covered_plane():
    """GT: 100 x 100 grid, 1 cm spacing. Prediction: only the columns x < 0.5 (j = 0..49).

    pred -> GT distances are all 0 (accuracy 0, precision 1). GT column j >= 50 is 0.01 * (j - 49)
    from the last predicted column, so completeness = 0.01 * (1 + ... + 50) / 100 = 0.1275 and, at a
    4.5 cm threshold, columns j <= 53 are within: recall = 54 / 100.
    """
    gt = grid_plane(1.0, 1.0, 0.01, 0.0)
    pred = gt[gt[:, 0] < 0.5]
    m = mesh_metrics(pred, gt, 0.045)
    assert m["accuracy_m"] == pytest.approx(0.0, abs=1e-12)
    assert m["completeness_m"] == pytest.approx(0.1275, abs=1e-9)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(0.54)
    assert m["fscore"] == pytest.approx(2 * 0.54 / 1.54)


def test_threshold_is_strict():
    pred = np.array([[0.0, 0.0, 0.0]])
    gt = np.array([[0.25, 0.0, 0.0]])  # exactly representable distance
    at = mesh_metrics(pred, gt, 0.25)
    assert (at["precision"], at["recall"], at["fscore"]) == (0.0, 0.0, 0.0)
    above = mesh_metrics(pred, gt, np.nextafter(0.25, 1.0))
    assert (above["precision"], above["recall"], above["fscore"]) == (1.0, 1.0, 1.0)


def test_fscore_zero_when_precision_zero():
    assert fscore(0.0, 0.0) == 0.0
    assert fscore(0.0, 0.5) == 0.0
    assert fscore(0.5, 1.0) == pytest.approx(2 / 3)
    m = metrics_from_distances(np.array([0.2, 0.3]), np.array([0.01, 0.2]), 0.05)
    assert (m["precision"], m["recall"], m["fscore"]) == (0.0, 0.5, 0.0)
    assert m["accuracy_m"] == pytest.approx(0.25)
    assert m["completeness_m"] == pytest.approx(0.105)


def test_point_distances_needs_points():
    with pytest.raises(ValueError):
        point_distances(np.zeros((0, 3)), np.zeros((2, 3)))


def test_nearest_distances_equal_brute_force_also_far_from_the_targets():
    rng = np.random.default_rng(0)
    targets = grid_plane(1.0, 1.0, 0.02, 0.0)  # a 1 m square of points at z = 0
    near = rng.uniform(-0.1, 1.1, (300, 3)) * [1, 1, 0.05]
    far = rng.uniform(-3.0, 3.0, (300, 3)) + [0, 0, 2.0]  # metres away, the costly case for a KD-tree
    points = np.concatenate([near, far])
    brute = np.sqrt(((points[:, None, :] - targets[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(points, targets), brute, rtol=0, atol=1e-12)
    d_a, d_b = point_distances(points, targets)
    np.testing.assert_allclose(d_a, brute, rtol=0, atol=1e-12)
    assert d_b.shape == (len(targets),) and d_b.min() >= 0


def test_fscore_curve_matches_single_thresholds():
    d_pred = np.array([0.005, 0.015, 0.025, 0.2])
    d_gt = np.array([0.001, 0.035, 0.045])
    curve = fscore_curve(d_pred, d_gt, [0.01, 0.02, 0.04, 0.05])
    assert curve["precision"] == [0.25, 0.5, 0.75, 0.75]
    assert curve["recall"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0])
    for i, t in enumerate(curve["thresholds_m"]):
        assert curve["fscore"][i] == pytest.approx(metrics_from_distances(d_pred, d_gt, t)["fscore"])


def test_voxel_downsample_centroids():
    pts = np.array([
        [0.01, 0.01, 0.01], [0.03, 0.01, 0.01],  # voxel (0,0,0) -> centroid (0.02, 0.01, 0.01)
        [0.15, 0.00, 0.00], [0.12, 0.02, 0.00],  # voxel (1,0,0) -> (0.135, 0.01, 0)
        [-0.01, 0.05, 0.05],                     # voxel (-1,0,0) alone
    ])
    expected = np.array([[-0.01, 0.05, 0.05], [0.02, 0.01, 0.01], [0.135, 0.01, 0.0]])
    np.testing.assert_allclose(voxel_downsample(pts, 0.1), expected, atol=1e-12)
    # independent of input order
    np.testing.assert_allclose(voxel_downsample(pts[::-1], 0.1), expected, atol=1e-12)
    assert voxel_downsample(np.zeros((0, 3)), 0.1).shape == (0, 3)


def test_sample_surface_count_bounds_and_area_weighting():
    v, f = square_mesh(0.5)
    pts = sample_surface(v, f, spacing_m=0.1, seed=3)
    assert pts.shape == (100, 3)  # area 1 m^2 / 0.01 m^2
    np.testing.assert_allclose(pts[:, 2], 0.5, atol=1e-12)
    assert pts[:, :2].min() >= 0 and pts[:, :2].max() <= 1
    np.testing.assert_array_equal(pts, sample_surface(v, f, spacing_m=0.1, seed=3))
    # two disjoint triangles, areas 0.5 and 4.5: ~10 % of the points on the small one
    v2 = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 3, 0]], float)
    pts2 = sample_surface(v2, np.array([[0, 1, 2], [3, 4, 5]]), spacing_m=0.01, seed=0)
    assert len(pts2) == 50000
    assert np.mean(pts2[:, 0] < 5) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 0.1)


def test_depth_metrics_by_hand():
    gt = np.array([[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]])    # (1,0) invalid GT: ignored
    pred = np.array([[1.1, 0.0, 3.0], [5.0, 4.0, 2.5]])  # (0,1) invalid prediction: excluded, lowers coverage
    sums = DepthErrorSums().add(pred, gt)
    m = sums.metrics()
    assert m == depth_metrics(pred, gt)
    # errors on the 4 pixels valid in both: 0.1, 0.0, 0.0, 0.5
    assert m["l1_m"] == pytest.approx(0.6 / 4)
    assert m["rmse_m"] == pytest.approx(np.sqrt((0.01 + 0.25) / 4))
    assert m["absrel"] == pytest.approx((0.1 / 1 + 0.5 / 2) / 4)
    # ratios 1.1 (< 1.118), 1.0, 1.0, 1.25 (> 1.118)
    assert 1.1 < DELTA_0_5 < 1.2
    assert m["delta_0.5"] == pytest.approx(3 / 4)
    assert set(m) == {"l1_m", "rmse_m", "absrel", "delta_0.5"}
    assert sums.coverage == pytest.approx(4 / 5)


def test_depth_sums_pool_pixels_like_concatenation():
    rng = np.random.default_rng(0)
    gt_a, gt_b = rng.uniform(0.5, 4, (4, 5)), rng.uniform(0.5, 4, (2, 3))
    gt_a[0, :2] = 0
    pred_a, pred_b = gt_a * rng.uniform(0.8, 1.2, gt_a.shape), gt_b + 0.05
    pred_b[1, 1] = np.nan
    pooled = DepthErrorSums().add(pred_a, gt_a).add(pred_b, gt_b)
    concat = depth_metrics(np.concatenate([pred_a.ravel(), pred_b.ravel()]),
                           np.concatenate([gt_a.ravel(), gt_b.ravel()]))
    assert pooled.metrics() == pytest.approx(concat)
    assert pooled.n_gt == 18 + 6 and pooled.n_pixels == 18 + 5
    with pytest.raises(ValueError):
        DepthErrorSums().metrics()
