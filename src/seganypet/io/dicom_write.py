"""Writing an SUV volume as a PET DICOM series with realistic tags.

Used for the phantom's DICOM export, the benchmarks and the tests, so the
DICOM -> SUV path is exercised end to end: the series is stored the way
scanners store it (Units BQML, DecayCorrection START, int16 pixels with a
per-slice RescaleSlope) and reads back through :func:`seganypet.io.read_pet`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from seganypet.io.image import PetImage
from seganypet.io.write import write_atomic

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
F18_HALF_LIFE_S = 6586.2


@dataclass
class AcquisitionInfo:
    """The tags that decide the SUV: who, what, how much and when."""

    weight_kg: float = 75.0
    height_m: float = 1.75
    sex: str = "M"
    dose_bq: float = 3.5e8
    half_life_s: float = F18_HALF_LIFE_S
    injection_time: datetime = field(default_factory=lambda: datetime(2025, 1, 1, 9, 0, 0))
    uptake_s: float = 3600.0
    decay_correction: str = "START"  # or ADMIN
    manufacturer: str = "SEGANYPET PHANTOM"
    patient_id: str = "PHANTOM"
    patient_name: str = "Phantom^Synthetic"
    series_description: str = "PET WB synthetic"

    @property
    def scan_time(self) -> datetime:
        return self.injection_time + timedelta(seconds=self.uptake_s)

    def bqml_per_suv(self) -> float:
        """Bq/mL for SUVbw 1 in the stored (decay-corrected) image."""
        dose = self.dose_bq
        if self.decay_correction == "START":
            dose *= math.pow(2.0, -self.uptake_s / self.half_life_s)
        return dose / (self.weight_kg * 1000.0)


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def write_pet_dicom(
    image: PetImage, folder: str | Path, info: AcquisitionInfo | None = None, *, study_uid: str | None = None
) -> list[Path]:
    """Write ``image`` (SUVbw) as one PET series of single-frame files; return them in slice order.

    The slice direction is written as it lies in the affine; if ``k`` runs against the
    normal of the row/column directions, readers (ours included) order the slices the
    other way, so compare in world coordinates.
    """
    info = info or AcquisitionInfo()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = image.affine_in("LPS")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]
    bqml = image.array.astype(np.float64) * info.bqml_per_suv()

    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    scan = info.scan_time
    paths = []
    n_slices = image.shape[2]
    for k in range(n_slices):
        plane = bqml[:, :, k].T  # (i, j) -> (rows=j, cols=i)
        slope = max(float(plane.max()), 1e-6) / 32767.0
        pixels = np.clip(np.round(plane / slope), -32768, 32767).astype(np.int16)
        position = affine[:3, 3] + k * affine[:3, 2]
        ds = _slice_dataset(info, study_uid, series_uid, frame_uid, scan)
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.NumberOfSlices = n_slices
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows, between columns
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SliceLocation = f"{position[2]:.6f}"
        ds.Rows, ds.Columns = pixels.shape
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = "0"
        ds.LargestImagePixelValue = int(pixels.max())
        ds.SmallestImagePixelValue = int(pixels.min())
        ds["LargestImagePixelValue"].VR = ds["SmallestImagePixelValue"].VR = "SS"
        ds.PixelData = pixels.tobytes()
        path = folder / f"PET_{k + 1:04d}.dcm"
        write_atomic(path, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
        paths.append(path)
    return paths


def _slice_dataset(info: AcquisitionInfo, study_uid: str, series_uid: str, frame_uid: str, scan: datetime) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = PET_IMAGE_STORAGE, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(scan)
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(scan)
    ds.AccessionNumber = ""
    ds.Modality = "PT"
    ds.Manufacturer = info.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET/CT whole body"
    ds.SeriesDescription = info.series_description
    ds.PatientName, ds.PatientID = info.patient_name, info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = info.sex
    ds.PatientSize = f"{info.height_m:.2f}"
    ds.PatientWeight = f"{info.weight_kg:.1f}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID, ds.SeriesNumber = "1", 1
    ds.PositionReferenceIndicator = ""
    ds.Laterality = ""  # whole body: not a paired structure
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.Units = "BQML"
    ds.DecayCorrection = info.decay_correction
    ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CountsSource, ds.RandomsCorrectionMethod = "EMISSION", "DLYD"
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.AttenuationCorrectionMethod = "CTAC"
    ds.DecayFactor = f"{math.pow(2.0, info.uptake_s / info.half_life_s):.6f}"
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 120000
    ds.AxialMash = [5, 6]
    ds.CollimatorType = "NONE"
    ds.PatientOrientationCodeSequence = Sequence()  # with it present, PatientPosition must be absent
    ds.PatientGantryRelationshipCodeSequence = Sequence()

    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "77004003", "SCT", "^18^Fluorine"
    drug = Dataset()
    drug.CodeValue, drug.CodingSchemeDesignator, drug.CodeMeaning = "35321007", "SCT", "Fluorodeoxyglucose F^18^"
    rp = Dataset()
    rp.Radiopharmaceutical = "Fluorodeoxyglucose"
    rp.RadiopharmaceuticalStartTime = _tm(info.injection_time)
    rp.RadiopharmaceuticalStartDateTime = info.injection_time.strftime("%Y%m%d%H%M%S.%f")
    rp.RadionuclideTotalDose = f"{info.dose_bq:.1f}"
    rp.RadionuclideHalfLife = f"{info.half_life_s:.1f}"
    rp.RadionuclidePositronFraction = "0.9673"
    rp.RadionuclideCodeSequence = Sequence([nuclide])
    rp.RadiopharmaceuticalCodeSequence = Sequence([drug])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    return ds
