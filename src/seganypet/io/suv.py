"""DICOM PET -> SUVbw, following the QIBA vendor-neutral recipe.

The factor returned here multiplies the *rescaled* stored values
(``pixel * RescaleSlope + RescaleIntercept``) of one slice to give SUVbw in g/mL.
Every branch either gives the right number or raises :class:`SegAnyPetError`;
nothing guesses silently (the one heuristic, a dose recorded in MBq, is logged
and noted in the metadata).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from seganypet.errors import SegAnyPetError

log = logging.getLogger(__name__)

PHILIPS_SUV_SCALE = (0x7053, 0x1000)  # stored value -> SUVbw
PHILIPS_ACTIVITY_SCALE = (0x7053, 0x1009)  # stored value -> Bq/mL
GE_SCAN_DATETIME = (0x0009, 0x100D)  # GEMS_PETD_01 scan start (DT)
SMALLEST_PLAUSIBLE_DOSE_BQ = 1e4  # below this the dose was written in MBq


def parse_datetime(date: str | None, time: str | None) -> datetime | None:
    """DICOM DA + TM -> naive datetime; None where either is missing."""
    if not date or not time:
        return None
    d, t = DA(str(date).strip()), TM(str(time).strip())
    return datetime.combine(d, t.replace(tzinfo=None))


def parse_dt(value: str | None) -> datetime | None:
    """DICOM DT -> naive local datetime (an offset, if any, is dropped: series times are local)."""
    if not value or not str(value).strip():
        return None
    return DT(str(value).strip()).replace(tzinfo=None)


def radiopharmaceutical(ds: Dataset) -> Dataset:
    """The first RadiopharmaceuticalInformationSequence item, or the dataset itself as a fallback."""
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else ds


def series_scan_time(datasets: Sequence[Dataset]) -> datetime:
    """The time the injected dose is decayed to (QIBA).

    SeriesDate/Time, unless it is later than the earliest AcquisitionDate/Time
    (a post-processed series); then GE's private scan time if present, else the
    earliest acquisition time, moved back to the scan start by the frame timing.
    """
    first = datasets[0]
    series = parse_datetime(first.get("SeriesDate"), first.get("SeriesTime"))
    acquisitions = [
        t
        for ds in datasets
        if (t := parse_datetime(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime")))
    ]
    earliest = min(acquisitions) if acquisitions else None
    if series is not None and (earliest is None or series <= earliest):
        return series
    if GE_SCAN_DATETIME in first and (ge := parse_dt(str(first[GE_SCAN_DATETIME].value))):
        return ge
    if earliest is not None:
        return _back_computed_scan_time(datasets, earliest)
    raise SegAnyPetError("no SeriesDate/SeriesTime or AcquisitionDate/AcquisitionTime to decay the dose to")


def _back_computed_scan_time(datasets: Sequence[Dataset], earliest: datetime) -> datetime:
    """QIBA's reliable fallback: from a frame's start and its FrameReferenceTime back to the scan start.

    AcquisitionTime is the start of the bed position; FrameReferenceTime (ms) is the
    offset from the scan start to the frame's average count-rate time. Without
    those two tags the earliest acquisition time is the best estimate.
    """
    for ds in datasets:
        start = parse_datetime(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
        if start != earliest:
            continue
        reference_ms = float(ds.get("FrameReferenceTime") or 0)
        duration_s = float(ds.get("ActualFrameDuration") or 0) / 1000.0
        if reference_ms <= 0 or duration_s <= 0:
            break
        decay_constant = math.log(2.0) / half_life_s(ds)
        decay_in_frame = decay_constant * duration_s
        average_count_time_s = math.log(decay_in_frame / (1.0 - math.exp(-decay_in_frame))) / decay_constant
        return start - timedelta(seconds=reference_ms / 1000.0 - average_count_time_s)
    return earliest


def injection_time(ds: Dataset, scan_time: datetime) -> datetime:
    """RadiopharmaceuticalStartDateTime, else SeriesDate + StartTime (a day earlier if that follows the scan)."""
    rp = radiopharmaceutical(ds)
    if start := parse_dt(rp.get("RadiopharmaceuticalStartDateTime")):
        return start
    time = rp.get("RadiopharmaceuticalStartTime")
    if not time:
        raise SegAnyPetError("no RadiopharmaceuticalStartTime or StartDateTime: cannot decay-correct the dose")
    start = datetime.combine(scan_time.date(), TM(str(time).strip()).replace(tzinfo=None))
    if start > scan_time:  # injected before midnight, scanned after
        start -= timedelta(days=1)
    return start


def injected_dose_bq(ds: Dataset, notes: list[str] | None = None) -> float:
    rp = radiopharmaceutical(ds)
    dose = rp.get("RadionuclideTotalDose")
    if dose in (None, "") or float(dose) <= 0:
        raise SegAnyPetError("no RadionuclideTotalDose (0018,1074): cannot compute SUV")
    dose = float(dose)
    if dose < SMALLEST_PLAUSIBLE_DOSE_BQ:
        if notes is not None:  # said once per series, by the caller that collects notes
            msg = f"RadionuclideTotalDose {dose:g} is implausible in Bq; read as {dose:g} MBq"
            log.warning(msg)
            notes.append(msg)
        dose *= 1e6
    return dose


def half_life_s(ds: Dataset) -> float:
    value = radiopharmaceutical(ds).get("RadionuclideHalfLife")
    if value in (None, "") or float(value) <= 0:
        raise SegAnyPetError("no RadionuclideHalfLife (0018,1075): cannot decay-correct the dose")
    return float(value)


def patient_weight_g(ds: Dataset) -> float:
    weight = ds.get("PatientWeight")
    if weight in (None, "") or float(weight) <= 0:
        raise SegAnyPetError("no PatientWeight (0010,1030): cannot compute SUVbw (give the weight with --weight KG)")
    return float(weight) * 1000.0


def _height_cm(ds: Dataset, why: str) -> float:
    size = ds.get("PatientSize")
    if size in (None, "") or float(size) <= 0:
        raise SegAnyPetError(f"no PatientSize (0010,1020): needed to turn {why} into SUVbw")
    return float(size) * 100.0


def _sex(ds: Dataset, why: str) -> str:
    sex = str(ds.get("PatientSex", "")).strip().upper()
    if sex not in ("M", "F"):
        raise SegAnyPetError(f"PatientSex is {sex or 'missing'!r}: {why} is sex-specific, so it cannot be turned into SUVbw")
    return sex


def lean_body_mass_kg(weight_kg: float, height_cm: float, sex: str, formula: str = "janmahasatian") -> float:
    """LBM by James (1976) or Janmahasatian (2005), the two in PET use."""
    if formula == "james":
        a, b = (1.10, 128.0) if sex == "M" else (1.07, 148.0)
        return a * weight_kg - b * (weight_kg / height_cm) ** 2
    bmi = weight_kg / (height_cm / 100.0) ** 2
    return 9270.0 * weight_kg / ((6680.0 + 216.0 * bmi) if sex == "M" else (8780.0 + 244.0 * bmi))


def body_surface_area_cm2(weight_kg: float, height_cm: float) -> float:
    """Du Bois & Du Bois (1916), in cm^2."""
    return 0.007184 * weight_kg**0.425 * height_cm**0.725 * 1e4


def ideal_body_weight_kg(height_cm: float, sex: str) -> float:
    """Devine (1974): 50 kg (men) or 45.5 kg (women) + 2.3 kg per inch over 5 ft."""
    return (50.0 if sex == "M" else 45.5) + 2.3 * (height_cm / 2.54 - 60.0)


def _gml_to_suvbw(ds: Dataset) -> float:
    """Units GML are SUV already; SUVType says normalised to what."""
    suv_type = str(ds.get("SUVType", "BW") or "BW").strip().upper()
    if suv_type == "BW":
        return 1.0
    weight_kg = patient_weight_g(ds) / 1000.0
    if suv_type.startswith("LBM"):
        formula = "james" if "JAMES" in suv_type else "janmahasatian" if "JANMA" in suv_type else None
        if formula is None:
            raise SegAnyPetError(f"SUVType {suv_type!r} does not say which lean-body-mass formula was used")
        lbm = lean_body_mass_kg(weight_kg, _height_cm(ds, "SUVlbm"), _sex(ds, "SUVlbm"), formula)
        return weight_kg / lbm
    if suv_type == "IBW":
        return weight_kg / ideal_body_weight_kg(_height_cm(ds, "SUVibw"), _sex(ds, "SUVibw"))
    raise SegAnyPetError(f"Units GML with SUVType {suv_type!r} is not a kind seganypet can turn into SUVbw")


def corrections(ds: Dataset) -> set[str]:
    """CorrectedImage (0028,0051) as a set: pydicom gives one value as a string, which must not be read letter by
    letter."""
    value = ds.get("CorrectedImage") or []
    return {str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)}


def suvbw_factor(
    ds: Dataset, scan_time: datetime, notes: list[str] | None = None
) -> float:
    """SUVbw per rescaled stored unit for one slice.

    scan_time: the series' decay reference from :func:`series_scan_time`.
    """
    units = str(ds.get("Units", "")).strip().upper()
    corrected = corrections(ds)
    if corrected and "ATTN" not in corrected:
        raise SegAnyPetError("CorrectedImage lacks ATTN: a non-attenuation-corrected PET has no SUV")

    if units == "GML":
        return _gml_to_suvbw(ds)
    if units == "CM2ML":
        suv_type = str(ds.get("SUVType", "BSA") or "BSA").strip().upper()
        if suv_type != "BSA":
            raise SegAnyPetError(f"Units CM2ML with SUVType {suv_type!r} is not SUVbsa")
        weight_kg = patient_weight_g(ds) / 1000.0
        return weight_kg * 1000.0 / body_surface_area_cm2(weight_kg, _height_cm(ds, "SUVbsa"))
    if units == "CNTS":
        if PHILIPS_SUV_SCALE in ds and float(ds[PHILIPS_SUV_SCALE].value or 0) > 0:
            return float(ds[PHILIPS_SUV_SCALE].value)
        if PHILIPS_ACTIVITY_SCALE in ds and float(ds[PHILIPS_ACTIVITY_SCALE].value or 0) > 0:
            return float(ds[PHILIPS_ACTIVITY_SCALE].value) * _bqml_factor(ds, scan_time, notes)
        raise SegAnyPetError("Units CNTS without Philips SUV (7053,1000) or activity (7053,1009) scale factor")
    if units == "BQML":
        return _bqml_factor(ds, scan_time, notes)
    raise SegAnyPetError(f"Units {units or 'missing'!r} (0054,1001) cannot be turned into SUV")


def _bqml_factor(ds: Dataset, scan_time: datetime, notes: list[str] | None) -> float:
    weight = patient_weight_g(ds)
    dose = injected_dose_bq(ds, notes)
    decay = str(ds.get("DecayCorrection", "START") or "START").strip().upper()
    if decay == "ADMIN":  # image already decay-corrected to the injection time
        return weight / dose
    if decay == "START":
        reference = scan_time
    elif decay == "NONE":  # each slice holds activity as measured at its own acquisition
        reference = parse_datetime(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime")) or scan_time
    else:
        raise SegAnyPetError(f"DecayCorrection {decay!r} (0054,1102) is not START, ADMIN or NONE")
    elapsed = (reference - injection_time(ds, scan_time)).total_seconds()
    if elapsed < 0:
        raise SegAnyPetError(f"injection time is {-elapsed:.0f} s after the scan time: check the time tags")
    return weight / (dose * math.pow(2.0, -elapsed / half_life_s(ds)))
