"""Classical PET segmenters, seeded by the same prompts as the model.

What clinicians use today and the yardstick the model must beat:

* ``suv2.5``: SUV >= 2.5, the connected component at the seed;
* ``pct41`` / ``pct50``: 41 % (EANM) or 50 % of the lesion's SUVmax, connected, in a region around the seed;
* ``region-growing``: ITK's confidence-connected growing from the seed (mean +- k sd of the region, iterated).

The seed is the hottest voxel near the click (within ``SNAP_MM``), since a
reader clicks on a lesion, not on its brightest voxel. Negative points remove
the component they fall in; a box restricts the region and seeds from its hottest voxel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage
from seganypet.prompts import Prompts

SNAP_MM = 6.0
REGION_MM = 60.0  # half-size of the search region around a click (covers lesions up to ~10 cm)
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


def region_growing(suv: np.ndarray, seed, multiplier: float = 2.5, iterations: int = 4) -> np.ndarray:
    """Confidence-connected region growing (ITK): stop where voxels leave mean +- ``multiplier`` sd of the region."""
    itk = sitk.GetImageFromArray(suv.astype(np.float32).T.copy())  # sitk index order is (i, j, k) for (x, y, z)
    grown = sitk.ConfidenceConnected(itk, seedList=[tuple(int(v) for v in seed)], numberOfIterations=iterations,
                                     multiplier=multiplier, initialNeighborhoodRadius=1, replaceValue=1)
    return sitk.GetArrayFromImage(grown).T.astype(bool)


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
    if prompts.box is not None:
        lo, hi = (np.asarray(c) for c in prompts.box)
        regions = [tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))]
        seeds = [np.unravel_index(int(image.array[regions[0]].argmax()), image.array[regions[0]].shape) + lo]
        regions = regions * len(seeds)
    else:
        seeds = [np.asarray(snap_to_peak(image, p)) for p in prompts.positive]
        regions = [_region(image, s, REGION_MM) for s in seeds]
    for seed, region in zip(seeds, regions):
        offset = np.array([r.start for r in region])
        mask[region] |= segment(image.array[region], tuple(np.asarray(seed) - offset))
    for point in prompts.negative:
        if mask[tuple(point)]:
            mask &= ~_component_at(mask, point)
    return mask
