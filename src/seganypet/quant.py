"""PET quantities of a mask: SUVmax, SUVmean, SUVpeak, MTV, TLG, per mask and per connected lesion.

SUVpeak follows PERCIST: the highest mean SUV inside a 1 cm^3 sphere (radius
6.2 mm) whose centre lies in the lesion. The sphere is built in millimetres
with each voxel weighted by the fraction of it inside the sphere (sampled on a
7^3 sub-grid), so the value does not depend on voxel size or anisotropy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from seganypet.io.image import PetImage
from seganypet.io.suv import lean_body_mass_kg

PEAK_RADIUS_MM = (3.0 / (4.0 * np.pi) * 1000.0) ** (1.0 / 3.0)  # 6.20 mm: a 1 mL sphere


@dataclass
class Quantities:
    """SUV in g/mL (SUVbw), volumes in mL, coordinates as voxel (i, j, k) and mm in the image's space."""

    voxels: int
    mtv_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tlg: float  # SUVmean x MTV, g
    suv_max_voxel: tuple[int, int, int]
    suv_max_mm: tuple[float, float, float]
    sul_max: float | None = None
    sul_mean: float | None = None
    sul_peak: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=16)
def peak_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM, subsamples: int = 7) -> np.ndarray:
    """Normalised weights of a sphere of ``radius_mm`` on a grid of ``spacing`` (partial voxels weighted)."""
    half = [int(np.ceil(radius_mm / s - 0.5)) + 1 for s in spacing]
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    axes = []
    for h, s in zip(half, spacing):
        centres = np.arange(-h, h + 1) * s
        axes.append((centres[:, None] + offsets[None, :] * s).ravel())  # sub-sample positions
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    inside = (X**2 + Y**2 + Z**2 <= radius_mm**2).astype(np.float64)
    shape = [2 * h + 1 for h in half]
    weights = inside.reshape(shape[0], subsamples, shape[1], subsamples, shape[2], subsamples).mean(axis=(1, 3, 5))
    return weights / weights.sum()


def _bbox(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + np.asarray(margin) + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def suv_peak(image: PetImage, mask: np.ndarray) -> float:
    """PERCIST SUVpeak of ``mask`` (bool, on the image grid)."""
    kernel = peak_kernel(tuple(float(s) for s in np.round(image.spacing, 4)))
    box = _bbox(mask, tuple(k // 2 for k in kernel.shape))
    local_mean = ndimage.correlate(image.array[box].astype(np.float64), kernel, mode="nearest")
    return float(local_mean[mask[box]].max())


def _sul_factor(image: PetImage) -> float | None:
    m = image.meta
    if not (m.patient_weight_kg and m.patient_height_m and (m.patient_sex or "").upper() in ("M", "F")):
        return None
    return lean_body_mass_kg(m.patient_weight_kg, m.patient_height_m * 100.0, m.patient_sex.upper()) / m.patient_weight_kg


def quantify(image: PetImage, mask: np.ndarray) -> Quantities:
    """Quantities of a non-empty bool mask on the image grid."""
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    values = image.array[mask]
    hottest = np.argwhere(mask)[int(values.argmax())]
    mtv = float(mask.sum()) * image.voxel_volume_ml
    mean, peak = float(values.mean()), suv_peak(image, mask)
    sul = _sul_factor(image)
    return Quantities(
        voxels=int(mask.sum()),
        mtv_ml=mtv,
        suv_max=float(values.max()),
        suv_mean=mean,
        suv_peak=peak,
        tlg=mean * mtv,
        suv_max_voxel=tuple(int(v) for v in hottest),
        suv_max_mm=tuple(float(v) for v in image.voxel_to_world(hottest)[0]),
        sul_max=float(values.max()) * sul if sul else None,
        sul_mean=mean * sul if sul else None,
        sul_peak=peak * sul if sul else None,
    )


def lesion_table(image: PetImage, mask: np.ndarray) -> list[Quantities]:
    """Quantities per connected component (26-connected), largest MTV first.

    Each component is measured in its own bounding box (grown by the SUVpeak
    sphere), so a whole-body mask with many lesions costs little more than one.
    """
    components, _ = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3, 3), bool))
    margin = tuple(k // 2 + 1 for k in peak_kernel(tuple(float(s) for s in np.round(image.spacing, 4))).shape)
    rows = []
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        grown = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, image.shape))
        offset = np.array([b.start for b in grown])
        affine = image.affine.copy()
        affine[:3, 3] = image.voxel_to_world(offset)[0]
        crop = PetImage(image.array[grown], affine, image.space, image.units, image.meta, image.source)
        q = quantify(crop, components[grown] == label)
        q.suv_max_voxel = tuple(int(v) for v in np.asarray(q.suv_max_voxel) + offset)
        rows.append(q)
    return sorted(rows, key=lambda q: -q.mtv_ml)
