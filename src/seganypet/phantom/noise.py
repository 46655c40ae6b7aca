"""Label noise as it occurs in large PET datasets: eroded, dilated, shifted, partly missing or merged structures.

The clean labels are never touched; this returns a corrupted copy, so a
training run can use the noisy ones and the evaluation the clean ones (CPCL).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seganypet.phantom.generate import LESION_LABEL

NOISE_KINDS = ("erode", "dilate", "shift", "partial", "merge")


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def corrupt_labels(labels: np.ndarray, instances: np.ndarray, rng: np.random.Generator, p_structure: float = 0.6) -> tuple[np.ndarray, list[tuple[str, int, str]]]:
    """A noisy copy of ``labels`` and the list of (structure kind, id, noise kind) applied.

    Each organ class and each lesion instance is corrupted with probability
    ``p_structure`` (at least one structure always is).
    """
    noisy = labels.copy()
    structures = [("organ", int(i)) for i in np.unique(labels) if i not in (0, LESION_LABEL)]
    structures += [("lesion", int(i)) for i in np.unique(instances) if i]
    chosen = [s for s in structures if rng.random() < p_structure] or ([structures[rng.integers(len(structures))]] if structures else [])
    applied = []
    for kind, ident in chosen:
        mask = (labels == ident) if kind == "organ" else (instances == ident)
        if not mask.any():
            continue
        value = ident if kind == "organ" else LESION_LABEL
        box = _box(mask, 6)
        m, out = mask[box], noisy[box]
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        neighbours = out[ring & (out != value) & (out != 0)]
        host = int(np.bincount(neighbours).argmax()) if neighbours.size else 0  # the structure it touches most
        # annotators draw lesions too large as often as too small: a lesion's outline moves into and out of the
        # organ around it (else inside an organ the noise could only shrink it); an organ's into background
        free, lost = ((out == 0), 0) if kind == "organ" else ((out != value), host)
        noise = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
        r = int(rng.integers(1, 4))
        if noise == "erode":
            shrunk = ndimage.binary_erosion(m, iterations=r)
            out[m & ~shrunk & (out == value)] = lost
        elif noise == "dilate":
            grown = ndimage.binary_dilation(m, iterations=r)
            out[grown & ~m & free] = value
        elif noise == "shift":
            moved = np.roll(m, tuple(int(v) for v in rng.integers(-3, 4, 3)), axis=(0, 1, 2))
            out[m & ~moved & (out == value)] = lost
            out[moved & ~m & free] = value
        elif noise == "partial":
            idx = np.argwhere(m)
            normal = rng.normal(size=3)
            side = (idx - idx.mean(0)) @ normal > rng.uniform(-0.3, 0.5) * np.abs((idx - idx.mean(0)) @ normal).max()
            cut = tuple(idx[side].T)
            out[cut] = np.where(out[cut] == value, lost, out[cut])
        else:  # merge: a lesion is swallowed by its host organ, an organ by the structure it touches most
            out[m & (out == value)] = host
        applied.append((kind, ident, noise))
    return noisy, applied
