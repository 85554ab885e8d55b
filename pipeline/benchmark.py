"""`promptmesh benchmark`: many scenes of a dataset (ScanNet++ iPhone, ARKitScenes) through the cached stages.

Each scene gets its own work directory OUT/scenes/<scene_id>/ laid out like `promptmesh compare`'s: the capture
is ingested once (with the dataset's reader and options), each depth model writes depth/<model>/, and its TSDF,
mesh and evaluation go to compare/<model>/. A scene is finished when OUT/scenes/<scene_id>/benchmark_scene.json
exists with the fingerprint of the current settings: a rerun skips finished scenes, and an interrupted scene
resumes stage by stage (every stage caches). Scenes run in parallel, in a local process pool (default) or as
tasks on a Ray cluster (`ray_address`; every node must see ROOT and OUT at the same paths).

Results: OUT/benchmark.json (per scene, per model, and the mean over scenes), OUT/benchmark.md (the mean table
laid out like Table 2 of the PromptDA paper, then per-scene tables) and OUT/benchmark.png.

Protocols (docs/benchmark_protocols.md):
- "default": ours (docs/contracts.md): surface samples, culled and unculled; the table shows the culled numbers.
- "promptda-table2": PromptDA (CVPR 2025, arXiv 2412.14015v2) Table 2: every frame (no keyframe selection),
  depth at 1008x756, TSDF voxel 2 cm,
  truncation 0.15 m, depth cut at 5 m and no minimum; mesh *vertices*, GT uncropped and unculled, prediction
  cropped to the GT bounding box +- 0.1 m, both voxel-downsampled at 2 cm, threshold 5 cm, averaged per scene;
  optionally only the 50 largest connected pieces of the prediction. The eval stage computes these beside our
  default metrics (EvalConfig.table2_report, which the protocol sets; OUT/eval_table2.json).

A dataset without a GT mesh for a scene (ARKitScenes) gets depth metrics only (GT depth from the reader);
fusion is skipped there.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .artifacts import WorkdirLock, atomic_output, atomic_write_json, atomic_write_text, fingerprint
from .config import PipelineConfig, apply_toml, read_toml, validate
from .report import TABLE_COLUMNS, results_table
from .errors import PromptmeshError
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

PROTOCOLS = ("default", "promptda-table2")
PROTOCOL_DIR = Path(__file__).parent / "protocols"
"""<protocol>.toml: the settings each protocol but "default" fixes."""

SCENE_LISTS: dict[str, tuple[str, ...]] = {
    # PromptDA Table 2: ScanNet++ nvs_sem_val scenes used by the authors' evaluation
    "promptda-table2": ("09c1414f1b", "1ada7a0617", "40aec5fffa", "3e8bba0176", "acd95847c5", "578511c8a9",
                        "5f99900f09", "c4c04e6d6c", "f3d64c30f8", "7bc286c1b6", "c5439f4607", "286b55a2bf",
                        "fb5a96b1a2"),
}
SCENE_LISTS["promptda-table2-ext"] = SCENE_LISTS["promptda-table2"] + ("31a2c91c43", "e7af285f7d")
"""Two more scenes that appear in some of the authors' scripts."""


# ----------------------------------------------------------------------------- protocols
def apply_protocol(cfg: PipelineConfig, protocol: str, voxel_size_m: Optional[float] = None) -> PipelineConfig:
    """The pipeline settings a protocol fixes: the stage tables of pipeline/protocols/<protocol>.toml (options
    given by the user are applied after this). Its [protocol] truncation_m is the TSDF truncation in metres,
    kept when `voxel_size_m` replaces the protocol's voxel."""
    if protocol == "default":
        return cfg
    if protocol not in PROTOCOLS:
        raise PromptmeshError(f"--protocol {protocol!r}: choose one of {list(PROTOCOLS)}")
    path = PROTOCOL_DIR / f"{protocol}.toml"
    data = read_toml(path)
    truncation_m = data.pop("protocol")["truncation_m"]
    cfg = apply_toml(cfg, path, data)
    voxel_m = voxel_size_m or cfg.fuse.voxel_size_m
    cfg = dataclasses.replace(cfg, fuse=dataclasses.replace(cfg.fuse, voxel_size_m=voxel_m,
                                                            sdf_trunc_voxels=truncation_m / voxel_m))
    validate(cfg, f"--protocol {protocol}")
    return cfg


# ----------------------------------------------------------------------------- datasets
def _datasets() -> dict[str, tuple[Callable[[Path], dict[str, Path]], Callable[[Path], Optional[Path]]]]:
    """name -> (scene folders under ROOT, GT mesh of a scene or None)."""
    from .readers import arkitscenes, scannetpp

    return {"scannetpp": (scannetpp.scene_dirs, scannetpp.gt_mesh_path),
            "arkitscenes": (arkitscenes.scene_dirs, lambda scene_dir: None)}


def make_reader(dataset: str, pose_source: str = "arkit"):
    from .readers.arkitscenes import ARKitScenesReader
    from .readers.scannetpp import ScanNetPPReader

    if dataset == "scannetpp":
        return ScanNetPPReader(pose_source=pose_source)
    if dataset == "arkitscenes":
        return ARKitScenesReader()
    raise PromptmeshError(f"--dataset {dataset!r}: choose scannetpp or arkitscenes")


def select_scenes(root: Path, dataset: str, scenes: list[str]) -> dict[str, Path]:
    """Scene ids -> folders. `scenes`: ids, ["all"], or one name of SCENE_LISTS."""
    root = Path(root)
    if dataset not in _datasets():
        raise PromptmeshError(f"--dataset {dataset!r}: choose one of {sorted(_datasets())}")
    available = _datasets()[dataset][0](root)
    if scenes == ["all"]:
        if not available:
            raise PromptmeshError(f"{root}: no {dataset} scenes found; pass the dataset root (e.g. the folder holding "
                                  "data/ for ScanNet++)")
        return available
    wanted = list(SCENE_LISTS[scenes[0]]) if len(scenes) == 1 and scenes[0] in SCENE_LISTS else scenes
    missing = [s for s in wanted if s not in available]
    if missing:
        raise PromptmeshError(f"{root}: {dataset} scenes not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                              f"found {len(available)} scenes ({sorted(available)[:5]} ...)")
    return {s: available[s] for s in wanted}


# ----------------------------------------------------------------------------- one scene
@dataclass(frozen=True)
class SceneJob:
    """Everything a worker (process or Ray task) needs for one scene; picklable."""

    scene_id: str
    scene_dir: Path
    workdir: WorkDir
    gt_mesh: Optional[Path]
    reader: Any
    """A configured reader (frozen dataclass), e.g. ScanNetPPReader(pose_source="merged")."""
    cfg: PipelineConfig
    models: tuple[str, ...]
    protocol: str
    force: bool = False
    log_level: int = logging.INFO

    def settings(self) -> dict:
        """What the scene's result depends on (not `force` nor paths of the output)."""
        return {"scene_dir": str(Path(self.scene_dir).resolve()), "gt_mesh": str(self.gt_mesh),
                "reader": [self.reader.name, self.reader], "cfg": self.cfg, "models": list(self.models),
                "protocol": self.protocol}


def finished(job: SceneJob) -> Optional[dict]:
    """The scene's stored result when it was produced with the job's settings."""
    path = job.workdir.benchmark_scene_json
    if job.force or not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    return result if result.get("fingerprint") == fingerprint("benchmark-scene", job.settings()) else None


def run_scene(job: SceneJob) -> dict:
    """ingest -> per model: depth -> (fuse -> mesh -> eval [with its Table 2 report]) | depth metrics; returns and
    stores {"scene", "models": {model: eval dict}, "skipped": {model: why}, "seconds", "fingerprint"}."""
    from . import evaluate, ingest
    from .capture import CaptureTable
    from .runner import run_models

    done = finished(job)
    if done is not None:
        return done
    t0 = time.perf_counter()
    cfg = job.cfg
    results: dict[str, dict] = {}
    with WorkdirLock(job.workdir):
        ingest.run(cfg.ingest, job.scene_dir, job.workdir, force=job.force, reader=job.reader)
        # without a GT mesh (ARKitScenes) only the depth maps are scored: no fusion
        runs, skipped = run_models(cfg, job.workdir, list(job.models), job.gt_mesh, job.force,
                                   through_fusion=job.gt_mesh is not None)
        for model, done in runs.items():
            if job.gt_mesh is None:
                sums = evaluate.depth_errors(job.workdir, CaptureTable.load(job.workdir), model)
                if sums is None:
                    raise PromptmeshError(f"{job.scene_dir}: neither a GT mesh nor GT depth to evaluate against")
                results[model] = {"depth": sums.metrics()}
                continue
            report = json.loads(done.eval_path.read_text())
            if cfg.eval.table2_report:  # written by the eval stage beside eval.json
                report["table2"] = json.loads(done.workdir.eval_table2_json.read_text())
            results[model] = report
    result = {"scene": job.scene_id, "models": results, "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 2),
              "fingerprint": fingerprint("benchmark-scene", job.settings())}
    atomic_write_json(job.workdir.benchmark_scene_json, result)
    log.info("benchmark: %s finished in %.1f s", job.scene_id, result["seconds"])
    return result


def _worker_logging(level: int) -> None:
    """Give a worker process (pool or Ray) the CLI's log format; a configured logger is left alone."""
    root = logging.getLogger("pipeline")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[%(asctime)s %(levelname)s pid {os.getpid()}] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(level)
        root.propagate = False


def _run_scene_or_error(job: SceneJob, in_worker: bool = False) -> tuple[str, Optional[dict], Optional[str]]:
    """(scene, result, None) or (scene, None, one-line error): a user-fixable problem fails one scene only."""
    if in_worker:
        _worker_logging(job.log_level)
    try:
        return job.scene_id, run_scene(job), None
    except PromptmeshError as e:
        return job.scene_id, None, str(e)


# ----------------------------------------------------------------------------- schedulers
def _local(jobs: list[SceneJob], workers: int) -> Iterator[tuple[str, Optional[dict], Optional[str]]]:
    if workers <= 1:
        for job in jobs:
            yield _run_scene_or_error(job)
        return
    import multiprocessing

    # spawn, not fork: torch and Open3D start thread pools that a forked child would inherit broken
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_run_scene_or_error, job, True) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def _ray(jobs: list[SceneJob], address: str, cpus_per_scene: float,
         gpus_per_scene: float) -> Iterator[tuple[str, Optional[dict], Optional[str]]]:
    try:
        import ray
    except ImportError:
        raise PromptmeshError("--ray: Ray is not installed; pip install 'promptmesh[ray]' (or: pip install ray)"
                              ) from None
    if not ray.is_initialized():
        # "local" starts a Ray instance on this machine; otherwise join the cluster at `address` ("auto", "ray://...")
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=True)
    task = ray.remote(num_cpus=cpus_per_scene, num_gpus=gpus_per_scene, max_retries=0)(_run_scene_or_error)
    pending = [task.remote(job, True) for job in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


# ----------------------------------------------------------------------------- entry point
def run(cfg: PipelineConfig, root: Path, out: Path, dataset: str, scenes: list[str], models: list[str],
        protocol: str = "default", pose_source: str = "arkit", jobs: int = 0,
        ray_address: Optional[str] = None, cpus_per_scene: float = 1.0, gpus_per_scene: float = 0.0,
        force: bool = False) -> Path:
    """Benchmark `models` on `scenes` of `dataset` under ROOT; writes OUT/benchmark.{json,md,png}.

    `cfg` is final (protocol applied with `apply_protocol`, then the user's options). `jobs`: local worker
    processes (0 = about one per two cores); ignored with `ray_address`. Returns OUT/benchmark.md.
    """
    if protocol not in PROTOCOLS:
        raise PromptmeshError(f"--protocol {protocol!r}: choose one of {list(PROTOCOLS)}")
    out = WorkDir(out)
    scene_dirs = select_scenes(root, dataset, scenes)
    gt_of = _datasets()[dataset][1]
    reader = make_reader(dataset, pose_source)
    level = logging.getLogger("pipeline").getEffectiveLevel()
    all_jobs = [SceneJob(sid, d, out.scene(sid), _existing(gt_of(d)), reader, cfg, tuple(models), protocol,
                         force, level) for sid, d in scene_dirs.items()]
    results: dict[str, dict] = {}
    todo = []
    for job in all_jobs:
        done = finished(job)
        if done is not None:
            results[job.scene_id] = done
        else:
            todo.append(job)
    workers = jobs or max(1, min(len(todo), (os.cpu_count() or 2) // 2))
    log.info("benchmark: %s, %d scenes (%d finished, %d to run) x models %s, protocol %s, %s", dataset,
             len(all_jobs), len(results), len(todo), ",".join(models), protocol,
             f"Ray at {ray_address}" if ray_address else f"{workers} local worker(s)")
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    stream = (_ray(todo, ray_address, cpus_per_scene, gpus_per_scene) if ray_address and todo
              else _local(todo, workers))
    for n, (sid, result, error) in enumerate(stream, start=1):
        if error is not None:
            log.error("benchmark: %s failed: %s", sid, error)
            failed[sid] = error
        else:
            results[sid] = result
        log.info("benchmark: %d/%d scenes done (%.0f s)", n, len(todo), time.perf_counter() - t0)
    if not results:
        raise PromptmeshError(f"benchmark: every scene failed ({next(iter(failed.values()), '')})")
    ordered = {sid: results[sid] for sid in scene_dirs if sid in results}
    return write_reports(out, ordered, failed, dataset, protocol, models, cfg, pose_source)


def _existing(path: Optional[Path]) -> Optional[Path]:
    return path if path is not None and Path(path).is_file() else None


# ----------------------------------------------------------------------------- reports
def table_columns(protocol: str) -> list[tuple]:
    """(header, section, key, scale, format) columns: depth metrics, then Acc/Comp/Prec/Recall/F of the
    protocol (culled surface samples by default; mesh vertices for Table 2)."""
    mesh_section = "table2" if protocol == "promptda-table2" else "culled"
    return [(h, mesh_section if s == "culled" else s, k, sc, f) for h, s, k, sc, f in TABLE_COLUMNS
            if s != "unculled" or protocol == "default"]


def mean_over_scenes(results: dict[str, dict], models: list[str]) -> dict[str, dict]:
    """model -> {"n_scenes", section -> {key: mean}} over the scenes where the model has that number."""
    mean: dict[str, dict] = {}
    for model in models:
        per_scene = [r["models"][model] for r in results.values() if model in r["models"]]
        if not per_scene:
            continue
        sections: dict[str, dict] = {"n_scenes": len(per_scene)}
        for section in sorted({s for r in per_scene for s, v in r.items() if isinstance(v, dict)}):
            keys = {k for r in per_scene for k, v in r.get(section, {}).items() if isinstance(v, (int, float))}
            sections[section] = {k: float(np.mean([r[section][k] for r in per_scene if k in r.get(section, {})]))
                                 for k in sorted(keys)}
        mean[model] = sections
    return mean


def markdown(results: dict[str, dict], mean: dict[str, dict], failed: dict[str, str], dataset: str,
             protocol: str, cfg: PipelineConfig, chart: Optional[Path]) -> str:
    cols = [c for c in table_columns(protocol) if any(c[1] in m for m in mean.values())]
    mesh = (f"mesh vertices, GT uncropped and unculled, prediction cropped to the GT box ± "
            f"{cfg.eval.table2_crop_margin_m:g} m"
            if protocol == "promptda-table2" else "surface samples, GT culled to what the cameras saw")
    lines = [f"# Benchmark: {dataset}, protocol {protocol}", "",
             f"{len(results)} scenes. Depth long side {cfg.depth.long_side_px} px; TSDF voxel "
             + (f"{cfg.fuse.voxel_size_m * 100:g} cm, truncation "
                f"{cfg.fuse.voxel_size_m * cfg.fuse.sdf_trunc_voxels:.3g} m, " if cfg.fuse.voxel_size_m > 0 else
                f"automatic per scene, truncation {cfg.fuse.sdf_trunc_voxels:g} voxels, ")
             + f"depth {cfg.fuse.depth_min_m:g}-{cfg.fuse.depth_max_m:g} m. Mesh metrics: {mesh}; both downsampled at "
             f"{cfg.eval.downsample_m * 100:g} cm, threshold {cfg.eval.threshold_m * 100:g} cm. Means are over "
             "scenes (each scene weighs the same).", "",
             "## Mean over scenes", "",
             *results_table([((model, str(m["n_scenes"])), m) for model, m in mean.items()], cols, ("model", "scenes")),
             "", "## Per scene", "",
             *results_table([((sid, model), ev) for sid, r in results.items() for model, ev in r["models"].items()],
                            cols, ("scene", "model"))]
    skipped = {(sid, m): why for sid, r in results.items() for m, why in r.get("skipped", {}).items()}
    if skipped or failed:
        lines += ["", "## Not evaluated", ""]
        lines += [f"- {sid} `{m}`: {why}" for (sid, m), why in skipped.items()]
        lines += [f"- {sid}: failed: {why}" for sid, why in failed.items()]
    if chart is not None:
        lines += ["", f"![{chart.stem}]({chart.name})"]
    return "\n".join(lines) + "\n"


def chart(path: Path, results: dict[str, dict], mean: dict[str, dict], protocol: str) -> Optional[Path]:
    """Grouped bars per scene (and the mean), one panel per headline metric that the results have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mesh_section = "table2" if protocol == "promptda-table2" else "culled"
    panels = [(t, s, k, sc) for t, s, k, sc in (("F-score", mesh_section, "fscore", 1), ("Acc (cm)", mesh_section,
              "accuracy_m", 100), ("Comp (cm)", mesh_section, "completeness_m", 100), ("depth L1 (cm)", "depth",
              "l1_m", 100), ("depth δ0.5", "depth", "delta_0.5", 1)) if any(s in m for m in mean.values())]
    if not panels:
        return None
    models = list(mean)
    groups = list(results) + ["mean"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.9 * len(groups) * max(1, len(models)) + 2),
                                                      2.6 * len(panels)), squeeze=False)
    width = 0.8 / max(1, len(models))
    for ax, (title, section, key, scale) in zip(axes[:, 0], panels):
        for j, model in enumerate(models):
            vals = [results[g]["models"].get(model, {}).get(section, {}).get(key, np.nan) if g != "mean"
                    else mean[model].get(section, {}).get(key, np.nan) for g in groups]
            ax.bar(np.arange(len(groups)) + (j - (len(models) - 1) / 2) * width, np.asarray(vals, float) * scale,
                   width, label=model)
        ax.set_ylabel(title)
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=min(4, len(models)))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_reports(out: WorkDirLike, results: dict[str, dict], failed: dict[str, str], dataset: str, protocol: str,
                  models: list[str], cfg: PipelineConfig, pose_source: str) -> Path:
    out = WorkDir(out)
    mean = mean_over_scenes(results, models)
    png = chart(out.benchmark_report("png"), results, mean, protocol)
    atomic_write_json(out.benchmark_report("json"), {
        "dataset": dataset, "protocol": protocol, "pose_source": pose_source if dataset == "scannetpp" else None,
        "config": cfg, "models": models, "mean": mean, "failed": failed,
        "scenes": {sid: {k: v for k, v in r.items() if k != "fingerprint"} for sid, r in results.items()}})
    md = out.benchmark_report("md")
    atomic_write_text(md, markdown(results, mean, failed, dataset, protocol, cfg, png))
    log.info("benchmark: %d scenes, %d failed -> %s", len(results), len(failed), md)
    return md
