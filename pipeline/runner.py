"""`promptmesh run`: every stage in order, each skipped when up to date, with a per-stage time breakdown.

A second identical run does no work; a changed setting reruns that stage and the ones after it (each
stage's manifest fingerprint includes its upstream's). Timings go to WORKDIR/timings.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import ahead, depth, evaluate, fuse, ingest, mesh
from .artifacts import Manifest, WorkdirLock, atomic_write_json
from .config import PipelineConfig
from .errors import PromptmeshError
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    workdir: WorkDir
    depth_model: str
    mesh_paths: list[Path]
    eval_path: Optional[Path] = None
    timings_s: dict[str, float] = field(default_factory=dict)
    ingest_summary: dict = field(default_factory=dict)
    """The ingest manifest's summary: frames listed, kept (and why), and why the others were not."""
    refine_s: Optional[float] = None
    """Seconds of the fuse stage spent refining poses, when fuse ran (and refined) in this run."""
    fuse_summary: dict = field(default_factory=dict)
    """The fuse manifest's summary (voxel_size_m, voxel_auto_depth_m, ...)."""

    def report(self) -> str:
        """What a person wants at the end: where things are, the scores, where the time went."""
        lines = [f"frames:      {ingest.summary_line(self.ingest_summary, self.workdir.capture)}",
                 f"depth model: {self.depth_model}"]
        voxel = fuse.fused_voxel_line(self.fuse_summary)
        if voxel is not None:
            lines.append(f"voxel:       {voxel}")
        lines += [f"mesh:        {p}" for p in self.mesh_paths]
        if self.eval_path is not None:
            ev = json.loads(Path(self.eval_path).read_text())
            lines.append(f"report:      {self.eval_path}")
            for kind in ("culled", "unculled"):
                m = ev[kind]
                lines.append(f"  {kind:8s} F@{ev['threshold_m'] * 100:.0f}cm {m['fscore']:.3f}  precision "
                             f"{m['precision']:.3f}  recall {m['recall']:.3f}  acc {m['accuracy_m'] * 100:.2f} cm  "
                             f"comp {m['completeness_m'] * 100:.2f} cm")
            if "depth" in ev:
                d = ev["depth"]
                lines.append(f"  depth    L1 {d['l1_m'] * 100:.2f} cm  RMSE {d['rmse_m'] * 100:.2f} cm  "
                             f"AbsRel {d['absrel']:.4f}  delta0.5 {d['delta_0.5']:.3f}")
        total = sum(self.timings_s.values())
        lines.append(f"timings:     {self.workdir.timings_json} (total {total:.1f} s)")
        for stage, sec in self.timings_s.items():
            lines.append(f"  {stage:7s} {sec:8.2f} s")
            if stage == "fuse" and self.refine_s is not None:
                lines.append(f"    pose refinement {self.refine_s:.2f} s" + (
                    ", while depth ran" if self.fuse_summary.get("refined_ahead") else ", of these"))
        return "\n".join(lines)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 3)


@dataclass
class ModelRun:
    """One depth model's pass through the stages (`run_model`)."""

    model: str
    workdir: WorkDir
    """Where its fusion onwards went (`WorkDir.out`)."""
    mesh_paths: list[Path]
    eval_path: Optional[Path]
    fuse_ran: bool
    """The fuse stage did work (was not up to date)."""


OVERLAPS = ("preload", "refine_poses", "presize", "live_depth", "live_grid")
"""Work `run` overlaps with other stages (docs/benchmarks.md, "Overlap", measures each):
- preload: PRELOADED_MODULES imported on a thread while ingest runs (`ahead.preload`);
- refine_poses: fusion's pose refinement (from the LiDAR) on a thread while the depth stage runs
  (`fuse.refine_meanwhile`);
- presize: fusion's voxel choice and grid allocation on a thread while the depth stage runs
  (`fuse.presize_meanwhile`);
- live_depth: the depth maps also kept in memory for fusion, which then does not decode their PNGs
  (`depth.run` hand_to_fuse);
- live_grid: the fused grid handed to the mesh stage in memory, which saves the volume on a thread once it
  has extracted the surface (`fuse.run` hand_to_mesh).
The outputs are the same with any of them off (tests/test_runner.py)."""


PRELOADED_MODULES = ("open3d", "scipy.spatial", "scipy.sparse.csgraph")
"""What the stages after ingest import (Open3D: refinement, fusion, meshing; SciPy's KD-tree: refinement; its
graph routines: meshing), ~1.5 s of imports that would otherwise hold up the refinement thread."""


def _fusion_likely(workdir: WorkDir, force: bool) -> bool:
    """Fusion is likely to run in `workdir`: forced, or no mesh there yet."""
    return force or Manifest.read(workdir.mesh_stage) is None


def _ahead_of_fusion(workdirs: list[WorkDir], cfg: PipelineConfig, force: bool, overlaps: tuple[str, ...]) -> None:
    """Start what fusion needs from the capture alone, for those of `workdirs` (one ingested capture) whose fusion
    is likely to run: pose refinement (refine_poses overlap) for all of them, the grid (presize overlap) for the
    first, whose fusion runs next (a grid for each would hold memory for all)."""
    likely = [wd for wd in workdirs if _fusion_likely(wd, force)]
    if "refine_poses" in overlaps and likely:
        fuse.refine_meanwhile(likely, cfg.fuse)
    if "presize" in overlaps and likely:
        fuse.presize_meanwhile(likely[0], cfg.fuse)


def run_model(cfg: PipelineConfig, wd: WorkDir, model: str, gt_mesh: Optional[Path] = None, force: bool = False,
              timings: Optional[dict[str, float]] = None, through_fusion: bool = True,
              overlaps: tuple[str, ...] = OVERLAPS) -> ModelRun:
    """depth -> fuse -> mesh (-> eval with `gt_mesh`) of one depth model: its depth maps in wd.depth(model),
    fusion onwards in wd.out. `through_fusion` False: the depth stage only. Seconds per stage go to `timings`
    (with live_grid, the volume's save is timed in mesh, which it overlaps)."""
    timings = {} if timings is None else timings
    with _timed(timings, "depth"):
        depth.run(dataclasses.replace(cfg.depth, model=model), wd, force=force,
                  hand_to_fuse=through_fusion and "live_depth" in overlaps)
    if not through_fusion:
        return ModelRun(model, wd, [], None, False)
    before = Manifest.read(wd.fuse)
    with _timed(timings, "fuse"):
        fuse.run(cfg.fuse, wd, depth_model=model, force=force, hand_to_mesh="live_grid" in overlaps)
    fuse_ran = before is None or Manifest.read(wd.fuse) != before  # each run's summary has its own seconds
    with _timed(timings, "mesh"):
        mesh_paths = mesh.run(cfg.mesh, wd, force=force)
    eval_path = None
    if gt_mesh is not None:
        with _timed(timings, "eval"):
            eval_path = evaluate.run(cfg.eval, wd, gt_mesh=gt_mesh, force=force)
    return ModelRun(model, wd, list(mesh_paths), eval_path, fuse_ran)


def run_models(cfg: PipelineConfig, wd: WorkDir, models: list[str], gt_mesh: Optional[Path] = None,
               force: bool = False, through_fusion: bool = True,
               overlaps: tuple[str, ...] = OVERLAPS) -> tuple[dict[str, ModelRun], dict[str, str]]:
    """`run_model` for each model on an ingested work directory, fusion onwards in compare/<model>/ (compare,
    benchmark). A model that needs weights which are not available is skipped with the reason (the one place
    of that rule): returns ({model: ModelRun}, {model: why skipped}); an error when no model could run.
    Pose refinement depends only on the capture, so it is computed once for all models
    (`fuse.refine_meanwhile`), during the first model's depth stage."""
    skipped = {m: why for m in models if (why := depth.missing_weights(dataclasses.replace(cfg.depth, model=m)))}
    for model, why in skipped.items():
        log.warning("%s skipped: %s", model, why)
    to_run = [m for m in models if m not in skipped]
    if not to_run:
        raise PromptmeshError(f"{wd.root}: no depth model could run ({skipped}); add lidar or guided to "
                              "--depth-models")
    if through_fusion:
        _ahead_of_fusion([wd.compare_model(m) for m in to_run], cfg, force, overlaps)
    runs = {}
    for model in to_run:
        log.info("depth model %s", model)
        runs[model] = run_model(cfg, wd.compare_model(model), model, gt_mesh, force, through_fusion=through_fusion,
                                overlaps=overlaps)
    return runs, skipped


def run(cfg: PipelineConfig, capture: Path, workdir: WorkDirLike, gt_mesh: Optional[Path] = None,
        force: bool = False, overlaps: tuple[str, ...] = OVERLAPS) -> RunResult:
    """ingest -> depth -> fuse -> mesh (-> eval with `gt_mesh`) in `workdir`, under the workdir lock, with the
    `overlaps` named in OVERLAPS (all by default)."""
    workdir = WorkDir(workdir)
    if gt_mesh is not None and not Path(gt_mesh).is_file():  # before hours of work, not after
        raise PromptmeshError(f"{gt_mesh}: ground-truth mesh not found; pass --gt-mesh with an existing mesh file")
    unknown = set(overlaps) - set(OVERLAPS)
    assert not unknown, f"unknown overlaps {unknown}; known: {OVERLAPS}"
    timings: dict[str, float] = {}
    with WorkdirLock(workdir):
        if "preload" in overlaps and _fusion_likely(workdir, force):
            ahead.preload(PRELOADED_MODULES, name="preload")
        with _timed(timings, "ingest"):
            ingest.run(cfg.ingest, capture, workdir, force=force)
        ingest_summary = Manifest.read(workdir.capture).summary
        model = depth.resolve_model_name(cfg.depth)
        cfg = dataclasses.replace(cfg, depth=dataclasses.replace(cfg.depth, model=model))
        _ahead_of_fusion([workdir], cfg, force, overlaps)
        done = run_model(cfg, workdir, model, gt_mesh, force, timings, overlaps=overlaps)
        refine_s = (Manifest.read(workdir.fuse).summary.get("seconds_refine")
                    if done.fuse_ran and cfg.fuse.refine_poses else None)
        mesh_paths, eval_path = done.mesh_paths, done.eval_path
        atomic_write_json(workdir.timings_json, {"depth_model": model, "seconds": timings,
                                                 "fuse_seconds_refine_poses": refine_s})
    fuse_manifest = Manifest.read(workdir.fuse)
    return RunResult(workdir, model, list(mesh_paths), eval_path, timings, ingest_summary, refine_s,
                     fuse_manifest.summary if fuse_manifest is not None else {})
