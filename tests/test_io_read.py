"""Reading geometry, writing NIfTI, and the one-line errors on bad input."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import write_series
from seganypet import SegAnyPetError
from seganypet.io import PetImage, Reorientation, read_pet, write_nifti
from seganypet.io.dicom_seg import read_dicom_seg, write_dicom_seg
from seganypet.io.dicom_write import AcquisitionInfo, write_pet_dicom


def rotated_affine(spacing=(2.0, 3.0, 4.0), origin=(10.0, -20.0, 30.0), angle=0.4) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def test_nifti_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((7, 6, 5)).astype(np.float32) * 12
    nib.save(nib.Nifti1Image(data, rotated_affine()), tmp_path / "in.nii.gz")
    first = read_pet(tmp_path / "in.nii.gz")
    write_nifti(first, tmp_path / "out.nii.gz")
    second = read_pet(tmp_path / "out.nii.gz")
    assert np.array_equal(first.array, data) and np.array_equal(second.array, first.array)
    assert np.array_equal(second.affine, first.affine)
    assert first.space == "RAS"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_volumes_keep_index_order_and_lps_geometry(tmp_path, suffix):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) / 10  # (i, j, k), SUV 0-11.9
    img = sitk.GetImageFromArray(data.T)  # sitk wants (k, j, i)
    img.SetSpacing((2.0, 3.0, 4.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / f"pet{suffix}"))
    image = read_pet(tmp_path / f"pet{suffix}")
    assert np.array_equal(image.array, data)
    assert image.space == "LPS"
    # the world point of voxel (1, 2, 3) agrees with ITK's own
    expected = img.TransformIndexToPhysicalPoint((1, 2, 3))
    np.testing.assert_allclose(image.voxel_to_world([1, 2, 3])[0], expected)
    # and NIfTI output lands in the same physical place (RAS = LPS with x, y negated)
    write_nifti(image, tmp_path / "out.nii.gz")
    ras = nib.load(tmp_path / "out.nii.gz").affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(ras[:3], np.array(expected) * [-1, -1, 1])


def test_bqml_volume_needs_weight_and_dose(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 10000.0, np.float32), np.eye(4)), tmp_path / "bq.nii.gz")
    with pytest.raises(SegAnyPetError, match="--weight"):
        read_pet(tmp_path / "bq.nii.gz", units="bqml")
    image = read_pet(tmp_path / "bq.nii.gz", units="bqml", weight_kg=70.0, dose_mbq=350.0, uptake_min=60.0)
    np.testing.assert_allclose(image.array, 10000.0 * 70_000.0 / (350e6 * 2 ** (-3600.0 / 6586.2)), rtol=1e-6)


def test_dicom_slices_are_ordered_by_position_not_name(tmp_path):
    values = np.zeros((4, 3, 6))
    values[:] = np.arange(6) * 100 + 100  # slice k holds 100 * (k + 1)
    paths = write_series(tmp_path / "s", values)
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(len(paths))
    for path, n in zip(paths, shuffled):  # scramble file names and InstanceNumber
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(n) + 1
        ds.save_as(tmp_path / "s" / f"x{n:03d}.tmp")
        path.unlink()
    image = read_pet(tmp_path / "s")
    stored = image.array / image.array[0, 0, 0] * 100
    np.testing.assert_allclose(stored[0, 0, :], np.arange(6) * 100 + 100, rtol=1e-6)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in image.meta.source_files]
    assert z == sorted(z)


def test_dicom_geometry_with_oblique_orientation_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    suv = rng.random((9, 8, 7)).astype(np.float32) * 8
    affine = rotated_affine((3.0, 3.0, 2.0), angle=0.3)
    affine[:3, 2] = np.cross(affine[:3, 0] / 3.0, affine[:3, 1] / 3.0) * 2.0  # k along +normal
    write_pet_dicom(PetImage(suv, affine, "LPS"), tmp_path / "d", AcquisitionInfo())
    image = read_pet(tmp_path / "d")
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_allclose(image.array, suv, rtol=2e-4, atol=2e-4)


def test_convert_matches_dcm2niix_geometry(tmp_path):
    """Our SUV NIfTI and dcm2niix's NIfTI of the same series hold the same voxels at the same places."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (Debian package dcm2niix)")
    rng = np.random.default_rng(5)
    suv = rng.random((12, 10, 8)).astype(np.float32) * 6 + 0.5
    affine = np.diag([4.0, 4.0, 3.0, 1.0])
    affine[:3, 3] = (-200.0, -180.0, -900.0)
    write_pet_dicom(PetImage(suv, affine, "LPS"), tmp_path / "d", AcquisitionInfo())
    out = tmp_path / "n"
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "y", "-f", "ref", "-o", str(out), str(tmp_path / "d")], check=True, capture_output=True)
    ours = read_pet(tmp_path / "d")
    write_nifti(ours, tmp_path / "ours.nii.gz")
    a = nib.as_closest_canonical(nib.load(tmp_path / "ours.nii.gz"))
    b = nib.as_closest_canonical(nib.load(out / "ref.nii.gz"))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    da, db = a.get_fdata(), b.get_fdata()
    ratio = da[db > 0] / db[db > 0]  # dcm2niix keeps Bq/mL: SUV / (Bq/mL) is one constant factor
    np.testing.assert_allclose(ratio, ours.meta.suv_factor, rtol=2e-3)


# --- bad input: one line that names the file and the problem ------------------------------------

def _raises(path, match, **kwargs):
    with pytest.raises(SegAnyPetError, match=match) as info:
        read_pet(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("what,values,match", [
    ("CT in HU", lambda rng: rng.uniform(-1024, 1500, (20, 20, 10)), "as CT does in HU"),
    ("Bq/mL", lambda rng: rng.uniform(0, 30000, (20, 20, 10)), "--units bqml"),
])
def test_a_volume_that_cannot_be_suv_is_refused(tmp_path, what, values, match):
    """A volume file carries no units: CT (a PET/CT dataset's other channel) or Bq/mL read as SUV would give numbers
    silently wrong by orders of magnitude."""
    nib.save(nib.Nifti1Image(values(np.random.default_rng(0)).astype(np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    _raises(tmp_path / "scan.nii.gz", match)


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.nii.gz", "no such file")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "empty")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    _raises(tmp_path / "junk", "no DICOM")


def test_mixed_series_are_listed(tmp_path):
    """Two PET series and a CT: the error lists the two PET series to choose from, not the CT beside them."""
    write_series(tmp_path / "a", np.full((4, 4, 3), 100.0))
    write_series(tmp_path / "b", np.full((4, 4, 3), 100.0))
    series = sorted({str(pydicom.dcmread(p).SeriesInstanceUID) for p in tmp_path.rglob("*.dcm")})
    write_series(tmp_path / "ct", np.full((4, 4, 3), 100.0), Modality="CT")
    ct = str(pydicom.dcmread(next((tmp_path / "ct").rglob("*.dcm"))).SeriesInstanceUID)
    message = _raises(tmp_path, "2 PET series")
    assert all(uid in message for uid in series) and ct not in message
    assert read_pet(tmp_path, series_uid=series[0]).meta.series_instance_uid == series[0]


def test_a_series_linked_into_the_folder_is_read_and_a_link_loop_ends(tmp_path):
    """Data stores and cluster scratch link series into a study folder; a link back up the tree must not loop."""
    write_series(tmp_path / "store" / "pet", np.full((4, 4, 3), 100.0))
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "pet").symlink_to(tmp_path / "store" / "pet", target_is_directory=True)
    (tmp_path / "study" / "up").symlink_to(tmp_path / "study", target_is_directory=True)
    assert read_pet(tmp_path / "study").shape == (4, 4, 3)


def test_dicom_without_preamble_and_file_meta_reads_as_with_them(tmp_path):
    """Older scanners and archives write bare data sets (no 128-byte preamble, no DICM, no file meta), which dcm2niix
    reads; a text file beside them is still not taken for one."""
    paths = write_series(tmp_path / "plain", np.arange(48, dtype=float).reshape(4, 4, 3) * 100)
    (tmp_path / "bare").mkdir()
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.preamble = None
        del ds.file_meta
        pydicom.dcmwrite(tmp_path / "bare" / path.name, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare" / paths[0].name).read_bytes()[:2] == b"\x08\x00"
    (tmp_path / "bare" / "README.txt").write_text("exported by hand")
    image = read_pet(tmp_path / "bare")
    assert np.array_equal(image.array, read_pet(tmp_path / "plain").array)
    labels = (image.array > image.array.mean()).astype(np.uint8)
    write_dicom_seg(image, labels, {1: "lesion"}, tmp_path / "seg.dcm")  # the SEG reads the bare headers alike
    assert np.array_equal(read_dicom_seg(tmp_path / "seg.dcm", image)[0], labels)


def test_the_attenuation_corrected_series_is_read_from_beside_its_uncorrected_twin(tmp_path):
    """Scanners export the non-attenuation-corrected series beside the corrected one; only the corrected has an SUV, so
    it is the one read. A CorrectedImage of the single value ATTN counts as corrected (not as the letters A, T, T, N)."""
    write_series(tmp_path / "ac", np.full((4, 4, 3), 100.0), CorrectedImage="ATTN")
    write_series(tmp_path / "nac", np.full((4, 4, 3), 300.0), CorrectedImage=["DECY", "NORM"])
    ac = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in (tmp_path / "ac").rglob("*.dcm")}.pop()
    assert read_pet(tmp_path).meta.series_instance_uid == ac
    _raises(tmp_path / "nac", "lacks ATTN")


def test_non_pet_modality(tmp_path):
    write_series(tmp_path, np.full((4, 4, 3), 100.0), Modality="CT")
    _raises(tmp_path, "not PT")


def test_missing_weight(tmp_path):
    write_series(tmp_path, np.full((4, 4, 3), 100.0), PatientWeight=None)
    _raises(tmp_path, "PatientWeight")


def test_missing_dose(tmp_path):
    write_series(tmp_path, np.full((4, 4, 3), 100.0), RadionuclideTotalDose=None)
    _raises(tmp_path, "RadionuclideTotalDose")


def test_dynamic_dicom_refused(tmp_path):
    paths = write_series(tmp_path, np.full((4, 4, 4), 100.0))
    for path in paths[2:]:  # frames 2: the same positions again
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = pydicom.dcmread(paths[0]).ImagePositionPatient
        ds.save_as(path)
    _raises(tmp_path, "dynamic")


def test_gantry_tilt_refused(tmp_path):
    paths = write_series(tmp_path, np.full((4, 4, 4), 100.0))
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k * 3.0, z]  # sheared along y by tan(27 deg)
        ds.save_as(path)
    _raises(tmp_path, "gantry tilt")


def test_uneven_spacing_refused(tmp_path):
    paths = write_series(tmp_path, np.full((4, 4, 5), 100.0))
    paths[2].unlink()  # a missing slice
    _raises(tmp_path, "uneven slice spacing")


def test_4d_nifti_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 4), np.float32), np.eye(4)), tmp_path / "dyn.nii.gz")
    _raises(tmp_path / "dyn.nii.gz", "4D")


def test_nan_voxels_refused(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    _raises(tmp_path / "nan.nii.gz", "NaN")


def test_truncated_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    raw = gzip.decompress((tmp_path / "ok.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _raises(tmp_path / "cut.nii.gz", "corrupt")


def test_garbage_volume(tmp_path):
    (tmp_path / "bad.nrrd").write_bytes(b"this is not an image\x00\x01")
    _raises(tmp_path / "bad.nrrd", "corrupt")


def test_truncated_dicom_names_the_slice(tmp_path):
    paths = write_series(tmp_path, np.full((16, 16, 3), 100.0))
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) - 300])
    with pytest.raises(SegAnyPetError, match="truncated or corrupt") as info:
        read_pet(tmp_path)
    assert paths[1].name in str(info.value)


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_compressed_dicom_reads_as_the_uncompressed_series(tmp_path, syntax):
    """PACS exports are often compressed: each lossless DICOM compression, transcoded by GDCM, gives the same SUV."""
    gdcm = pytest.importorskip("gdcm")
    rng = np.random.default_rng(3)
    paths = write_series(tmp_path / "plain", rng.uniform(0, 30000, (16, 12, 4)).round(), info=AcquisitionInfo(weight_kg=70.0))
    (tmp_path / "packed").mkdir()
    for path in paths:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(tmp_path / "packed" / path.name))
        assert writer.Write()
    packed = pydicom.dcmread(tmp_path / "packed" / paths[0].name).file_meta.TransferSyntaxUID
    assert packed.is_compressed
    assert np.array_equal(read_pet(tmp_path / "packed").array, read_pet(tmp_path / "plain").array)


def test_undecodable_compressed_dicom_is_named_in_one_line(tmp_path):
    paths = write_series(tmp_path, np.full((16, 16, 3), 100.0))
    ds = pydicom.dcmread(paths[1])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless  # the raw pixels left as they are: no codestream
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(paths[1], enforce_file_format=True)
    message = _raises(tmp_path, "cannot decode")
    assert paths[1].name in message and "JPEG 2000" in message


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "seganypet.cli", "info", "-i", str(tmp_path / "missing.nii.gz")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.nii.gz" in lines[0] and "no such file" in lines[0]


def test_cli_info_and_convert(tmp_path):
    write_series(tmp_path / "d", np.full((6, 5, 4), 5000.0), info=AcquisitionInfo(weight_kg=80.0, dose_bq=370e6))
    info = subprocess.run([sys.executable, "-m", "seganypet.cli", "info", "-i", str(tmp_path / "d")],
                          capture_output=True, text=True, check=True)
    assert "6 x 5 x 4" in info.stdout and "SUVbw" in info.stdout and "80" in info.stdout
    subprocess.run([sys.executable, "-m", "seganypet.cli", "-q", "convert", "-i", str(tmp_path / "d"),
                    "-o", str(tmp_path / "suv.nii.gz")], check=True)
    assert nib.load(tmp_path / "suv.nii.gz").shape == (6, 5, 4)


def test_written_files_are_readable_like_any_other(tmp_path):
    import os
    import stat

    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), tmp_path / "in.nii.gz")
    write_nifti(read_pet(tmp_path / "in.nii.gz"), tmp_path / "out.nii.gz")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.nii.gz").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


@pytest.mark.parametrize("codes", ["LPS", "LAS", "RAS", "SAL", "PIL", "ASR"])
def test_reorientation_turns_any_voxel_order_into_the_models_and_maps_points_and_boxes_both_ways(codes):
    """The model's order is DICOM's axial one: i to the patient's left, j to the back, k to the head. PIL and ASR are
    cyclic permutations, whose inverse is not themselves."""
    rng = np.random.default_rng(1)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (5.0, -7.0, 11.0)
    model_order = PetImage(rng.random((7, 9, 11)).astype(np.float32), affine, "LPS")
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(model_order.affine_in("RAS")),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    written = PetImage(nib.orientations.apply_orientation(model_order.array, ornt),
                       model_order.affine_in("RAS") @ nib.orientations.inv_ornt_aff(ornt, model_order.shape), "RAS")
    orient = Reorientation.to_lps(written)
    turned = orient.image(written)
    assert np.array_equal(turned.array, model_order.array)
    assert np.allclose(turned.affine_in("LPS"), model_order.affine) and np.allclose(turned.spacing, [2, 3, 4])
    point = np.array([1.25, 2.0, 3.5])
    assert np.allclose(turned.voxel_to_world(orient.point(point)), written.voxel_to_world(point))
    assert np.allclose(orient.point_back(orient.point(point)), point)
    box = (slice(1, 3), slice(2, 5), slice(0, 4))
    drawn = np.zeros(written.shape, bool)
    orient.array(drawn)[box] = True  # a view: written through to the input's grid
    expected = np.zeros(written.shape, bool)
    expected[orient.region_back(box)] = True
    assert np.array_equal(drawn, expected) and drawn.sum() == 2 * 3 * 4
