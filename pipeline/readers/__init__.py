"""Capture readers: one module per format, all returning the normalised `CaptureSource`.

`open_capture(path)` detects the format from file names alone (each reader's cheap `sniff`) and opens
it. Conversions to promptmesh conventions (OpenCV camera axes, metres, K at RGB size) happen inside
the readers and nowhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..capture import CaptureSource
from ..errors import PromptmeshError
from .arkitscenes import ARKitScenesReader
from .r3d import R3DReader
from .r3d_export import R3DExportReader
from .scanner3d import Scanner3DReader
from .scannetpp import ScanNetPPReader
from .stray import StrayReader


class CaptureReader(Protocol):
    name: str
    """Short format name: "stray", "r3d", "r3d-exr", "3dscannerapp"."""
    description: str
    """One line for `--help` and errors."""

    def sniff(self, path: Path) -> bool:
        """Cheap check on names only: is `path` a capture of this format?"""

    def open(self, path: Path) -> CaptureSource:
        """Read the metadata and return a CaptureSource; PromptmeshError on a broken capture."""


READERS: dict[str, CaptureReader] = {r.name: r for r in (StrayReader(), R3DReader(), R3DExportReader(),
                                                           Scanner3DReader(), ScanNetPPReader(),
                                                           ARKitScenesReader())}


def detect(path: Path) -> CaptureReader:
    path = Path(path)
    if not path.exists():
        raise PromptmeshError(f"{path}: no such file or folder; pass a capture folder or a .r3d file")
    for reader in READERS.values():
        if reader.sniff(path):
            return reader
    known = "; ".join(f"{r.name}: {r.description}" for r in READERS.values())
    raise PromptmeshError(f"{path}: not a capture format promptmesh knows ({known})")


def open_capture(path: Path) -> CaptureSource:
    """Detect the format of `path` and open it."""
    return detect(path).open(Path(path))
