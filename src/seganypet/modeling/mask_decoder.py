"""The mask decoder: run per click on the cached image embedding.

SAM's design in 3D (two-way transformer, a mask token, an IoU head, 4x transposed-conv
upsampling and a hypernetwork dot product), with one mask output, as SAM-Med3D: SAM's three
ambiguity masks need an IoU head good enough to pick among them on the first click, and a
briefly trained head is not (measured: after 1.2k steps from scratch it predicted the same three
IoUs for every input and always picked an empty mask). So the ambiguity masks are optional
(``multimask``) and separate: their own tokens, hypernetworks and IoU head, decoded in a pass of
their own, so a model fine-tuned to add them answers every other prompt exactly as before. Their
IoU head reads each mask, not only SAM's IoU token: trained on the token alone, it picked a
lesion's best mask no better than chance (31 % of first clicks on held-out training cases, 3
masks); given the features pooled inside and around each mask, 54 % (MODEL_CARD.md, session 27).
Plus one PET-specific input: the crop's own
intensities at the low-res mask grid (``detail``) are added to the upsampled features. The
token grid is 24 mm per token in the small model; PET lesion edges are intensity edges, so
handing the decoder the image at 4x the token resolution is a cheap way to sharpen them
(the idea of HQ-SAM's early-feature fusion, with the raw image as the early feature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seganypet.modeling.common import MLP, LayerNorm3d
from seganypet.modeling.transformer import TwoWayTransformer


class MaskDecoder3D(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, multimask: int = 0) -> None:
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
        self.multimask = multimask
        if multimask:
            self.multimask_tokens = nn.Embedding(multimask, dim)
            self.multimask_hypernetworks = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(multimask))
            self.multimask_iou_head = MLP(dim + multimask + 3 * (dim // 8) + 1, 256, 1, 3, sigmoid_output=True)

    @torch.no_grad()
    def seed_multimask(self, generator: torch.Generator | None = None) -> None:
        """Start every ambiguity mask as a copy of the trained single mask, its token nudged apart: trained
        from there, each begins as a good answer and the min-over-masks loss pulls them to different ones."""
        for i, hypernetwork in enumerate(self.multimask_hypernetworks):
            hypernetwork.load_state_dict(self.hypernetwork.state_dict())
            token = self.mask_token.weight[0]
            noise = torch.randn(token.shape, generator=generator, device=token.device) * token.std() * 0.1 * (i > 0)
            self.multimask_tokens.weight[i] = token + noise

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
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (B, C, g, g, g), detail_features (B, C/8, 4g, 4g, 4g) from `embed_detail` ->
        low-res logits (B, M, 4g, 4g, 4g) and predicted IoU (B, M): M = 1, or the ambiguity masks with ``multimask``."""
        if multimask and not self.multimask:
            raise ValueError("this decoder has no ambiguity masks")
        mask_tokens = self.multimask_tokens.weight if multimask else self.mask_token.weight
        hypernetworks = self.multimask_hypernetworks if multimask else [self.hypernetwork]
        b, m = sparse.shape[0], len(hypernetworks)
        output_tokens = torch.cat([self.iou_token.weight, mask_tokens]).unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse], 1)
        src = image_embedding.expand(b, -1, -1, -1, -1) + dense
        pe = image_pe.expand(b, -1, -1, -1, -1)
        hs, src = self.transformer(src, pe, tokens)
        iou_out, mask_out = hs[:, 0], hs[:, 1:1 + m]
        g = image_embedding.shape[-1]
        src = src.transpose(1, 2).reshape(b, -1, g, g, g)
        upscaled = torch.nn.functional.gelu(self.output_upscaling(src) + detail_features)
        hyper = torch.stack([net(mask_out[:, i]) for i, net in enumerate(hypernetworks)], 1)
        masks = (hyper @ upscaled.flatten(2)).view(b, m, *upscaled.shape[2:])
        if not multimask:
            return masks, self.iou_head(iou_out)
        return masks, self.multimask_iou_head(mask_quality_inputs(iou_out, masks, upscaled))[..., 0]


def mask_quality_inputs(iou_out: torch.Tensor, masks: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
    """What the ambiguity masks' IoU head reads per mask (B, M, C + M + 3C/8 + 1): the IoU token, the mask's index,
    the upscaled features pooled inside the (soft) mask and on a shell around it, their difference, and the mask's
    log size. A lesion and the organ it sits in differ most at the lesion's edge, which the token does not see.
    The masks and features are detached: the IoU loss teaches the head to judge masks, not the masks to please it."""
    b, m = masks.shape[:2]
    inside = torch.sigmoid(masks.detach().float())
    shell = (F.max_pool3d(inside, 5, 1, 2) - inside).clamp(min=0)
    features = upscaled.detach().float()

    def pooled(weight: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmxyz,bcxyz->bmc", weight, features) / weight.sum((2, 3, 4))[..., None].clamp(min=1e-3)

    within, around = pooled(inside), pooled(shell)
    index = torch.eye(m, device=masks.device).expand(b, m, m)
    size = torch.log1p(inside.sum((2, 3, 4)))[..., None]
    return torch.cat([iou_out[:, None].float().expand(-1, m, -1), index, within, around, within - around, size], -1)
