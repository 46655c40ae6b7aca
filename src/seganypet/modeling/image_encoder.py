"""The image encoder: a plain 3D ViT with global attention, run once per crop.

Global attention rather than SAM's windows: on an 8^3 token grid a 14^3 window pads every
window to 2,744 tokens and made the published encoder 40x slower on a CPU
(``cpu_feasibility.md`` section 6). The patch embedding is a reshape + Linear, numerically
a Conv3d with kernel = stride = patch, and ~10 % faster on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seganypet.modeling.common import LayerNorm3d


class Block(nn.Module):
    """Pre-norm transformer block with scaled-dot-product attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) normalised crop -> (B, C, S/p, S/p, S/p) image embedding.

    Axis order is kept throughout: tensor axes 2, 3, 4 are the crop's i, j, k.
    """

    def __init__(self, crop_size: int, patch_size: int, width: int, depth: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = crop_size // patch_size
        self.patch_embed = nn.Linear(patch_size**3, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**3, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.neck = nn.Sequential(
            nn.Conv3d(width, out_dim, 1, bias=False),
            LayerNorm3d(out_dim),
            nn.Conv3d(out_dim, out_dim, 3, padding=1, bias=False),
            LayerNorm3d(out_dim),
        )

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) -> (B, g^3, p^3), tokens in i, j, k raster order."""
        b, p, g = x.shape[0], self.patch_size, self.grid
        x = x.reshape(b, g, p, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, g**3, p**3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patchify(x)) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        b, g = x.shape[0], self.grid
        # contiguous: a strided (channels-last) input gives the 1x1 conv strided weight grads, which DDP copies each step
        x = self.norm(x).transpose(1, 2).contiguous().reshape(b, -1, g, g, g)
        return self.neck(x)
