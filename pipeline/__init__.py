"""promptmesh: iPhone LiDAR capture -> metric, high-resolution mesh (Prompt Depth Anything).

Stages (one module each, one entry point `run(cfg, workdir, ...)`):
ingest -> depth -> fuse -> mesh -> evaluate. See README.md and docs/ (docs/contracts.md: the command line,
the work directory, frames.parquet, eval.json).
"""
__version__ = "0.1.0"

from .open3d_import import defer_plotly as _defer_plotly

_defer_plotly()
