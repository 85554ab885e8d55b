"""Typed, frozen configuration per stage, loaded from TOML (configs/default.toml) with tomllib.

A TOML file has one table per stage ([ingest], [depth], [fuse], [mesh], [eval], [export], [view]); a key
that is not a field of that stage's dataclass is an error naming the file and the key. CLI options override
single fields (`dataclasses.replace`). Every field states its unit.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_type_hints

from .depth_models import MODEL_CHOICES
from .errors import PromptmeshError
from .keyframes import KeyframeSettings

Device = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class IngestConfig:
    stride: int = 1
    """Window length in frames: one frame is kept per window of `stride` consecutive frames."""
    max_frames: int = 0
    """Keep at most this many frames (0 = no limit)."""
    blur_select: bool = True
    """Keep the sharpest frame (variance of the Laplacian) of each window instead of the first, and drop
    frames far blurrier than their neighbours (see blur_ratio)."""
    blur_ratio: float = 0.25
    """Drop a kept frame whose sharpness is below this fraction of the running median sharpness."""
    blur_history: int = 15
    """Number of recent frames in the running median for blur rejection."""
    jpeg_quality: int = 95
    """Quality (0-100) for RGB frames that have to be encoded (video sources); JPEG sources are copied."""
    all_frames: bool = False
    """Keep every frame (after stride windows and blur rejection) instead of selecting keyframes."""
    keyframe_translation_depth_ratio: float = KeyframeSettings.translation_ratio
    """A frame is a keyframe when its camera centre is at least this far from every recent keyframe's (or it
    turned, or it sees new surface), in metres per metre of the median LiDAR depth it looks at, less closer than
    keyframe_close_range_m (0.04 = 8 cm at 2 m, 6.6 mm at 0.3 m)."""
    keyframe_close_range_m: float = KeyframeSettings.close_range_m
    """Closer than this median depth (metres), the distance between keyframes shrinks as depth^1.5, not depth: the
    LiDAR's noise does not shrink with depth there, so close-ups get more views of each surface."""
    keyframe_rotation_deg: float = KeyframeSettings.rotation_deg
    """A frame whose orientation differs from every recent keyframe's by at least this many degrees is a
    keyframe."""
    keyframe_min_overlap_ratio: float = KeyframeSettings.min_overlap
    """A frame of whose LiDAR footprint the recent keyframes saw less than this fraction is a keyframe (0 = off)."""
    keyframe_recent_count: int = KeyframeSettings.recent
    """Number of most recent keyframes a frame is compared with."""
    keyframe_neighbourhood_frames: int = KeyframeSettings.neighbourhood_frames
    """The sharpest of up to this many frames after a novel one (while they stay within 30 % of the
    thresholds of it) becomes the keyframe; 1 = the novel frame itself."""


@dataclass(frozen=True)
class DepthConfig:
    model: str = "auto"
    """A model of pipeline/depth_models.py (lidar, guided, promptda-vits, promptda-vits-transparent,
    promptda-vitl) or auto = promptda-vits when its weights are available offline, else guided."""
    weights: str = ""
    """PromptDA checkpoint: a local model.ckpt, a folder holding it, or a Hugging Face repo id ('' = the
    official repo of the model, from the local Hugging Face cache)."""
    device: Device = "auto"
    """auto = cuda, then mps, then cpu."""
    long_side_px: int = 1008
    """Long side of the output depth maps, pixels (at most the RGB long side; 3840 for 4K)."""
    batch_size: int = 1
    """Frames per forward pass (PromptDA)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """PromptDA arithmetic: auto = fp16 autocast on CUDA, fp32 elsewhere."""
    fill_prompt_holes: bool = True
    """Fill LiDAR pixels with no return (0) from their nearest valid neighbour before prompting PromptDA
    (the official code lets the zeros set the prompt minimum, which stretches the output range)."""


@dataclass(frozen=True)
class FuseConfig:
    voxel_size_m: float = 0.0
    """TSDF voxel edge, metres; 0 = automatic: `auto_voxel_depth_ratio` x the median LiDAR depth of the kept
    frames, at least `auto_voxel_min_m`, rounded to 0.5 mm (a room seen at 3.3 m gets 1 cm, a desk at 0.4 m 4 mm)."""
    auto_voxel_depth_ratio: float = 0.003
    """Automatic voxel edge per metre of median scene depth (metres/metre)."""
    auto_voxel_min_m: float = 0.004
    """Smallest automatic voxel edge, metres (depth noise does not shrink with the scene: ~4-5 mm for LiDAR at
    close range)."""
    auto_trunc_min_m: float = 0.03
    """With the automatic voxel, the truncation is at least this, metres (more than sdf_trunc_voxels voxels
    when they are small: the truncation has to exceed the depth noise several times)."""
    depth_px_per_voxel: float = 1.0
    """Depth maps are fused at every n-th pixel, n the largest step that still leaves this many depth pixels per
    voxel edge at the scene's median depth, and no fewer pixels than the LiDAR map (1008 px maps of a room at a
    1 cm voxel: every 2nd). Open3D's integration reads one depth pixel per voxel and frame, so finer pixels
    mostly cost time; 0 fuses every pixel."""
    sdf_trunc_voxels: float = 4.0
    """Truncation distance, in voxels (with the automatic voxel, raised to auto_trunc_min_m if needed)."""
    depth_min_m: float = 0.1
    """Depth below this is ignored, metres."""
    depth_max_m: float = 5.0
    """Depth beyond this is ignored, metres (Open3D's own default is 3 m)."""
    min_confidence: int = 1
    """Drop depth pixels whose LiDAR confidence (0/1/2, resized nearest) is below this; 0 keeps all. Applies to
    depth models that pass the LiDAR through (`lidar`); `guided` and PromptDA repair those pixels themselves,
    so their maps are fused whole."""
    device: Device = "auto"
    """auto = CUDA when Open3D has it, else CPU."""
    block_resolution: int = 8
    """Voxels per block edge in Open3D's VoxelBlockGrid."""
    refine_poses: bool = True
    """Correct ARKit's slow pose drift before fusing (a pose graph: ARKit's relative motion between fragments of
    the walk fused from the LiDAR, plus ICP alignments of fragments that see the same surfaces again;
    pipeline/refine.py)."""
    refine_voxel_m: float = 0.03
    """Voxel edge of the TSDF fragments that refinement fuses from the LiDAR and aligns, metres."""
    refine_max_correction_m: float = 0.3
    """Largest plausible correction of a camera centre, metres: an alignment or a refined pose moving further
    is treated as diverged (the pose keeps ARKit's, with a warning)."""
    refine_max_correction_deg: float = 5.0
    """Largest plausible correction of a camera orientation, degrees (as refine_max_correction_m)."""


@dataclass(frozen=True)
class MeshConfig:
    formats: tuple[str, ...] = ("ply",)
    """Formats among ply, obj, glb (mesh.<ext> in the work directory); mesh.ply is written in any case, and
    asking for another format later adds it without redoing the mesh."""
    weight_threshold: float = 1.0
    """Minimum integration weight (number of observations) for a voxel to produce surface."""
    min_component_triangles: int = 200
    """Drop connected pieces with fewer triangles than this (floaters); 0 keeps all."""
    target_triangles: int = 0
    """Decimate to about this many triangles (quadric); 0 = no decimation."""


@dataclass(frozen=True)
class EvalConfig:
    threshold_m: float = 0.05
    """Distance under which a point counts as correct (strict <), metres."""
    downsample_m: float = 0.02
    """Voxel size for downsampling both point sets before measuring, metres."""
    sample_spacing_m: float = 0.005
    """Target spacing of points sampled on each mesh surface before downsampling, metres."""
    cull_tolerance_m: float = 0.05
    """A GT point is seen by a camera if its depth is within this of the GT depth rendered there, metres."""
    cull_stride: int = 1
    """Use every n-th frame's camera for visibility culling."""
    table2_report: bool = False
    """Also write eval_table2.json: PromptDA Table 2's metrics on mesh vertices (GT uncropped and unculled,
    prediction cropped to the GT box, both downsampled at downsample_m, threshold_m; docs/benchmark_protocols.md)."""
    table2_crop_margin_m: float = 0.1
    """table2_report: the prediction is cropped to the GT bounding box grown by this, metres."""
    table2_keep_largest_clusters: int = 0
    """table2_report: keep only this many largest edge-connected pieces of the predicted mesh (0 = all; the
    authors' optional cleanup uses 50)."""


@dataclass(frozen=True)
class ExportConfig:
    target_triangles: int = 300_000
    """Decimate the exported mesh to at most this many triangles (quadric edge collapse); 0 = keep all."""
    texture_size_px: int = 4096
    """Edge of the square texture atlas baked from the RGB frames, pixels."""
    recenter: bool = False
    """Move the export so the floor (lowest 2nd percentile of y) is at y = 0 and the centre of the floor plan
    (x, z bounding box) at the origin, for AR placement; False keeps the capture's world coordinates."""
    bake_frame_stride: int = 1
    """Bake the texture from every n-th kept frame."""
    occlusion_tolerance_m: float = 0.02
    """A texel is seen by a frame when its depth along the ray is within this of the mesh's first hit, metres."""
    padding_px: int = 2
    """Texels by which each UV chart's colours are dilated into the empty atlas around it (hides seams in
    mipmaps and bilinear lookups), pixels."""
    depth_test_long_side_px: int = 640
    """Long side of the depth maps ray-cast from each pose for the occlusion test, pixels (capped at the RGB
    size)."""
    texture_jpeg_quality: int = 90
    """JPEG quality (0-100) of the baked texture (texture.jpg, also embedded in mesh.glb and mesh.usdz)."""
    point_cloud_points: int = 200_000
    """nerfstudio: vertices of the mesh (with colours) written to sparse_pc.ply, where splatfacto starts its
    Gaussians; 0 = no point cloud."""


@dataclass(frozen=True)
class ViewConfig:
    target_triangles: int = 500_000
    """Triangles of the viewer's mesh when it is a decimated copy of mesh.ply (used when there is no AR export,
    export/ar/mesh.glb); 0 = all. Half a million draws smoothly on integrated graphics."""


@dataclass(frozen=True)
class PipelineConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    view: ViewConfig = field(default_factory=ViewConfig)


def _coerce(path: Path, section: str, key: str, value: Any, typ: Any) -> Any:
    """Check a TOML value against a field type; lists become tuples."""
    origin = getattr(typ, "__origin__", None)
    where = f"{path}: [{section}] {key}"
    if origin is Literal:
        if value not in get_args(typ):
            raise PromptmeshError(f"{where} = {value!r}: expected one of {list(get_args(typ))}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PromptmeshError(f"{where}: expected a list of strings")
        return tuple(value)
    base = {"int": int, "float": float, "bool": bool, "str": str}.get(getattr(typ, "__name__", ""), None)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is not None and (not isinstance(value, base) or (base is int and isinstance(value, bool))):
        raise PromptmeshError(f"{where} = {value!r}: expected {base.__name__}")
    return value


def load_config(path: Optional[Path] = None) -> PipelineConfig:
    """Defaults, updated from a TOML file if given. Unknown sections/keys and wrong types are errors."""
    cfg = PipelineConfig()
    if path is None:
        return cfg
    return apply_toml(cfg, Path(path), read_toml(Path(path)))


def read_toml(path: Path) -> dict:
    """A TOML file's tables; PromptmeshError naming the file when it is missing or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PromptmeshError(f"{path}: config file not found; pass an existing --config FILE.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise PromptmeshError(f"{path}: invalid TOML ({e}); fix the file") from None


def apply_toml(cfg: PipelineConfig, path: Path, data: dict) -> PipelineConfig:
    """`cfg` with the stage tables of `data` (read from `path`) applied. Unknown sections/keys and wrong types
    are errors naming the file."""
    sections = {}
    for section, values in data.items():
        if section not in {f.name for f in dataclasses.fields(PipelineConfig)}:
            raise PromptmeshError(f"{path}: unknown section [{section}]; expected one of "
                                  f"{[f.name for f in dataclasses.fields(PipelineConfig)]}")
        sub = getattr(cfg, section)
        hints = get_type_hints(type(sub))
        updates = {}
        for key, value in values.items():
            if key not in hints:
                raise PromptmeshError(f"{path}: unknown key '{key}' in [{section}]; known keys: {sorted(hints)}")
            updates[key] = _coerce(path, section, key, value, hints[key])
        sections[section] = dataclasses.replace(sub, **updates)
    cfg = dataclasses.replace(cfg, **sections)
    validate(cfg, path)
    return cfg


def validate(cfg: PipelineConfig, source: Any = "options") -> None:
    """Range checks that a type cannot express."""
    checks = [
        (cfg.ingest.stride >= 1, "ingest.stride must be >= 1"),
        (cfg.ingest.max_frames >= 0, "ingest.max_frames must be >= 0 (0 = no limit)"),
        (cfg.ingest.keyframe_translation_depth_ratio > 0 and cfg.ingest.keyframe_rotation_deg > 0
         and cfg.ingest.keyframe_close_range_m > 0,
         "ingest.keyframe_translation_depth_ratio, keyframe_rotation_deg and keyframe_close_range_m must be > 0"),
        (0 <= cfg.ingest.keyframe_min_overlap_ratio <= 1, "ingest.keyframe_min_overlap_ratio must be in [0, 1]"),
        (cfg.ingest.keyframe_recent_count >= 1 and cfg.ingest.keyframe_neighbourhood_frames >= 1,
         "ingest.keyframe_recent_count and keyframe_neighbourhood_frames must be >= 1"),
        (cfg.depth.model in MODEL_CHOICES, f"depth.model must be one of {list(MODEL_CHOICES)}"),
        (cfg.depth.long_side_px >= 14, "depth.long_side_px must be >= 14"),
        (cfg.depth.batch_size >= 1, "depth.batch_size must be >= 1"),
        (0 <= cfg.fuse.voxel_size_m <= 0.5, "fuse.voxel_size_m must be in [0, 0.5] metres (0 = automatic)"),
        (cfg.fuse.auto_voxel_depth_ratio > 0 and 0 < cfg.fuse.auto_voxel_min_m <= 0.5 and cfg.fuse.auto_trunc_min_m >= 0,
         "fuse.auto_voxel_depth_ratio must be > 0, fuse.auto_voxel_min_m in (0, 0.5] metres, auto_trunc_min_m >= 0"),
        (cfg.fuse.sdf_trunc_voxels >= 1, "fuse.sdf_trunc_voxels must be >= 1"),
        (cfg.fuse.depth_px_per_voxel >= 0, "fuse.depth_px_per_voxel must be >= 0 (0 fuses every depth pixel)"),
        (0 <= cfg.fuse.depth_min_m < cfg.fuse.depth_max_m, "need 0 <= fuse.depth_min_m < fuse.depth_max_m"),
        (cfg.fuse.min_confidence in (0, 1, 2), "fuse.min_confidence must be 0, 1 or 2"),
        (0 < cfg.fuse.refine_voxel_m <= 0.5, "fuse.refine_voxel_m must be in (0, 0.5] metres"),
        (cfg.fuse.refine_max_correction_m > 0 and cfg.fuse.refine_max_correction_deg > 0,
         "fuse.refine_max_correction_m and fuse.refine_max_correction_deg must be > 0"),
        (all(f in ("ply", "obj", "glb") for f in cfg.mesh.formats) and cfg.mesh.formats,
         "mesh.formats must list some of ply, obj, glb"),
        (cfg.eval.threshold_m > 0 and cfg.eval.downsample_m > 0, "eval thresholds must be > 0"),
        (cfg.eval.table2_crop_margin_m >= 0 and cfg.eval.table2_keep_largest_clusters >= 0,
         "eval.table2_crop_margin_m (metres) and eval.table2_keep_largest_clusters (0 = all) must be >= 0"),
        (cfg.export.target_triangles >= 0, "export.target_triangles must be >= 0 (0 = no decimation)"),
        (16 <= cfg.export.texture_size_px <= 16384, "export.texture_size_px must be in [16, 16384]"),
        (cfg.export.bake_frame_stride >= 1, "export.bake_frame_stride must be >= 1"),
        (cfg.export.occlusion_tolerance_m > 0, "export.occlusion_tolerance_m must be > 0 metres"),
        (cfg.export.padding_px >= 0, "export.padding_px must be >= 0"),
        (cfg.export.depth_test_long_side_px >= 16, "export.depth_test_long_side_px must be >= 16"),
        (0 <= cfg.export.texture_jpeg_quality <= 100, "export.texture_jpeg_quality must be in [0, 100]"),
        (cfg.export.point_cloud_points >= 0, "export.point_cloud_points must be >= 0 (0 = no point cloud)"),
        (cfg.view.target_triangles >= 0, "view.target_triangles must be >= 0 (0 = all)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise PromptmeshError(f"{source}: {msg}")


def override(cfg: PipelineConfig, section: str, **values: Any) -> PipelineConfig:
    """Return `cfg` with fields of one section replaced; None values are ignored (option not given)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return cfg
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    validate(new)
    return new
