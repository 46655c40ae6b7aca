"""Simulated prompts, one module for training and evaluation, deterministic given the ``rng``.

Protocols (documented in docs/evaluation.md):

* ``random``: SegAnyPET/SAM-Med3D. The first click at a random voxel of the target; each next click at a
  random voxel of the current error, positive if the voxel was missed, negative if wrongly included.
* ``largest_error``: RITM style. The first click at the target's centre (distance-transform maximum of its
  largest part, the middle one of equally deep voxels); each next click at the same centre of the largest error
  component. Neither depends on the order the array stores its voxels in.
* boxes: the target's bounding box, each face moved by up to ``jitter_mm`` outwards or inwards.

Voxel positions are ``(i, j, k)`` of the array given; distances use ``spacing`` (mm).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

Strategy = Literal["random", "largest_error"]
Click = tuple[tuple[int, int, int], bool]  # (voxel, positive)
TIE_MM = 1e-3  # distance-transform depths closer than this are equally deep


def _as_tuple(v) -> tuple[int, int, int]:
    return tuple(int(x) for x in v)  # type: ignore[return-value]


def centre_of(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[int, int, int]:
    """The voxel deepest inside the largest component of ``mask`` (distance-transform maximum); of several equally
    deep (a tube, a slab, any voxelised shape has them), the one nearest their middle.

    Taking the first in index order instead put a spine's click at whichever end the file stores first, so the
    same scan in another voxel order was clicked elsewhere."""
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (int(sizes.argmax()) + 1)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    padded = np.pad(mask[box], 1)
    depth = ndimage.distance_transform_edt(padded, sampling=spacing)
    deepest = np.argwhere(depth >= depth.max() - TIE_MM)
    offsets = (deepest - deepest.mean(0)) * np.asarray(spacing, float)
    local = deepest[int(np.argmin((offsets**2).sum(1)))]
    return _as_tuple(local - 1 + [s.start for s in box])


def first_click(target: np.ndarray, rng: np.random.Generator, strategy: Strategy = "random", spacing=(1.0, 1.0, 1.0)) -> Click:
    """A positive click on a non-empty ``target`` (bool array)."""
    if strategy == "largest_error":
        return centre_of(target, spacing), True
    inside = np.flatnonzero(target)
    return _as_tuple(np.unravel_index(int(inside[rng.integers(len(inside))]), target.shape)), True


def next_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator, strategy: Strategy = "random",
               spacing=(1.0, 1.0, 1.0)) -> Click | None:
    """A click that corrects ``prediction`` towards ``target``; None when they already agree."""
    error = prediction != target
    if not error.any():
        return None
    if strategy == "random":
        where = np.flatnonzero(error)
        voxel = np.unravel_index(int(where[rng.integers(len(where))]), error.shape)
        return _as_tuple(voxel), bool(target[voxel])
    missed, extra = target & ~prediction, prediction & ~target
    best, best_size, positive = None, 0, True
    for region, sign in ((missed, True), (extra, False)):
        labels, n = ndimage.label(region)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            if sizes.max() > best_size:
                best, best_size, positive = labels == (int(sizes.argmax()) + 1), int(sizes.max()), sign
    return centre_of(best, spacing), positive


def jittered_box(target: np.ndarray, rng: np.random.Generator, jitter_mm: float = 5.0,
                 spacing=(1.0, 1.0, 1.0)) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The bounding box of ``target`` (inclusive corners), each face shifted by up to ``jitter_mm``, kept in the array."""
    coords = np.argwhere(target)
    jitter = np.round(rng.uniform(-1, 1, (2, 3)) * jitter_mm / np.asarray(spacing, float)).astype(int)
    lo = np.clip(coords.min(0) - np.abs(jitter[0]) * rng.choice([-1, 1], 3), 0, np.asarray(target.shape) - 1)
    hi = np.clip(coords.max(0) + np.abs(jitter[1]) * rng.choice([-1, 1], 3), 0, np.asarray(target.shape) - 1)
    return _as_tuple(np.minimum(lo, hi)), _as_tuple(np.maximum(lo, hi))
