"""promptmesh: iPhone LiDAR capture -> metric, high-resolution mesh (Prompt Depth Anything).

Stages (one module each, one entry point `run(cfg, workdir, ...)`):
ingest -> depth -> fuse -> mesh -> evaluate. See README.md and CONTRACTS.md.
"""
import logging

__version__ = "0.1.0"

logger = logging.getLogger("pipeline")
