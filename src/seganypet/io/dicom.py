"""Reading a PET DICOM series into a :class:`PetImage` in SUVbw.

Slices are ordered by their position along the slice normal, never by file
name or InstanceNumber; a series that is not one regular 3D grid (gantry
tilt, uneven spacing, several time frames) is refused rather than resampled
behind the user's back.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage, PetMetadata
from seganypet.io.suv import (
    corrections,
    half_life_s,
    injected_dose_bq,
    injection_time,
    radiopharmaceutical,
    series_scan_time,
    suvbw_factor,
)
from seganypet.progress import track

log = logging.getLogger(__name__)

SPACING_TOLERANCE_MM = 0.01  # relative tolerance is added on top, see _check_grid


def dcmread(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file, with or without the 128-byte preamble and file meta that older scanners and archives leave out
    (dcm2niix reads those too). Only a file that starts as a bare data set does (group 0008, or 0002, first) is
    forced, so that a README or a NIfTI beside a series is never parsed as one."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        with open(path, "rb") as f:
            if f.read(2) not in (b"\x08\x00", b"\x02\x00"):
                raise
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # bare data sets are uncompressed, in the encoding they were read in
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``, through linked folders too (data stores link series in), each real folder once, so
    that a link back up the tree ends the walk rather than looping."""
    seen: set[str] = set()
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(root, name) for name in names if name != "DICOMDIR"]
    return sorted(p for p in files if p.is_file())


def _read_headers(folder: Path) -> list[tuple[Path, Dataset]]:
    files = _files_below(folder)
    headers = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
            continue  # not DICOM: README, thumbnails, ... are common beside a series
        if "SeriesInstanceUID" in ds and "SOPClassUID" in ds:
            headers.append((path, ds))
    return headers


def list_series(folder: str | Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """All image series below ``folder``, by SeriesInstanceUID."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in _read_headers(Path(folder)):
        series[str(ds.SeriesInstanceUID)].append((path, ds))
    return dict(series)


def _describe(uid: str, items: list[tuple[Path, Dataset]]) -> str:
    ds = items[0][1]
    return f"{uid} ({ds.get('Modality', '?')}, {str(ds.get('SeriesDescription', '')).strip() or 'no description'}, {len(items)} files)"


def _pick_series(folder: Path, series_uid: str | None) -> list[tuple[Path, Dataset]]:
    series = list_series(folder)
    if not series:
        raise SegAnyPetError("no DICOM image files found in this folder", folder)
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_describe(u, s) for u, s in series.items())
            raise SegAnyPetError(f"series {series_uid} is not here; found: {listing}", folder)
        return series[series_uid]
    if len(series) > 1:
        pet = {u: s for u, s in series.items() if str(s[0][1].get("Modality", "")) == "PT"}
        if len(pet) == 1:  # a PET series beside its CT (or its RTSTRUCT): the PET is what was meant
            return next(iter(pet.values()))
        corrected = {u: s for u, s in pet.items() if "ATTN" in corrections(s[0][1])}
        if len(corrected) == 1:  # scanners export the uncorrected (NAC) series beside it, which has no SUV
            uid, items = next(iter(corrected.items()))
            log.info("%d PET series: reading the one corrected for attenuation, %s", len(pet), uid)
            return items
        choices, kind = (pet, "PET series") if pet else (series, "series")  # the CTs and RTSTRUCTs beside are no choice
        listing = "; ".join(_describe(u, s) for u, s in choices.items())
        raise SegAnyPetError(f"folder holds {len(choices)} {kind}, pass one with --series UID: {listing}", folder)
    return next(iter(series.values()))


def _slice_geometry(items: list[tuple[Path, Dataset]], folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort slices along the normal; return (order, row/col/normal directions, positions)."""
    try:
        orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in items])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    except (AttributeError, ValueError, TypeError) as exc:
        raise SegAnyPetError(f"a slice lacks ImageOrientationPatient/ImagePositionPatient ({exc})", folder) from None
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise SegAnyPetError("slices have different ImageOrientationPatient: not one 3D volume", folder)
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]  # along a row (i), along a column (j)
    normal = np.cross(row_dir, col_dir)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    return order, np.stack([row_dir, col_dir, normal]), positions[order]


def _check_grid(positions: np.ndarray, normal: np.ndarray, items: list[tuple[Path, Dataset]], folder: Path) -> float:
    """Slice spacing in mm, after refusing duplicates (time frames), tilt and uneven gaps."""
    ds0 = items[0][1]
    if len(positions) == 1:
        return float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    steps = np.diff(positions, axis=0)
    gaps = steps @ normal
    if np.any(gaps < SPACING_TOLERANCE_MM):
        frames = ds0.get("NumberOfTimeSlices") or "several"
        raise SegAnyPetError(
            f"several slices share one position ({frames} time frames?): a dynamic/4D series is not supported, "
            "export one frame as its own series",
            folder,
        )
    off_normal = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    if off_normal.max() > 0.01 * gaps.mean() + SPACING_TOLERANCE_MM:
        raise SegAnyPetError("slices are sheared off the slice normal (gantry tilt): not supported, reslice first", folder)
    if gaps.max() - gaps.min() > 0.01 * gaps.mean() + SPACING_TOLERANCE_MM:
        raise SegAnyPetError(
            f"uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm; missing slices?): not supported", folder
        )
    return float(gaps.mean())


def _reason(exc: Exception) -> str:
    """An exception in one line: pydicom's decoders explain themselves over several."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _rescaled_pixels(path: Path) -> np.ndarray:
    damaged = "truncated or corrupt file?"
    try:
        ds = dcmread(path)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise SegAnyPetError(f"cannot read pixel data ({_reason(exc)}); {damaged}", path) from None
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            damaged = ("a damaged file, or no decoder for it installed (python-gdcm, a seganypet dependency, reads "
                       f"every DICOM compression); it is {syntax.name}")
        raise SegAnyPetError(f"cannot decode its pixel data ({_reason(exc)}): {damaged}", path) from None
    if pixels.ndim != 2:
        raise SegAnyPetError(f"multi-frame image ({pixels.shape}): enhanced/4D PET is not supported", path)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float64) * slope + intercept


def read_dicom_series(folder: str | Path, series_uid: str | None = None, weight_kg: float | None = None) -> PetImage:
    """Read one PET series below ``folder`` (or the file itself) and convert it to SUVbw.

    weight_kg: the patient's weight, in place of PatientWeight: anonymisation strips it, and a wrong weight in the
    header (a typing slip at the scanner) is the commonest reason an SUV must be recomputed."""
    folder = Path(folder)
    if folder.is_file():
        try:
            ds = dcmread(folder, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
            raise SegAnyPetError(f"not a readable DICOM file ({exc})", folder) from None
        items = [(folder, ds)]
    else:
        items = _pick_series(folder, series_uid)
    first = items[0][1]
    modality = str(first.get("Modality", "")).strip()
    if modality != "PT":
        raise SegAnyPetError(f"modality is {modality or 'missing'!r}, not PT: seganypet reads PET only", items[0][0])

    order, directions, positions = _slice_geometry(items, folder)
    items = [items[i] for i in order]
    slice_step = _check_grid(positions, directions[2], items, folder)

    headers = [ds for _, ds in items]
    notes: list[str] = []
    if weight_kg is not None:
        if weight_kg <= 0:
            raise SegAnyPetError(f"--weight must be positive, got {weight_kg:g}", folder)
        notes.append(f"PatientWeight {weight_kg:g} kg as given, not the header's {first.get('PatientWeight') or 'none'}")
        for ds in headers:  # the headers read here only, never the files
            ds.PatientWeight = weight_kg
    try:
        scan_time = series_scan_time(headers)
        factors = [suvbw_factor(ds, scan_time, notes if n == 0 else None) for n, ds in enumerate(headers)]
    except SegAnyPetError as exc:
        raise SegAnyPetError(exc.problem, folder) from None

    slices = []
    for (path, _), factor in track(zip(items, factors, strict=True), "reading DICOM", total=len(items)):
        slices.append(_rescaled_pixels(path) * factor)
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise SegAnyPetError(f"slices have different sizes {sorted(shapes)}", folder)
    array = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (i=col, j=row, k)
    if not np.isfinite(array).all():
        raise SegAnyPetError("pixel data holds NaN or infinite values", folder)

    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # PixelSpacing = [between rows, between columns]
    affine = np.eye(4)
    affine[:3, 0] = directions[0] * col_spacing
    affine[:3, 1] = directions[1] * row_spacing
    affine[:3, 2] = directions[2] * slice_step
    affine[:3, 3] = positions[0]

    rp = radiopharmaceutical(first)
    meta = PetMetadata(
        patient_weight_kg=float(first.PatientWeight) if first.get("PatientWeight") else None,
        patient_height_m=float(first.PatientSize) if first.get("PatientSize") else None,
        patient_sex=str(first.get("PatientSex", "")).strip() or None,
        tracer=str(rp.get("Radiopharmaceutical", "")).strip() or None,
        radionuclide=_code_meaning(rp.get("RadionuclideCodeSequence")),
        manufacturer=str(first.get("Manufacturer", "")).strip() or None,
        source_units=str(first.get("Units", "")).strip() or None,
        decay_correction=str(first.get("DecayCorrection", "")).strip() or None,
        scan_time=scan_time,
        patient_id=str(first.get("PatientID", "")) or None,
        patient_name=str(first.get("PatientName", "")) or None,
        study_instance_uid=str(first.get("StudyInstanceUID", "")) or None,
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
        source_files=[p for p, _ in items],
        suv_factor=factors[0] if np.allclose(factors, factors[0], rtol=1e-9) else None,
        notes=notes,
    )
    for attribute, getter in (("injected_dose_bq", injected_dose_bq), ("half_life_s", half_life_s)):
        try:
            setattr(meta, attribute, getter(first))
        except SegAnyPetError:
            pass  # not needed for GML series; reported as unknown by `info`
    try:
        meta.injection_time = injection_time(first, scan_time)
    except SegAnyPetError:
        pass
    log.info("read %d slices of series %s", len(items), meta.series_instance_uid)
    return PetImage(array=array.astype(np.float32), affine=affine, space="LPS", units="SUVbw", meta=meta, source=folder)


def _code_meaning(seq) -> str | None:
    return str(seq[0].get("CodeMeaning", "")).strip() or None if seq else None
