"""The NEMA NU 2 / IEC 61675-1 body phantom, simulated: the test every PET physicist runs first.

Six spheres (10-37 mm inner diameter) on a 57.2 mm ring in a D-shaped warm body, a cold lung insert
on the axis. Unlike the whole-body phantoms the geometry is fixed and the spheres are uniform, so
the recovered volume of each sphere at a known sphere-to-background ratio (4:1 and 8:1 in the
standard) says how a method treats partial volume and contrast, independent of our anatomy.
The spheres' activity is computed from their exact volume in each voxel (4^3 sub-samples), since a
10 mm sphere spans only a few voxels; the labels are the voxels whose centre lies inside a sphere.
"""

from __future__ import annotations

import numpy as np

from seganypet.errors import SegAnyPetError
from seganypet.io.dicom_write import AcquisitionInfo
from seganypet.io.image import PetImage
from seganypet.phantom.generate import LESION_LABEL, SCANNERS, Lesion, PhantomCase, pet_metadata, scan
from seganypet.phantom.shapes import Grid

SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
RING_RADIUS_MM = 57.2
BODY_LENGTH_MM = 180.0
SPHERE_PLANE_MM = 70.0  # sphere centres from the lid end of the body
LUNG_RADIUS_MM = 25.5
SUBSAMPLES = 4


def _body(points: np.ndarray) -> np.ndarray:
    """The D-shaped interior: a 147 mm half-disc in front, a 294 mm wide block with 77 mm rounded corners behind."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    front = (y <= 0) & (x**2 + y**2 <= 147.0**2)
    back = (y > 0) & (y <= 77.0) & ((np.abs(x) <= 70.0) | ((np.abs(x) - 70.0) ** 2 + y**2 <= 77.0**2))
    return (front | back) & (np.abs(z) <= BODY_LENGTH_MM / 2)


def sphere_centres_mm() -> np.ndarray:
    """(6, 3) centres, in the order of ``SPHERE_DIAMETERS_MM``, 60 degrees apart on the ring."""
    angles = np.deg2rad(60.0 * np.arange(len(SPHERE_DIAMETERS_MM)))
    z = BODY_LENGTH_MM / 2 - SPHERE_PLANE_MM
    return np.stack([RING_RADIUS_MM * np.cos(angles), -RING_RADIUS_MM * np.sin(angles), np.full_like(angles, z)], axis=1)


def nema_iec_case(ratio: float = 4.0, seed: int = 0, scanner: str = "siemens_biograph_mct", fwhm_mm: float = 6.0,
                  cov: float = 0.10, background_suv: float = 1.0) -> PhantomCase:
    """The phantom at sphere-to-background ``ratio``; ``seed`` draws the noise only (``cov`` in the background)."""
    if scanner not in SCANNERS:
        raise SegAnyPetError(f"unknown scanner {scanner!r}; choose one of {', '.join(SCANNERS)}")
    matrix, pixel, slice_mm = SCANNERS[scanner]
    n_k = int(np.ceil((BODY_LENGTH_MM + 60.0) / slice_mm))
    grid = Grid((matrix, matrix, n_k), (pixel, pixel, slice_mm),
                (-(matrix - 1) * pixel / 2, -(matrix - 1) * pixel / 2, -(n_k - 1) * slice_mm / 2))
    everywhere = tuple(slice(0, n) for n in grid.shape)
    points = grid.points(everywhere)
    lung = points[..., 0] ** 2 + points[..., 1] ** 2 <= LUNG_RADIUS_MM**2
    activity = np.where(_body(points) & ~lung, background_suv, 0.0).astype(np.float32)
    instances = np.zeros(grid.shape, np.uint16)
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    lesions = []
    for index, (diameter, centre) in enumerate(zip(SPHERE_DIAMETERS_MM, sphere_centres_mm()), start=1):
        radius = diameter / 2
        box = grid.box(centre - radius - max(grid.spacing), centre + radius + max(grid.spacing))
        local = grid.points(box) - centre
        inside = np.zeros(local.shape[:-1], np.float32)
        for dx in offsets:
            for dy in offsets:
                for dz in offsets:
                    shifted = local + np.array([dx, dy, dz]) * grid.spacing
                    inside += (shifted**2).sum(-1) <= radius**2
        inside /= SUBSAMPLES**3
        activity[box] += inside * (ratio - 1.0) * background_suv
        instances[box][(local**2).sum(-1) <= radius**2] = index
        lesions.append(Lesion(index, "sphere", diameter, round(ratio * background_suv, 3), tuple(np.round(centre, 1)), False))
    image = scan(activity, grid.spacing, fwhm_mm, cov, background_suv, np.random.default_rng(seed))
    acquisition = AcquisitionInfo(patient_id="NEMA_IEC", patient_name="Phantom^NEMA IEC body",
                                  series_description=f"NEMA IEC body phantom {ratio:g}:1")
    pet = PetImage(image.astype(np.float32), grid.affine, "LPS", "SUVbw", pet_metadata(acquisition))
    labels = np.where(instances > 0, LESION_LABEL, 0).astype(np.uint8)
    physics = {"scanner": scanner, "psf_fwhm_mm": fwhm_mm, "background_cov": cov, "ratio": ratio}
    return PhantomCase(pet, labels, instances, lesions, acquisition, {"background": background_suv}, physics)
