"""Reading PET (NIfTI, NRRD, MHA, DICOM) into SUVbw and writing results.

``read_pet`` is the one entry point: it returns a :class:`PetImage` whose array
is float32 SUVbw indexed ``[i, j, k]`` like the file, with an affine in mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seganypet.errors import SegAnyPetError
from seganypet.io.dicom import list_series, read_dicom_series
from seganypet.io.image import PetImage, PetMetadata, Reorientation
from seganypet.io.volume import bqml_to_suvbw, is_volume_file, read_volume
from seganypet.io.write import atomic_path, write_atomic, write_nifti

SUV_FLOOR = 100.0  # SUVbw below minus this is not PET noise
SUV_P99_CEILING = 100.0  # a 99th percentile above this is not SUVbw

__all__ = [
    "PetImage",
    "PetMetadata",
    "Reorientation",
    "SegAnyPetError",
    "atomic_path",
    "list_series",
    "read_pet",
    "write_atomic",
    "write_nifti",
]


def read_pet(
    path: str | Path,
    *,
    series_uid: str | None = None,
    units: str = "suv",
    weight_kg: float | None = None,
    dose_mbq: float | None = None,
    uptake_min: float = 0.0,
) -> PetImage:
    """Read a PET scan as SUVbw.

    path: a NIfTI/NRRD/MHA file, a DICOM folder (searched recursively) or one DICOM file.
    series_uid: which series, when a folder holds several.
    units: for volume files only: ``"suv"`` (default: values are SUVbw already) or
        ``"bqml"`` (Bq/mL, converted with ``weight_kg``, ``dose_mbq`` and ``uptake_min``).
        DICOM is always converted from its own tags, but for ``weight_kg``, which replaces PatientWeight.
    """
    path = Path(path)
    if not path.exists():
        raise SegAnyPetError("no such file or folder", path)
    if path.is_dir() or not is_volume_file(path):
        if path.is_dir() and not any(path.iterdir()):
            raise SegAnyPetError("folder is empty", path)
        return read_dicom_series(path, series_uid=series_uid, weight_kg=weight_kg)
    image = read_volume(path)
    units = units.lower()
    if units == "bqml":
        if weight_kg is None or dose_mbq is None:
            raise SegAnyPetError("units Bq/mL need --weight (kg) and --dose (MBq) to compute SUVbw", path)
        return bqml_to_suvbw(image, weight_kg=weight_kg, dose_mbq=dose_mbq, uptake_min=uptake_min)
    if units != "suv":
        raise SegAnyPetError(f"unknown units {units!r}: use 'suv' or 'bqml'", path)
    _check_looks_like_suv(image)
    image.meta.notes.append("values taken as SUVbw as stored (volume files carry no SUV tags)")
    return image


def _check_looks_like_suv(image: PetImage) -> None:
    """Refuse a volume whose values no PET in SUV has: a volume file carries no units, and CT (the other channel of
    a PET/CT dataset) or activity concentration read as SUV would give numbers that are silently wrong.

    A PET in SUVbw is not negative beyond reconstruction noise (a few tenths), and 99 % of its voxels lie below
    about 15; CT reaches -1000 HU in air, and FDG at 1 SUV is about 5,000 Bq/mL."""
    low = float(image.array.min())
    if low < -SUV_FLOOR:
        raise SegAnyPetError(f"values go down to {low:.0f}, as CT does in HU and no PET in SUV does (the CT channel "
                             "of a PET/CT dataset?)", image.source)
    high = float(np.percentile(image.array[::2, ::2, ::2], 99))  # every 8th voxel: as telling, 8x cheaper
    if high > SUV_P99_CEILING:
        raise SegAnyPetError(f"99 % of voxels reach {high:.0f}, far above any SUV: activity in Bq/mL (pass --units "
                             "bqml with --weight and --dose) or not a PET", image.source)
