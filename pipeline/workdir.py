"""The work-directory layout, in one place (docs/workdir.md describes each file).

    WORKDIR/
      capture/frames.parquet, rgb/, lidar/, confidence/, gt_depth/   ingest
      depth/<model>/NNNNNN.png                                       depth (uint16 mm)
      fuse/tsdf.npz, fuse/poses.parquet                              fuse
      mesh/manifest.json, mesh.ply (.obj, .glb)                      mesh
      eval.json, eval/curve.json (eval_table2.json)                  eval
      export/<preset>/                                               export (ar, nerfstudio)
      view/index.html                                                view
      timings.json, .lock                                            run
      compare.json, compare.md, compare/figures/                     compare
      compare/<model>/{fuse,mesh,eval...}                            compare: one model's fusion onwards
      scenes/<scene>/ (a work directory), benchmark.{json,md,png}    benchmark

A `WorkDir` has a `root` (capture/ and depth/ live there) and an `out` folder that receives everything from
fusion on: the root itself, or compare/<model>/ for one model of `promptmesh compare` (`compare_model`).
Every stage finds its inputs and places its outputs through a `WorkDir`; no other module spells these names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union


@dataclass(frozen=True)
class WorkDir:
    """Paths of one work directory (nothing is created here). `WorkDir(path)` or `WorkDir(workdir)` (a copy)."""

    root: Path
    out: Optional[Path] = None
    """Folder of the fusion, mesh, eval, export and view outputs; None = `root`."""

    def __post_init__(self) -> None:
        if isinstance(self.root, WorkDir):  # WorkDir(WorkDir(...)) is the same work directory
            object.__setattr__(self, "out", self.out if self.out is not None else self.root.out)
            object.__setattr__(self, "root", self.root.root)
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "out", self.root if self.out is None else Path(self.out))

    # ingest
    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def frames_parquet(self) -> Path:
        return self.capture / "frames.parquet"

    @property
    def gt_depth(self) -> Path:
        """Ground-truth depth maps (uint16 mm, named like the frames), when the capture has them."""
        return self.capture / "gt_depth"

    # depth
    @property
    def depth_root(self) -> Path:
        return self.root / "depth"

    def depth(self, model: str) -> Path:
        """Depth maps of one model: depth/<model>/NNNNNN.png, uint16 millimetres."""
        return self.depth_root / model

    # fuse
    @property
    def fuse(self) -> Path:
        return self.out / "fuse"

    @property
    def tsdf(self) -> Path:
        """The fused TSDF volume (fuse.save_volume's compact npz)."""
        return self.fuse / "tsdf.npz"

    @property
    def poses_parquet(self) -> Path:
        """The pose each kept frame was fused with (after pose refinement)."""
        return self.fuse / "poses.parquet"

    # mesh
    @property
    def mesh_stage(self) -> Path:
        """Where the mesh stage's manifest lives (the meshes are OUT/mesh.<fmt>)."""
        return self.out / "mesh"

    def mesh(self, fmt: str = "ply") -> Path:
        return self.out / f"mesh.{fmt}"

    # eval
    @property
    def eval_json(self) -> Path:
        return self.out / "eval.json"

    @property
    def eval(self) -> Path:
        """The eval stage's folder (manifest, curve.json)."""
        return self.out / "eval"

    @property
    def eval_curve(self) -> Path:
        """Precision / recall / F-score at 1-10 cm and distance summaries, for reports."""
        return self.eval / "curve.json"

    @property
    def eval_table2_json(self) -> Path:
        """PromptDA Table 2's metrics (EvalConfig.table2_report)."""
        return self.out / "eval_table2.json"

    # export / view
    def export(self, preset: str) -> Path:
        """export/<preset>/ (ar, nerfstudio)."""
        return self.out / "export" / preset

    @property
    def view(self) -> Path:
        return self.out / "view"

    # run
    @property
    def timings_json(self) -> Path:
        return self.root / "timings.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    # compare
    def compare_model(self, model: str) -> "WorkDir":
        """This work directory with fusion onwards in compare/<model>/ (capture and depth maps shared)."""
        return WorkDir(self.root, self.root / "compare" / model)

    @property
    def compare_json(self) -> Path:
        return self.root / "compare.json"

    @property
    def compare_md(self) -> Path:
        return self.root / "compare.md"

    @property
    def compare_figures(self) -> Path:
        return self.root / "compare" / "figures"

    # benchmark (the root holds one work directory per scene)
    def scene(self, scene_id: str) -> "WorkDir":
        return WorkDir(self.root / "scenes" / scene_id)

    @property
    def benchmark_scene_json(self) -> Path:
        """A scene's finished benchmark result (in the scene's own work directory)."""
        return self.root / "benchmark_scene.json"

    def benchmark_report(self, ext: str) -> Path:
        """benchmark.json, benchmark.md, benchmark.png."""
        return self.root / f"benchmark.{ext}"


WorkDirLike = Union[Path, str, WorkDir]
"""What stages accept as `workdir`: a path or a WorkDir."""
