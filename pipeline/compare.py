"""`promptmesh compare`: several depth models through depth -> fuse -> mesh -> eval on one capture.

The capture is ingested once into WORKDIR/capture; each model's depth goes to WORKDIR/depth/<model>/
and its TSDF, mesh and eval to WORKDIR/compare/<model>/. Every step is the cached stage itself, so a
rerun only does what changed. Outputs: WORKDIR/compare.json, WORKDIR/compare.md (a table laid out like
Table 2 of the PromptDA paper) and PNG figures in WORKDIR/compare/figures/.

A PromptDA model whose weights are not available is skipped with a warning (and listed in the report
with the reason), so the default model list works on machines without weights.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from . import fuse, ingest
from .artifacts import Manifest, WorkdirLock, atomic_output, atomic_write_json, atomic_write_text
from .capture import CaptureTable
from .config import PipelineConfig
from .errors import PromptmeshError
from .images import REDO, read_depth_m, read_image
from .report import TABLE_COLUMNS, results_table
from .runner import run_models
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, capture: Path, workdir: WorkDirLike, gt_mesh: Path, models: list[str],
        force: bool = False) -> Path:
    """Compare `models` on `capture`; returns the path of compare.md."""
    wd = WorkDir(workdir)
    gt_mesh = Path(gt_mesh)
    if not gt_mesh.is_file():
        raise PromptmeshError(f"{gt_mesh}: ground-truth mesh not found; pass --gt-mesh with an existing mesh file")
    results: dict[str, dict] = {}
    with WorkdirLock(wd):
        ingest.run(cfg.ingest, capture, wd, force=force)
        runs, skipped = run_models(cfg, wd, models, gt_mesh, force)
        for model, done in runs.items():
            results[model] = json.loads(done.eval_path.read_text())
            curve = json.loads(done.workdir.eval_curve.read_text())
            if "depth" in results[model]:  # metrics are on pixels valid in both: show how many those are
                results[model]["depth"]["coverage"] = curve["depth"]["coverage"]
        figures = _figures(wd, gt_mesh, list(results), cfg)
        atomic_write_json(wd.compare_json, {"models": results, "skipped": skipped,
                                            "figures": [str(p.relative_to(wd.root)) for p in figures]})
        md = wd.compare_md
        atomic_write_text(md, _markdown(results, skipped, figures, wd, cfg, _voxel_text(runs)))
    log.info("compare: %d models -> %s", len(results), md)
    return md


def _voxel_text(runs: dict) -> str:
    """The voxel the models were fused with (one plan serves them all), as `fuse.voxel_line` says it."""
    voxels = {fuse.fused_voxel_line(Manifest.read(r.workdir.fuse).summary) for r in runs.values()} - {None}
    return " / ".join(sorted(voxels)) or "?"


def _markdown(results: dict, skipped: dict, figures: list[Path], wd: WorkDir, cfg: PipelineConfig,
              voxel: str) -> str:
    cols = [c for c in TABLE_COLUMNS if any(c[1] in r for r in results.values())]
    table = results_table([((model,), r) for model, r in results.items()], cols, ("model",))
    lines = ["# Depth model comparison", "",
             f"TSDF voxel {voxel}, depth long side {cfg.depth.long_side_px} px; mesh "
             f"metrics at {cfg.eval.threshold_m * 100:g} cm, both meshes downsampled at "
             f"{cfg.eval.downsample_m * 100:g} cm; Acc/Comp/Prec/Recall/F on culled GT (seen by a camera).", "",
             *table]
    if skipped:
        lines += ["", "Skipped:"] + [f"- `{m}`: {why}" for m, why in skipped.items()]
    lines += [""] + [f"![{p.stem}]({p.relative_to(wd.root)})" for p in figures] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def _figures(wd: WorkDir, gt_mesh: Path, models: list[str], cfg: PipelineConfig) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    return [
        _depth_figure(wd, models, wd.compare_figures / "depth_and_error.png"),
        _fscore_figure(wd, models, wd.compare_figures / "fscore_vs_threshold.png"),
        _topdown_figure(wd, gt_mesh, models, cfg, wd.compare_figures / "topdown_error.png"),
    ]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _depth_figure(wd: WorkDir, models: list[str], path: Path, n_frames: int = 3) -> Path:
    """Rows = a few frames; columns = RGB, GT depth (if any), each model's depth and |error| maps."""
    import matplotlib.pyplot as plt

    table = CaptureTable.load(wd)
    picks = np.linspace(0, len(table) - 1, min(n_frames, len(table))).round().astype(int)
    gt_dir = wd.gt_depth
    has_gt = gt_dir.is_dir()
    ncols = 1 + has_gt + len(models) * (1 + has_gt)
    fig, axes = plt.subplots(len(picks), ncols, figsize=(2.6 * ncols, 2.1 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        stem = table.stem(i)
        rgb = cv2.cvtColor(read_image(table.root / table.rgb_path[i], cv2.IMREAD_COLOR, "RGB frame",
                                      "rerun `promptmesh ingest --force`"), cv2.COLOR_BGR2RGB)
        panels = [("RGB", rgb, None)]
        gt = read_depth_m(gt_dir / f"{stem}.png", REDO) if has_gt else None
        if gt is not None:
            panels.append(("GT depth", gt, "depth"))
        vmax = float(np.percentile(gt[gt > 0], 99)) if gt is not None and (gt > 0).any() else None
        for m in models:
            pred = read_depth_m(wd.depth(m) / f"{stem}.png", REDO)
            if vmax is None and (pred > 0).any():
                vmax = float(np.percentile(pred[pred > 0], 99))
            panels.append((m, pred, "depth"))
            if gt is not None:
                pred_at_gt = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
                err = np.where((gt > 0) & (pred_at_gt > 0), np.abs(pred_at_gt - gt), np.nan)
                panels.append((f"{m} |err|", err, "error"))
        for col, (title, img, kind) in enumerate(panels):
            ax = axes[row, col]
            if kind is None:
                ax.imshow(img)
            elif kind == "depth":
                ax.imshow(np.where(img > 0, img, np.nan), cmap="turbo", vmin=0, vmax=vmax)
            else:
                ax.imshow(img, cmap="magma", vmin=0, vmax=0.10)
            ax.set_title(f"{title}" + (f" #{stem}" if col == 0 else ""), fontsize=8)
            ax.axis("off")
    fig.suptitle("Depth (turbo, 0..%.1f m) and absolute error (magma, 0..10 cm)" % (vmax or 0), fontsize=9)
    return _save(fig, path)


def _fscore_figure(wd: WorkDir, models: list[str], path: Path) -> Path:
    """F-score against threshold (1-10 cm) per model, culled (solid) and unculled (dashed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in models:
        curve = json.loads(wd.compare_model(m).eval_curve.read_text())
        t_cm = np.asarray(curve["thresholds_m"]) * 100
        line, = ax.plot(t_cm, curve["culled"]["fscore"], marker="o", ms=3, label=f"{m}")
        ax.plot(t_cm, curve["unculled"]["fscore"], ls="--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("threshold (cm)")
    ax.set_ylabel("F-score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="culled (solid), unculled (dashed)", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def _topdown_figure(wd: WorkDir, gt_mesh: Path, models: list[str], cfg: PipelineConfig, path: Path) -> Path:
    """Each model's mesh seen from above (world y up), vertices coloured by distance to the GT surface."""
    import matplotlib.pyplot as plt
    import open3d as o3d

    gt = o3d.t.geometry.TriangleMesh.from_legacy(o3d.io.read_triangle_mesh(str(gt_mesh)))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(gt)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    sc = None
    for ax, m in zip(axes[0], models):
        pred = o3d.io.read_triangle_mesh(str(wd.compare_model(m).mesh("ply")))
        v = np.asarray(pred.vertices, np.float32)
        if len(v) > 200_000:
            v = v[np.random.default_rng(0).choice(len(v), 200_000, replace=False)]
        dist = scene.compute_distance(o3d.core.Tensor(v)).numpy() if len(v) else np.zeros(0)
        order = np.argsort(v[:, 1]) if len(v) else []  # draw low points first, so the top layer shows
        sc = ax.scatter(v[order, 0], v[order, 2], c=dist[order], s=0.3, cmap="RdYlGn_r", vmin=0,
                        vmax=cfg.eval.threshold_m * 2)
        ax.set_title(m, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
    if sc is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), shrink=0.8, label="distance to GT (m)")
    return _save(fig, path)
