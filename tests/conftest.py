"""Shared helpers: small PET series written on the fly, and the real reference data beside the repo."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from seganypet.io import PetImage
from seganypet.io.dicom_write import AcquisitionInfo, write_pet_dicom

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (it lives in ../shared beside the repo)")
    return path


def write_series(folder: Path, values: np.ndarray, spacing=(4.0, 4.0, 3.0), info: AcquisitionInfo | None = None, **tags) -> list[Path]:
    """A PET series whose *stored* values (after rescale) are ``values`` exactly (Bq/mL), tags overridden by ``tags``.

    Pixels are written as int16 with slope 1 where ``values`` are integers, so a test
    can compute the expected SUV by hand from the numbers it chose.
    """
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-100.0, -80.0, -50.0)
    paths = write_pet_dicom(PetImage(np.ones(values.shape, np.float32), affine, "LPS"), folder, info or AcquisitionInfo())
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.round(values[:, :, k].T).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        for key, value in tags.items():
            if key in ("RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime", "RadionuclideTotalDose"):
                item = ds.RadiopharmaceuticalInformationSequence[0]
                if value is None:
                    delattr(item, key)
                else:
                    setattr(item, key, value)
            elif value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(path)
    return paths


@pytest.fixture
def uniform_series(tmp_path: Path):
    """Factory: a 6x5x4 series of constant Bq/mL with the given tag overrides."""

    def make(bqml: float = 5000.0, **tags) -> Path:
        folder = tmp_path / "series"
        write_series(folder, np.full((6, 5, 4), bqml), **tags)
        return folder

    return make


BASE_INFO = AcquisitionInfo(weight_kg=80.0, dose_bq=370e6, injection_time=datetime(2025, 3, 4, 9, 0, 0), uptake_s=3600.0)
