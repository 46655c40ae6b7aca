"""The mask decoder: run per click on the cached image embedding.

SAM's design in 3D (two-way transformer, a mask token, an IoU head, 4x transposed-conv
upsampling and a hypernetwork dot product), with one mask output, as SAM-Med3D: SAM's three
ambiguity masks need an IoU head good enough to pick among them on the first click, and a
briefly trained head is not (measured: after 1.2k steps it predicted the same three IoUs for
every input and always picked an empty mask). Plus one PET-specific input: the crop's own
intensities at the low-res mask grid (``detail``) are added to the upsampled features. The
token grid is 24 mm per token in the small model; PET lesion edges are intensity edges, so
handing the decoder the image at 4x the token resolution is a cheap way to sharpen them
(the idea of HQ-SAM's early-feature fusion, with the raw image as the early feature).
"""

from __future__ import annotations

import torch
from torch import nn

from seganypet.modeling.common import MLP, LayerNorm3d
from seganypet.modeling.transformer import TwoWayTransformer


class MaskDecoder3D(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(depth, dim, heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, 2, stride=2),
            LayerNorm3d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, 2, stride=2),
        )
        self.detail_embed = nn.Sequential(nn.Conv3d(1, dim // 8, 3, padding=1), nn.GELU(), nn.Conv3d(dim // 8, dim // 8, 3, padding=1))
        self.hypernetwork = MLP(dim, dim, dim // 8, 3)
        self.iou_head = MLP(dim, 256, 1, 3)

    def embed_detail(self, detail: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4g, 4g, 4g) crop intensities -> (B, C/8, 4g, 4g, 4g); image-only, so computed once per crop."""
        return self.detail_embed(detail)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        detail_features: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (B, C, g, g, g), detail_features (B, C/8, 4g, 4g, 4g) from `embed_detail` ->
        low-res logits (B, 1, 4g, 4g, 4g) and predicted IoU (B, 1)."""
        b = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_token.weight]).unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse], 1)
        src = image_embedding.expand(b, -1, -1, -1, -1) + dense
        pe = image_pe.expand(b, -1, -1, -1, -1)
        hs, src = self.transformer(src, pe, tokens)
        iou_out, mask_out = hs[:, 0], hs[:, 1]
        g = image_embedding.shape[-1]
        src = src.transpose(1, 2).reshape(b, -1, g, g, g)
        upscaled = torch.nn.functional.gelu(self.output_upscaling(src) + detail_features)
        hyper = self.hypernetwork(mask_out)[:, None]
        masks = (hyper @ upscaled.flatten(2)).view(b, 1, *upscaled.shape[2:])
        return masks, self.iou_head(iou_out)
