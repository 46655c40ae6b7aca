"""The simulated NEMA IEC body phantom: geometry and activity as the standard describes them, and the shipped model on it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seganypet.errors import SegAnyPetError
from seganypet.eval import EvalConfig, run_evaluation
from seganypet.eval.metrics import dice
from seganypet.eval.runner import load_rows
from seganypet.infer import Session
from seganypet.phantom.nema import RING_RADIUS_MM, SPHERE_DIAMETERS_MM, nema_iec_case


def test_spheres_have_their_nominal_volume_on_the_ring_at_the_asked_ratio():
    case = nema_iec_case(ratio=4.0, fwhm_mm=0.01, cov=0.0)  # no blur, no noise: the activity map itself
    voxel_ml = float(np.prod(case.image.spacing)) / 1000
    assert [s.diameter_mm for s in case.lesions] == list(SPHERE_DIAMETERS_MM)
    for sphere in case.lesions:
        truth = case.instances == sphere.id
        nominal_ml = np.pi / 6 * sphere.diameter_mm**3 / 1000
        # the 10 and 13 mm spheres are 12 and 23 voxels of 50 uL: voxelised, good to ~20 %; the larger ones to ~5 %
        assert truth.sum() * voxel_ml == pytest.approx(nominal_ml, rel=0.2 if sphere.diameter_mm < 17 else 0.06)
        centre = case.image.voxel_to_world(np.argwhere(truth).mean(0)[None])[0]
        assert np.hypot(centre[0], centre[1]) == pytest.approx(RING_RADIUS_MM, abs=1.5)
        # the exact partial volume: the activity above background sums to the sphere's volume
        near = ndimage.binary_dilation(truth, iterations=2)
        excess_ml = (case.image.array[near] - 1.0).clip(0).sum() / 3.0 * voxel_ml
        assert excess_ml == pytest.approx(nominal_ml, rel=0.02)
    largest = case.instances == case.lesions[-1].id
    assert case.image.array[largest].max() == pytest.approx(4.0)
    assert case.image.array[tuple(np.array(case.image.shape) // 2)] == 0.0  # the cold lung insert on the axis


def test_background_noise_has_the_asked_coefficient_of_variation():
    case = nema_iec_case(ratio=4.0, cov=0.12, seed=3)
    centre = np.array(case.image.shape) // 2
    # a block of uniform background between the lung insert and the body wall, below the sphere plane
    block = case.image.array[centre[0] + 10:centre[0] + 20, centre[1] - 5:centre[1] + 5, centre[2] - 12:centre[2] - 2]
    assert block.mean() == pytest.approx(1.0, abs=0.03)
    assert block.std() / block.mean() == pytest.approx(0.12, rel=0.2)


def test_the_shipped_model_outlines_the_large_spheres_at_8_to_1_from_one_click():
    """At the high contrast of the standard the model's first answer on the 22-37 mm spheres is the sphere.
    (At 4:1 it is not yet: benchmarks/nema.py and the model card give those figures.)"""
    case = nema_iec_case(ratio=8.0, seed=1)
    session = Session()
    session.set_image(case.image)
    for sphere in case.lesions[3:]:
        truth = case.instances == sphere.id
        session.new_target()
        session.add_point(np.round(case.image.world_to_voxel(np.array([sphere.center_mm]))[0]))
        assert dice(session.mask, truth) > 0.8, sphere.diameter_mm


def test_an_unknown_scanner_is_a_clear_error():
    with pytest.raises(SegAnyPetError, match="unknown scanner 'biograph'; choose one of"):
        nema_iec_case(scanner="biograph")


def test_the_phantom_command_writes_nema_cases_that_the_harness_scores_sphere_by_sphere(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "seganypet.cli", "-q", "phantom", "-o", str(tmp_path / "nema"), "--nema", "8"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "nema" / "imagesTs" / "nema_8to1_00_0000.nii.gz").is_file()
    run_evaluation(EvalConfig(str(tmp_path / "nema"), str(tmp_path / "eval"), "pct50", clicks=(1,)))
    rows = load_rows(tmp_path / "eval")
    assert sorted(r["diameter_mm"] for r in rows) == pytest.approx(SPHERE_DIAMETERS_MM, abs=1.5)  # equivalent diameters
    largest = max(rows, key=lambda r: r["diameter_mm"])
    assert largest["site"] == "sphere" and largest["dice"] > 0.9  # 50 % of SUVmax outlines a 37 mm sphere at 8:1
    bad = subprocess.run([*command[:-1], "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == "error: --nema ratios must be positive, got 0"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset.json").write_text('{"description": "whole-body phantoms"}')
    mixed = subprocess.run([*command[:6], str(tmp_path / "other"), *command[7:]], capture_output=True, text=True)
    assert mixed.returncode != 0 and "write the NEMA phantom to a folder of its own" in mixed.stderr.strip().splitlines()[-1]
