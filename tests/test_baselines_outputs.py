"""Classical segmenters, DICOM SEG and the segment/quantify commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pydicom
import pytest
from test_quant import sphere_image

from seganypet import SegAnyPetError
from seganypet.baselines import segment_classical
from seganypet.io import PetImage, read_pet
from seganypet.io.dicom_seg import read_dicom_seg, write_dicom_seg
from seganypet.io.dicom_write import write_pet_dicom
from seganypet.prompts import make_prompts
from seganypet.quant import quantify


def two_spheres():
    """A hot sphere (SUV 8, r 10 mm) beside a warm organ-like block (SUV 3), on 2 mm voxels."""
    image, _ = sphere_image(2.0, radius_mm=10.0, suv=8.0, background=0.8, size_mm=100.0)
    array = image.array.copy()
    array[:12, :, :] = 3.0
    return image.with_array(array)


@pytest.mark.parametrize("method", ["suv2.5", "pct41", "pct50", "region-growing"])
def test_each_method_outlines_the_clicked_sphere(method):
    image = two_spheres()
    centre = tuple(s // 2 for s in image.shape)
    mask = segment_classical(image, make_prompts(image, [centre]), method)
    truth = image.array == 8.0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9
    assert not mask[:12].any()  # the warm block is not connected to the lesion


def test_box_prompt_and_negative_point():
    image = two_spheres()
    c = np.array(image.shape) // 2
    by_box = segment_classical(image, make_prompts(image, box=[*(c - 8), *(c + 8)]), "pct41")
    assert (by_box & (image.array == 8.0)).sum() > 0.9 * (image.array == 8.0).sum()
    removed = segment_classical(image, make_prompts(image, [tuple(c)], negative=[tuple(c)]), "pct41")
    assert not removed.any()


def test_click_outside_the_volume_is_refused():
    image = two_spheres()
    with pytest.raises(SegAnyPetError, match="outside the volume"):
        make_prompts(image, [(500, 1, 1)])


def test_dicom_seg_reads_back_and_passes_dciodvfy(tmp_path):
    rng = np.random.default_rng(0)
    suv = rng.random((20, 18, 9)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 3.0, 1.0])
    write_pet_dicom(PetImage(suv, affine, "LPS"), tmp_path / "pet")
    image = read_pet(tmp_path / "pet")
    labels = np.zeros(image.shape, np.uint8)
    labels[3:8, 4:9, 2:5] = 1
    labels[12:15, 10:14, 6] = 2  # slices 0, 1, 7, 8 stay empty: they must not be dropped
    write_dicom_seg(image, labels, {1: "liver", 2: "lesion"}, tmp_path / "seg.dcm")
    back, names = read_dicom_seg(tmp_path / "seg.dcm", image)
    assert names == {1: "liver", 2: "lesion"} and np.array_equal(back, labels)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    result = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_dicom_seg_from_a_series_without_optional_study_attributes(tmp_path):
    """Anonymised and research PET (the IBSI SUV objects among them) often leave out Type 2 attributes such as
    AccessionNumber, which highdicom copies into the SEG: they are written present and empty, not a traceback."""
    suv = np.random.default_rng(0).random((12, 10, 4)).astype(np.float32)
    write_pet_dicom(PetImage(suv, np.diag([4.0, 4.0, 3.0, 1.0]), "LPS"), tmp_path / "pet")
    for path in (tmp_path / "pet").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword in ("AccessionNumber", "StudyID", "PatientBirthDate", "ReferringPhysicianName"):
            delattr(ds, keyword)
        ds.save_as(path)
    image = read_pet(tmp_path / "pet")
    labels = np.zeros(image.shape, np.uint8)
    labels[2:6, 3:7, 1:3] = 1
    write_dicom_seg(image, labels, {1: "lesion"}, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert "AccessionNumber" in seg and not seg.AccessionNumber and seg.StudyInstanceUID == image.meta.study_instance_uid
    assert np.array_equal(read_dicom_seg(tmp_path / "seg.dcm", image)[0], labels)


def test_segment_command_writes_every_output(tmp_path):
    image = two_spheres()
    write_pet_dicom(image, tmp_path / "pet")
    c = ",".join(str(s // 2) for s in image.shape)
    result = subprocess.run([sys.executable, "-m", "seganypet.cli", "segment", "-i", str(tmp_path / "pet"), "-o",
                             str(tmp_path / "out"), "--point", c, "--method", "pct41"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"mask.nii.gz", "seg.dcm", "report.json", "report.csv", "overview.png"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mask = np.asarray(nib.load(tmp_path / "out" / "mask.nii.gz").dataobj) > 0
    expected = quantify(read_pet(tmp_path / "pet"), mask)
    assert report["structures"][0]["total"]["suv_max"] == pytest.approx(expected.suv_max)
    assert report["version"] and report["units"]["mtv_ml"] == "mL"
    # quantify on the written mask agrees
    subprocess.run([sys.executable, "-m", "seganypet.cli", "quantify", "-i", str(tmp_path / "pet"), "-m",
                    str(tmp_path / "out" / "mask.nii.gz"), "-o", str(tmp_path / "q.json")], check=True, capture_output=True)
    again = json.loads((tmp_path / "q.json").read_text())["structures"][0]["total"]
    assert again["mtv_ml"] == pytest.approx(expected.mtv_ml) and again["suv_peak"] == pytest.approx(expected.suv_peak)


def single_slice(folder) -> PetImage:
    """The middle axial slice of ``two_spheres`` as a one-slice DICOM series (a real export can be one)."""
    image = two_spheres()
    k = image.shape[2] // 2
    one = PetImage(np.ascontiguousarray(image.array[:, :, k:k + 1]), image.affine, image.space)
    write_pet_dicom(one, folder)
    return one


def segment_single_slice(folder, out, method: str) -> subprocess.CompletedProcess:
    c = f"{two_spheres().shape[0] // 2},{two_spheres().shape[1] // 2},0"
    return subprocess.run([sys.executable, "-m", "seganypet.cli", "segment", "-i", str(folder), "-o", str(out),
                           "--point", c, "--method", method], capture_output=True, text=True)


@pytest.mark.parametrize("method", ["suv2.5", "pct41", "pct50", "region-growing"])
def test_a_single_slice_is_segmented_by_the_classical_methods(tmp_path, method):
    """Each outlines the hot disc in the one slice (region growing no longer takes the slice's own faces for a leak),
    and the picture is the axial slice, not a coronal MIP one voxel high."""
    one = single_slice(tmp_path / "pet")
    result = segment_single_slice(tmp_path / "pet", tmp_path / "out", method)
    assert result.returncode == 0, result.stderr
    mask = np.asarray(nib.load(tmp_path / "out" / "mask.nii.gz").dataobj) > 0
    truth = one.array == 8.0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9
    width, height = plt.imread(tmp_path / "out" / "overview.png").shape[1::-1]
    assert width < 2 * height


def test_the_model_refuses_a_single_slice_in_one_line(tmp_path):
    """A 3D model answers a lesion clicked in one slice with nothing (MIN_SLICES): it says so instead."""
    single_slice(tmp_path / "pet")
    result = segment_single_slice(tmp_path / "pet", tmp_path / "out", "model")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "3D volumes" in result.stderr


@pytest.mark.parametrize("positive,box,match", [
    ([(1, 2)], None, "point .* is not 3 numbers"),
    ([("a", 1, 1)], None, "point .* is not 3 numbers"),
    ([(float("nan"), 1, 1)], None, "point .* is not 3 numbers"),
    ([], [1, 2], "box .* is not 6 numbers"),
    ([], [[1, 2, 3], [4, 5, "x"]], "box .* is not 6 numbers"),
])
def test_malformed_prompts_are_one_line_errors(positive, box, match):
    """As a prompts file or the viewer may send them: never a numpy traceback."""
    with pytest.raises(SegAnyPetError, match=match):
        make_prompts(two_spheres(), positive, box=box)


def test_a_malformed_prompts_file_or_box_option_is_refused_in_one_line(tmp_path):
    image = two_spheres()
    nib.save(nib.Nifti1Image(image.array, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "pet.nii.gz")
    (tmp_path / "prompts.json").write_text(json.dumps({"targets": [5]}))
    for option in (["--prompts", str(tmp_path / "prompts.json")], ["--box", "1,2,3,a,5,6"],
                   ["--prompts", str(tmp_path / "missing.json")]):
        result = subprocess.run([sys.executable, "-m", "seganypet.cli", "segment", "-i", str(tmp_path / "pet.nii.gz"),
                                 "-o", str(tmp_path / "out"), *option], capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")


@pytest.mark.parametrize("verb", ["segment", "convert", "quantify"])
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, verb):
    """An output folder under a file (as under a read-only mount or a full disk): the file system's refusal, named,
    not a traceback from deep in a writer."""
    image = two_spheres()
    nib.save(nib.Nifti1Image(image.array, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "pet.nii.gz")
    nib.save(nib.Nifti1Image((image.array == 8.0).astype(np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "m.nii.gz")
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "out"
    extra = {"segment": ["-o", str(blocked), "--point", ",".join(str(s // 2) for s in image.shape)],
             "convert": ["-o", str(blocked / "suv.nii.gz")],
             "quantify": ["-m", str(tmp_path / "m.nii.gz"), "-o", str(blocked / "q.json")]}[verb]
    result = subprocess.run([sys.executable, "-m", "seganypet.cli", verb, "-i", str(tmp_path / "pet.nii.gz"), *extra],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(tmp_path / "file") in result.stderr


def test_out_of_volume_click_and_wrong_grid_mask_fail_cleanly(tmp_path):
    image = two_spheres()
    nib.save(nib.Nifti1Image(image.array, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "pet.nii.gz")
    result = subprocess.run([sys.executable, "-m", "seganypet.cli", "segment", "-i", str(tmp_path / "pet.nii.gz"), "-o",
                             str(tmp_path / "out"), "--point", "999,1,1"], capture_output=True, text=True)
    assert result.returncode == 1 and "outside the volume" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    result = subprocess.run([sys.executable, "-m", "seganypet.cli", "quantify", "-i", str(tmp_path / "pet.nii.gz"), "-m",
                             str(tmp_path / "small.nii.gz"), "-o", str(tmp_path / "q.json")], capture_output=True, text=True)
    assert result.returncode == 1 and "does not match" in result.stderr and not (tmp_path / "q.json").exists()
