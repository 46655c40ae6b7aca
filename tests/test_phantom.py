"""The phantom: deterministic, labels consistent with the image, writers complete, noise at the asked rate."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from seganypet.io import read_pet
from seganypet.phantom import LABELS, LESION_LABEL, PhantomConfig, generate_case
from seganypet.phantom.dataset import write_phantom_dataset
from seganypet.phantom.generate import TISSUES, _draw_uptake

FAST = PhantomConfig(scanner="ge_discovery_600")


@pytest.fixture(scope="module")
def cases():
    return [generate_case(seed, FAST) for seed in (11, 12, 13)]


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = generate_case(5, FAST), generate_case(5, FAST), generate_case(6, FAST)
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.labels, b.labels)
    assert a.image.shape != c.image.shape or not np.array_equal(a.labels, c.labels)


def test_a_digital_scanners_2mm_grid_holds_the_same_anatomy_and_no_seed_draws_it():
    """The fine grid is for measuring the model on digital-PET reconstructions; adding it must not change the case any
    seed already gives, or every held-out set written before would be another set when written again."""
    config = dict(z_range_mm=(100.0, 420.0), max_lesions=0, noise=False)  # liver, spleen, kidneys whole
    coarse = generate_case(3, PhantomConfig(scanner="philips_gemini", **config))
    fine = generate_case(3, PhantomConfig(scanner="digital_2mm", **config))
    assert fine.image.spacing == pytest.approx((2.0, 2.0, 2.0))
    for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
        ml = [(case.labels == LABELS[organ]).sum() * np.prod(case.image.spacing) / 1000 for case in (coarse, fine)]
        assert ml[1] == pytest.approx(ml[0], rel=0.03), organ
    drawn = [generate_case(seed, PhantomConfig(z_range_mm=(0.0, 12.0), max_lesions=0)).physics["scanner"] for seed in (10000, 10001)]
    assert drawn == ["siemens_biograph_mct", "siemens_biograph_vision"]  # as Dataset903 was written before the fine grid


def test_organ_uptake_within_configured_range():
    """Noise-free mean SUV inside each organ lies in the range its uptake was drawn from (allowing PSF spill)."""
    case = generate_case(21, PhantomConfig(scanner="ge_discovery_600", noise=False, max_lesions=0))
    for organ, tissue in (("liver", "liver"), ("spleen", "spleen"), ("lung_left", "lung_left"), ("aorta", "aorta")):
        mask = ndimage.binary_erosion(case.labels == LABELS[organ], iterations=2)
        mean = float(case.image.array[mask].mean())
        assert mean == pytest.approx(case.uptake[tissue], rel=0.15), organ
    liver = case.image.array[case.labels == LABELS["liver"]].mean()
    assert 1.6 < liver < 3.0  # published FDG liver SUVmean 2-2.5


def test_uptake_ranges_match_the_literature():
    draws = [_draw_uptake(np.random.default_rng(s)) for s in range(200)]
    liver = np.array([d["liver"] for d in draws])
    blood = np.array([d["blood"] for d in draws])
    assert 1.9 <= liver.min() and liver.max() <= 2.7 and 1.4 <= blood.min() and blood.max() <= 2.0
    assert set(TISSUES) >= set(draws[0])


def test_every_lesion_is_visible_above_its_surroundings(cases):
    seen = 0
    for case in cases:
        for lesion in case.lesions:
            mask = case.instances == lesion.id
            ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
            assert case.image.array[mask].max() > np.median(case.image.array[ring]), (lesion.site, lesion.diameter_mm)
            assert 4.0 <= lesion.diameter_mm <= 60.0 and 2.0 <= lesion.peak_suv <= 25.0
            seen += 1
    assert seen > 0


def test_no_label_outside_the_body(cases):
    for case in cases:
        outside = ndimage.binary_dilation(case.image.array > 0.05, iterations=2)  # the noisy body, a little grown
        assert not (case.labels[~outside] > 0).any()
        assert set(np.unique(case.instances[case.labels != LESION_LABEL])) <= {0}


def test_dicom_export_reads_back_to_the_same_suv(tmp_path):
    from seganypet.io.dicom_write import write_pet_dicom

    case = generate_case(31, FAST)
    write_pet_dicom(case.image, tmp_path, case.acquisition)
    back = read_pet(tmp_path)
    np.testing.assert_allclose(back.affine, case.image.affine, atol=1e-4)
    # int16 per slice: error at most half a step of that slice's maximum
    tolerance = case.image.array.max(axis=(0, 1)) / 32767 + 1e-5
    assert (np.abs(back.array - case.image.array) <= tolerance[None, None, :]).all()
    assert back.meta.patient_weight_kg == pytest.approx(case.acquisition.weight_kg)


def test_nnunet_folder_is_complete_and_noise_is_at_the_asked_rate(tmp_path):
    out = write_phantom_dataset(tmp_path / "Dataset900_Phantom", n_train=4, n_test=1, seed=40, noisy_rate=0.5,
                                config=FAST, mip=True)
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == LABELS and dataset["numTraining"] == 4 and dataset["file_ending"] == ".nii.gz"
    quality = dataset["seganypet"]["label_quality"]
    assert sorted(quality.values()).count("noisy") == 2
    for case, kind in quality.items():
        image = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
        labels = np.asarray(nib.load(out / "labelsTr" / f"{case}.nii.gz").dataobj)
        clean = np.asarray(nib.load(out / "labelsTr_clean" / f"{case}.nii.gz").dataobj)
        assert labels.shape == image.shape and np.allclose(nib.load(out / "labelsTr" / f"{case}.nii.gz").affine, image.affine)
        assert (out / "instancesTr" / f"{case}.nii.gz").exists() and (out / "mip" / f"{case}.png").exists()
        assert np.array_equal(labels, clean) == (kind == "clean")
        meta = json.loads((out / "metadata" / f"{case}.json").read_text())
        assert bool(meta["noise_applied"]) == (kind == "noisy")
    assert (out / "imagesTs" / "phantom_00044_0000.nii.gz").exists() and (out / "labelsTs" / "phantom_00044.nii.gz").exists()
    # resuming writes nothing new
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    write_phantom_dataset(out, n_train=4, n_test=1, seed=40, noisy_rate=0.5, config=FAST)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    # two worker processes write the same cases
    again = write_phantom_dataset(tmp_path / "Dataset901_Phantom", n_train=4, n_test=1, seed=40, noisy_rate=0.5,
                                  config=FAST, workers=2)
    assert json.loads((again / "dataset.json").read_text())["seganypet"]["label_quality"] == quality
    for path in before:
        other = again / path.relative_to(out)
        assert np.array_equal(np.asarray(nib.load(path).dataobj), np.asarray(nib.load(other).dataobj)), path.name


def test_label_noise_grows_a_lesion_into_its_host_organ_as_often_as_it_shrinks_it():
    """Annotators draw lesions too large as often as too small: a dilated or shifted lesion label takes
    voxels of the organ around it, and an eroded one gives its voxels to that organ, not to background.
    (It once only grew into background, so inside an organ the noise could only shrink lesions.)"""
    from seganypet.phantom.noise import corrupt_labels

    grid = np.indices((40, 40, 40)) - 20
    lesion = (grid**2).sum(0) <= 5**2
    labels = np.where(lesion, LESION_LABEL, 3).astype(np.uint8)  # a lesion well inside the liver
    instances = lesion.astype(np.uint8)
    change = {}
    for seed in range(300):
        noisy, applied = corrupt_labels(labels, instances, np.random.default_rng(seed), p_structure=0.5)
        if [(k, i) for k, i, _ in applied] != [("lesion", 1)]:
            continue  # the liver was corrupted too
        change.setdefault(applied[0][2], []).append(int((noisy == LESION_LABEL).sum()) - int(lesion.sum()))
        grown = (noisy == LESION_LABEL) & ~lesion
        assert np.all(labels[grown] == 3)  # what the lesion gained, the organ lost
        assert np.all(noisy[lesion & (noisy != LESION_LABEL)] == 3)  # and what it lost, the organ gained
    assert min(change["dilate"]) > 0 and max(change["erode"]) < 0
    assert all(d == 0 for d in change["shift"])  # a shifted outline loses as many voxels as it gains
    assert np.median(change["dilate"]) > -np.median(change["erode"])  # a dilation adds more than an erosion removes
