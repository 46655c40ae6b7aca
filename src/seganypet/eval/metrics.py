"""Overlap, surface and PET-volume metrics, all in physical units where units matter.

``spacing`` is the voxel size in mm along the array axes; masks are bool arrays of one shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seganypet.io.image import PetImage

CONNECTIVITY = np.ones((3, 3, 3), bool)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def union_box(a: np.ndarray, b: np.ndarray, margin=1) -> tuple[slice, ...]:
    """The bounding box of both masks grown by ``margin`` voxels (per axis or one number), clipped to the array."""
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(0) - margin, 0)
    hi = np.minimum(coords.max(0) + margin + 1, a.shape)
    return tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def nsd(prediction: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice: the fraction of both surfaces lying within ``tolerance_mm`` of the other
    (surface voxels: the mask minus its 6-connected erosion; distances between voxel centres in mm)."""
    if not prediction.any() and not truth.any():
        return 1.0
    if not prediction.any() or not truth.any():
        return 0.0
    spacing = np.asarray(spacing, float)
    box = union_box(prediction, truth, np.ceil(tolerance_mm / spacing).astype(int) + 2)
    a, b = _surface(prediction[box]), _surface(truth[box])
    to_b = ndimage.distance_transform_edt(~b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~a, sampling=spacing)
    return float(((to_b[a] <= tolerance_mm).sum() + (to_a[b] <= tolerance_mm).sum()) / (a.sum() + b.sum()))


def equivalent_diameter_mm(mask: np.ndarray, spacing) -> float:
    """Diameter of the sphere with the mask's volume."""
    volume = mask.sum() * float(np.prod(spacing))
    return float((6 * volume / np.pi) ** (1 / 3))


def false_volumes(prediction: np.ndarray, lesions: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """autoPET false-positive volume (mL of predicted components touching no lesion) and false-negative volume
    (mL of lesions touched by no prediction). ``lesions``: integer instance map (0 = none) or bool mask."""
    truth = lesions > 0
    pred_labels, n_pred = ndimage.label(prediction, structure=CONNECTIVITY)
    fp = sum(int((pred_labels == i).sum()) for i in range(1, n_pred + 1) if not truth[pred_labels == i].any())
    instances = lesions if lesions.dtype != bool else ndimage.label(truth, structure=CONNECTIVITY)[0]
    fn = sum(int((instances == i).sum()) for i in np.unique(instances[instances > 0]) if not prediction[instances == i].any())
    return fp * voxel_ml, fn * voxel_ml


def area_under_curve(values) -> float:
    """Trapezoidal area under a curve over equally spaced steps, normalised by the number of intervals."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values[0]) if len(values) else float("nan")
    return float(np.trapezoid(values) / (len(values) - 1))


def _quantities(image: PetImage, mask: np.ndarray) -> tuple[float, float, float, float]:
    values = image.array[mask]
    mtv = len(values) * image.voxel_volume_ml
    return float(values.max()), float(values.mean()), mtv, float(values.mean()) * mtv


def quantity_errors(image: PetImage, prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Relative errors (prediction / truth - 1) of SUVmax, SUVmean, MTV and TLG (as `seganypet.quant` defines
    them); an empty prediction counts as -1 (everything missed)."""
    if not prediction.any():
        return dict.fromkeys(("suvmax", "suvmean", "mtv", "tlg"), -1.0)
    return {key: float(a / b - 1) if b else float("nan")
            for key, a, b in zip(("suvmax", "suvmean", "mtv", "tlg"), _quantities(image, prediction), _quantities(image, truth))}
