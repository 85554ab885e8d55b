"""What every export preset starts from: the finished mesh stage of a work directory."""
from __future__ import annotations


from ..artifacts import Manifest
from ..errors import PromptmeshError
from ..workdir import WorkDir, WorkDirLike


def mesh_fingerprint(workdir: WorkDirLike) -> str:
    """Fingerprint of the finished mesh stage (it covers frames, depth, fusion and poses), or a PromptmeshError
    naming the command to run first."""
    wd = WorkDir(workdir)
    manifest = Manifest.read(wd.mesh_stage)
    if manifest is None or not wd.mesh("ply").exists():
        raise PromptmeshError(f"{wd.mesh('ply')}: no mesh yet; run `promptmesh mesh {wd.root}` (after ingest, "
                              f"depth and fuse) or `promptmesh run CAPTURE -o {wd.root}` first")
    return manifest.fingerprint
