"""Classical PET segmenters, seeded by the same prompts as the model.

What clinicians use today and the yardstick the model must beat:

* ``suv2.5``: SUV >= 2.5, the connected component at the seed;
* ``pct41`` / ``pct50``: 41 % (EANM) or 50 % of the lesion's SUVmax, connected, in a region around the seed;
* ``region-growing``: growing from the seed as a threshold falls, stopped at the steepest boundary (the edge).

The seed is the hottest voxel near the click (within ``SNAP_MM``), since a
reader clicks on a lesion, not on its brightest voxel. Negative points remove
the component they fall in (or, when it holds a positive click, the part of it nearer to the negative
click); a box restricts the region and seeds from its hottest voxel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage
from seganypet.prompts import Prompts

SNAP_MM = 6.0
REGION_MM = 60.0  # half-size of the search region around a click (covers lesions up to ~10 cm)
BOX_MARGIN_MM = 15.0
CONNECTIVITY = np.ones((3, 3, 3), bool)


def _region(image: PetImage, centre, half_mm: float) -> tuple[slice, slice, slice]:
    half = np.ceil(half_mm / image.spacing).astype(int)
    lo = np.maximum(np.asarray(centre) - half, 0)
    hi = np.minimum(np.asarray(centre) + half + 1, image.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def snap_to_peak(image: PetImage, point, radius_mm: float = SNAP_MM) -> tuple[int, int, int]:
    """The hottest voxel within ``radius_mm`` of ``point``."""
    box = _region(image, point, radius_mm)
    offset = np.array([b.start for b in box])
    grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
    within = np.linalg.norm((grid - np.asarray(point)) * image.spacing, axis=-1) <= radius_mm
    values = np.where(within, image.array[box], -np.inf)
    return tuple(int(v) for v in np.unravel_index(int(values.argmax()), values.shape) + offset)  # type: ignore[return-value]


def _component_at(mask: np.ndarray, seed) -> np.ndarray:
    if not mask[tuple(seed)]:
        return np.zeros_like(mask)
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY)
    return labels == labels[tuple(seed)]


def fixed_threshold(suv: np.ndarray, seed, threshold: float = 2.5) -> np.ndarray:
    return _component_at(suv >= threshold, seed)


def percent_of_max(suv: np.ndarray, seed, fraction: float = 0.41) -> np.ndarray:
    """Threshold at ``fraction`` of the SUVmax of the seed's hot spot, connected to the seed."""
    peak = suv[tuple(seed)]
    return _component_at(suv >= fraction * peak, seed)


def region_growing(suv: np.ndarray, seed, steps: int = 24) -> np.ndarray:
    """Seeded region growing: lower the threshold from the seed's SUV, keep the region whose boundary is steepest.

    The region connected to the seed grows as the threshold falls; the stopping
    rule picks the level whose boundary has the highest mean SUV gradient (the
    lesion edge), and growth stops for good once the region reaches the border
    of the search region (it has leaked into the background).
    """
    gradient = ndimage.gaussian_gradient_magnitude(suv.astype(np.float32), sigma=1.0)
    peak = float(suv[tuple(seed)])
    floor = max(float(np.percentile(suv, 10)), 0.05 * peak)
    best, best_score = np.zeros(suv.shape, bool), -np.inf
    for threshold in np.linspace(0.95 * peak, floor, steps):
        region = _component_at(suv >= threshold, seed)
        if _reaches_border(region):
            break
        boundary = region & ~ndimage.binary_erosion(region)
        score = float(gradient[boundary].mean())
        if score > best_score:
            best, best_score = region, score
    return best


def _reaches_border(region: np.ndarray) -> bool:
    """Whether a region touches a face of its search region, along the axes at least 3 voxels long: a single slice
    (or two) has no inside along its normal to leak out of."""
    return any(np.take(region, [0, -1], axis=axis).any() for axis in range(region.ndim) if region.shape[axis] >= 3)


METHODS: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    "suv2.5": fixed_threshold,
    "pct41": lambda suv, seed: percent_of_max(suv, seed, 0.41),
    "pct50": lambda suv, seed: percent_of_max(suv, seed, 0.50),
    "region-growing": region_growing,
}


def segment_classical(image: PetImage, prompts: Prompts, method: str = "pct41") -> np.ndarray:
    """Bool mask on the image grid from a classical method seeded by ``prompts``."""
    if method not in METHODS:
        raise SegAnyPetError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    segment = METHODS[method]
    mask = np.zeros(image.shape, bool)
    inside_box = np.ones(image.shape, bool)
    if prompts.box is not None:
        lo, hi = (np.asarray(c) for c in prompts.box)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
        inside_box[:] = False
        inside_box[box] = True
        # grow a little past the box so that an object filling it is not taken for a leak
        margin = np.ceil(BOX_MARGIN_MM / image.spacing).astype(int)
        region = tuple(slice(int(max(a - m, 0)), int(min(b + m + 1, n))) for a, b, m, n in zip(lo, hi, margin, image.shape))
        seeds = [np.asarray(snap_to_peak(image, p)) for p in prompts.positive] or [
            np.unravel_index(int(image.array[box].argmax()), image.array[box].shape) + lo]
        regions = [region] * len(seeds)
    else:
        seeds = [np.asarray(snap_to_peak(image, p)) for p in prompts.positive]
        regions = [_region(image, s, REGION_MM) for s in seeds]
    for seed, region in zip(seeds, regions):
        offset = np.array([r.start for r in region])
        mask[region] |= segment(image.array[region], tuple(np.asarray(seed) - offset))
    mask &= inside_box
    return _apply_negatives(mask, prompts, image.spacing)


def _apply_negatives(mask: np.ndarray, prompts: Prompts, spacing) -> np.ndarray:
    """A negative click removes the component it falls in; if that component also holds a positive click, it is
    split instead: its voxels nearer (in mm) to a negative click than to every positive one are removed."""
    for point in prompts.negative:
        if not mask[tuple(point)]:
            continue
        component = _component_at(mask, point)
        positives = [p for p in prompts.positive if component[tuple(p)]]
        if not positives:
            mask &= ~component
            continue
        negatives = [q for q in prompts.negative if component[tuple(q)]]
        voxels = np.argwhere(component)
        to_pos = cKDTree(np.asarray(positives) * spacing).query(voxels * spacing)[0]
        to_neg = cKDTree(np.asarray(negatives) * spacing).query(voxels * spacing)[0]
        drop = voxels[to_neg <= to_pos]
        mask[tuple(drop.T)] = False
    return mask
