"""One training step of the SAM-Med3D interactive loop, as a module so that DDP can wrap it.

Per batch: embed the crops once; round 0 prompts with a click inside the target (or, for some
batches, a jittered box); each next round adds a click at
a random voxel of the current error and feeds the previous low-res logits back (sometimes
binarised, as the session does after moving its crop). Every round's masks are scored with
Dice + BCE and the IoU head against the masks' true IoU, at the decoder's low-res grid against the
area-averaged (soft) target: the inference upsampling is a fixed trilinear map, scoring before it
skips the backward pass through 8x more voxels, and the soft target keeps the partial volumes. A crop's voxels
past the scan's edge or under nnU-Net's ignore label have no label: they weigh nothing in the loss and no click lands
on them. Noisy samples take
the CPCL mix of the given and the rectified label. A model with ambiguity masks also answers round 0's lone click
with them, scored as SAM scores them: only the best mask's loss counts, and the IoU head learns every mask's IoU,
so that it can pick among them at inference; the pick is what the next round corrects, as in the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seganypet.clicks import first_click, jittered_box, next_click
from seganypet.modeling import ImageEmbedding, SegAnyPet
from seganypet.train.cpcl import mixed_loss, rectify

MASK_PROMPT_LOGIT = 4.0


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 4
    box_probability: float = 0.25
    binarised_mask_probability: float = 0.2
    cpcl: bool = True
    cpcl_k: int = 5
    cpcl_prompt_rounds: int = 2
    cpcl_confidence: float = 0.8


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE per sample: logits and target (B, M, S, S, S) -> (B, M). ``weight`` (broadcast to them): each
    voxel's share of the loss, the part of its cell whose label is known (in the scan, not nnU-Net's ignore label)."""
    prob = torch.sigmoid(logits)
    w = weight.expand_as(logits)
    inter = (prob * target * w).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / ((prob * w).flatten(2).sum(-1) + (target * w).flatten(2).sum(-1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w
    return dice + bce.flatten(2).sum(-1) / w.flatten(2).sum(-1).clamp(min=1)


def true_iou(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks with the target, over the ``known`` cells only."""
    pred = (logits > 0) & known
    tgt = (target > 0.5) & known
    inter = (pred & tgt).flatten(2).sum(-1).float()
    union = (pred | tgt).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class InteractiveLoss(nn.Module):
    def __init__(self, model: SegAnyPet, config: LoopConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def _prompts(self, points: list[list[tuple]], device) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(len(p) for p in points)
        coords = torch.zeros(len(points), n, 3)
        labels = torch.full((len(points), n), -1, dtype=torch.long)
        for b, clicks in enumerate(points):
            for i, (voxel, positive) in enumerate(clicks):
                coords[b, i] = torch.tensor(voxel, dtype=torch.float32)
                labels[b, i] = int(positive)
        return coords.to(device), labels.to(device)

    @staticmethod
    def _mask_loss(logits, iou, soft, rectified, noisy, cpcl_weight, cover) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mask loss (B, M) against the target (CPCL's mix for noisy samples), and the IoU head's loss;
        ``cover``: each low-res cell's share whose label is known."""
        mask_loss = segmentation_loss(logits, soft.expand_as(logits), cover)
        if rectified is not None:
            rect_loss = segmentation_loss(logits, rectified.expand_as(logits), cover)
            mask_loss = torch.where(noisy[:, None], mixed_loss(mask_loss, rect_loss, cpcl_weight), mask_loss)
        return mask_loss, F.mse_loss(iou.float(), true_iou(logits.detach(), soft, cover > 0.5))

    @torch.no_grad()
    def cross_prompt(self, embedding: ImageEmbedding, label_np: np.ndarray, rng: np.random.Generator,
                     known_np: np.ndarray) -> torch.Tensor:
        """K probability maps (K, B, 1, S, S, S), each from its own simulated prompt set on the given label, its
        clicks on the voxels whose label is known (``known_np``)."""
        model, out = self.model, []
        for _ in range(self.config.cpcl_k):
            points = [[first_click(t, rng)] for t in label_np]
            mask_input, prob = None, None
            for r in range(self.config.cpcl_prompt_rounds):
                if r:
                    pred = (prob[:, 0] > 0.5).cpu().numpy() & known_np
                    for b, t in enumerate(label_np):
                        click = next_click(pred[b], t, rng)
                        if click:
                            points[b].append(click)
                coords, labels = self._prompts(points, embedding.features.device)
                low, _ = model.decode(embedding, coords, labels, mask_input=mask_input)
                mask_input, prob = low, torch.sigmoid(model.upsample(low).float())
            out.append(prob)
        return torch.stack(out)

    def forward(self, crops: torch.Tensor, targets: torch.Tensor, noisy: torch.Tensor, seed: int, cpcl_weight: float,
                clicks: list | None = None, known: torch.Tensor | None = None):
        """crops, targets: (B, 1, S, S, S); noisy: (B,) bool; clicks: per sample, the first click (crop voxel) where
        the crop was centred on it, else None (a random voxel of the target); known: (B, 1, S, S, S) bool, the
        voxels whose label is known (all when None). Returns (loss, statistics)."""
        cfg, model = self.config, self.model
        rng = np.random.default_rng(seed)
        target_np = targets[:, 0].cpu().numpy() > 0.5
        known = torch.ones_like(targets, dtype=torch.bool) if known is None else known.bool()
        known_np = known[:, 0].cpu().numpy()
        cover = F.adaptive_avg_pool3d(known.float(), model.mask_size)  # each low-res cell's share whose label is known
        soft = _known_share(targets, cover, model.mask_size)
        embedding = model.embed(crops)
        stats: dict[str, float] = {}

        rectified = None
        if cfg.cpcl and cpcl_weight > 0 and bool(noisy.any()):
            idx = torch.nonzero(noisy).flatten()
            sub = ImageEmbedding(embedding.features[idx].detach(), embedding.detail[idx].detach())
            rows = idx.cpu().numpy()
            rect = rectify(self.cross_prompt(sub, target_np[rows], rng, known_np[rows]), targets[idx], cfg.cpcl_confidence)
            rectified = targets.clone()
            rectified[idx] = rect.rectified
            rectified = _known_share(rectified * known, cover, model.mask_size)
            stats["cpcl_changed"] = float((rect.rectified != targets[idx]).float().mean())

        clicks = clicks or [None] * len(target_np)
        use_box = rng.random() < cfg.box_probability
        boxes = None
        points: list[list[tuple]] = [[] for _ in target_np]
        if use_box:
            boxes = torch.tensor(np.array([jittered_box(t, rng) for t in target_np]), dtype=torch.float32, device=crops.device)
        else:
            points = [[(click, True) if click else first_click(t, rng)] for t, click in zip(target_np, clicks)]
        mask_input, total = None, 0.0
        for r in range(cfg.rounds):
            if r:
                pred = (model.upsample(mask_input).detach()[:, 0] > 0).cpu().numpy() & known_np
                for b, t in enumerate(target_np):
                    click = next_click(pred[b], t, rng)
                    if click:
                        points[b].append(click)
                if rng.random() < cfg.binarised_mask_probability:
                    mask_input = torch.where(mask_input > 0, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT)
            kwargs = {"boxes": boxes} if boxes is not None else {}
            if any(points):
                kwargs["points"], kwargs["labels"] = self._prompts([p or [((0, 0, 0), -1)] for p in points], crops.device)
            low, iou = model.decode(embedding, mask_input=mask_input, **kwargs)
            logits = low.float()
            mask_loss, iou_loss = self._mask_loss(logits, iou, soft, rectified, noisy, cpcl_weight, cover)
            total = total + mask_loss.mean() + iou_loss
            mask_input = logits.detach()
            if r == 0 and boxes is None and model.mask_decoder.multimask:
                low_m, iou_m = model.decode(embedding, multimask=True, **kwargs)
                losses, iou_loss = self._mask_loss(low_m.float(), iou_m, soft, rectified, noisy, cpcl_weight, cover)
                total = total + losses.min(1).values.mean() + iou_loss
                # the session answers a lone click with the mask the IoU head picks, so the next click corrects that
                pick = iou_m.detach().argmax(1)
                mask_input = low_m.detach().float()[torch.arange(len(pick)), pick][:, None]
            if r == cfg.rounds - 1:
                final = (model.upsample(mask_input) > 0) & known
                inter = (final & (targets > 0.5)).flatten(1).sum(1).float()
                dice = 2 * inter / (final.flatten(1).sum(1) + (targets > 0.5).flatten(1).sum(1)).clamp(min=1)
                stats["dice_last"] = float(dice.mean())
        loss = total / cfg.rounds
        stats["loss"] = float(loss.detach())
        return loss, stats


def _known_share(full: torch.Tensor, cover: torch.Tensor, size: int) -> torch.Tensor:
    """A full-resolution label area-averaged to the low-res grid over each cell's known part (``cover``): the label
    reads 0 where it is unknown, which is not background, so a cut organ's last cell is wholly organ."""
    return (F.adaptive_avg_pool3d(full, size) / cover.clamp(min=1e-6)).clamp(max=1)
