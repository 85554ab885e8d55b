"""`promptmesh export WORKDIR --preset NAME`: files for other tools, from the finished mesh stage.

One module per preset, each with `run(cfg, workdir, force) -> list[Path]` writing only under
`WorkDir(workdir).export(preset)` and cached like a stage (manifest.json with the fingerprint of its settings
and of the upstream mesh stage, written last). Presets never delete another format or the work directory's
mesh.ply; a preset's old files are replaced only when its fingerprint changed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import ExportConfig
from ..errors import PromptmeshError
from . import ar, nerfstudio

PRESETS: dict[str, Callable[..., list[Path]]] = {
    "ar": ar.run,
    "nerfstudio": nerfstudio.run,
}
"""Preset name -> its module's run(cfg, workdir, force)."""


def run(cfg: ExportConfig, workdir: Path, preset: str, force: bool = False) -> list[Path]:
    """Write WORKDIR/export/<preset>/; returns the files written (or found up to date)."""
    if preset not in PRESETS:
        raise PromptmeshError(f"--preset {preset!r}: unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[preset](cfg, workdir, force=force)

