"""The `promptmesh` command line: a thin click layer that builds configs and calls each stage's `run`.

Errors a user can fix (PromptmeshError) print as one line on stderr and exit 1; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import click

from .config import PipelineConfig, load_config, override
from .depth_models import AUTO, MODEL_CHOICES, choices_help
from .errors import PromptmeshError
from .workdir import WorkDir

log = logging.getLogger("pipeline")

CAPTURE_HELP = ("CAPTURE is a Stray Scanner folder, a Record3D .r3d file, a Record3D EXR+JPG export folder or a "
                "3D Scanner App 'All Data' folder (auto-detected).")


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
                        help="TOML file with [ingest] [depth] [fuse] [mesh] [eval] tables "
                             "(see configs/default.toml). Options given here override it.")(f)


def opt_workdir(f):
    return click.option("-o", "--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Work directory for all artifacts (created if missing; reruns reuse what is "
                             "up to date).")(f)


def opt_frames(f):
    f = click.option("--stride", type=click.IntRange(min=1),
                     help="Keep one frame per window of N frames (the sharpest one). [default: 1]")(f)
    f = click.option("--max-frames", type=click.IntRange(min=0),
                     help="Keep at most N frames; 0 = all. [default: 0]")(f)
    f = click.option("--no-blur-select", is_flag=True, default=False,
                     help="Keep the first frame of each window and no blur rejection.")(f)
    return f


def opt_depth(f):
    f = click.option("--depth-model", type=click.Choice(MODEL_CHOICES), help=choices_help() + ". [default: auto]")(f)
    f = click.option("--weights", help="PromptDA weights: path to model.ckpt, a folder holding it, or a Hugging "
                                       "Face repo id already in the local cache. [default: the model's official repo]")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
                     help="Where to run PromptDA and TSDF fusion. [default: auto]")(f)
    f = click.option("--depth-resolution", "long_side_px", type=click.IntRange(min=14),
                     help="Long side of the estimated depth maps in pixels (1008 like the official script; 3840 "
                          "for 4K). CPU users: PromptDA ViT-S takes ~3 s per frame at 1008 on 2 cores (ViT-L "
                          "several times more); lidar/guided well under 1 s. Use a GPU for 4K. [default: 1008]")(f)
    return f


def opt_voxel(f):
    return click.option("--voxel-size", "voxel_size_m", type=click.FloatRange(min=0.001, max=0.5),
                        help="TSDF voxel edge in metres. [default: 0.01]")(f)


def opt_refine(f):
    return click.option("--no-refine-poses", is_flag=True, default=False,
                        help="Fuse with the capture's poses as they are: no correction of ARKit's drift (fuse "
                             "refine_poses = false). [default: refine]")(f)


def opt_format(f):
    return click.option("--format", "formats", multiple=True, type=click.Choice(["ply", "obj", "glb"]),
                        help="Mesh export format(s), repeatable: mesh.ply / mesh.obj / mesh.glb with vertex "
                             "colours, world frame, metres. [default: ply]")(f)


def opt_force(f):
    return click.option("--force", is_flag=True, default=False,
                        help="Redo the stage(s) even if they are up to date.")(f)


def _build_config(config_path: Optional[Path], stride=None, max_frames=None, no_blur_select=False,
                  depth_model=None, weights=None, device=None, long_side_px=None, voxel_size_m=None,
                  formats=(), no_refine_poses=False) -> PipelineConfig:
    cfg = load_config(config_path)
    cfg = override(cfg, "ingest", stride=stride, max_frames=max_frames,
                   blur_select=False if no_blur_select else None)
    cfg = override(cfg, "depth", model=depth_model, weights=weights, device=device, long_side_px=long_side_px)
    cfg = override(cfg, "fuse", voxel_size_m=voxel_size_m, device=device,
                   refine_poses=False if no_refine_poses else None)
    cfg = override(cfg, "mesh", formats=tuple(formats) or None)
    return cfg


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


@cli.command()
@click.argument("capture", type=click.Path(path_type=Path))
@opt_workdir
@opt_config
@opt_depth
@click.option("--gt-mesh", type=click.Path(dir_okay=False, path_type=Path),
              help="Ground-truth mesh (metres, capture world frame): also evaluate and write eval.json.")
@opt_frames
@opt_voxel
@opt_refine
@opt_format
@opt_force
@_guard
def run(capture, workdir, config_path, depth_model, weights, device, long_side_px, gt_mesh, stride, max_frames,
        no_blur_select, voxel_size_m, no_refine_poses, formats, force):
    """All stages on CAPTURE: ingest, depth, fuse, mesh (and eval with --gt-mesh).

    \b
    Example:
      promptmesh run sample_captures/synthetic_room -o work/room \\
          --gt-mesh sample_captures/synthetic_room/gt_mesh.ply
    """
    from . import runner

    cfg = _build_config(config_path, stride, max_frames, no_blur_select, depth_model, weights, device,
                        long_side_px, voxel_size_m, formats, no_refine_poses)
    result = runner.run(cfg, capture, workdir, gt_mesh=gt_mesh, force=force)
    click.echo(result.report())


run.help += "\n\n" + CAPTURE_HELP


@cli.command()
@click.argument("capture", type=click.Path(path_type=Path))
@opt_workdir
@opt_config
@opt_frames
@opt_force
@_guard
def ingest(capture, workdir, config_path, stride, max_frames, no_blur_select, force):
    """Read CAPTURE into WORKDIR/capture/ (frames.parquet, rgb/, lidar/, confidence/)."""
    from . import ingest as stage
    from .artifacts import Manifest, WorkdirLock

    cfg = _build_config(config_path, stride, max_frames, no_blur_select)
    with WorkdirLock(workdir):
        path = stage.run(cfg.ingest, capture, workdir, force=force)
    click.echo(f"capture: {path}")
    capture_dir = WorkDir(workdir).capture
    click.echo(f"frames:  {stage.summary_line(Manifest.read(capture_dir).summary, capture_dir)}")


ingest.help += "\n\n" + CAPTURE_HELP


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
@opt_config
@opt_depth
@opt_force
@_guard
def depth(workdir, config_path, depth_model, weights, device, long_side_px, force):
    """Estimate depth for every ingested frame into WORKDIR/depth/<model>/ (uint16 mm PNGs).

    Resumable: frames already written with the same settings are kept.
    """
    from . import depth as stage
    from .artifacts import WorkdirLock

    cfg = _build_config(config_path, depth_model=depth_model, weights=weights, device=device,
                        long_side_px=long_side_px)
    with WorkdirLock(workdir):
        path = stage.run(cfg.depth, workdir, force=force)
    click.echo(f"depth: {path}")


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
@opt_config
@click.option("--depth-model", type=click.Choice(MODEL_CHOICES), help="Which depth/<model>/ to fuse. [default: auto]")
@opt_voxel
@opt_refine
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="TSDF device. [default: auto]")
@opt_force
@_guard
def fuse(workdir, config_path, depth_model, voxel_size_m, no_refine_poses, device, force):
    """Integrate WORKDIR/depth/<model>/ into a TSDF volume (Open3D VoxelBlockGrid) in WORKDIR/fuse/, with the
    poses refined first (WORKDIR/fuse/poses.parquet: the pose each frame was fused with)."""
    from . import fuse as stage
    from .artifacts import WorkdirLock
    from .depth import resolve_model_name

    cfg = _build_config(config_path, depth_model=depth_model, voxel_size_m=voxel_size_m, device=device,
                        no_refine_poses=no_refine_poses)
    with WorkdirLock(workdir):
        path = stage.run(cfg.fuse, workdir, depth_model=resolve_model_name(cfg.depth), force=force)
    click.echo(f"tsdf: {path}")


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
@opt_config
@opt_format
@opt_force
@_guard
def mesh(workdir, config_path, formats, force):
    """Extract, clean and export the mesh from WORKDIR/fuse/ (mesh.ply, .obj, .glb; metres, world frame)."""
    from . import mesh as stage
    from .artifacts import WorkdirLock

    cfg = _build_config(config_path, formats=formats)
    with WorkdirLock(workdir):
        paths = stage.run(cfg.mesh, workdir, force=force)
    for p in paths:
        click.echo(f"mesh: {p}")


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", required=True, type=click.Choice(["ar", "nerfstudio"]),
              help="ar = light textured mesh.glb, mesh.usdz, mesh.obj for AR / digital-twin tools; nerfstudio = "
                   "transforms.json (nerfstudio-data) with images/, metric depth/ and a point cloud, for NeRF and "
                   "Gaussian splatting.")
@opt_config
@click.option("--target-triangles", type=click.IntRange(min=0),
              help="ar: decimate to at most this many triangles; 0 = keep all. [default: 300000]")
@click.option("--texture-size", "texture_size_px", type=click.IntRange(min=16, max=16384),
              help="ar: edge of the square texture baked from the frames, pixels. [default: 4096]")
@click.option("--recenter/--no-recenter", default=None,
              help="ar: floor at y = 0 and the floor plan's centre at the origin (for AR placement) instead of "
                   "the capture's world coordinates. [default: no-recenter]")
@click.option("--point-cloud-points", type=click.IntRange(min=0),
              help="nerfstudio: mesh vertices written to sparse_pc.ply (splatfacto's initial Gaussians); 0 = none. "
                   "[default: 200000]")
@opt_force
@_guard
def export(workdir, preset, config_path, target_triangles, texture_size_px, recenter, point_cloud_points, force):
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
    cfg = override(load_config(config_path), "export", target_triangles=target_triangles,
                   texture_size_px=texture_size_px, recenter=recenter, point_cloud_points=point_cloud_points)
    with WorkdirLock(workdir):
        paths = stage.run(cfg.export, workdir, preset, force=force)
    for p in paths:
        click.echo(f"export: {p}")


@cli.command(name="eval")
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--gt-mesh", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground-truth mesh in the capture's world frame, metres (PLY/OBJ/GLB).")
@opt_config
@opt_force
@_guard
def evaluate(workdir, gt_mesh, config_path, force):
    """Evaluate WORKDIR/mesh.ply against --gt-mesh: Acc, Comp, Precision, Recall, F-score (culled and
    unculled) and, when ground-truth depth exists, depth L1/RMSE/AbsRel/delta0.5 -> WORKDIR/eval.json."""
    from . import evaluate as stage
    from .artifacts import WorkdirLock

    cfg = _build_config(config_path)
    with WorkdirLock(workdir):
        path = stage.run(cfg.eval, workdir, gt_mesh=gt_mesh, force=force)
    click.echo(f"eval: {path}")
    click.echo(json.dumps(json.loads(Path(path).read_text()), indent=2))


@cli.command()
@click.argument("capture", type=click.Path(path_type=Path))
@opt_workdir
@click.option("--gt-mesh", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground-truth mesh in the capture's world frame, metres.")
@click.option("--depth-models", default="lidar,guided,promptda-vits", show_default=True,
              help="Comma-separated depth models to compare on the same capture.")
@opt_config
@opt_frames
@opt_voxel
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[default: auto]")
@opt_force
@_guard
def compare(capture, workdir, gt_mesh, depth_models, config_path, stride, max_frames, no_blur_select, voxel_size_m,
            device, force):
    """Run several depth models through depth -> fuse -> mesh -> eval on one capture and write
    compare.json, compare.md and figures (depth/error maps, F-score vs threshold, top-down error views)."""
    from . import compare as stage

    models = _depth_model_list(depth_models)
    cfg = _build_config(config_path, stride, max_frames, no_blur_select, device=device, voxel_size_m=voxel_size_m)
    path = stage.run(cfg, capture, workdir, gt_mesh=gt_mesh, models=models, force=force)
    click.echo(f"compare: {path}")


compare.help += "\n\n" + CAPTURE_HELP


@cli.command()
@click.argument("capture", type=click.Path(path_type=Path))
@_guard
def info(capture):
    """Describe CAPTURE: format, frame count, sizes, duration, trajectory length, depth range."""
    from .info import describe

    click.echo(describe(capture))


info.help += "\n\n" + CAPTURE_HELP


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@opt_workdir
@click.option("--dataset", required=True, type=click.Choice(["scannetpp", "arkitscenes"]),
              help="Layout of ROOT: the ScanNet++ release (ROOT/data/<scene>/iphone, scans) or ARKitScenes raw "
                   "(video folders with lowres_wide/, lowres_depth/, lowres_wide.traj).")
@click.option("--scenes", default="all", show_default=True,
              help="Comma-separated scene ids, 'all', or a named list: promptda-table2 (the 13 ScanNet++ scenes of "
                   "PromptDA's Table 2), promptda-table2-ext (15).")
@click.option("--depth-models", default="lidar,guided", show_default=True,
              help="Comma-separated depth models to run on every scene.")
@click.option("--protocol", type=click.Choice(["default", "promptda-table2"]), default="default", show_default=True,
              help="default = ours (surface samples, culled); promptda-table2 = the paper's settings and vertex-based "
                   "evaluation (docs/benchmark_protocols.md). Options given here override the protocol's settings.")
@click.option("--pose-source", type=click.Choice(["arkit", "colmap", "merged"]), default="arkit", show_default=True,
              help="ScanNet++ poses: arkit = iphone/pose_intrinsic_imu.json, colmap = iphone/colmap, merged = "
                   "merge_dslr_iphone/ (the DSLR+iPhone COLMAP re-run PromptDA used).")
@click.option("--keep-largest-clusters", type=click.IntRange(min=0), default=0, show_default=True,
              help="promptda-table2: evaluate only the N largest connected pieces of each mesh (the paper's optional "
                   "cleanup uses 50); 0 = all.")
@click.option("--jobs", type=click.IntRange(min=0), default=0,
              help="Scenes in parallel in local worker processes; 0 = one per two CPU cores. [default: 0]")
@click.option("--ray", "ray_address", help="Run scenes as tasks on the Ray cluster at ADDRESS ('auto', 'ray://host:10001', "
                                           "or 'local' to start one here); needs pip install 'promptmesh[ray]' and "
                                           "ROOT and -o at the same paths on every node.")
@click.option("--gpus-per-scene", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --ray: GPUs each scene task reserves (e.g. 1 for PromptDA).")
@opt_config
@opt_frames
@opt_voxel
@click.option("--depth-resolution", "long_side_px", type=click.IntRange(min=14),
              help="Long side of the estimated depth maps, pixels. [default: 1008]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[default: auto]")
@opt_force
@_guard
def benchmark(root, workdir, dataset, scenes, depth_models, protocol, pose_source, keep_largest_clusters, jobs,
              ray_address, gpus_per_scene, config_path, stride, max_frames, no_blur_select, voxel_size_m, long_side_px,
              device, force):
    """Run depth models over many scenes of ROOT (ScanNet++ or ARKitScenes), each through the cached stages in
    WORKDIR/scenes/<scene>/, and write per-scene and mean tables: WORKDIR/benchmark.{json,md,png}.

    Resumable: finished scenes are skipped, an interrupted one resumes stage by stage.

    \b
    Example:
      promptmesh benchmark /data/scannetpp -o work/bench --dataset scannetpp \\
          --scenes promptda-table2 --depth-models lidar,promptda-vitl --protocol promptda-table2
    """
    from . import benchmark as bench

    models = _depth_model_list(depth_models)
    cfg = bench.apply_protocol(load_config(config_path), protocol, voxel_size_m)
    cfg = override(cfg, "ingest", stride=stride, max_frames=max_frames, blur_select=False if no_blur_select else None)
    cfg = override(cfg, "depth", device=device, long_side_px=long_side_px)
    cfg = override(cfg, "fuse", voxel_size_m=voxel_size_m, device=device)
    path = bench.run(cfg, root, workdir, dataset=dataset, scenes=[s.strip() for s in scenes.split(",") if s.strip()],
                     models=models, protocol=protocol, pose_source=pose_source,
                     keep_largest_clusters=keep_largest_clusters, jobs=jobs, ray_address=ray_address,
                     gpus_per_scene=gpus_per_scene, force=force)
    click.echo(f"benchmark: {path}")


@cli.command()
@click.argument("workdir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--serve", "serve_port", type=click.IntRange(0, 65535), is_flag=False, flag_value=8000, default=None,
              metavar="[PORT]", help="Then serve WORKDIR/view/ on http://127.0.0.1:PORT/ until Ctrl-C (browsers refuse "
                                     "to load the mesh from file:// URLs). [PORT default: 8000; 0 = any free port]")
@click.option("--target-triangles", type=click.IntRange(min=0),
              help="Decimate mesh.ply to about this many triangles for the page when there is no AR export "
                   "(export/ar/mesh.glb); 0 = all. [default: 500000]")
@opt_config
@opt_force
@_guard
def view(workdir, serve_port, target_triangles, config_path, force):
    """Write WORKDIR/view/index.html: the mesh (the AR export's textured GLB when present, else a decimated copy
    of mesh.ply) with orbit controls and a measuring tool (metres), the eval scores, the compare report's figures
    and the capture's facts. Offline: everything it loads lies beside it.

    \b
    Example:
      promptmesh view work/room --serve
    """
    from . import view as stage
    from .artifacts import WorkdirLock

    cfg = override(load_config(config_path), "view", target_triangles=target_triangles)
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


def _depth_model_list(text: str) -> list[str]:
    """'lidar, guided' -> ['lidar', 'guided']; PromptmeshError for unknown names (auto is not a model)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_CHOICES or m == AUTO]
    if bad or not models:
        raise PromptmeshError(f"--depth-models: unknown {bad or 'empty list'}; choose from {[m for m in MODEL_CHOICES if m != AUTO]}")
    return models


def main() -> None:
    cli(prog_name="promptmesh")


if __name__ == "__main__":
    main()
