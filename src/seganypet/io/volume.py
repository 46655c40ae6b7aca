"""Reading NIfTI, NRRD and MHA volumes.

NIfTI goes through nibabel so its RAS affine and index order survive a round
trip bit for bit; NRRD and MHA go through SimpleITK (LPS). Values are taken
as SUVbw already unless the caller says they are Bq/mL and gives weight and
dose (see :func:`bqml_to_suvbw`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage, PetMetadata

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
F18_HALF_LIFE_S = 6586.2


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise SegAnyPetError(f"4D volume with {array.shape[3]} frames: a dynamic PET is not supported, pass one frame", path)
    if array.ndim != 3:
        raise SegAnyPetError(f"expected a 3D volume, got {array.ndim} dimensions {array.shape}", path)
    return array


def read_volume(path: str | Path) -> PetImage:
    """A NIfTI/NRRD/MHA file as a :class:`PetImage` with the file's values unchanged."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            img = nib.load(path)
            array = np.asarray(img.dataobj, dtype=np.float32)
            affine, space = img.affine.astype(float), "RAS"
        else:
            import SimpleITK as sitk  # NRRD/MHA only; a heavy import that NIfTI work does without

            img = sitk.ReadImage(str(path))
            if img.GetNumberOfComponentsPerPixel() != 1:
                raise SegAnyPetError(f"{img.GetNumberOfComponentsPerPixel()} components per voxel: expected one", path)
            if img.GetDimension() == 4:
                raise SegAnyPetError(f"4D volume {img.GetSize()}: a dynamic PET is not supported, pass one frame", path)
            array = sitk.GetArrayFromImage(img).astype(np.float32).T  # sitk gives (k, j, i)
            affine = np.eye(4)
            affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
            affine[:3, 3] = img.GetOrigin()
            space = "LPS"
    except SegAnyPetError:
        raise
    except Exception as exc:  # nibabel/ITK raise many types for damaged files
        raise SegAnyPetError(f"cannot read volume ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}); truncated or corrupt file?", path) from None
    array = _as_3d(array, path)
    if not np.isfinite(array).all():
        raise SegAnyPetError(f"{int((~np.isfinite(array)).sum())} voxels are NaN or infinite", path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SegAnyPetError("the affine is singular (zero voxel size?)", path)
    return PetImage(array=array, affine=affine, space=space, units="SUVbw", meta=PetMetadata(), source=path)


def bqml_to_suvbw(
    image: PetImage,
    weight_kg: float,
    dose_mbq: float,
    uptake_min: float = 0.0,
    half_life_s: float = F18_HALF_LIFE_S,
) -> PetImage:
    """Convert a Bq/mL volume to SUVbw.

    dose_mbq: injected activity at injection; uptake_min: minutes from injection
    to scan start, over which the dose is decayed (0 if ``dose_mbq`` is already
    decay-corrected to the scan start).
    """
    if weight_kg <= 0 or dose_mbq <= 0 or uptake_min < 0 or half_life_s <= 0:
        raise SegAnyPetError("weight, dose and half-life must be positive and uptake time not negative", image.source)
    dose_bq = dose_mbq * 1e6 * 2.0 ** (-uptake_min * 60.0 / half_life_s)
    factor = weight_kg * 1000.0 / dose_bq
    meta = image.meta
    meta.patient_weight_kg, meta.injected_dose_bq, meta.half_life_s = weight_kg, dose_mbq * 1e6, half_life_s
    meta.source_units, meta.suv_factor = "BQML", factor
    return PetImage(
        array=(image.array * factor).astype(np.float32),
        affine=image.affine,
        space=image.space,
        units="SUVbw",
        meta=meta,
        source=image.source,
    )
