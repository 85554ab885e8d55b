"""`import open3d` without its notebook plotting: about 1.4 s of Open3D 0.20's ~2.2 s import (measured with
`python -X importtime -c "import open3d"`) goes to open3d.visualization.draw_plotly, which imports plotly and
Dash, and through Dash IPython and requests. promptmesh never plots; every process that fuses, meshes or
exports pays that import, and `promptmesh run` pays it on the thread whose pose refinement fusion waits for.

`defer_plotly()` (run when the package is imported, before anything imports Open3D) registers a stand-in for
that one submodule. Its functions, and any other name asked of it, load the real module on first use, so
`open3d.visualization.draw_plotly(...)` still works in a process that imported promptmesh; everything else in
Open3D is imported as usual.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Callable

PLOTLY_MODULE = "open3d.visualization.draw_plotly"
PLOTLY_NAMES = ("get_plotly_fig", "draw_plotly", "draw_plotly_server")
"""What open3d/visualization/__init__.py imports from that module (Open3D 0.20); any other name also works."""


def _load_real() -> types.ModuleType:
    """The real draw_plotly module, imported now if only the stand-in is there."""
    module = sys.modules.get(PLOTLY_MODULE)
    if module is not None and not getattr(module, "_promptmesh_stand_in", False):
        return module
    parent = importlib.import_module(PLOTLY_MODULE.rpartition(".")[0])
    spec = importlib.machinery.PathFinder.find_spec(PLOTLY_MODULE, parent.__path__)  # ignores sys.modules
    if spec is None:
        raise ImportError(f"no module named {PLOTLY_MODULE!r}", name=PLOTLY_MODULE)
    real = importlib.util.module_from_spec(spec)
    sys.modules[PLOTLY_MODULE] = real
    try:
        spec.loader.exec_module(real)
    except BaseException:
        sys.modules[PLOTLY_MODULE] = module
        raise
    for name in PLOTLY_NAMES:  # open3d.visualization's own bindings of the stand-in's functions
        if getattr(parent, name, None) is getattr(module, name, None) and hasattr(real, name):
            setattr(parent, name, getattr(real, name))
    return real


def _deferred(name: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(_load_real(), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"open3d.visualization.{name}: imports plotly and Dash on first call (pipeline/open3d_import.py)."
    return call


def _getattr(name: str):
    """Any other name of the module, from the real one (not dunders: the import system probes __path__)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_load_real(), name)


def defer_plotly() -> None:
    """Register the stand-in for open3d.visualization.draw_plotly, unless Open3D is already imported."""
    if "open3d" in sys.modules or PLOTLY_MODULE in sys.modules:
        return
    stand_in = types.ModuleType(PLOTLY_MODULE, "Stand-in until first use (pipeline/open3d_import.py).")
    stand_in._promptmesh_stand_in = True
    for name in PLOTLY_NAMES:
        setattr(stand_in, name, _deferred(name))
    stand_in.__getattr__ = _getattr
    sys.modules[PLOTLY_MODULE] = stand_in
