"""Quantities against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from seganypet.io import PetImage
from seganypet.quant import PEAK_RADIUS_MM, lesion_table, quantify


def sphere_image(spacing: float, radius_mm: float = 15.0, suv: float = 8.0, background: float = 1.0, size_mm: float = 80.0):
    n = int(round(size_mm / spacing))
    centre = (n - 1) / 2
    axis = (np.arange(n) - centre) * spacing
    X, Y, Z = np.meshgrid(axis, axis, axis, indexing="ij")
    inside = X**2 + Y**2 + Z**2 <= radius_mm**2
    array = np.where(inside, suv, background).astype(np.float32)
    return PetImage(array, np.diag([spacing, spacing, spacing, 1.0]), "LPS"), inside


def test_uniform_sphere_gives_exact_suv_and_mtv_within_voxelisation():
    image, inside = sphere_image(2.0)
    q = quantify(image, inside)
    assert q.suv_max == 8.0 and q.suv_mean == pytest.approx(8.0)
    true_ml = 4 / 3 * np.pi * 15.0**3 / 1000
    assert q.mtv_ml == pytest.approx(true_ml, rel=0.03)  # voxelisation of a 15 mm sphere on 2 mm voxels
    assert q.tlg == pytest.approx(q.suv_mean * q.mtv_ml)
    assert q.suv_peak == pytest.approx(8.0, rel=1e-6)  # a 1 mL sphere fits inside: its mean is 8


def gaussian_blob(spacing, sigma_mm=8.0, amplitude=10.0, anisotropic=False):
    sp = np.array([spacing, spacing, spacing * (2 if anisotropic else 1)])
    n = np.ceil(70.0 / sp).astype(int) | 1
    axes = [(np.arange(k) - (k - 1) / 2) * s for k, s in zip(n, sp)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    r2 = X**2 + Y**2 + Z**2
    array = (amplitude * np.exp(-r2 / (2 * sigma_mm**2))).astype(np.float32)
    return PetImage(array, np.diag([*sp, 1.0]), "LPS"), r2 <= 20.0**2


def analytic_peak(sigma_mm=8.0, amplitude=10.0, radius=PEAK_RADIUS_MM):
    """Mean of A exp(-r^2 / 2 sigma^2) over a sphere of ``radius`` centred on the peak."""
    integral, _ = integrate.quad(lambda r: np.exp(-r * r / (2 * sigma_mm**2)) * r * r, 0, radius)
    return amplitude * 3 * integral / radius**3


@pytest.mark.parametrize("spacing,anisotropic", [(1.0, False), (2.0, False), (2.0, True)])
def test_suvpeak_equals_the_analytic_value_of_a_smooth_blob(spacing, anisotropic):
    image, mask = gaussian_blob(spacing, anisotropic=anisotropic)
    assert quantify(image, mask).suv_peak == pytest.approx(analytic_peak(), rel=0.02)


def test_suvpeak_is_stable_between_2_and_4_mm_voxels():
    fine, coarse = gaussian_blob(2.0), gaussian_blob(4.0)
    p2, p4 = quantify(fine[0], fine[1]).suv_peak, quantify(coarse[0], coarse[1]).suv_peak
    assert abs(p2 - p4) / p2 < 0.05


def test_lesion_table_splits_components_and_keeps_coordinates():
    image, _ = sphere_image(2.0, size_mm=100.0)
    array = np.ones(image.shape, np.float32)
    mask = np.zeros(image.shape, bool)
    mask[5:10, 5:10, 5:10] = True  # 125 voxels
    mask[30:34, 30:34, 30:34] = True  # 64 voxels
    array[mask] = 3.0
    array[32, 31, 30] = 9.0
    image = image.with_array(array)
    rows = lesion_table(image, mask)
    assert [r.voxels for r in rows] == [125, 64]
    assert rows[1].suv_max == 9.0 and rows[1].suv_max_voxel == (32, 31, 30)
    assert rows[1].suv_max_mm == pytest.approx((64.0, 62.0, 60.0))
    whole = quantify(image, mask)
    assert whole.mtv_ml == pytest.approx(sum(r.mtv_ml for r in rows))


def test_sul_uses_janmahasatian_lean_body_mass():
    image, inside = sphere_image(4.0)
    image.meta.patient_weight_kg, image.meta.patient_height_m, image.meta.patient_sex = 80.0, 1.80, "M"
    q = quantify(image, inside)
    lbm = 9270 * 80 / (6680 + 216 * 80 / 1.8**2)
    assert q.sul_max == pytest.approx(8.0 * lbm / 80.0)
