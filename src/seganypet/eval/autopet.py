"""The autoPET IV interactive protocol: 11 steps from 0 to 10 lesion + 10 background clicks per case.

Lesion clicks at the centre (distance-transform maximum) of each lesion, largest first; with fewer
than 10 lesions, further clicks on lesion boundary voxels. Background clicks at the centres of
physiological hot spots: connected regions above the 99.75th percentile of non-lesion uptake in
the body, largest first. Each lesion click starts a target; the prediction is the union of all
targets, minus any predicted component a background click falls in (the same rule for every
method, since a background click says "this hot spot is not a lesion"). Scored per step: Dice of
all lesions, false-positive and false-negative volume (mL), and their areas under the curve.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seganypet.clicks import centre_of
from seganypet.eval.metrics import CONNECTIVITY, area_under_curve, dice, false_volumes
from seganypet.eval.segmenters import Segmenter
from seganypet.io.image import PetImage

STEPS = 11
BODY_SUV = 0.3  # voxels above this are "in the body" for the background percentile


def lesion_clicks(lesions: np.ndarray, spacing, rng: np.random.Generator, count: int = 10) -> list[tuple[int, int, int]]:
    ids = [int(i) for i in np.unique(lesions[lesions > 0])]
    ids.sort(key=lambda i: -int((lesions == i).sum()))
    boxes = ndimage.find_objects(lesions)
    clicks = []
    for i in ids[:count]:
        box = boxes[i - 1]
        local = centre_of(lesions[box] == i, spacing)
        clicks.append(tuple(int(a + s.start) for a, s in zip(local, box)))
    n = 0
    while len(clicks) < count and ids:  # boundary clicks, cycling over the lesions
        i = ids[n % len(ids)]
        mask = lesions == i
        boundary = np.argwhere(mask & ~ndimage.binary_erosion(mask))
        clicks.append(tuple(int(v) for v in boundary[rng.integers(len(boundary))]))
        n += 1
    return clicks


def background_clicks(image: PetImage, lesions: np.ndarray, count: int = 10) -> list[tuple[int, int, int]]:
    suv = image.array
    normal = (suv > BODY_SUV) & (lesions == 0)
    if not normal.any():
        return []
    hot = (suv > np.percentile(suv[normal], 99.75)) & (lesions == 0)
    labels, n = ndimage.label(hot, structure=CONNECTIVITY)
    if not n:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    clicks = []
    for index in np.argsort(-sizes)[:count]:
        box = boxes[index]
        local = centre_of(labels[box] == index + 1, image.spacing)
        clicks.append(tuple(int(a + s.start) for a, s in zip(local, box)))
    return clicks


def evaluate_autopet_case(segmenter: Segmenter, image: PetImage, lesions: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """One row per step (0..10 clicks of each kind), plus the AUCs in every row of the case."""
    segmenter.set_image(image)
    positives = lesion_clicks(lesions, image.spacing, rng)
    negatives = background_clicks(image, lesions)
    truth = lesions > 0
    union = np.zeros(image.shape, bool)
    rows = []
    for step in range(STEPS):
        if step:
            if step <= len(positives):
                segmenter.new_target()
                union |= segmenter.add_point(positives[step - 1], True)
        prediction = union.copy()
        if step and negatives[:step]:
            labels, _ = ndimage.label(prediction, structure=CONNECTIVITY)
            hit = {int(labels[c]) for c in negatives[:step] if labels[c]}
            if hit:
                prediction[np.isin(labels, list(hit))] = False
        fpv, fnv = false_volumes(prediction, lesions, image.voxel_volume_ml)
        rows.append({"step": step, "dice": dice(prediction, truth), "fpv_ml": fpv, "fnv_ml": fnv})
    aucs = {f"auc_{k}": area_under_curve([r[k] for r in rows]) for k in ("dice", "fpv_ml", "fnv_ml")}
    return [{**r, **aucs} for r in rows]
