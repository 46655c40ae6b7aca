"""Masks made elsewhere: an RTSTRUCT's contours and a DICOM SEG come back on the scan's voxels, and quantify reads them."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import shared_data
from seganypet import SegAnyPetError
from seganypet.io import PetImage, read_pet, write_nifti
from seganypet.io.dicom_seg import write_dicom_seg
from seganypet.io.dicom_write import write_pet_dicom
from seganypet.io.masks import read_mask, read_rtstruct

SPACING = 4.0


def write_rtstruct(path, image: PetImage, rois: dict[str, list[tuple[int, list[tuple[float, float]]]]]) -> None:
    """A minimal RTSTRUCT: per ROI name, closed planar contours as (slice k, [(i, j) voxel corners]), in LPS mm."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", image.meta.study_instance_uid, generate_uid()
    affine = image.affine_in("LPS")
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, Sequence()
        for k, corners in contours:
            ijk = np.array([[i, j, k, 1.0] for i, j in corners])
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(corners)
            contour.ContourData = [f"{v:.4f}" for v in (ijk @ affine.T)[:, :3].ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)


def square(lo: float, hi: float) -> list[tuple[float, float]]:
    return [(lo, lo), (hi, lo), (hi, hi), (lo, hi)]


@pytest.fixture
def scan(tmp_path) -> PetImage:
    rng = np.random.default_rng(1)
    write_pet_dicom(PetImage(rng.uniform(0.5, 4.0, (24, 24, 6)).astype(np.float32), np.diag([SPACING] * 3 + [1.0]), "LPS"),
                    tmp_path / "pet")
    return read_pet(tmp_path / "pet")


def test_rtstruct_contours_fill_the_voxel_centres_inside_them_with_holes(tmp_path, scan):
    """A ring (a square with a square hole) on slices 1-3 and a spot on slice 4, drawn by hand: each voxel whose centre
    lies inside, by the even-odd rule, and the spot's centres on its edge (as mask tracers draw them) count."""
    rois = {"ring": [(k, square(3.5, 14.5)) for k in (1, 2, 3)] + [(k, square(6.5, 11.5)) for k in (1, 2, 3)],
            "spot": [(4, square(18.0, 20.0))]}
    write_rtstruct(tmp_path / "rs.dcm", scan, rois)
    expected = np.zeros(scan.shape, np.int32)
    expected[4:15, 4:15, 1:4] = 1
    expected[7:12, 7:12, 1:4] = 0
    expected[18:21, 18:21, 4] = 2
    labels, names = read_rtstruct(tmp_path / "rs.dcm", scan)
    assert names == {1: "ring", 2: "spot"} and np.array_equal(labels, expected)
    # placed by patient coordinates: the same contours on the scan converted to NIfTI (RAS, axes flipped)
    write_nifti(scan, tmp_path / "pet.nii.gz")
    on_nifti = read_pet(tmp_path / "pet.nii.gz")
    assert np.array_equal(read_mask(tmp_path / "rs.dcm", on_nifti)[0], expected)


def test_rtstruct_contours_drawn_on_the_ct_planes_fill_each_pet_slice_once(tmp_path, scan):
    """Contours every 3 mm (the CT's planes) on a PET of 4 mm slices: two planes fall nearest one PET slice, and filling
    both by the even-odd rule would cancel them; each slice takes its nearest plane only."""
    write_rtstruct(tmp_path / "rs.dcm", scan, {"liver": [(k, square(3.5, 14.5)) for k in (1.0, 1.75, 2.5, 3.25, 4.0)]})
    expected = np.zeros(scan.shape, np.int32)
    expected[4:15, 4:15, 1:5] = 1
    assert np.array_equal(read_rtstruct(tmp_path / "rs.dcm", scan)[0], expected)


def test_quantify_reads_rtstruct_and_dicom_seg_masks_as_it_reads_label_maps(tmp_path, scan):
    labels = np.zeros(scan.shape, np.uint8)
    labels[4:15, 4:15, 1:4] = 1
    write_nifti(scan.with_array(labels.astype(np.float32)), tmp_path / "mask.nii.gz")
    write_dicom_seg(scan, labels, {1: "liver"}, tmp_path / "seg.dcm")
    write_rtstruct(tmp_path / "rs.dcm", scan, {"liver": [(k, square(3.5, 14.5)) for k in (1, 2, 3)]})
    totals = {}
    for mask in ("mask.nii.gz", "seg.dcm", "rs.dcm"):
        result = subprocess.run([sys.executable, "-m", "seganypet.cli", "quantify", "-i", str(tmp_path / "pet"), "-m",
                                 str(tmp_path / mask), "-o", str(tmp_path / f"{mask}.json")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        structures = json.loads((tmp_path / f"{mask}.json").read_text())["structures"]
        totals[mask] = structures[0]["total"]
        assert len(structures) == 1 and (mask == "mask.nii.gz" or structures[0]["name"] == "liver")
    expected = scan.array[labels > 0]
    for total in totals.values():
        assert total["suv_max"] == pytest.approx(expected.max(), rel=1e-5)
        assert total["suv_mean"] == pytest.approx(expected.mean(), rel=1e-5)
        assert total["mtv_ml"] == pytest.approx(expected.size * SPACING ** 3 / 1000)


def test_an_rtstruct_and_a_seg_without_preamble_read_as_with_it(tmp_path, scan):
    """Archives strip the 128-byte preamble and DICM prefix from masks as they do from images; both readers go through
    the same forgiving read as the PET series."""
    labels = np.zeros(scan.shape, np.uint8)
    labels[4:15, 4:15, 1:4] = 1
    write_dicom_seg(scan, labels, {1: "liver"}, tmp_path / "seg.dcm")
    write_rtstruct(tmp_path / "rs.dcm", scan, {"liver": [(k, square(3.5, 14.5)) for k in (1, 2, 3)]})
    for name in ("seg.dcm", "rs.dcm"):
        ds = pydicom.dcmread(tmp_path / name)
        ds.preamble = None
        pydicom.dcmwrite(tmp_path / f"bare_{name}", ds, enforce_file_format=False)
        assert np.array_equal(read_mask(tmp_path / f"bare_{name}", scan)[0], read_mask(tmp_path / name, scan)[0])
        assert np.array_equal(read_mask(tmp_path / name, scan)[0], labels)


def test_a_mask_of_another_series_or_of_no_kind_is_refused_in_one_line(tmp_path, scan):
    labels = np.zeros(scan.shape, np.uint8)
    labels[2:5, 2:5, 2] = 1
    write_pet_dicom(scan, tmp_path / "other")  # the same pixels, but new UIDs: another series
    other = read_pet(tmp_path / "other")
    write_dicom_seg(other, labels, {1: "lesion"}, tmp_path / "seg.dcm")
    with pytest.raises(SegAnyPetError, match="another series"):
        read_mask(tmp_path / "seg.dcm", scan)
    pydicom.dcmread(next((tmp_path / "pet").rglob("*.dcm"))).save_as(tmp_path / "pt.dcm")
    with pytest.raises(SegAnyPetError, match="not a DICOM SEG or RTSTRUCT"):
        read_mask(tmp_path / "pt.dcm", scan)
    (tmp_path / "notes.txt").write_text("not a mask")
    with pytest.raises(SegAnyPetError, match="neither a label map"):
        read_mask(tmp_path / "notes.txt", scan)
    write_rtstruct(tmp_path / "off.dcm", scan, {"elsewhere": [(40, square(2, 5))]})  # contours beyond the last slice
    with pytest.raises(SegAnyPetError, match="empty"):
        read_mask(tmp_path / "off.dcm", scan)


def test_the_ibsi_dro_rtstruct_lies_within_its_reference_mask():
    """The IBSI SUV object's own RTSTRUCT, filled on its PET, against the NIfTI mask shipped beside it (drawn a voxel
    wider, and a slice further at each end): inside it, and the same disc on every contoured slice."""
    folder = shared_data("real", "ibsi_suv_dro", "DRO_0_0")
    image = read_pet(folder / "PT")
    labels, names = read_rtstruct(folder / "RS" / "RS_dro_0_0.dcm", image)
    reference = nib.load(folder / "mask" / "DRO_mask.nii.gz")
    world = nib.affines.apply_affine(reference.affine, np.argwhere(np.asarray(reference.dataobj) > 0.5))
    truth = np.zeros(image.shape, bool)
    truth[tuple(np.rint(image.world_to_voxel(world, space="RAS")).astype(int).T)] = True
    roi = labels > 0
    assert names == {1: "region_1"} and roi.any() and not (roi & ~truth).any()
    for k in np.flatnonzero(roi.any((0, 1))):
        assert 2 * (roi[..., k] & truth[..., k]).sum() / (roi[..., k].sum() + truth[..., k].sum()) > 0.95


def test_a_probability_map_is_not_taken_for_a_label_map(tmp_path, scan):
    """Rounding it would threshold it at 0.5 without saying so."""
    probability = np.random.default_rng(0).random(scan.shape).astype(np.float32)
    write_nifti(scan.with_array(probability), tmp_path / "probability.nii.gz")
    with pytest.raises(SegAnyPetError, match="probability map"):
        read_mask(tmp_path / "probability.nii.gz", scan)
