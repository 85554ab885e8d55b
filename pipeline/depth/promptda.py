"""Prompt Depth Anything (PromptDA): metric depth from an RGB image and a low-res LiDAR prompt.

A DINOv2 ViT encoder (patch 14) feeds a DPT decoder whose four fusion blocks each add
features of the normalised LiDAR depth; a sigmoid output is mapped back onto the
prompt's [min, max] range, so the prediction is always inside the prompt's range.

    model = build_model("vits")                          # then load weights, see promptda_io
    depth_m = model(image, prompt_depth_m)               # (B,3,H,W) [0,1], (B,1,h,w) m -> (B,1,H,W) m

The state_dict matches the official checkpoints key for key (strict load after stripping
their key prefix); `tests/data/promptda/check_parity.py` checks the outputs against goldens.

Attention uses torch's scaled_dot_product_attention rather than the official code's explicit softmax
(same results, several times faster on CPU); speeds per model and size are measured in docs/benchmarks.md.

References:
    Lin et al., "Prompting Depth Anything for 4K Resolution Accurate Metric Depth
    Estimation", CVPR 2025 (arXiv 2412.14015). Written from tests/data/promptda/SPEC.md.
    Oquab et al., "DINOv2", 2023. Ranftl et al., "Vision Transformers for Dense
    Prediction" (DPT), ICCV 2021.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH_SIZE = 14
POS_GRID = 37  # pos_embed is sized for 518x518 input: 37x37 patches
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HeadConfig:
    taps: Tuple[int, int, int, int]
    """0-based indices of the encoder blocks whose outputs feed the decoder."""
    features: int
    """DPT fusion width F."""
    out_channels: Tuple[int, int, int, int]
    """DPT reassemble widths C0..C3."""


HEADS = {
    "vits": HeadConfig((2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": HeadConfig((2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": HeadConfig((4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
}

# --------------------------------------------------------------------------- encoder


class LayerScale(nn.Module):
    """Per-channel learned scale, (..., D) -> (..., D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention, (B, N, D) -> (B, N, D), via SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        # qkv channels are laid out (3, heads, head_dim)
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """(B, N, D) -> (B, N, D): Linear(D, 4D), exact GELU, Linear(4D, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale, (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, H/14 * W/14, D), tokens in row-major patch order."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        assert H % PATCH_SIZE == 0 and W % PATCH_SIZE == 0, \
            f"image size {H}x{W} (HxW) is not a multiple of the patch size {PATCH_SIZE}"
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINOv2 ViT/14 without registers, returning normalised patch tokens of selected blocks."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + POS_GRID * POS_GRID, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training only; kept for strict loading
        self.patch_embed = PatchEmbed(embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def interpolate_pos_embed(self, ph: int, pw: int, dtype: torch.dtype) -> Tensor:
        """(1, 1 + 37*37, D) -> (1, 1 + ph*pw, D), bicubic in float32 as DINOv2 does.

        DINOv2 resizes with scale_factor (n + 0.1) / 37 rather than size=n; with a scale
        factor PyTorch samples at (o + 0.5) * 37 / (n + 0.1) - 0.5, which the goldens pin down.
        """
        pos = self.pos_embed.float()
        if ph * pw == POS_GRID * POS_GRID and ph == pw:
            return pos.to(dtype)
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        D = grid.shape[-1]
        grid = grid.reshape(1, POS_GRID, POS_GRID, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((ph + 0.1) / POS_GRID, (pw + 0.1) / POS_GRID),
                             mode="bicubic", align_corners=False, antialias=False)
        assert grid.shape[-2:] == (ph, pw), f"pos_embed resized to {tuple(grid.shape[-2:])}, expected {(ph, pw)}"
        grid = grid.permute(0, 2, 3, 1).reshape(1, ph * pw, D)
        return torch.cat([cls_pos, grid], dim=1).to(dtype)

    def forward(self, x: Tensor, taps: Sequence[int]) -> List[Tensor]:
        """(B, 3, H, W) normalised image -> per tap (B, H/14 * W/14, D) patch tokens after the final norm."""
        ph, pw = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_embed(ph, pw, x.dtype)
        out = []
        for i, block in enumerate(self.blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                out.append(self.norm(x)[:, 1:])  # class token unused by the decoder
        return out


def vit_small() -> VisionTransformer:
    return VisionTransformer(embed_dim=384, depth=12, num_heads=6)


def vit_base() -> VisionTransformer:
    return VisionTransformer(embed_dim=768, depth=12, num_heads=12)


def vit_large() -> VisionTransformer:
    return VisionTransformer(embed_dim=1024, depth=24, num_heads=16)


ENCODERS = {"vits": vit_small, "vitb": vit_base, "vitl": vit_large}


# --------------------------------------------------------------------------- decoder


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), (B, F, h, w) -> (B, F, h, w)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def prompt_unit(features: int) -> nn.Sequential:
    """Prompt encoder (B, 1, h, w) normalised depth -> (B, F, h, w); last conv zero-initialised."""
    unit = nn.Sequential(
        nn.Conv2d(1, features, 3, padding=1), nn.ReLU(),
        nn.Conv2d(features, features, 3, padding=1), nn.ReLU(),
        nn.Conv2d(features, features, 3, padding=1),
    )
    nn.init.zeros_(unit[4].weight)
    nn.init.zeros_(unit[4].bias)
    return unit


class PromptFusionBlock(nn.Module):
    """DPT fusion block with a prompt-depth branch: (B, F, h, w) -> (B, F, h', w').

    y = RCU2(a + RCU1(b)) + P(prompt resized to (h, w)), then upsampled (align_corners=True)
    to `size` (default 2x) and projected by a 1x1 conv.
    """

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.resConfUnit_depth = prompt_unit(features)

    def forward(self, a: Tensor, b: Optional[Tensor], prompt: Tensor,
                size: Optional[Tuple[int, int]] = None) -> Tensor:
        """a, b: (B, F, h, w); prompt: (B, 1, hp, wp) in [0, 1]; size: output (h', w')."""
        y = a if b is None else a + self.resConfUnit1(b)
        y = self.resConfUnit2(y)
        p = F.interpolate(prompt, size=y.shape[-2:], mode="bilinear", align_corners=False)
        y = y + self.resConfUnit_depth(p)
        if size is None:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(y)


class Scratch(nn.Module):
    """Container matching the official `depth_head.scratch.*` key layout."""

    def __init__(self, out_channels: Sequence[int], features: int):
        super().__init__()
        for i, c in enumerate(out_channels):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for k in range(1, 5):
            setattr(self, f"refinenet{k}", PromptFusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 1), nn.Sigmoid(),
        )


class DPTPromptHead(nn.Module):
    """Four token maps (B, ph*pw, D) + normalised prompt (B, 1, h, w) -> (B, 1, 14ph, 14pw) in (0, 1)."""

    def __init__(self, embed_dim: int, features: int, out_channels: Sequence[int]):
        super().__init__()
        c0, c1, _, c3 = out_channels
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),  # 4x up
            nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),  # 2x up
            nn.Identity(),
            nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),  # 2x down (ceil)
        ])
        self.scratch = Scratch(out_channels, features)

    def forward(self, tokens: Sequence[Tensor], ph: int, pw: int, prompt: Tensor) -> Tensor:
        s = self.scratch
        layers = []
        for i, t in enumerate(tokens):
            x = t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], ph, pw)  # (B, D, ph, pw)
            x = self.resize_layers[i](self.projects[i](x))
            layers.append(getattr(s, f"layer{i + 1}_rn")(x))
        l1, l2, l3, l4 = layers  # (4ph, 4pw), (2ph, 2pw), (ph, pw), (ceil(ph/2), ceil(pw/2))
        y = s.refinenet4(l4, None, prompt, size=l3.shape[-2:])
        y = s.refinenet3(y, l3, prompt, size=l2.shape[-2:])
        y = s.refinenet2(y, l2, prompt, size=l1.shape[-2:])
        y = s.refinenet1(y, l1, prompt)  # (8ph, 8pw)
        y = s.output_conv1(y)
        y = F.interpolate(y, size=(ph * PATCH_SIZE, pw * PATCH_SIZE), mode="bilinear", align_corners=True)
        y = s.output_conv2[1](s.output_conv2[0](y))
        # last 1x1 conv + sigmoid in the weights' precision even under autocast: fp16 / bf16
        # would quantise the output to ~2^-11 / 2^-8 of the prompt range
        last = s.output_conv2[2]
        with torch.autocast(y.device.type, enabled=False):
            return s.output_conv2[3](last(y.to(last.weight.dtype)))


# --------------------------------------------------------------------------- model


class PromptDA(nn.Module):
    """RGB (B,3,H,W) in [0,1] + prompt depth (B,1,h,w) metres -> depth (B,1,H,W) metres.

    H and W must be multiples of 14; the prompt may have any size. Per batch element the
    prompt is normalised by its own min/max over all pixels (zeros included, as in the
    official model), and the output lies in that [min, max] range.
    """

    def __init__(self, variant: str):
        super().__init__()
        assert variant in HEADS, f"unknown PromptDA variant {variant!r}; expected one of {sorted(HEADS)}"
        self.variant = variant
        self.taps = HEADS[variant].taps
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.pretrained = ENCODERS[variant]()
        dim = self.pretrained.embed_dim
        self.depth_head = DPTPromptHead(dim, HEADS[variant].features, HEADS[variant].out_channels)

    def forward(self, image: Tensor, prompt_depth: Tensor) -> Tensor:
        assert image.ndim == 4 and image.shape[1] == 3, f"image must be (B,3,H,W), got {tuple(image.shape)}"
        assert prompt_depth.ndim == 4 and prompt_depth.shape[1] == 1 and prompt_depth.shape[0] == image.shape[0], \
            f"prompt_depth must be (B,1,h,w) with B={image.shape[0]}, got {tuple(prompt_depth.shape)}"
        ph, pw = image.shape[-2] // PATCH_SIZE, image.shape[-1] // PATCH_SIZE
        prompt_depth = prompt_depth.float()
        lo = prompt_depth.amin(dim=(1, 2, 3), keepdim=True)  # (B,1,1,1) metres
        hi = prompt_depth.amax(dim=(1, 2, 3), keepdim=True)
        prompt = (prompt_depth - lo) / (hi - lo)  # constant prompt -> NaN, as in the official model
        tokens = self.pretrained((image - self._mean) / self._std, self.taps)
        rel = self.depth_head(tokens, ph, pw, prompt.to(image.dtype))  # (B,1,H,W) float32 in (0,1)
        return rel * (hi - lo) + lo


def build_model(variant: str) -> PromptDA:
    """Untrained PromptDA for variant "vits", "vitb" or "vitl" (keys equal the official state_dict)."""
    return PromptDA(variant)
