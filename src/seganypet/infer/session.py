"""The interactive session: one image, clicks and boxes in, a 3D mask per target out.

Shaped after nnInteractive's session and SAM's predictor: ``set_image`` keeps the scan;
each ``add_point`` / ``add_box`` decodes once on a cached crop embedding (the encoder runs
only when the crop moves), feeds the previous mask back as a prompt, and writes the result
into a target buffer in the full image's grid, one label per target.

Coordinates: ``(x, y, z)`` = voxel indices ``(i, j, k)`` of the input file (floats allowed),
or millimetres in the file's space with ``coords="mm"``. Inside, the session works on the image
turned to the axis order the model was trained in (``io.Reorientation``: a view, nothing resampled);
prompts are mapped in and the buffer, its regions and the masks are the input's own. A window that runs past the
scan's edge shows the scan going on there (``CropGeometry.sample(edge=True)``), as the body does: an organ cut by
the field of view is answered as the part of one that goes on, not as an organ that ends at the cut.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from seganypet.errors import SegAnyPetError
from seganypet.infer.crop import CropGeometry, Region
from seganypet.io.image import PetImage, Reorientation
from seganypet.modeling import ImageEmbedding, SegAnyPet, load_model, normalise_suv
from seganypet.prompts import Coords, Prompts, as_numbers

log = logging.getLogger(__name__)

MASK_PROMPT_LOGIT = 4.0  # a binary mask given as a prompt (after the crop moved) is fed as +-4 logits
KEEP_MARGIN = 0.125  # a click within this fraction of the crop size from its edge moves the crop
FIT_FRACTION = 0.75  # a target is zoomed to fill at most this fraction of the crop
MAX_ZOOM_ROUNDS = 3
ZOOM_STEP = 1.5  # each AutoZoom round widens the window at least this much
# a wider window's prediction must keep this fraction of the mask it was prompted with (the narrower one's), else
# it is dropped and the narrower kept: a thin structure (spine, aorta) can vanish from a window of 10 mm voxels,
# and the blob left is worse than the piece the narrower window found
KEEP_WHEN_WIDER = 0.5
# a target's first answer that leaves its window through the faces of one axis only, and is already this many times
# longer along it than across, is a tube along that axis (spine, aorta); its window is stretched TUBE_STRETCH times
# along it, at the same voxel size across
TUBE_ELONGATION = 2.0
TUBE_STRETCH = 3.0
CLOSER_AT_MOST = 0.9  # a target's first answer is redrawn closer only in a window at least this much finer
EMBEDDING_CACHE = 4
# the model reads a 3D neighbourhood: a lesion clicked in a single slice cut from a phantom is answered with nothing
# (Dice 0), in three slices 0.53, in five 0.82 (2026-12-01), so a volume thinner than this is refused
MIN_SLICES = 3


@dataclass
class Target:
    """One object being segmented: its prompts and its last prediction."""

    label: int
    points: list[tuple[np.ndarray, bool]] = field(default_factory=list)  # (ijk in the model's axes, positive)
    box: tuple[np.ndarray, np.ndarray] | None = None
    crop: CropGeometry | None = None
    logits: torch.Tensor | None = None  # (1, 1, L, L, L) low-res logits of the last prediction, in `crop`
    score: float = float("nan")  # the IoU head's estimate for the last prediction
    bbox: Region | None = None  # bounding box of the target's voxels, in the model's axes


@dataclass
class Interaction:
    """What one prompt changed: the target's label, the model's IoU estimate, the buffer region rewritten (the input's
    axes) and the window the model answered in (on the image turned to the model's axes)."""

    label: int
    score: float
    region: Region
    crop: CropGeometry


@dataclass
class _Step:
    target: Target
    region: Region
    before: np.ndarray


class Session:
    """``Session(model)`` then ``set_image(image)``, then prompts; ``mask`` is the current target's mask.

    Two scales. While a target fits it, the target is segmented in the finest crop the model was
    trained at (``config.min_zoom`` of its spacing: 1 mm for the small model), centred on the prompts,
    so a 1 cm lesion is outlined at 1 mm rather than on the 6 mm mask grid of the model's own scale.
    Once a prediction there runs into the crop's border, that prediction is dropped (cut off, it would
    be a wrong mask prompt) and the target is segmented from then on at the model's scale or wider:
    ``max_zoom`` times its spacing at most, the window refitted while the mask runs out of it
    (nnInteractive's AutoZoom), unless the wider window loses the mask it was given. A target's first
    answer there that sits well inside the window is redrawn in a window fitted to it, when both agree. A first
    answer held in the fine crop gives way to the next window's when that is larger with a sharper edge in SUV
    (the fine one was a fragment).
    A target's first answer that runs out of the window along one axis only, as a tube along the body does, is redrawn
    in the window stretched along that axis rather than widened on all three.
    A model trained with ambiguity masks (``--multimask``) answers a target's lone click with the one its IoU head
    scores highest. A click far along a long target (aorta, spine) is answered in its own window at the model's scale;
    every window rewrites the target only inside itself, so the pieces found before stay.
    """

    def __init__(self, model: SegAnyPet | None = None, device: str | torch.device = "cpu", max_zoom: float = 4.0) -> None:
        self.model = model if model is not None else load_model(device=device)
        self.device = next(self.model.parameters()).device
        self.max_zoom = max_zoom
        self.image: PetImage | None = None
        self.target_buffer: np.ndarray | None = None
        self.encoder_calls = 0
        # the model's view of both: i, j, k to the patient's left, back and head, as it was trained (io.Reorientation)
        self._orient: Reorientation | None = None
        self._image: PetImage | None = None
        self._labels: np.ndarray | None = None
        self._input: np.ndarray | None = None
        self._embeddings: OrderedDict[CropGeometry, ImageEmbedding] = OrderedDict()
        self._targets: dict[int, Target] = {}
        self._current: Target | None = None
        self._history: list[_Step] = []

    # ---- image and targets -------------------------------------------------------------------
    def set_image(self, image: PetImage, target_buffer: np.ndarray | None = None) -> None:
        """Keep the scan (SUV) and start with no targets. ``target_buffer``: an optional caller-owned
        integer array of the image's shape that receives the labels."""
        if min(image.shape) < MIN_SLICES:
            thin, axis = min(image.shape), "ijk"[int(np.argmin(image.shape))]
            raise SegAnyPetError(f"the model segments 3D volumes and this one is {thin} voxel{'s' * (thin > 1)} thin "
                                 f"along {axis}: use a classical method (seganypet segment --method pct41) on it", image.source)
        if target_buffer is not None and target_buffer.shape != image.shape:
            raise SegAnyPetError(f"target buffer shape {target_buffer.shape} differs from the image's {image.shape}")
        self.image = image
        self._orient = Reorientation.to_lps(image)
        self._image = self._orient.image(image)
        self._input = np.ascontiguousarray(normalise_suv(self._image.array))
        self._embeddings.clear()
        self.target_buffer = target_buffer if target_buffer is not None else np.zeros(image.shape, np.uint16)
        self._labels = self._orient.array(self.target_buffer)
        self.reset()

    def reset(self) -> None:
        """Forget every target and clear the buffer; keep the image and its cached embeddings."""
        self._require_image()
        self.target_buffer[...] = 0
        self._targets.clear()
        self._history.clear()
        self._current = None
        self.new_target()

    def new_target(self) -> int:
        """Start a new object; the next prompts segment it under a new label. Returns the label."""
        self._require_image()
        if self._current is not None and not self._current.points and self._current.box is None:
            return self._current.label  # the current target is still empty: keep its label
        label = max(self._targets, default=0) + 1
        self._current = self._targets[label] = Target(label)
        return label

    @property
    def label(self) -> int:
        return self._current.label

    @property
    def mask(self) -> np.ndarray:
        """Bool mask of the current target in the full image grid, axes (i, j, k)."""
        self._require_image()
        return self.target_buffer == self._current.label

    @property
    def score(self) -> float:
        return self._current.score

    # ---- prompts --------------------------------------------------------------------------------
    def add_point(self, xyz, positive: bool = True, coords: Coords = "voxel") -> Interaction:
        """A click on (positive) or off (negative) the current target."""
        self._require_image()
        ijk = self._to_ijk(xyz, coords)
        return self._apply(lambda target: target.points.append((ijk, bool(positive))))

    def add_box(self, lo, hi, coords: Coords = "voxel") -> Interaction:
        """A box around the current target, by two opposite corners (inclusive); replaces an earlier box."""
        self._require_image()
        a, b = self._to_ijk(lo, coords, "box corner"), self._to_ijk(hi, coords, "box corner")
        return self._apply(lambda target: setattr(target, "box", (np.minimum(a, b), np.maximum(a, b))))

    def undo(self) -> Region | None:
        """Take back the last prompt: the buffer and the target return to exactly their previous state.
        Returns the buffer region restored (None when there was nothing to undo)."""
        self._require_image()
        if not self._history:
            return None
        step = self._history.pop()
        self._labels[step.region] = step.before
        self._targets[step.target.label] = self._current = step.target
        return self._orient.region_back(step.region)

    # ---- internals ------------------------------------------------------------------------------
    def _require_image(self) -> None:
        if self.image is None:
            raise SegAnyPetError("no image: call set_image first")

    def _to_ijk(self, xyz, coords: Coords, what: str = "point") -> np.ndarray:
        ijk = as_numbers(xyz, 3, what)
        if coords == "mm":
            ijk = self.image.world_to_voxel(ijk)[0]
        elif coords != "voxel":
            raise SegAnyPetError(f"coords must be 'voxel' or 'mm', not {coords!r}")
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(self.image.shape) - 0.5):
            shown = ",".join(f"{v:g}" for v in np.asarray(xyz, float).reshape(3))
            raise SegAnyPetError(f"{what} {shown} ({coords}) lies outside the volume of "
                                 f"{'x'.join(map(str, self.image.shape))} voxels", self.image.source)
        return self._orient.point(ijk)

    def _apply(self, change) -> Interaction:
        """Change the current target's prompts and predict; the untouched copy is kept for undo
        and put back if prediction fails."""
        before = copy.deepcopy(self._current)
        change(self._current)
        try:
            return self._predict(self._current, before)
        except BaseException:
            self._targets[before.label] = self._current = before
            raise

    def _prompt_extent(self, target: Target) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box (image ijk) of the positive prompts and the target's current voxels."""
        points = [p for p, positive in target.points if positive]
        if target.box is not None:
            points += list(target.box)
        if target.bbox is not None:
            points += [np.array([s.start for s in target.bbox], float), np.array([s.stop - 1 for s in target.bbox], float)]
        if not points:  # only negative clicks so far: centre on them
            points = [p for p, _ in target.points]
        points = np.asarray(points)
        return points.min(0), points.max(0)

    def _fitted_crop(self, lo: np.ndarray, hi: np.ndarray, min_zoom: float = 1.0) -> CropGeometry:
        config = self.model.config
        extent_mm = (hi - lo + 1) * self._image.spacing
        zoom = float(np.clip(extent_mm.max() / (FIT_FRACTION * config.field_of_view_mm), min_zoom, self.max_zoom))
        return CropGeometry.centred((lo + hi) / 2, self._image.spacing, config.spacing_mm * zoom, config.crop_size)

    def _zoom(self, crop: CropGeometry) -> float:
        """The crop's voxel size as a multiple of the model's spacing: a stretched window's finest, a cube's on its
        first axis (the others differ from it by rounding only, which must not move a comparison with 1)."""
        step = self._step_mm(crop)
        return float(min(step[0], step.min() * (1 + 1e-3)) / self.model.config.spacing_mm)

    def _step_mm(self, crop: CropGeometry) -> np.ndarray:
        return np.asarray(crop.step) * self._image.spacing

    def _stretched(self, crop: CropGeometry) -> bool:
        step = self._step_mm(crop)
        return bool(step.max() > step.min() * (1 + 1e-3))

    def _keeps(self, target: Target) -> bool:
        """Whether every prompt lies inside the target's crop, away from its edge."""
        prompts = [p for p, _ in target.points] + (list(target.box) if target.box is not None else [])
        return _holds(target.crop, prompts)

    def _fine_crop(self, target: Target) -> CropGeometry | None:
        """The crop finer than the model's scale for this target, or None: the model never saw one, the
        target already left it, or its prompts span more than one."""
        if self.model.config.min_zoom >= 1 or (target.crop is not None and self._zoom(target.crop) >= 1):
            return None
        if target.crop is not None and self._keeps(target):
            return target.crop
        crop = self._fitted_crop(*self._prompt_extent(target), min_zoom=self.model.config.min_zoom)
        return crop if self._zoom(crop) < 1 else None

    def _local_crop(self, target: Target, before: Target) -> CropGeometry | None:
        """A window at the model's scale centred on a new click that only a much wider window shares with
        the target's other prompts and voxels, or None.

        A long target (aorta, spine) is built up click by click, as in nnInteractive's target buffer:
        one window refitted to every prompt, or widened by AutoZoom, is so coarse that a 2-3 cm tube
        is a few voxels wide and the model loses it. The click's own window, at the scale the model
        sees such a tube, rewrites the target there and leaves it as it was elsewhere."""
        if before.crop is None or len(target.points) == len(before.points) or self._keeps(target):
            return None
        fitted = self._fitted_crop(*self._prompt_extent(target))
        # a target that grew a little (a lung filling in) is refitted, as before; one whose prompts jump at least
        # an AutoZoom step wider, or beyond the refitted window, is answered where the click is
        if self._zoom(fitted) < max(1.0, self._zoom(before.crop)) * ZOOM_STEP and _holds(fitted, [target.points[-1][0]], margin=0):
            return None
        log.debug("target %d: a click beyond the target's window: answered in its own", target.label)
        config = self.model.config
        return CropGeometry.centred(target.points[-1][0], self._image.spacing, config.spacing_mm, config.crop_size)

    def _choose_crop(self, target: Target) -> CropGeometry:
        if target.crop is not None and self._zoom(target.crop) >= 1 and self._keeps(target):
            return target.crop
        return self._fitted_crop(*self._prompt_extent(target))

    def _embedding(self, crop: CropGeometry) -> ImageEmbedding:
        if crop in self._embeddings:
            self._embeddings.move_to_end(crop)
            return self._embeddings[crop]
        tensor = torch.from_numpy(crop.sample(self._input, edge=True))[None, None].to(self.device)
        with torch.inference_mode():
            embedding = self.model.embed(tensor)
        self.encoder_calls += 1
        self._embeddings[crop] = embedding
        while len(self._embeddings) > EMBEDDING_CACHE:
            self._embeddings.popitem(last=False)
        return embedding

    def _mask_prompt(self, target: Target, crop: CropGeometry) -> torch.Tensor | None:
        """The previous prediction as a dense prompt: its own logits if the crop is unchanged, else
        the target's current voxels resampled into the new crop's low-res grid as +-logits."""
        if target.logits is not None and target.crop == crop:
            return target.logits
        if target.bbox is None:
            return None
        # nearest-neighbour on the label buffer itself: reads only the voxels under the crop
        inside = self._low_res(crop).sample(self._labels, order=0) == target.label
        return self._as_mask_prompt(inside) if inside.any() else None

    def _low_res(self, crop: CropGeometry) -> CropGeometry:
        return crop.coarsened(self.model.crop_size // self.model.mask_size)

    def _as_mask_prompt(self, inside: np.ndarray) -> torch.Tensor:
        logits = np.where(inside, MASK_PROMPT_LOGIT, -MASK_PROMPT_LOGIT).astype(np.float32)
        return torch.from_numpy(logits)[None, None].to(self.device)

    def _decode(self, target: Target, crop: CropGeometry, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        # the model never saw a prompt outside its window: a click there is left out, a box cut to the window
        edge = (-0.5, crop.size - 0.5)
        points = [(c, positive) for p, positive in target.points
                  if np.all((c := crop.to_crop(p)) >= edge[0]) and np.all(c <= edge[1])]
        kwargs: dict = {}
        if points:
            kwargs["points"] = torch.tensor(np.array([p for p, _ in points]), dtype=torch.float32, device=self.device)[None]
            kwargs["labels"] = torch.tensor([int(s) for _, s in points], device=self.device)[None]
        box = None if target.box is None else crop.to_crop(np.stack(target.box))
        if box is not None and np.all(box[0] <= edge[1]) and np.all(box[1] >= edge[0]):
            kwargs["boxes"] = torch.tensor(np.clip(box, *edge), dtype=torch.float32, device=self.device)[None]
        # a lone click is ambiguous (a lesion or the organ it sits in): a model with SAM's ambiguity masks answers it
        # with them, and its IoU head picks one; every later prompt, or a mask prompt, has the single mask
        if self.model.config.multimask and mask_input is None and target.box is None and len(target.points) == 1 \
                and target.points[0][1] and points:
            kwargs["multimask"] = True
        with torch.inference_mode():
            logits, iou = self.model.decode(self._embedding(crop), mask_input=mask_input, **kwargs)
        best = int(iou[0].argmax())
        return self._keep_prompted(target, crop, logits[:, best:best + 1]), float(iou[0, best])

    def _keep_prompted(self, target: Target, crop: CropGeometry, logits: torch.Tensor) -> torch.Tensor:
        """Only the connected parts of a prediction that hold a positive click or meet the box.

        A click means one object. The model's stray parts elsewhere in the crop (a hot organ or
        lesion nearby) are not it, and left in they would reach the crop's border and send a small
        lesion out of the fine crop to a coarser scale. When no part holds a prompt (a click the
        model answered around, not on), the prediction is left whole."""
        foreground = logits[0, 0].float().cpu().numpy() > 0
        if not foreground.any():
            return logits
        parts, _ = ndimage.label(foreground, structure=np.ones((3, 3, 3), bool))
        grid = self._low_res(crop)
        keep = set()
        for at in (np.round(grid.to_crop(ijk)).astype(int) for ijk, positive in target.points if positive):
            if np.all(at >= 0) and np.all(at < grid.size):
                keep.add(int(parts[tuple(at)]))
        if target.box is not None:
            corners = grid.to_crop(np.stack(target.box))
            lo = np.clip(np.floor(corners.min(0)), 0, grid.size).astype(int)
            hi = np.clip(np.ceil(corners.max(0)) + 1, 0, grid.size).astype(int)
            keep.update(np.unique(parts[tuple(slice(a, b) for a, b in zip(lo, hi))]).tolist())
        keep.discard(0)
        if not keep:
            return logits
        stray = torch.from_numpy((parts > 0) & ~np.isin(parts, list(keep))).to(logits.device)
        return logits.masked_fill(stray[None, None], -MASK_PROMPT_LOGIT)

    def _exit_axes(self, crop: CropGeometry, crop_mask: np.ndarray) -> set[int]:
        """The axes through whose faces inside the image ``crop_mask`` runs out of the crop."""
        return {axis for axis, face in crop.border_faces_inside(self._image.shape)
                if np.take(crop_mask, [0 if face == 0 else -1], axis=axis).any()}

    def _touches_border(self, crop: CropGeometry, crop_mask: np.ndarray) -> bool:
        return bool(self._exit_axes(crop, crop_mask))

    def _upsampled(self, logits: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model.upsample(logits)[0, 0].float().cpu().numpy()

    def _predict(self, target: Target, before: Target) -> Interaction:
        fine = self._fine_crop(target)
        local = None if fine is not None else self._local_crop(target, before)
        if local is not None:
            logits, score = self._decode(target, local, self._mask_prompt(target, local))
            return self._write(target, before, local, self._upsampled(logits), logits, score)
        if fine is not None:
            logits, score = self._decode(target, fine, self._mask_prompt(target, fine))
            crop_logits = self._upsampled(logits)
            if (crop_logits > 0).any() and not self._touches_border(fine, crop_logits > 0):
                if before.crop is None:
                    fine, crop_logits, logits, score = self._sharper(target, fine, crop_logits, logits, score)
                return self._write(target, before, fine, crop_logits, logits, score)
            log.debug("target %d runs out of the fine crop: on at the model's scale", target.label)
        crop = self._choose_crop(target)
        mask_input = self._mask_prompt(target, crop)
        logits, score = self._decode(target, crop, mask_input)
        crop_logits = self._upsampled(logits)
        if before.crop is None:
            crop, crop_logits, logits, score = self._lengthwise(target, crop, crop_logits, logits, score)
        for _ in range(MAX_ZOOM_ROUNDS):
            zoom = self._zoom(crop)
            if zoom >= self.max_zoom - 1e-6 or not self._touches_border(crop, crop_logits > 0) or self._stretched(crop):
                break
            # AutoZoom: the object runs out of the crop; refit the window to it, zoomed out at least ZOOM_STEP
            wider = self._refitted(target, crop, crop_logits, min_zoom=min(zoom * ZOOM_STEP, self.max_zoom))
            inside = self._resampled(crop_logits, crop, wider)
            wider_logits, wider_score = self._decode(target, wider, self._as_mask_prompt(inside))
            if _kept(wider_logits, inside) < KEEP_WHEN_WIDER:
                log.debug("target %d lost at zoom %.2f: kept at %.2f", target.label, self._zoom(wider), zoom)
                break
            log.debug("target %d touches the crop border: zoom %.2f -> %.2f", target.label, zoom, self._zoom(wider))
            crop, logits, score = wider, wider_logits, wider_score
            crop_logits = self._upsampled(logits)
        if fine is not None and before.crop is None and self._zoom(crop) <= 1 + 1e-6 and not self._stretched(crop):
            crop, crop_logits, logits, score = self._closer(target, crop, crop_logits, logits, score)
        return self._write(target, before, crop, crop_logits, logits, score)

    def _lengthwise(self, target: Target, crop: CropGeometry, crop_logits: np.ndarray, logits: torch.Tensor,
                    score: float) -> tuple[CropGeometry, np.ndarray, torch.Tensor, float]:
        """A target's first answer that leaves its window through the faces of one axis only and is at least
        ``TUBE_ELONGATION`` times longer along it than across, redrawn in the window ``TUBE_STRETCH`` times longer
        along that axis, with the same voxels across; kept if it keeps ``KEEP_WHEN_WIDER`` of the first answer.

        A tube along the body (the spine 50-60 cm, the aorta over its arch) outruns every window. AutoZoom widens the
        window on all three axes, and in its 9-12 mm voxels a 2-3 cm tube is a few voxels wide and lost; the window
        that keeps it holds a third of it. Stretched along the tube only, the window keeps the cross-section the model
        was trained on and holds three times its length, which the model answers well although it never saw a
        stretched crop (model card, session 30). The redraw has the prompts alone: the first answer as a mask prompt
        pins it to the shorter piece. Organs that leave a window (lungs, liver) are as wide as they are long in it
        and are widened as before."""
        unchanged = crop, crop_logits, logits, score
        mask = crop_logits > 0
        axes = self._exit_axes(crop, mask)
        if len(axes) != 1 or self._zoom(crop) * TUBE_STRETCH > self.max_zoom + 1e-6:
            return unchanged
        axis = axes.pop()
        coords = np.argwhere(mask)
        extent = (np.ptp(coords, 0) + 1) * self._step_mm(crop)
        if extent[axis] < TUBE_ELONGATION * np.delete(extent, axis).max():
            return unchanged
        prompt_lo, prompt_hi = self._prompt_extent(target)
        lo = min(crop.to_image(coords.min(0))[axis], prompt_lo[axis])
        hi = max(crop.to_image(coords.max(0))[axis], prompt_hi[axis])
        centre, step_mm = crop.centre, self._step_mm(crop)
        centre[axis], step_mm[axis] = (lo + hi) / 2, step_mm[axis] * TUBE_STRETCH
        long = CropGeometry.centred(centre, self._image.spacing, step_mm, crop.size)
        inside = self._resampled(crop_logits, crop, long)
        long_logits, long_score = self._decode(target, long, None)
        if _kept(long_logits, inside) < KEEP_WHEN_WIDER:
            log.debug("target %d: the window stretched along axis %d loses it", target.label, axis)
            return unchanged
        log.debug("target %d runs out along axis %d only: window stretched %gx along it", target.label, axis, TUBE_STRETCH)
        return long, self._upsampled(long_logits), long_logits, long_score

    def _refitted(self, target: Target, crop: CropGeometry, crop_logits: np.ndarray, min_zoom: float) -> CropGeometry:
        """A window fitted to a prediction (and the prompts), at ``min_zoom`` or wider."""
        coords = np.argwhere(crop_logits > 0)
        prompt_lo, prompt_hi = self._prompt_extent(target)
        lo = np.minimum(crop.to_image(coords.min(0)), prompt_lo)
        hi = np.maximum(crop.to_image(coords.max(0)), prompt_hi)
        return self._fitted_crop(lo, hi, min_zoom=min_zoom)

    def _resampled(self, crop_logits: np.ndarray, crop: CropGeometry, other: CropGeometry) -> np.ndarray:
        """A prediction in ``crop``, resampled straight into ``other``'s low-res grid (bool)."""
        return self._low_res(other).relative_to(crop).sample(crop_logits, cval=-MASK_PROMPT_LOGIT) > 0

    def _closer(self, target: Target, crop: CropGeometry, crop_logits: np.ndarray, logits: torch.Tensor,
                score: float) -> tuple[CropGeometry, np.ndarray, torch.Tensor, float]:
        """The first answer at the model's scale, redrawn in a window fitted to it, if the two agree.

        A target too large for the fine crop but well inside the model's (a 5-7 cm bladder, kidney or
        lesion) is otherwise drawn on the 6 mm mask grid of a 19 cm window. The closer window is
        prompted with that answer and kept only if each keeps at least ``KEEP_WHEN_WIDER`` of the
        other: closer in, a click on a lesion beside a hot organ can be answered with the organ."""
        unchanged = crop, crop_logits, logits, score
        if not (crop_logits > 0).any() or self._touches_border(crop, crop_logits > 0):
            return unchanged
        near = self._refitted(target, crop, crop_logits, min_zoom=self.model.config.min_zoom)
        if self._zoom(near) > CLOSER_AT_MOST * self._zoom(crop):
            return unchanged
        inside = self._resampled(crop_logits, crop, near)
        near_logits, near_score = self._decode(target, near, self._as_mask_prompt(inside))
        near_crop_logits = self._upsampled(near_logits)
        if not (near_crop_logits > 0).any() or self._touches_border(near, near_crop_logits > 0):
            return unchanged
        near_in_crop = crop.relative_to(near).sample(near_crop_logits, cval=-MASK_PROMPT_LOGIT) > 0
        kept_back = (near_in_crop & (crop_logits > 0)).sum() / max(near_in_crop.sum(), 1)
        if _kept(near_logits, inside) < KEEP_WHEN_WIDER or kept_back < KEEP_WHEN_WIDER:
            log.debug("target %d: the closer window (zoom %.2f) disagrees; kept at %.2f", target.label,
                      self._zoom(near), self._zoom(crop))
            return unchanged
        log.debug("target %d fits the model's window: redrawn closer, zoom %.2f", target.label, self._zoom(near))
        return near, near_crop_logits, near_logits, near_score

    def _sharper(self, target: Target, crop: CropGeometry, crop_logits: np.ndarray, logits: torch.Tensor,
                 score: float) -> tuple[CropGeometry, np.ndarray, torch.Tensor, float]:
        """A target's first answer held in the fine crop, or, if that was a fragment, its answer in the window
        ``ZOOM_STEP`` wider.

        In the finest crop a click on a 1-3 cm lesion is sometimes answered with a few voxels of it, and the IoU head
        does not flag them (benchmarks/first_click.py); the wider window, seeing more of the lesion's surroundings,
        often gets it whole. A fragment's border lies inside the lesion, where the uptake falls little across it. But
        uptake that peaks inside a lesion (a hot core, a lesion's falloff and the scanner's blur) also gives a smaller
        answer inside a fair one the sharper edge, so the wider answer is taken only when it is larger as well."""
        unchanged = crop, crop_logits, logits, score
        wider = self._fitted_crop(*self._prompt_extent(target), min_zoom=self._zoom(crop) * ZOOM_STEP)
        if self._zoom(wider) >= 1:
            return unchanged
        wider_logits, wider_score = self._decode(target, wider, None)
        wider_crop_logits = self._upsampled(wider_logits)
        if self._touches_border(wider, wider_crop_logits > 0):
            return unchanged
        (drop, voxels), (wider_drop, wider_voxels) = self._edge(crop, crop_logits), self._edge(wider, wider_crop_logits)
        if wider_voxels <= voxels or wider_drop <= drop:
            return unchanged
        log.debug("target %d: a fragment in the fine crop; the window at zoom %.2f holds more, with a sharper edge",
                  target.label, self._zoom(wider))
        return wider, wider_crop_logits, wider_logits, wider_score

    def _edge(self, crop: CropGeometry, crop_logits: np.ndarray) -> tuple[float, int]:
        """A prediction's mean SUV on its inner border minus that on its outer border, and its voxel count, both on
        the image's own voxels."""
        footprint, values = crop.paste(crop_logits, self._image.shape)
        mask = np.pad(values > 0, 1)  # a border on the footprint's edge still has an outside
        suv = np.pad(np.asarray(self._image.array[footprint], np.float32), 1, mode="edge")
        inner = mask & ~ndimage.binary_erosion(mask)
        outer = ndimage.binary_dilation(mask) & ~mask
        return (float(suv[inner].mean() - suv[outer].mean()) if inner.any() else -np.inf), int(mask.sum())

    def _write(self, target: Target, before: Target, crop: CropGeometry, crop_logits: np.ndarray, logits: torch.Tensor,
               score: float) -> Interaction:
        footprint, values = crop.paste(crop_logits, self._image.shape)
        # the window rewrites the target inside it and nowhere else: that is all undo keeps and the caller redraws
        self._history.append(_Step(before, footprint, self._labels[footprint].copy()))
        view = self._labels[footprint]
        view[view == target.label] = 0
        view[values > 0] = target.label
        target.crop, target.logits, target.score = crop, logits, score
        region = _union(footprint, target.bbox)  # the target's new extent lies within its old one and the window
        target.bbox = _bbox(self._labels[region] == target.label, region)
        return Interaction(target.label, score, self._orient.region_back(footprint), crop)


def _holds(crop: CropGeometry, points, margin: float = KEEP_MARGIN) -> bool:
    """Whether every point (image ijk) lies inside the crop, ``margin`` (a fraction of its size) from its edge."""
    margin *= crop.size
    return all(np.all((c := crop.to_crop(p)) >= margin) and np.all(c <= crop.size - 1 - margin) for p in points)


def _kept(logits: torch.Tensor, inside: np.ndarray) -> float:
    """The fraction of ``inside`` (a low-res bool grid) that low-res ``logits`` still call foreground; none when
    ``inside`` is empty: a window so coarse that the mask it was given vanished from its grid has lost it."""
    if not inside.any():
        return 0.0
    return float(((logits[0, 0].float().cpu().numpy() > 0) & inside).sum() / inside.sum())


def _union(a: Region, b: Region | None) -> Region:
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def _bbox(mask: np.ndarray, region: Region) -> Region | None:
    coords = np.argwhere(mask)
    if not len(coords):
        return None
    start = np.array([s.start for s in region])
    lo, hi = coords.min(0) + start, coords.max(0) + start + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def segment_with_model(session: Session, prompts: Prompts) -> np.ndarray:
    """One new target from a full set of prompts (box first, then the clicks in order); its bool mask."""
    session.new_target()
    if prompts.box is not None:
        session.add_box(*prompts.box)
    for point in prompts.positive:
        session.add_point(point, positive=True)
    for point in prompts.negative:
        session.add_point(point, positive=False)
    return session.mask
