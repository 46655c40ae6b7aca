"""Synthetic whole-body FDG PET with ground truth, deterministic by seed.

Built as a PET physicist would look at it, not as blobs in a box:

* anatomy scaled and bent per seed: body outline (legs, trunk, neck, head, arms
  down or up), organs that touch their neighbours (liver under the right lung
  and on the right kidney, spleen on the left kidney and stomach);
* FDG uptake drawn per case from published ranges, including the physiological
  uptake that fools thresholds (brain, variable myocardium, renal pelvis,
  ureters, bladder, stomach, bowel, salivary glands, sometimes brown fat or
  hot muscle) and lesions beside them;
* lesions 4-60 mm, non-spherical, heterogeneous, sometimes necrotic, in liver,
  lung, lymph nodes along the vessels, and bone;
* scanner physics: a real matrix and voxel size, Gaussian PSF (FWHM 4-8 mm) and
  count-dependent, spatially correlated noise (liver CoV 8-16 %).

Labels are the true boundaries on the scanner grid; the image is what the
scanner would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from scipy import ndimage

from seganypet.errors import SegAnyPetError
from seganypet.io.dicom_write import AcquisitionInfo
from seganypet.io.image import PetImage, PetMetadata
from seganypet.phantom.shapes import Blob, Grid, Tube, paint

LABELS: dict[str, int] = {
    "background": 0,
    "brain": 1,
    "myocardium": 2,
    "liver": 3,
    "spleen": 4,
    "kidney_left": 5,
    "kidney_right": 6,
    "bladder": 7,
    "lung_left": 8,
    "lung_right": 9,
    "aorta": 10,
    "spine": 11,
    "lesion": 12,
}
LESION_LABEL = LABELS["lesion"]

# tissue -> label; tissues without an organ label (fat, muscle, bowel, ...) still carry uptake
TISSUES: dict[str, int] = {
    "air": 0, "fat": 0, "muscle": 0, "brain_grey": 1, "brain_white": 1, "myocardium": 2, "blood": 0,
    "aorta": 10, "liver": 3, "spleen": 4, "kidney_left": 5, "kidney_right": 6, "renal_pelvis_left": 5,
    "renal_pelvis_right": 6, "ureter": 0, "bladder": 7, "lung_left": 8, "lung_right": 9, "spine": 11,
    "pelvic_marrow": 0, "stomach": 0, "bowel": 0, "salivary": 0, "brown_fat": 0,
}
T = {name: code for code, name in enumerate(TISSUES)}
TISSUE_TO_LABEL = np.array(list(TISSUES.values()), dtype=np.uint8)

# (matrix, in-plane mm, slice mm): matrices and voxel sizes of common clinical scanners, one drawn per seed
DRAWN_SCANNERS: dict[str, tuple[int, float, float]] = {
    "ge_discovery_600": (128, 5.47, 3.27),
    "philips_gemini": (144, 4.0, 4.0),
    "siemens_biograph_mct": (168, 4.07, 3.0),
    "ge_discovery_710": (192, 3.65, 3.27),
    "siemens_biograph_vision": (220, 3.3, 3.0),
}
# and a digital scanner's fine reconstruction (Biograph Vision, uMI, Discovery MI read at about 2 mm): chosen by name
# only, never drawn, so every seed keeps the case it always had
SCANNERS = {**DRAWN_SCANNERS, "digital_2mm": (300, 2.0, 2.0)}


@dataclass
class PhantomConfig:
    """What may vary; ``None`` means drawn from the seed."""

    scanner: str | None = None
    z_range_mm: tuple[float, float] | None = None  # body z window (0 = pelvic floor); None: mid-thigh to vertex
    max_lesions: int = 8
    arms_down: bool | None = None
    noise: bool = True


@dataclass
class Lesion:
    id: int
    site: str
    diameter_mm: float
    peak_suv: float
    center_mm: tuple[float, float, float]
    necrotic: bool


@dataclass
class PhantomCase:
    image: PetImage  # SUVbw on the scanner grid (LPS)
    labels: np.ndarray  # uint8, LABELS ids
    instances: np.ndarray  # uint16, 0 or the lesion's id
    lesions: list[Lesion]
    acquisition: AcquisitionInfo
    uptake: dict[str, float] = field(default_factory=dict)
    physics: dict[str, float | str] = field(default_factory=dict)


def generate_case(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """One whole-body FDG study; the same seed and config give the same case bit for bit."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SegAnyPetError(f"a phantom seed is a whole number from 0, not {seed!r}")
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.88, 1.12)  # body size
    head = rng.uniform(0.93, 1.07)
    scanner = config.scanner or list(DRAWN_SCANNERS)[rng.integers(len(DRAWN_SCANNERS))]
    matrix, pixel, slice_mm = SCANNERS[scanner]
    z_lo, z_hi = config.z_range_mm or (-rng.uniform(120, 260), 715 * s + 105 * head + 15)  # mid-thigh to vertex
    n_k = int(math.ceil((z_hi - z_lo) / slice_mm))
    grid = Grid((matrix, matrix, n_k), (pixel, pixel, slice_mm),
                (-(matrix - 1) * pixel / 2, -(matrix - 1) * pixel / 2 + rng.uniform(-15, 15), z_lo))

    tissue = _paint_body(grid, rng, s, head, config)
    _paint_organs(grid, tissue, rng, s, head)
    uptake = _draw_uptake(rng)
    lut = np.array([uptake.get(name, 0.0) for name in TISSUES], dtype=np.float32)

    labels = TISSUE_TO_LABEL[tissue]
    texture = _smooth_noise(grid.shape, rng, 4)
    activity = lut[tissue] * (1.0 + rng.uniform(0.05, 0.10) * texture)
    _paint_bowel_and_ureters(grid, tissue, activity, rng, s)

    instances = np.zeros(grid.shape, np.uint16)
    # lesion profiles draw from their own stream: anatomy, uptake and noise of a seed stay as they were before it
    profile_rng = np.random.default_rng([seed, 1])
    lesions = _paint_lesions(grid, tissue, activity, instances, texture, uptake, rng, profile_rng, s, config.max_lesions)
    labels[instances > 0] = LESION_LABEL

    fwhm = rng.uniform(4.0, 8.0)
    cov = rng.uniform(0.08, 0.16)
    image = scan(activity, grid.spacing, fwhm, cov, uptake["liver"], rng if config.noise else None)

    weight = float(np.clip(75.0 * s**3 * rng.uniform(0.85, 1.25), 40, 150))
    acquisition = AcquisitionInfo(
        weight_kg=round(weight, 1),
        height_m=round(1.72 * s * rng.uniform(0.95, 1.05), 2),
        sex="M" if rng.random() < 0.5 else "F",
        dose_bq=float(rng.uniform(2.5, 4.5) * 1e6 * weight),  # 2.5-4.5 MBq/kg (EANM)
        injection_time=datetime(2025, 1, 6, 7, 30) + timedelta(minutes=int(rng.integers(0, 600))),
        uptake_s=float(rng.uniform(55, 75) * 60),
        patient_id=f"PHANTOM{seed:05d}",
    )
    pet = PetImage(image.astype(np.float32), grid.affine, "LPS", "SUVbw", pet_metadata(acquisition))
    physics = {"scanner": scanner, "psf_fwhm_mm": round(fwhm, 2), "liver_cov": round(cov, 3)}
    return PhantomCase(pet, labels, instances, lesions, acquisition, uptake, physics)


def pet_metadata(acquisition: AcquisitionInfo) -> PetMetadata:
    """What a phantom's image carries about its (simulated) FDG acquisition, as a scan read from DICOM would."""
    return PetMetadata(patient_weight_kg=acquisition.weight_kg, patient_height_m=acquisition.height_m,
                       patient_sex=acquisition.sex, tracer="Fluorodeoxyglucose", radionuclide="^18^Fluorine",
                       injected_dose_bq=acquisition.dose_bq, half_life_s=acquisition.half_life_s,
                       injection_time=acquisition.injection_time, scan_time=acquisition.scan_time,
                       patient_id=acquisition.patient_id, manufacturer=acquisition.manufacturer)


def scan(activity: np.ndarray, spacing, fwhm_mm: float, cov: float, reference_suv: float,
         rng: np.random.Generator | None) -> np.ndarray:
    """What the scanner shows of an activity map: a Gaussian PSF, then spatially correlated noise whose
    variance grows with the signal (counts), scaled so that a region of ``reference_suv`` shows a CoV of ``cov``
    (no noise without ``rng``)."""
    blurred = ndimage.gaussian_filter(activity, sigma=[fwhm_mm / 2.3548 / sp for sp in spacing], mode="constant")
    if rng is None:
        return blurred
    white = ndimage.gaussian_filter(rng.standard_normal(blurred.shape, dtype=np.float32), 0.7)
    white /= white.std()
    return np.maximum(blurred + cov * np.sqrt(reference_suv * np.maximum(blurred, 0.0)) * white, 0.0)


# --- anatomy ------------------------------------------------------------------------------------

def _trunk_radii(z: np.ndarray, s: float, girth: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    knots = np.array([0, 100, 250, 380, 470, 545]) * s
    ax = np.interp(z, knots, np.array([160, 165, 148, 165, 175, 150]) * s * girth[0])
    ay = np.interp(z, knots, np.array([105, 110, 102, 110, 112, 90]) * s * girth[1])
    return ax, ay


def _body_region(grid: Grid, s: float, head: float, girth, arms_down: bool, inset: float) -> np.ndarray:
    """The body outline shrunk by ``inset`` mm (0: skin; >0: inside the subcutaneous fat)."""
    x = grid.origin[0] + grid.spacing[0] * np.arange(grid.shape[0])
    y = grid.origin[1] + grid.spacing[1] * np.arange(grid.shape[1])
    z = grid.origin[2] + grid.spacing[2] * np.arange(grid.shape[2])
    X, Y, Z = x[:, None, None], y[None, :, None], z[None, None, :]
    ax, ay = _trunk_radii(z, s, girth)
    trunk = ((X / (ax - inset)) ** 2 + (Y / (ay - inset)) ** 2 < 1) & (Z >= 0) & (Z <= 560 * s)
    leg_r = 78 * s * girth[0]
    legs = (((np.abs(X) - 82 * s * girth[0]) ** 2 + (Y + 5) ** 2 < (leg_r - inset) ** 2)) & (Z < 40 * s)
    neck = (X**2 + (Y - 5) ** 2 < (52 * s - inset) ** 2) & (Z > 500 * s) & (Z < 650 * s)
    hc = 715 * s
    skull = ((X / (72 * head - inset)) ** 2 + ((Y + 5) / (92 * head - inset)) ** 2 + ((Z - hc) / (105 * head - inset)) ** 2) < 1
    body = trunk | legs | neck | skull
    if arms_down:
        arms = np.zeros(grid.shape, bool)
        ax_chest, ax_hip = _trunk_radii(np.array([470 * s, 120 * s]), s, girth)[0]
        for side in (-1, 1):
            tube = Tube(np.array([[side * (ax_chest + 38 * s), 0, 520 * s], [side * (ax_hip + 42 * s), -10, 110 * s]]),
                        38 * s - inset)
            paint(grid, tube, arms, True)
        body |= arms
    return body


def _paint_body(grid: Grid, rng: np.random.Generator, s: float, head: float, config: PhantomConfig) -> np.ndarray:
    girth = (rng.uniform(0.9, 1.12), rng.uniform(0.88, 1.15))
    arms_down = config.arms_down if config.arms_down is not None else bool(rng.random() < 0.4)
    fat = rng.uniform(8.0, 25.0) * girth[1]
    tissue = np.zeros(grid.shape, np.uint8)
    tissue[_body_region(grid, s, head, girth, arms_down, 0.0)] = T["fat"]
    tissue[_body_region(grid, s, head, girth, arms_down, fat)] = T["muscle"]
    return tissue


def _over(*names: str):
    codes = np.array([T[n] for n in names], np.uint8)
    return lambda values: np.isin(values, codes)


def _paint_organs(grid: Grid, tissue: np.ndarray, rng: np.random.Generator, s: float, head: float) -> None:
    j = lambda scale=6.0: rng.normal(0, scale, 3)  # noqa: E731 - placement jitter in mm
    inside = _over("muscle")
    for side, name, width in ((1, "lung_left", 52), (-1, "lung_right", 60)):
        paint(grid, Blob.random(rng, np.array([side * 78, 8, 445]) * s + j(), np.array([width, 78, 112]) * s, 0.15, 0.08),
              tissue, T[name], where=inside)
    heart = Blob.random(rng, np.array([25, -35, 405]) * s + j(4), np.array([55, 45, 58]) * s, 0.3, 0.05)
    paint(grid, heart, tissue, T["myocardium"], where=_over("muscle", "lung_left", "lung_right"))
    wall = rng.uniform(8, 12)
    paint(grid, Blob(heart.center, heart.radii - wall, heart.rotation, heart.wobble), tissue, T["blood"], where=_over("myocardium"))
    liver = Blob.random(rng, np.array([-72, -5, 330]) * s + j(), np.array([95, 85, 78]) * s * rng.uniform(0.9, 1.1), 0.25, 0.1)
    paint(grid, liver, tissue, T["liver"], where=_over("muscle", "lung_right"))  # pushes up into the right lung base
    paint(grid, Blob.random(rng, np.array([92, 45, 335]) * s + j(), np.array([32, 52, 50]) * s * rng.uniform(0.8, 1.25), 0.35, 0.12),
          tissue, T["spleen"], where=_over("muscle", "lung_left"))
    for side, name, pelvis, dz in ((1, "kidney_left", "renal_pelvis_left", 0.0), (-1, "kidney_right", "renal_pelvis_right", -18.0)):
        kidney = Blob.random(rng, np.array([side * 62, 55, 255 + dz]) * s + j(4), np.array([28, 32, 55]) * s, 0.3, 0.06)
        paint(grid, kidney, tissue, T[name], where=_over("muscle", "liver", "spleen"))
        paint(grid, Blob(kidney.center + [-side * 10 * s, -5, 0], np.array([10, 12, 24]) * s), tissue, T[pelvis], where=_over(name))
    stomach = Blob.random(rng, np.array([48, -42, 362]) * s + j(), np.array([42, 30, 45]) * s, 0.4, 0.1)
    paint(grid, stomach, tissue, T["stomach"], where=inside)
    paint(grid, Blob(stomach.center, stomach.radii - 7, stomach.rotation, stomach.wobble), tissue, T["muscle"], where=_over("stomach"))
    fill = rng.uniform(0.6, 1.3)
    paint(grid, Blob.random(rng, np.array([0, -22, 62]) * s + j(4), np.array([45, 38, 34]) * s * fill, 0.2, 0.06),
          tissue, T["bladder"], where=inside)
    aorta = np.array([[22, -25, 415], [15, -10, 490], [10, 25, 495], [20, 45, 455], [18, 50, 300], [8, 42, 150], [0, 40, 112]]) * s
    paint(grid, Tube(aorta, rng.uniform(11, 14) * s), tissue, T["aorta"], where=_over("muscle", "lung_left", "lung_right", "blood", "myocardium"))
    for side in (-1, 1):
        paint(grid, Tube(np.array([[0, 40, 112], [side * 45, 30, 40], [side * 75, 10, -60]]) * s, 7 * s), tissue, T["aorta"], where=inside)
    spine = np.array([[0, 80, 95], [0, 68, 250], [0, 82, 450], [0, 58, 610]]) * s
    paint(grid, Tube(spine, rng.uniform(15, 19) * s), tissue, T["spine"], where=_over("muscle", "aorta", "fat"))
    for side in (-1, 1):
        paint(grid, Blob.random(rng, np.array([side * 88, 42, 85]) * s, np.array([14, 48, 45]) * s, 0.4, 0.1),
              tissue, T["pelvic_marrow"], where=inside)
        paint(grid, Blob.random(rng, np.array([side * 48, -2, 655]) * s, np.array([12, 16, 18]) * s, 0.3, 0.1), tissue, T["salivary"], where=inside)
        paint(grid, Blob.random(rng, np.array([side * 33, -38, 628]) * s, np.array([9, 9, 9]) * s, 0.3, 0.1), tissue, T["salivary"], where=inside)
    if rng.random() < 0.15:  # activated brown fat: supraclavicular and paravertebral
        for side in (-1, 1):
            paint(grid, Blob.random(rng, np.array([side * 62, 10, 560]) * s, np.array([28, 15, 22]) * s, 0.5, 0.3), tissue, T["brown_fat"],
                  where=_over("muscle", "fat"))
            paint(grid, Blob.random(rng, np.array([side * 35, 80, 440]) * s, np.array([10, 10, 60]) * s, 0.2, 0.3), tissue, T["brown_fat"],
                  where=_over("muscle", "fat"))
    brain = Blob.random(rng, np.array([0, -5, 725 * s]) + j(2), np.array([62, 82, 66]) * head, 0.1, 0.04)
    paint(grid, brain, tissue, T["brain_grey"], where=inside)
    paint(grid, Blob(brain.center, brain.radii - rng.uniform(9, 14), brain.rotation, brain.wobble), tissue, T["brain_white"],
          where=_over("brain_grey"))


def _draw_uptake(rng: np.random.Generator) -> dict[str, float]:
    """SUVbw per tissue, from published FDG ranges (liver 1.9-2.7, blood 1.4-2.0, brain 7-11, ...)."""
    u = rng.uniform
    liver, blood = u(1.9, 2.7), u(1.4, 2.0)
    grey = u(7.0, 11.0)
    hot_muscle = rng.random() < 0.1  # e.g. after insulin or exercise
    return {
        "fat": u(0.25, 0.4), "muscle": u(1.1, 1.8) if hot_muscle else u(0.5, 0.85),
        "brain_grey": grey, "brain_white": grey * u(0.35, 0.5),
        "myocardium": u(1.5, 3.0) if rng.random() < 0.4 else u(4.0, 15.0), "blood": blood, "aorta": blood,
        "liver": liver, "spleen": liver * u(0.75, 0.95),
        "kidney_left": u(2.5, 4.5), "kidney_right": u(2.5, 4.5),
        "renal_pelvis_left": u(5.0, 30.0), "renal_pelvis_right": u(5.0, 30.0),
        "bladder": u(8.0, 60.0), "lung_left": u(0.3, 0.6), "lung_right": u(0.3, 0.6),
        "spine": u(1.4, 2.4), "pelvic_marrow": u(1.2, 2.2), "stomach": u(1.5, 4.0),
        "salivary": u(2.0, 5.0), "brown_fat": u(3.0, 12.0), "bowel": 0.0, "ureter": 0.0,
    }


def _smooth_noise(shape: tuple[int, int, int], rng: np.random.Generator, step: int) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (correlation length ~ ``step`` voxels), made coarse then zoomed."""
    coarse = ndimage.gaussian_filter(rng.standard_normal([max(2, -(-n // step)) for n in shape]), 1.0)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)[: shape[0], : shape[1], : shape[2]]
    field = np.pad(field, [(0, n - f) for n, f in zip(shape, field.shape)], mode="edge")
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)


def _random_walk(rng: np.random.Generator, start: np.ndarray, steps: int, step_mm: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    points = [start]
    direction = rng.normal(size=3)
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.6, 3)
        nxt = np.clip(points[-1] + step_mm * direction / np.linalg.norm(direction), lo, hi)
        points.append(nxt)
    return np.array(points)


def _paint_bowel_and_ureters(grid: Grid, tissue: np.ndarray, activity: np.ndarray, rng: np.random.Generator, s: float) -> None:
    """Physiological excretion and bowel uptake: unlabelled, patchy, and often hotter than lesions."""
    lo, hi = np.array([-95, -70, 90]) * s, np.array([95, 30, 240]) * s
    for _ in range(rng.integers(3, 7)):
        path = _random_walk(rng, rng.uniform(lo, hi), int(rng.integers(4, 10)), 22.0 * s, lo, hi)
        hot = np.zeros(grid.shape, bool)
        paint(grid, Tube(path, rng.uniform(8, 13) * s), hot, True)
        hot &= tissue == T["muscle"]
        tissue[hot] = T["bowel"]
        activity[hot] = rng.uniform(1.0, 5.0)
    for side in (-1, 1):
        path = np.array([[side * 52, 48, 235], [side * 45, 32, 160], [side * 30, 5, 90], [side * 12, -15, 70]]) * s
        for a, b in zip(path[:-1], path[1:]):
            if rng.random() < 0.55:  # peristalsis: only some segments hold active urine
                hot = np.zeros(grid.shape, bool)
                paint(grid, Tube(np.array([a, b]), 3.5), hot, True)
                hot &= np.isin(tissue, [T["muscle"], T["fat"], T["bowel"]])
                tissue[hot] = T["ureter"]
                activity[hot] = rng.uniform(3.0, 20.0)


LESION_SITES = {  # site: (weight, diameter range mm)
    "liver": (0.22, (6.0, 60.0)),
    "lung": (0.2, (4.0, 45.0)),
    "node": (0.38, (4.0, 35.0)),
    "bone": (0.2, (6.0, 35.0)),
}


def _node_anchor(rng: np.random.Generator, s: float) -> np.ndarray:
    """Lymph-node stations along the vessels: cervical, axillary, mediastinal, hilar, para-aortic, iliac, inguinal."""
    side = rng.choice([-1, 1])
    stations = [
        [side * 38, 5, 590], [side * 120, 5, 470], [rng.uniform(-20, 25), -20, 455], [side * 40, 10, 420],
        [rng.uniform(-25, 30), 30, 230], [side * 50, 25, 70], [side * 70, -20, 15],
    ]
    return np.array(stations[rng.integers(len(stations))], float) * s + rng.normal(0, 12, 3)


def _paint_lesions(grid, tissue, activity, instances, texture, uptake, rng, profile_rng, s, max_lesions) -> list[Lesion]:
    n = 0 if rng.random() < 0.08 else int(rng.integers(1, max_lesions + 1)) if max_lesions else 0
    names, weights = zip(*((k, v[0]) for k, v in LESION_SITES.items()))
    body_core = tissue != T["air"]
    lesions: list[Lesion] = []
    for _ in range(n * 6):
        if len(lesions) == n:
            break
        site = names[rng.choice(len(names), p=np.array(weights) / sum(weights))]
        lo_d, hi_d = LESION_SITES[site][1]
        if site == "node" and rng.random() < 0.08:
            hi_d = 60.0  # a bulky nodal mass
        diameter = float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))
        host = {"liver": ["liver"], "lung": ["lung_left", "lung_right"], "bone": ["spine", "pelvic_marrow"]}.get(site)
        if host:
            candidates = np.argwhere(np.isin(tissue, [T[h] for h in host]))
            if not len(candidates):
                continue
            center = grid.origin + candidates[rng.integers(len(candidates))] * np.asarray(grid.spacing)
        else:
            center = _node_anchor(rng, s)
        shape = Blob.random(rng, center, diameter / 2 * rng.uniform(0.75, 1.25, 3), np.pi, rng.uniform(0.1, 0.22))
        box = grid.box(*shape.extent())
        if box is None:
            continue
        level = shape.level(grid.points(box))
        mask = (level < 1.0) & body_core[box] & (instances[box] == 0)
        if mask.sum() < 2 or np.isin(tissue[box][mask], [T["air"], T["bladder"], T["brain_grey"], T["brain_white"]]).mean() > 0.2:
            continue
        host_suv = float(np.median(activity[box][mask]))
        peak = float(np.clip(np.exp(rng.uniform(np.log(2.0), np.log(25.0))), max(2.0, 1.6 * host_suv + 0.5), 25.0))
        necrotic = diameter > 25 and rng.random() < 0.5
        # from flat (a NEMA sphere, a homogeneous node) to centrally peaked (edge at 65 % of the peak)
        profile = peak * (1.0 - profile_rng.uniform(0.0, 0.35) * level**2) * (1.0 + 0.2 * texture[box])
        if necrotic:
            profile = np.where(level < rng.uniform(0.35, 0.6), rng.uniform(0.5, 1.5), profile)
        lesion_id = len(lesions) + 1
        instances[box][mask] = lesion_id
        activity[box][mask] = profile[mask]
        lesions.append(Lesion(lesion_id, site, round(diameter, 1), round(peak, 2), tuple(np.round(center, 1)), necrotic))
    return lesions
