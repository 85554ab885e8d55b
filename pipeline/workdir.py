"""The work-directory layout, in one place (docs/workdir.md describes each file).

    WORKDIR/
      capture/frames.parquet, rgb/, lidar/, confidence/   ingest
      depth/<model>/NNNNNN.png                             depth (uint16 mm)
      fuse/  (TSDF volume, poses.parquet)                  fuse
      mesh/manifest.json, mesh.ply (.obj, .glb)            mesh
      eval.json, eval/                                     eval
      export/<preset>/                                     export (ar, nerfstudio)
      view/index.html                                      view
      timings.json, .lock                                  run

Every stage finds its inputs and places its outputs through a `WorkDir`; no module spells these names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkDir:
    """Paths of one work directory (nothing is created here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ingest
    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def frames_parquet(self) -> Path:
        return self.capture / "frames.parquet"

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
        return self.root / "fuse"

    @property
    def poses_parquet(self) -> Path:
        """The pose each kept frame was fused with (after pose refinement)."""
        return self.fuse / "poses.parquet"

    # mesh
    @property
    def mesh_stage(self) -> Path:
        """Where the mesh stage's manifest lives (the meshes are WORKDIR/mesh.<fmt>)."""
        return self.root / "mesh"

    def mesh(self, fmt: str = "ply") -> Path:
        return self.root / f"mesh.{fmt}"

    # eval
    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    # export / view
    def export(self, preset: str) -> Path:
        """export/<preset>/ (ar, nerfstudio)."""
        return self.root / "export" / preset

    @property
    def view(self) -> Path:
        return self.root / "view"

    # run
    @property
    def timings_json(self) -> Path:
        return self.root / "timings.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"
