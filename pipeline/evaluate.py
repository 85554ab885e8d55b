"""Stage 5, eval: OUT/mesh.* against a ground-truth mesh (and depth maps against GT depth) -> OUT/eval.json.

Mesh metrics (docs/contracts.md, the Atlas / NeuralRecon convention, `pipeline.metrics`): both meshes'
surfaces are sampled uniformly (area-weighted, one point per `sample_spacing_m`**2, fixed seeds), each
sample set is voxel-downsampled at `downsample_m` (voxel centroids), then accuracy / completeness /
precision / recall / F-score at `threshold_m` are measured between the two point sets.

- `unculled`: all points.
- `culled`: only what the capture could have seen. A GT point is kept when some camera (every
  `cull_stride`-th frame, at the pose it was fused with: fuse/poses.parquet, after pose refinement) sees it: it projects inside the image, in front of the camera, and its depth is
  within `cull_tolerance_m` of the GT mesh's depth rendered from that camera (so hidden GT surface is
  dropped). A predicted point is kept when some camera has it inside the image and not behind the GT
  surface (depth <= rendered GT depth + tolerance, or no GT surface on that pixel). This is the
  occlusion-mask culling of TransformerFusion / FineRecon: predicted geometry in regions the cameras never
  saw (behind walls, inside furniture) is not scored, while floaters in observed free space still cost
  accuracy and precision. Distances are then recomputed between the two culled sets.
  GT depth is rendered by ray casting (Open3D RaycastingScene) at a reduced size, long side
  `CULL_LONG_SIDE_PX`, with intrinsics scaled from K_rgb; a point uses its nearest pixel.

Depth metrics (only when WORKDIR/capture/gt_depth/ exists): for every frame with a GT depth map, the depth
model's map (WORKDIR/depth/<model>/<stem>.png, the model fused into OUT) is resized to the GT size with
nearest neighbour (GT pixels are the reference and invalid predictions stay invalid), and L1 / RMSE /
AbsRel / delta_0.5 are pooled over all valid GT pixels of all frames. Invalid predictions on valid GT
pixels count as errors (`pipeline.metrics`); the share of valid predictions goes to eval/curve.json.

Table 2 of PromptDA (`table2_report`; `metrics.table2_metrics`, docs/benchmark_protocols.md): mesh *vertices*,
GT uncropped and unculled, prediction (optionally only its `table2_keep_largest_clusters` largest pieces)
cropped to the GT bounding box +- `table2_crop_margin_m`, both voxel-downsampled at `downsample_m`, scored
at `threshold_m` -> OUT/eval_table2.json.

Outputs: OUT/eval.json with exactly the contract keys; OUT/eval/curve.json with precision / recall /
F-score at 1-10 cm (culled and unculled), distance summaries, culling and depth coverage, for reports;
OUT/eval_table2.json with `table2_report`.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .artifacts import (Manifest, atomic_write_json, file_sha256, fingerprint, invalidate, is_current,
                        upstream_fingerprint)
from .capture import CaptureTable
from .config import EvalConfig
from .errors import PromptmeshError
from .geometry import camera_rays, output_size, scale_intrinsics
from .images import REDO, read_depth_m
from .mesh import raycasting_scene
from .metrics import (DepthErrorSums, fscore_curve, metrics_from_distances, point_distances, sample_surface,
                      table2_metrics, voxel_downsample)
from .poses import fused_camera_to_world
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

STAGE = "eval"
CULL_LONG_SIDE_PX = 320
"""Long side of the GT depth rendered for visibility culling, pixels."""
CURVE_THRESHOLDS_M = tuple(round(0.01 * k, 2) for k in range(1, 11))
"""Thresholds of the F-score curve in eval/curve.json, metres (1-10 cm)."""
SEED_PRED, SEED_GT = 0, 1
"""Surface sampling seeds (fixed: the same meshes always give the same numbers)."""


# --------------------------------------------------------------------------- loading
def load_mesh(path: Path, what: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """(V,3) float64 vertices and (T,3) int64 triangles of a PLY/OBJ/GLB/STL/OFF file (scenes are merged).

    PromptmeshError naming the file when it is missing, unreadable or has no triangles. PLY files go
    straight through trimesh's PLY parser: `trimesh.load` would also build colour visuals, which takes far
    longer than the parse for a mesh of millions of triangles.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise PromptmeshError(f"{path}: {what} not found; pass an existing mesh file")
    try:
        if path.suffix.lower() == ".ply":
            with open(path, "rb") as f:
                m = trimesh.exchange.ply.load_ply(f)
            vertices, faces = m.get("vertices"), m.get("faces")
        else:
            m = trimesh.load(str(path), force="mesh", process=False)
            vertices, faces = getattr(m, "vertices", None), getattr(m, "faces", None)
    except Exception as e:  # trimesh raises many types for broken files
        raise PromptmeshError(f"{path}: unreadable {what} ({type(e).__name__}: {e}); pass a PLY/OBJ/GLB mesh") from None
    faces = np.asarray(faces if faces is not None else np.zeros((0, 3)), np.int64).reshape(-1, 3)
    vertices = np.asarray(vertices if vertices is not None else np.zeros((0, 3)), np.float64).reshape(-1, 3)
    if len(faces) == 0 or not np.all(np.isfinite(vertices)):
        raise PromptmeshError(f"{path}: {what} has no triangles or non-finite vertices; pass a triangle mesh "
                              "(metres, the capture's world frame)")
    return vertices, faces


def sampled_points(vertices: np.ndarray, triangles: np.ndarray, cfg: EvalConfig, seed: int) -> np.ndarray:
    """Surface samples of a mesh at cfg.sample_spacing_m, voxel-downsampled at cfg.downsample_m."""
    return voxel_downsample(sample_surface(vertices, triangles, cfg.sample_spacing_m, seed), cfg.downsample_m)


# --------------------------------------------------------------------------- visibility culling
def render_depth(scene, K: np.ndarray, camera_to_world: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """z-depth (metres, inf where no surface) of a RaycastingScene seen by a pinhole camera.

    OpenCV camera axes; pixel centres at integer coordinates (as in `geometry.backproject`). Returns
    (h,w) float32.
    """
    import open3d as o3d

    return scene.cast_rays(o3d.core.Tensor(camera_rays(K, camera_to_world, size_wh)))["t_hit"].numpy()


def _depth_at(points: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray,
              depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For world points: (in view mask, camera z, rendered depth at the nearest pixel; nan when out of view)."""
    p_cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = p_cam[:, 2]
    h, w = depth.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(K[0, 0] * p_cam[:, 0] / z + K[0, 2])
        v = np.rint(K[1, 1] * p_cam[:, 1] / z + K[1, 2])
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    rendered = np.full(len(points), np.nan)
    rendered[inside] = depth[v[inside].astype(np.int64), u[inside].astype(np.int64)]
    return inside, z, rendered


def cull_masks(gt_points: np.ndarray, pred_points: np.ndarray, scene, table: CaptureTable,
               camera_to_world: np.ndarray, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(GT points seen by some camera, predicted points not hidden from every camera, cameras used).

    scene: the GT mesh's RaycastingScene (`GroundTruth.scene`). camera_to_world: (N,4,4) the poses `table`'s
    frames were fused with (`poses.fused_camera_to_world`). See the module docstring for the rules.
    """
    gt_seen = np.zeros(len(gt_points), bool)
    pred_kept = np.zeros(len(pred_points), bool)
    cameras = range(0, len(table), max(1, cfg.cull_stride))
    for i in cameras:
        rgb_wh = (int(table.width[i]), int(table.height[i]))
        wh = output_size(*rgb_wh, CULL_LONG_SIDE_PX)
        K = scale_intrinsics(table.K_rgb[i], rgb_wh, wh)
        depth = render_depth(scene, K, camera_to_world[i], wh)
        world_to_camera = np.linalg.inv(camera_to_world[i])
        todo = np.flatnonzero(~gt_seen)  # a point seen once needs no more tests
        inside, z, rendered = _depth_at(gt_points[todo], K, world_to_camera, depth)
        gt_seen[todo[inside & (np.abs(z - rendered) < cfg.cull_tolerance_m)]] = True
        todo = np.flatnonzero(~pred_kept)
        inside, z, rendered = _depth_at(pred_points[todo], K, world_to_camera, depth)
        pred_kept[todo[inside & (z <= rendered + cfg.cull_tolerance_m)]] = True  # inf (no GT hit) keeps
    return gt_seen, pred_kept, len(cameras)


# --------------------------------------------------------------------------- depth maps
def depth_errors(workdir: WorkDirLike, table: CaptureTable, depth_model: str) -> Optional[DepthErrorSums]:
    """Pooled depth errors of depth/<depth_model>/ against capture/gt_depth/, or None without GT depth."""
    wd = WorkDir(workdir)
    gt_dir = wd.gt_depth
    if not gt_dir.is_dir():
        return None
    sums = DepthErrorSums()
    n_frames = 0
    for i in range(len(table)):
        gt_file = gt_dir / f"{table.stem(i)}.png"
        if not gt_file.exists():
            continue
        gt_m = read_depth_m(gt_file, REDO, np.float64)
        pred_m = read_depth_m(wd.depth(depth_model) / f"{table.stem(i)}.png", REDO, np.float64)
        pred_at_gt = cv2.resize(pred_m, gt_m.shape[::-1], interpolation=cv2.INTER_NEAREST)
        sums.add(pred_at_gt, gt_m)
        n_frames += 1
    return sums if n_frames and sums.n_pixels else None


# --------------------------------------------------------------------------- stage
def _predicted_mesh(wd: WorkDir) -> Path:
    """The mesh stage's export to evaluate (PLY when it wrote one)."""
    m = Manifest.read(wd.mesh_stage)
    outputs = [wd.mesh_stage / o for o in (m.outputs if m else [])]
    if not outputs:
        raise PromptmeshError(f"{wd.mesh_stage}: mesh has not finished here; run `promptmesh mesh` first")
    ply = [p for p in outputs if p.suffix == ".ply"]
    return (ply or outputs)[0].resolve()


def _summary(d: np.ndarray) -> dict:
    return {"n_points": int(len(d)), "mean_m": float(d.mean()), "median_m": float(np.median(d)),
            "p90_m": float(np.percentile(d, 90)), "max_m": float(d.max())}


def _scores(pred: np.ndarray, gt: np.ndarray, cfg: EvalConfig) -> tuple[dict, dict]:
    """(contract metrics at cfg.threshold_m, curve + distance summaries) between two point sets."""
    d_pred_to_gt, d_gt_to_pred = point_distances(pred, gt)
    curve = fscore_curve(d_pred_to_gt, d_gt_to_pred, CURVE_THRESHOLDS_M)
    del curve["thresholds_m"]
    curve.update(pred_to_gt=_summary(d_pred_to_gt), gt_to_pred=_summary(d_gt_to_pred))
    return metrics_from_distances(d_pred_to_gt, d_gt_to_pred, cfg.threshold_m), curve


@dataclass
class MeshScores:
    """Mesh metrics of one prediction (docs/contracts.md, eval.json) and what eval's curve.json records beside them."""

    culled: dict
    unculled: dict
    culled_curve: dict
    unculled_curve: dict
    culling: dict
    """cameras, gt_seen_fraction, pred_kept_fraction."""
    gt_points: int
    pred_points: int


@dataclass
class GroundTruth:
    """A GT mesh read and prepared for scoring (`load_ground_truth`): what eval needs of it that does not depend
    on the predicted mesh or the poses."""

    path: Path
    vertices: np.ndarray
    """(V,3) float64, metres, the capture's world frame."""
    triangles: np.ndarray
    """(T,3) int64."""
    points: np.ndarray
    """(M,3) surface samples (`sampled_points`, seed SEED_GT)."""
    scene: object
    """Open3D RaycastingScene of the mesh, for culling."""


def load_ground_truth(path: Path, cfg: EvalConfig) -> GroundTruth:
    """Read, sample and ray-cast-index a GT mesh (PromptmeshError naming `path` when it is not a usable mesh)."""
    vertices, triangles = load_mesh(path, "ground-truth mesh")
    return GroundTruth(Path(path), vertices, triangles, sampled_points(vertices, triangles, cfg, SEED_GT),
                       raycasting_scene(vertices, triangles))


def score_meshes(pred: np.ndarray, gt: GroundTruth, table: CaptureTable, camera_to_world: np.ndarray,
                 cfg: EvalConfig) -> MeshScores:
    """Culled and unculled scores of a predicted mesh's samples `pred` ((N,3), `sampled_points` with SEED_PRED)
    against the GT mesh, culled with `table`'s cameras at the poses `camera_to_world` (N,4,4) (world frame,
    metres); PromptmeshError naming the GT file when no surface is in view."""
    unculled, unculled_curve = _scores(pred, gt.points, cfg)
    gt_seen, pred_kept, n_cameras = cull_masks(gt.points, pred, gt.scene, table, camera_to_world, cfg)
    if not gt_seen.any() or not pred_kept.any():
        raise PromptmeshError(f"{gt.path}: no {'ground-truth' if not gt_seen.any() else 'predicted'} surface is in "
                              "view of any camera; is the GT mesh in the capture's world frame, in metres?")
    culled, culled_curve = _scores(pred[pred_kept], gt.points[gt_seen], cfg)
    return MeshScores(culled, unculled, culled_curve, unculled_curve,
                      {"cameras": n_cameras, "gt_seen_fraction": float(gt_seen.mean()),
                       "pred_kept_fraction": float(pred_kept.mean())}, len(gt.points), len(pred))


def table2_report(pred_vertices: np.ndarray, pred_triangles: np.ndarray, gt_vertices: np.ndarray,
                  cfg: EvalConfig) -> dict:
    """eval_table2.json: PromptDA Table 2's metrics (module doc) and the settings they were computed with."""
    scores = table2_metrics(pred_vertices, pred_triangles, gt_vertices, cfg.threshold_m, cfg.downsample_m,
                            cfg.table2_crop_margin_m, cfg.table2_keep_largest_clusters)
    return {"threshold_m": cfg.threshold_m, "downsample_m": cfg.downsample_m,
            "crop_margin_m": cfg.table2_crop_margin_m, "keep_largest_clusters": cfg.table2_keep_largest_clusters,
            **scores}


def run(cfg: EvalConfig, workdir: WorkDirLike, gt_mesh: Path, force: bool = False) -> Path:
    """Evaluate OUT/mesh.* (OUT = the WorkDir's `out`) against `gt_mesh`; returns OUT/eval.json (and writes
    OUT/eval_table2.json with cfg.table2_report)."""
    wd = WorkDir(workdir)
    gt_mesh = Path(gt_mesh)
    upstream = upstream_fingerprint(wd.mesh_stage, "mesh")
    if not gt_mesh.is_file():
        raise PromptmeshError(f"{gt_mesh}: ground-truth mesh not found; pass --gt-mesh with an existing mesh file")
    stamp = fingerprint(STAGE, cfg, [upstream, file_sha256(gt_mesh)])
    edir = wd.eval
    if not force and is_current(edir, stamp):
        log.info("eval: up to date (%s)", wd.eval_json)
        return wd.eval_json

    pred_mesh = _predicted_mesh(wd)
    log.info("eval: %s against %s; threshold %g cm, downsample %g cm, sample spacing %g cm", pred_mesh, gt_mesh,
             cfg.threshold_m * 100, cfg.downsample_m * 100, cfg.sample_spacing_m * 100)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-gt") as pool:  # numpy releases the GIL:
        gt_job = pool.submit(load_ground_truth, gt_mesh, cfg)                       # both meshes at once
        pred_vertices, pred_triangles = load_mesh(pred_mesh, "predicted mesh")
        pred = sampled_points(pred_vertices, pred_triangles, cfg, SEED_PRED)
        gt = gt_job.result()  # a bad GT keeps the last eval
    invalidate(edir)
    table = CaptureTable.load(wd)
    scores = score_meshes(pred, gt, table, fused_camera_to_world(wd, table), cfg)
    culled, unculled = scores.culled, scores.unculled
    report = {"threshold_m": cfg.threshold_m, "downsample_m": cfg.downsample_m, "n_frames": len(table),
              "culled": culled, "unculled": unculled}
    curve = {"thresholds_m": list(CURVE_THRESHOLDS_M), "culled": scores.culled_curve,
             "unculled": scores.unculled_curve, "culling": scores.culling}
    depth_model = Manifest.read(wd.fuse).handoff.get("depth_model")  # fuse's manifest: the maps it fused
    depth_sums = depth_errors(wd, table, depth_model) if depth_model else None
    if depth_sums is not None:
        log.info("eval: depth metrics of depth/%s (the maps fusion used, from its manifest)", depth_model)
    if depth_sums is not None:
        report["depth"] = depth_sums.metrics()
        curve["depth"] = {"depth_model": depth_model, "pixels": depth_sums.n_pixels,
                          "coverage": depth_sums.coverage}

    outputs = [f"../{wd.eval_json.name}", wd.eval_curve.name]
    if cfg.table2_report:
        table2 = table2_report(pred_vertices, pred_triangles, gt.vertices, cfg)
        atomic_write_json(wd.eval_table2_json, table2)
        outputs.append(f"../{wd.eval_table2_json.name}")
        log.info("eval (Table 2 protocol): F@%g cm %.3f, acc %.2f cm, comp %.2f cm -> %s", cfg.threshold_m * 100,
                 table2["fscore"], table2["accuracy_m"] * 100, table2["completeness_m"] * 100, wd.eval_table2_json)
    else:
        wd.eval_table2_json.unlink(missing_ok=True)  # a report of earlier settings would be taken for current

    atomic_write_json(wd.eval_curve, curve)
    atomic_write_json(wd.eval_json, report)
    seconds = time.perf_counter() - t0
    Manifest(STAGE, stamp, outputs=outputs,
             settings={"cfg": cfg, "gt_mesh": str(gt_mesh.resolve()), "pred_mesh": str(pred_mesh)},
             summary={"seconds": round(seconds, 3), "gt_points": scores.gt_points, "pred_points": scores.pred_points,
                      **curve["culling"]}).write(edir)
    log.info("eval: culled F@%g cm %.3f (P %.3f, R %.3f), unculled F %.3f, acc %.2f cm, comp %.2f cm in %.1f s -> %s",
             cfg.threshold_m * 100, culled["fscore"], culled["precision"], culled["recall"], unculled["fscore"],
             culled["accuracy_m"] * 100, culled["completeness_m"] * 100, seconds, wd.eval_json)
    return wd.eval_json
