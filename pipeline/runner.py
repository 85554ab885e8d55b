"""`promptmesh run`: every stage in order, each skipped when up to date, with a per-stage time breakdown.

A second identical run does no work; a changed setting reruns that stage and the ones after it (each
stage's manifest fingerprint includes its upstream's). Timings go to WORKDIR/timings.json.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import depth, evaluate, fuse, ingest, mesh
from .artifacts import Manifest, WorkdirLock, atomic_write_json
from .capture import CaptureTable
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
    """The ingest manifest's summary: frames listed, kept, skipped_bad, dropped_blurry, not_selected."""
    refine_s: Optional[float] = None
    """Seconds of the fuse stage spent refining poses, when fuse ran (and refined) in this run."""

    def report(self) -> str:
        """What a person wants at the end: where things are, the scores, where the time went."""
        lines = [f"frames:      {ingest.summary_line(self.ingest_summary, self.workdir.capture)}",
                 f"depth model: {self.depth_model}"]
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
                lines.append(f"    of which pose refinement {self.refine_s:.2f} s")
        return "\n".join(lines)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 3)


def _prepare_fusion_meanwhile(cfg: PipelineConfig, wd: WorkDir, force: bool) -> Optional[Future]:
    """While the depth stage runs (it leaves part of a core idle), import Open3D (about a second on one core)
    and estimate the voxel blocks to pre-size the grid for (it reads only the LiDAR maps): fusion then starts
    integrating at once. Only when fusion is likely to run (no finished mesh yet); None otherwise."""
    if not force and Manifest.read(wd.mesh_stage) is not None:
        return None

    def prepare() -> int:
        importlib.import_module("open3d")
        return fuse.estimate_block_count(CaptureTable.load(wd), cfg.fuse)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-fusion")
    future = pool.submit(prepare)
    pool.shutdown(wait=False)  # the thread ends after this one task
    return future


def run(cfg: PipelineConfig, capture: Path, workdir: WorkDirLike, gt_mesh: Optional[Path] = None,
        force: bool = False) -> RunResult:
    """ingest -> depth -> fuse -> mesh (-> eval with `gt_mesh`) in `workdir`, under the workdir lock."""
    workdir = WorkDir(workdir)
    if gt_mesh is not None and not Path(gt_mesh).is_file():  # before hours of work, not after
        raise PromptmeshError(f"{gt_mesh}: ground-truth mesh not found; pass --gt-mesh with an existing mesh file")
    timings: dict[str, float] = {}
    with WorkdirLock(workdir):
        with _timed(timings, "ingest"):
            ingest.run(cfg.ingest, capture, workdir, force=force)
        ingest_summary = Manifest.read(workdir.capture).summary
        model = depth.resolve_model_name(cfg.depth)
        cfg = dataclasses.replace(cfg, depth=dataclasses.replace(cfg.depth, model=model))
        prepared = _prepare_fusion_meanwhile(cfg, workdir, force)
        with _timed(timings, "depth"):
            depth.run(cfg.depth, workdir, force=force)
        with _timed(timings, "fuse"):
            block_count = None
            if prepared is not None:
                try:
                    block_count = prepared.result()
                except PromptmeshError:  # fuse.run meets the same problem and reports it
                    pass
            before = Manifest.read(workdir.fuse)
            fused = Manifest.read(fuse.run(cfg.fuse, workdir, depth_model=model, force=force, block_count=block_count))
        ran = before is None or fused.summary != before.summary  # each run's summary has its own seconds
        refine_s = fused.summary.get("seconds_refine") if ran and cfg.fuse.refine_poses else None
        with _timed(timings, "mesh"):
            mesh_paths = mesh.run(cfg.mesh, workdir, force=force)
        eval_path = None
        if gt_mesh is not None:
            with _timed(timings, "eval"):
                eval_path = evaluate.run(cfg.eval, workdir, gt_mesh=gt_mesh, force=force)
        atomic_write_json(workdir.timings_json, {"depth_model": model, "seconds": timings,
                                                 "fuse_seconds_refine_poses": refine_s})
    return RunResult(workdir, model, list(mesh_paths), eval_path, timings, ingest_summary, refine_s)
