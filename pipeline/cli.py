"""The `promptmesh` command line: a thin click layer that builds configs and calls each stage's `run`.

Errors a user can fix (PromptmeshError) print as one line on stderr and exit 1; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import sys
from pathlib import Path

import click

from .depth_models import AUTO, MODEL_CHOICES
from .errors import PromptmeshError
from .options import build_config, config_options
from .workdir import WorkDir



def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _guard(fn):
    """Turn PromptmeshError into one stderr line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PromptmeshError as e:
            click.echo(f"promptmesh: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("promptmesh: interrupted; finished work is kept, rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


# ----------------------------------------------------------------------------- shared options
def opt_config(f):
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML file with one table per stage ([ingest] [depth] [fuse] [mesh] [eval] [export] "
                             "[view]; see configs/default.toml). Options given here override it.")(f)


def opt_workdir(f):
    return click.option("-o", "--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Work directory for all artifacts (created if missing; reruns reuse what is "
                             "up to date).")(f)


def opt_force(f):
    return click.option("--force", is_flag=True, default=False,
                        help="Redo the stage(s) even if they are up to date.")(f)


def opt_gt_mesh(required: bool, help_text: str):
    return click.option("--gt-mesh", required=required, type=click.Path(dir_okay=False, path_type=Path),
                        help=help_text)


def opt_depth_models(default: str):
    return click.option("--depth-models", default=default, show_default=True,
                        help="Comma-separated depth models to run, each through depth -> fuse -> mesh -> eval "
                             "(models that need weights are skipped, with the reason, when they are missing).")


def _capture_help() -> str:
    from .readers import READERS

    return "CAPTURE is auto-detected, one of: " + "; ".join(r.description for r in READERS.values()) + "."


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (per-frame details).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="promptmesh")
def cli(verbose: int, quiet: bool) -> None:
    """promptmesh: iPhone LiDAR capture -> metric, high-resolution mesh.

    Stages: ingest -> depth -> fuse -> mesh -> eval. `run` does them all; each stage caches its
    artifacts in the work directory, so rerunning does only what changed.
    """
    _setup_logging(verbose, quiet)


CAPTURE = click.argument("capture", type=click.Path(path_type=Path))
WORKDIR = click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
STAGES = ("ingest", "depth", "fuse", "mesh", "eval")


@cli.command()
@CAPTURE
@opt_workdir
@opt_config
@opt_gt_mesh(False, "Ground-truth mesh (metres, capture world frame): also evaluate and write eval.json.")
@config_options(*STAGES)
@opt_force
@_guard
def run(capture, workdir, config_path, gt_mesh, force, **options):
    """All stages on CAPTURE: ingest, depth, fuse, mesh (and eval with --gt-mesh).

    \b
    Example:
      promptmesh run sample_captures/synthetic_room -o work/room \\
          --gt-mesh sample_captures/synthetic_room/gt_mesh.ply
    """
    from . import runner

    result = runner.run(build_config(config_path, options), capture, workdir, gt_mesh=gt_mesh, force=force)
    click.echo(result.report())


@cli.command()
@CAPTURE
@opt_workdir
@opt_config
@config_options("ingest")
@opt_force
@_guard
def ingest(capture, workdir, config_path, force, **options):
    """Read CAPTURE into WORKDIR/capture/ (frames.parquet, rgb/, lidar/, confidence/)."""
    from . import ingest as stage
    from .artifacts import Manifest, WorkdirLock

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        path = stage.run(cfg.ingest, capture, workdir, force=force)
    click.echo(f"capture: {path}")
    capture_dir = WorkDir(workdir).capture
    click.echo(f"frames:  {stage.summary_line(Manifest.read(capture_dir).summary, capture_dir)}")


@cli.command()
@WORKDIR
@opt_config
@config_options("depth")
@opt_force
@_guard
def depth(workdir, config_path, force, **options):
    """Estimate depth for every ingested frame into WORKDIR/depth/<model>/ (uint16 mm PNGs).

    Resumable: frames already written with the same settings are kept.
    """
    from . import depth as stage
    from .artifacts import WorkdirLock

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        path = stage.run(cfg.depth, workdir, force=force)
    click.echo(f"depth: {path}")


@cli.command()
@WORKDIR
@opt_config
@config_options("depth", only=("depth.model",))
@config_options("fuse")
@opt_force
@_guard
def fuse(workdir, config_path, force, **options):
    """Integrate WORKDIR/depth/<model>/ into a TSDF volume (Open3D VoxelBlockGrid) in WORKDIR/fuse/, with the
    poses refined first (WORKDIR/fuse/poses.parquet: the pose each frame was fused with). With --depth-model
    auto (the default), the maps the depth stage wrote last."""
    from . import fuse as stage
    from .artifacts import WorkdirLock
    from .depth import produced_model

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        model = cfg.depth.model if cfg.depth.model != AUTO else produced_model(workdir)
        path = stage.run(cfg.fuse, workdir, depth_model=model, force=force)
    click.echo(f"tsdf: {path}")


@cli.command()
@WORKDIR
@opt_config
@config_options("mesh")
@opt_force
@_guard
def mesh(workdir, config_path, force, **options):
    """Extract, clean and export the mesh from WORKDIR/fuse/ (mesh.ply, .obj, .glb; metres, world frame)."""
    from . import mesh as stage
    from .artifacts import WorkdirLock

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        paths = stage.run(cfg.mesh, workdir, force=force)
    for p in paths:
        click.echo(f"mesh: {p}")


@cli.command()
@WORKDIR
@click.option("--preset", required=True, type=click.Choice(["ar", "nerfstudio"]),
              help="ar = light textured mesh.glb, mesh.usdz, mesh.obj for AR / digital-twin tools; nerfstudio = "
                   "transforms.json (nerfstudio-data) with images/, metric depth/ and a point cloud, for NeRF and "
                   "Gaussian splatting.")
@opt_config
@config_options("export")
@opt_force
@_guard
def export(workdir, preset, config_path, force, **options):
    """Export the finished mesh of WORKDIR for other tools into WORKDIR/export/<preset>/.

    Never deletes mesh.ply or another preset's files; reruns only when the mesh or a setting changed.

    \b
    Example:
      promptmesh export work/room --preset ar
    """
    from . import export as stage
    from .artifacts import WorkdirLock
    from .export.source import mesh_fingerprint

    mesh_fingerprint(workdir)  # a missing mesh is reported before the lock creates WORKDIR
    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        paths = stage.run(cfg.export, workdir, preset, force=force)
    for p in paths:
        click.echo(f"export: {p}")


@cli.command(name="eval")
@WORKDIR
@opt_gt_mesh(True, "Ground-truth mesh in the capture's world frame, metres (PLY/OBJ/GLB).")
@opt_config
@config_options("eval")
@opt_force
@_guard
def evaluate(workdir, gt_mesh, config_path, force, **options):
    """Evaluate WORKDIR/mesh.ply against --gt-mesh: Acc, Comp, Precision, Recall, F-score (culled and
    unculled) and, when ground-truth depth exists, depth L1/RMSE/AbsRel/delta0.5 -> WORKDIR/eval.json."""
    from . import evaluate as stage
    from .artifacts import WorkdirLock

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        path = stage.run(cfg.eval, workdir, gt_mesh=gt_mesh, force=force)
    click.echo(f"eval: {path}")
    click.echo(json.dumps(json.loads(Path(path).read_text()), indent=2))


@cli.command()
@CAPTURE
@opt_workdir
@opt_gt_mesh(True, "Ground-truth mesh in the capture's world frame, metres.")
@opt_depth_models("lidar,guided,promptda-vits")
@opt_config
@config_options(*STAGES, exclude=("depth.model",))
@opt_force
@_guard
def compare(capture, workdir, gt_mesh, depth_models, config_path, force, **options):
    """Run several depth models through depth -> fuse -> mesh -> eval on one capture and write
    compare.json, compare.md and figures (depth/error maps, F-score vs threshold, top-down error views)."""
    from . import compare as stage

    cfg = build_config(config_path, options)
    path = stage.run(cfg, capture, workdir, gt_mesh=gt_mesh, models=_depth_model_list(depth_models), force=force)
    click.echo(f"compare: {path}")


@cli.command()
@CAPTURE
@_guard
def info(capture):
    """Describe CAPTURE: format, frame count, sizes, duration, trajectory length, depth range."""
    from .info import describe

    click.echo(describe(capture))


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@opt_workdir
@click.option("--dataset", required=True, type=click.Choice(["scannetpp", "arkitscenes"]),
              help="Layout of ROOT: the ScanNet++ release (ROOT/data/<scene>/iphone, scans) or ARKitScenes raw "
                   "(video folders with lowres_wide/, lowres_depth/, lowres_wide.traj).")
@click.option("--scenes", default="all", show_default=True,
              help="Comma-separated scene ids, 'all', or a named list: promptda-table2 (the 13 ScanNet++ scenes of "
                   "PromptDA's Table 2), promptda-table2-ext (15).")
@opt_depth_models("lidar,guided")
@click.option("--protocol", type=click.Choice(["default", "promptda-table2"]), default="default", show_default=True,
              help="default = ours (surface samples, culled); promptda-table2 = the paper's settings and vertex-based "
                   "evaluation (docs/benchmark_protocols.md). Options given here override the protocol's settings.")
@click.option("--pose-source", type=click.Choice(["arkit", "colmap", "merged"]), default="arkit", show_default=True,
              help="ScanNet++ poses: arkit = iphone/pose_intrinsic_imu.json, colmap = iphone/colmap, merged = "
                   "merge_dslr_iphone/ (the DSLR+iPhone COLMAP re-run PromptDA used).")
@click.option("--jobs", type=click.IntRange(min=0), default=0,
              help="Scenes in parallel in local worker processes; 0 = one per two CPU cores. [default: 0]")
@click.option("--ray", "ray_address", help="Run scenes as tasks on the Ray cluster at ADDRESS ('auto', 'ray://host:10001', "
                                           "or 'local' to start one here); needs pip install 'promptmesh[ray]' and "
                                           "ROOT and -o at the same paths on every node.")
@click.option("--gpus-per-scene", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --ray: GPUs each scene task reserves (e.g. 1 for PromptDA).")
@opt_config
@config_options(*STAGES, exclude=("depth.model",))
@opt_force
@_guard
def benchmark(root, workdir, dataset, scenes, depth_models, protocol, pose_source, jobs,
              ray_address, gpus_per_scene, config_path, force, **options):
    """Run depth models over many scenes of ROOT (ScanNet++ or ARKitScenes), each through the cached stages in
    WORKDIR/scenes/<scene>/, and write per-scene and mean tables: WORKDIR/benchmark.{json,md,png}.

    Resumable: finished scenes are skipped, an interrupted one resumes stage by stage.

    \b
    Example:
      promptmesh benchmark /data/scannetpp -o work/bench --dataset scannetpp \\
          --scenes promptda-table2 --depth-models lidar,promptda-vitl --protocol promptda-table2
    """
    from . import benchmark as bench

    voxel_size_m = options.get("cfg__fuse__voxel_size_m")
    cfg = build_config(config_path, options, preset=lambda c: bench.apply_protocol(c, protocol, voxel_size_m))
    path = bench.run(cfg, root, workdir, dataset=dataset, scenes=[s.strip() for s in scenes.split(",") if s.strip()],
                     models=_depth_model_list(depth_models), protocol=protocol, pose_source=pose_source,
                     jobs=jobs, ray_address=ray_address,
                     gpus_per_scene=gpus_per_scene, force=force)
    click.echo(f"benchmark: {path}")


@cli.command()
@click.argument("workdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--serve", "serve_port", type=click.IntRange(0, 65535), is_flag=False, flag_value=8000, default=None,
              metavar="[PORT]", help="Then serve WORKDIR/view/ on http://127.0.0.1:PORT/ until Ctrl-C (browsers refuse "
                                     "to load the mesh from file:// URLs). [PORT default: 8000; 0 = any free port]")
@opt_config
@config_options("view")
@opt_force
@_guard
def view(workdir, serve_port, config_path, force, **options):
    """Write WORKDIR/view/index.html: the mesh (the AR export's textured GLB when present, else a decimated copy
    of mesh.ply) with orbit controls and a measuring tool (metres), the eval scores, the compare report's figures
    and the capture's facts. Offline: everything it loads lies beside it.

    \b
    Example:
      promptmesh view work/room --serve
    """
    from . import view as stage
    from .artifacts import WorkdirLock

    cfg = build_config(config_path, options)
    with WorkdirLock(workdir):
        index = stage.run(cfg.view, workdir, force=force)
    click.echo(f"view: {index}")
    if serve_port is None:
        return
    httpd = stage.server(index.parent, serve_port)
    click.echo(f"serving {index.parent} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C to stop)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


for _command in (run, ingest, compare, info):
    _command.help += "\n\n" + _capture_help()


def _depth_model_list(text: str) -> list[str]:
    """'lidar, guided' -> ['lidar', 'guided']; PromptmeshError for unknown names (auto is not a model)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_CHOICES or m == AUTO]
    if bad or not models:
        raise PromptmeshError(f"--depth-models: unknown {bad or 'empty list'}; choose from "
                              f"{[m for m in MODEL_CHOICES if m != AUTO]}")
    return models


def main() -> None:
    """The `promptmesh` entry point. Whichever way the command ends (click ends it with SystemExit), the objects
    made so far are frozen out of the garbage collector first: the interpreter's shutdown would otherwise
    traverse all of them, Open3D's bindings above all, ~0.25 s of every command that imported Open3D
    (docs/benchmarks.md, "End to end"). The process's memory is released as a whole either way."""
    try:
        cli(prog_name="promptmesh")
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
