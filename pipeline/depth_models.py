"""The depth models, by name: what each one is, needs and does (one entry each).

Adding a model = its module (a class with `build(spec, cfg, depth_root)`, `predict`, `predict_batch`,
`batch_size`, `settings`, `frames_in_parallel`; see `pipeline.depth.DepthModel`) + one `DepthModelSpec` line in
`REGISTRY`. The CLI's choices and help, config validation, the depth stage, fusion's confidence masking and
compare/benchmark's "skip when weights are missing" all read this table. Nothing heavy is imported here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthModelSpec:
    name: str
    """The name on the command line and of WORKDIR/depth/<name>/."""
    summary: str
    """One line for --help and the README."""
    builder: str
    """"module:Class" whose `Class.build(spec, cfg, depth_root)` makes the model (imported on use)."""
    uses_rgb: bool = True
    """False: `predict` ignores the RGB frame, so the depth stage does not decode it."""
    passes_lidar_through: bool = False
    """True: the maps are the LiDAR resampled, so fusion drops their low-confidence pixels (fuse.min_confidence);
    False: the model repairs those pixels itself and fusion takes its maps whole."""
    weights_repo: str = ""
    """Hugging Face repo id of the official checkpoint; non-empty = the model needs weights (compare and
    benchmark skip it, with the reason, when they are missing)."""
    variant: str = ""
    """PromptDA encoder variant (vits, vitl) of the checkpoint."""

    @property
    def needs_weights(self) -> bool:
        return bool(self.weights_repo)


REGISTRY = (
    DepthModelSpec("lidar", "LiDAR depth resized to the output size, bilinear (the baseline; no weights)",
                   "pipeline.depth.classical:LidarResize", uses_rgb=False, passes_lidar_through=True),
    DepthModelSpec("guided", "classical edge-aware, confidence-weighted upsampling guided by the RGB image "
                   "(no weights)", "pipeline.depth.classical:GuidedUpsampler"),
    DepthModelSpec("promptda-vits", "Prompt Depth Anything ViT-S, official weights",
                   "pipeline.depth:PromptDADepth", weights_repo="depth-anything/prompt-depth-anything-vits",
                   variant="vits"),
    DepthModelSpec("promptda-vits-transparent", "Prompt Depth Anything ViT-S tuned for transparent and "
                   "reflective surfaces, official weights", "pipeline.depth:PromptDADepth",
                   weights_repo="depth-anything/prompt-depth-anything-vits-transparent", variant="vits"),
    DepthModelSpec("promptda-vitl", "Prompt Depth Anything ViT-L, official weights", "pipeline.depth:PromptDADepth",
                   weights_repo="depth-anything/prompt-depth-anything-vitl", variant="vitl"),
)
DEPTH_MODELS: dict[str, DepthModelSpec] = {spec.name: spec for spec in REGISTRY}

AUTO = "auto"
AUTO_PREFERRED = "promptda-vits"
"""What `auto` picks when its weights are available offline ..."""
AUTO_FALLBACK = "guided"
"""... and what it picks otherwise."""
MODEL_CHOICES = (AUTO, *DEPTH_MODELS)
"""Values of `--depth-model` / [depth] model."""


def choices_help() -> str:
    """The model list for --help: each name and its summary, then what auto does."""
    return ("; ".join(f"{s.name} = {s.summary}" for s in REGISTRY) +
            f"; auto = {AUTO_PREFERRED} if its weights are available offline, else {AUTO_FALLBACK}")
