"""The prompt encoder: clicks and boxes as sparse tokens, the previous mask as a dense prompt.

Coordinates are continuous voxel positions ``(i, j, k)`` in the crop, voxel centres at
integer values; they are normalised to [0, 1] as ``(c + 0.5) / S`` so that a point and
the dense positional grid (`get_dense_pe`) share one frame.
"""

from __future__ import annotations

import torch
from torch import nn

from seganypet.modeling.common import LayerNorm3d

LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_LO, LABEL_BOX_HI = -1, 0, 1, 2, 3


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D positions in [0, 1] (SAM's PositionEmbeddingRandom in 3D)."""

    def __init__(self, num_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(3, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) in [0, 1] -> (..., 2 * num_feats)."""
        coords = (2 * coords - 1) @ self.gaussian.to(coords.dtype)
        coords = 2 * torch.pi * coords
        return torch.cat([coords.sin(), coords.cos()], -1)

    def grid(self, size: int) -> torch.Tensor:
        """(C, size, size, size) encoding of the cell centres of a cubic grid."""
        centres = (torch.arange(size, device=self.gaussian.device, dtype=torch.float32) + 0.5) / size
        coords = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), -1)
        return self.encode(coords).permute(3, 0, 1, 2)


class PromptEncoder3D(nn.Module):
    """Points (B, N, 3) with labels (B, N), boxes (B, 2, 3) and low-res mask logits (B, 1, L, L, L)
    -> sparse tokens (B, T, C) and a dense embedding (B, C, g, g, g)."""

    def __init__(self, embed_dim: int, grid: int, crop_size: int, mask_channels: int = 16) -> None:
        super().__init__()
        self.embed_dim, self.grid, self.crop_size = embed_dim, grid, crop_size
        self.mask_size = 4 * grid
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2)
        # one learned vector per label: negative, positive, box low corner, box high corner
        self.point_embeddings = nn.Embedding(4, embed_dim)
        self.not_a_point = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_channels // 4, 2, stride=2),
            LayerNorm3d(mask_channels // 4),
            nn.GELU(),
            nn.Conv3d(mask_channels // 4, mask_channels, 2, stride=2),
            LayerNorm3d(mask_channels),
            nn.GELU(),
            nn.Conv3d(mask_channels, embed_dim, 1),
        )
        self.no_mask = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid(self.grid).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tokens = self.pe_layer.encode((points + 0.5) / self.crop_size)
        pad = (labels == LABEL_PAD).unsqueeze(-1)
        tokens = torch.where(pad, self.not_a_point.weight.expand_as(tokens), tokens)
        learned = self.point_embeddings(labels.clamp(min=0))
        return tokens + torch.where(pad, torch.zeros_like(learned), learned)

    def forward(
        self,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.no_mask.weight.device
        coords = [torch.zeros(batch, 0, 3, device=device)]
        kinds = [torch.zeros(batch, 0, dtype=torch.long, device=device)]
        if points is not None:
            coords.append(points.float())
            kinds.append(labels.long())
        if boxes is not None:
            coords.append(boxes.float())
            kinds.append(torch.tensor([LABEL_BOX_LO, LABEL_BOX_HI], device=device).expand(batch, 2))
        if boxes is None:
            # as SAM: one "not a point" token when there is no box, so that a prompt never has zero tokens
            coords.append(torch.zeros(batch, 1, 3, device=device))
            kinds.append(torch.full((batch, 1), LABEL_PAD, device=device))
        sparse = self.embed_points(torch.cat(coords, 1), torch.cat(kinds, 1))
        if mask_input is not None:
            dense = self.mask_downscaling(mask_input.float())
        else:
            g = self.grid
            dense = self.no_mask.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, g, g, g)
        return sparse, dense
