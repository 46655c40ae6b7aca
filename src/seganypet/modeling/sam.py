"""The promptable model: image encoder + prompt encoder + mask decoder, joined.

The model holds weights only; per-image state (crops, cached embeddings, clicks) lives in
``seganypet.infer.Session``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seganypet.modeling.image_encoder import ImageEncoderViT3D
from seganypet.modeling.mask_decoder import MaskDecoder3D
from seganypet.modeling.prompt_encoder import PromptEncoder3D


def normalise_suv(suv: np.ndarray | torch.Tensor):
    """SUV -> network input: log(1 + SUV), negatives clipped.

    A fixed map, not SAM-Med3D's per-crop z-score: SUV is already a calibrated scale, and a
    per-crop z-score would make a liver crop and a lesion crop look alike. The log keeps
    SUV 0.5-50 within 0.4-3.9 without clipping hot lesions.
    """
    if isinstance(suv, torch.Tensor):
        return torch.log1p(suv.clamp(min=0))
    return np.log1p(np.maximum(suv, 0)).astype(np.float32)


@dataclass
class ImageEmbedding:
    """What is computed once per crop: features (B, C, g, g, g) and detail features at the low-res grid (B, C/8, 4g, 4g, 4g)."""

    features: torch.Tensor
    detail: torch.Tensor


class SegAnyPet(nn.Module):
    def __init__(self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D, mask_decoder: MaskDecoder3D, crop_size: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.crop_size = crop_size

    @property
    def mask_size(self) -> int:
        return self.prompt_encoder.mask_size

    def embed(self, crop: torch.Tensor) -> ImageEmbedding:
        """crop: (B, 1, S, S, S) normalised (`normalise_suv`), axes i, j, k. The encoder may run in bf16; the result is float32."""
        dtype = self.image_encoder.patch_embed.weight.dtype
        features = self.image_encoder(crop.to(dtype)).float()
        detail = self.mask_decoder.embed_detail(F.adaptive_avg_pool3d(crop.float(), self.mask_size))
        return ImageEmbedding(features, detail)

    def decode(
        self,
        embedding: ImageEmbedding,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in crop voxel coordinates (i, j, k; float): points (B, N, 3) with labels (B, N) (1 positive,
        0 negative, -1 padding), boxes (B, 2, 3) as (lo, hi) corners, mask_input (B, 1, L, L, L) low-res logits
        of the previous prediction. Returns low-res logits (B, M, L, L, L) and predicted IoU (B, M): one mask, or
        with ``multimask`` the decoder's ambiguity masks (SAM's answers to a lone click)."""
        batch = next(t.shape[0] for t in (points, boxes, mask_input, embedding.features) if t is not None)
        sparse, dense = self.prompt_encoder(points, labels, boxes, mask_input, batch)
        return self.mask_decoder(embedding.features, self.prompt_encoder.get_dense_pe(), embedding.detail, sparse, dense,
                                 multimask=multimask)

    def upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits (B, M, L, L, L) -> crop-size logits (B, M, S, S, S), trilinear as SAM-Med3D."""
        return F.interpolate(low_res, size=(self.crop_size,) * 3, mode="trilinear", align_corners=False)

    def forward(self, crop: torch.Tensor, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed and decode in one call (training). Returns crop-size logits and IoU."""
        low_res, iou = self.decode(self.embed(crop), **prompts)
        return self.upsample(low_res), iou
