"""Pure reconstruction and depth metrics: arrays in, numbers out (no I/O, no logging).

Mesh metrics follow the Atlas / NeuralRecon convention (docs/contracts.md): both surfaces are given as
point sets (sampled, then voxel-downsampled); for each point the Euclidean distance to the nearest
point of the other set is taken.

- accuracy_m     = mean distance predicted -> GT (how far reconstructed surface lies from the truth)
- completeness_m = mean distance GT -> predicted (how much of the truth is covered)
- precision      = share of predicted points with distance < threshold (strict <)
- recall         = share of GT points with distance < threshold (strict <)
- fscore         = 2 P R / (P + R), 0 when P + R = 0

Depth metrics compare a predicted depth map with a GT depth map on the pixels where both are valid
(gt > 0 and pred > 0, finite), as the PromptDA paper's metrics assume dense predictions. Because a
model could then look better by dropping hard pixels, `coverage` (share of valid-GT pixels that have a
valid prediction) is always reported beside them.

`table2_metrics` is the vertex-based protocol of PromptDA's Table 2 (docs/benchmark_protocols.md).

All distances are metres; points are (N, 3) float arrays in one common frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DELTA_0_5 = 1.25 ** 0.5
"""Ratio bound of the delta_0.5 depth accuracy (PromptDA's tightest delta)."""


# --------------------------------------------------------------------------- point sets
def sample_surface(vertices: np.ndarray, triangles: np.ndarray, spacing_m: float, seed: int = 0) -> np.ndarray:
    """Uniform random points on a triangle mesh, about one per `spacing_m`**2 of area.

    Each triangle gets floor(area / spacing_m**2 + U) points, U uniform in [0, 1) (randomised rounding:
    the expected count is proportional to the area, so the density is uniform over the surface), each
    uniform inside its triangle (square-root barycentric trick). Deterministic for a given seed.

    Args:
        vertices: (V,3) vertex positions, metres.
        triangles: (T,3) vertex indices.
        spacing_m: target mean spacing.
    Returns:
        (N,3) float64 points, N about total area / spacing_m**2.
    """
    v = np.asarray(vertices, np.float64)
    t = np.asarray(triangles, np.int64).reshape(-1, 3)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        raise ValueError(f"mesh has no area ({len(t)} triangles)")
    rng = np.random.default_rng(seed)
    counts = np.floor(area / spacing_m**2 + rng.random(len(t))).astype(np.int64)
    pick = np.repeat(np.arange(len(t)), counts)
    r1 = np.sqrt(rng.random(len(pick)))[:, None]
    r2 = rng.random(len(pick))[:, None]
    return (1 - r1) * a[pick] + r1 * (1 - r2) * b[pick] + r1 * r2 * c[pick]


def voxel_downsample(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """One point per occupied voxel of edge `voxel_m`: the centroid of the points in it.

    Voxels are the cells [i*voxel_m, (i+1)*voxel_m) of a grid anchored at the origin; the output is
    ordered by voxel index (lexicographic), so it does not depend on the input order.
    (N,3) -> (M,3) float64, M <= N.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) == 0:
        return p
    keys = np.floor(p / voxel_m).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    if np.prod(dims.astype(np.float64)) >= 2.0**62:
        raise ValueError(f"point extent {dims} voxels is too large for one int64 voxel index; use a larger voxel")
    voxel_index = np.ravel_multi_index(tuple(keys.T), tuple(dims))  # lexicographic (x, y, z) order
    order = np.argsort(voxel_index, kind="stable")
    voxel_index, p = voxel_index[order], p[order]
    starts = np.flatnonzero(np.r_[True, voxel_index[1:] != voxel_index[:-1]])
    sums = np.add.reduceat(p, starts, axis=0)
    counts = np.diff(np.r_[starts, len(p)])
    return sums / counts[:, None]


def point_distances(pred_points: np.ndarray, gt_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances both ways: ((N,) pred -> GT, (M,) GT -> pred), metres."""
    pred = np.asarray(pred_points, np.float64).reshape(-1, 3)
    gt = np.asarray(gt_points, np.float64).reshape(-1, 3)
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"need points on both sides (pred {len(pred)}, gt {len(gt)})")
    return nearest_distances(pred, gt), nearest_distances(gt, pred)


def nearest_distances(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) distance from each of `points` (N,3) to its nearest neighbour among `targets` (M,3), exact.

    Open3D's KD-tree (nanoflann, all cores). It is used instead of scipy's cKDTree because the points of a
    GT mesh far from a partial scan (unscanned walls, metres away) make cKDTree search most of its tree, many
    times slower, with identical distances (float64 both).
    """
    import open3d as o3d

    search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(np.ascontiguousarray(targets, np.float64)))
    search.knn_index()
    _, squared = search.knn_search(o3d.core.Tensor(np.ascontiguousarray(points, np.float64)), 1)
    return np.sqrt(squared.numpy()[:, 0])


def fscore(precision: float, recall: float) -> float:
    """Harmonic mean 2PR/(P+R); 0 when P + R = 0."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def metrics_from_distances(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray, threshold_m: float) -> dict:
    """Accuracy, completeness, precision, recall, F-score from the two distance arrays (see module doc)."""
    precision = float(np.mean(d_pred_to_gt < threshold_m))
    recall = float(np.mean(d_gt_to_pred < threshold_m))
    return {
        "accuracy_m": float(np.mean(d_pred_to_gt)),
        "completeness_m": float(np.mean(d_gt_to_pred)),
        "precision": precision,
        "recall": recall,
        "fscore": fscore(precision, recall),
    }


def mesh_metrics(pred_points: np.ndarray, gt_points: np.ndarray, threshold_m: float) -> dict:
    """Atlas-style metrics between predicted (N,3) and GT (M,3) points.

    Returns dict(accuracy_m, completeness_m, precision, recall, fscore). Both sets must be non-empty.
    """
    return metrics_from_distances(*point_distances(pred_points, gt_points), threshold_m)


def fscore_curve(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray, thresholds: np.ndarray) -> dict:
    """Precision, recall and F-score at each threshold (strict <): dict of lists, same length as thresholds."""
    thresholds = np.asarray(thresholds, np.float64)
    p = (np.asarray(d_pred_to_gt)[None, :] < thresholds[:, None]).mean(axis=1)
    r = (np.asarray(d_gt_to_pred)[None, :] < thresholds[:, None]).mean(axis=1)
    return {
        "thresholds_m": thresholds.tolist(),
        "precision": p.tolist(),
        "recall": r.tolist(),
        "fscore": [fscore(float(a), float(b)) for a, b in zip(p, r)],
    }


# --------------------------------------------------------------------------- depth maps
@dataclass
class DepthErrorSums:
    """Running sums for depth metrics pooled over all valid GT pixels of many frames.

    Pooling is per pixel (a frame with more valid pixels weighs more), exactly as if all frames'
    pixels were concatenated.
    """

    n_gt: int = 0
    """Valid GT pixels seen."""
    n_pixels: int = 0
    """Valid GT pixels where the prediction is valid too: the pixels the metrics are computed on."""
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    absrel_sum: float = 0.0
    delta_count: int = 0

    def add(self, pred_m: np.ndarray, gt_m: np.ndarray) -> "DepthErrorSums":
        """Accumulate one frame: pred and GT (H,W) depth in metres, same shape, GT 0 = invalid."""
        pred = np.asarray(pred_m, np.float64)
        gt = np.asarray(gt_m, np.float64)
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
        valid_gt = np.isfinite(gt) & (gt > 0)
        valid = valid_gt & np.isfinite(pred) & (pred > 0)
        g = gt[valid]
        p = pred[valid]
        err = np.abs(p - g)
        ratio = np.maximum(p / g, g / p)
        self.n_gt += int(valid_gt.sum())
        self.n_pixels += int(g.size)
        self.abs_sum += float(err.sum())
        self.sq_sum += float((err**2).sum())
        self.absrel_sum += float((err / g).sum())
        self.delta_count += int((ratio < DELTA_0_5).sum())
        return self

    @property
    def coverage(self) -> float:
        """Share of valid-GT pixels with a valid prediction (0 when there is no valid GT)."""
        return self.n_pixels / self.n_gt if self.n_gt else 0.0

    def metrics(self) -> dict:
        """dict(l1_m, rmse_m, absrel, delta_0.5) over pixels valid in both; ValueError when there are none."""
        if self.n_pixels == 0:
            raise ValueError("no pixels where both GT and predicted depth are valid")
        n = self.n_pixels
        return {
            "l1_m": self.abs_sum / n,
            "rmse_m": float(np.sqrt(self.sq_sum / n)),
            "absrel": self.absrel_sum / n,
            "delta_0.5": self.delta_count / n,
        }


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray) -> dict:
    """L1, RMSE (metres), AbsRel and delta_0.5 of one depth map on pixels valid in both (module doc).

    pred_m, gt_m: (H,W) depth in metres, same shape; 0 or non-finite = invalid.
    """
    return DepthErrorSums().add(pred_m, gt_m).metrics()


# --------------------------------------------------------------------------- PromptDA Table 2 protocol
def largest_clusters(vertices: np.ndarray, triangles: np.ndarray, n: int) -> np.ndarray:
    """Vertices used by the `n` largest edge-connected triangle clusters (Open3D), (V,3) -> (V',3)."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices),
                                     o3d.utility.Vector3iVector(np.asarray(triangles, np.int32)))
    labels, counts, _ = mesh.cluster_connected_triangles()
    labels, counts = np.asarray(labels), np.asarray(counts)
    keep = np.argsort(counts)[::-1][:n]
    return vertices[np.unique(np.asarray(triangles)[np.isin(labels, keep)])]


def table2_metrics(pred_vertices: np.ndarray, pred_triangles: np.ndarray, gt_vertices: np.ndarray,
                   threshold_m: float, downsample_m: float, crop_margin_m: float,
                   keep_largest_clusters: int = 0) -> dict:
    """Acc/Comp/Prec/Recall/F between mesh vertices the way of PromptDA's Table 2 (GT uncropped, prediction
    optionally reduced to its `keep_largest_clusters` largest pieces and cropped to the GT box +- crop_margin_m,
    both voxel-downsampled at downsample_m). Zero scores when no predicted vertex is left."""
    pred = (largest_clusters(pred_vertices, pred_triangles, keep_largest_clusters)
            if keep_largest_clusters > 0 else np.asarray(pred_vertices, np.float64))
    lo, hi = gt_vertices.min(0) - crop_margin_m, gt_vertices.max(0) + crop_margin_m
    pred = pred[np.all((pred >= lo) & (pred <= hi), axis=1)]
    if len(pred) == 0:
        return {"accuracy_m": float("inf"), "completeness_m": float("inf"), "precision": 0.0, "recall": 0.0,
                "fscore": 0.0}
    return mesh_metrics(voxel_downsample(pred, downsample_m), voxel_downsample(gt_vertices, downsample_m),
                        threshold_m)
