"""Shared helpers: small PET series written on the fly, and the real reference data beside the repo."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from seganypet.io import PetImage
from seganypet.io.dicom_write import AcquisitionInfo, write_pet_dicom
from seganypet.modeling import PRESETS, ImageEmbedding, normalise_suv

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


def write_tiny_dataset(folder: Path, cases: int = 2, noisy: tuple[str, ...] = ()) -> Path:
    """nnU-Net v2 layout: each case a warm 'organ' block and a hot 'lesion' sphere at 4 mm."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ijk = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"), -1)
    for n in range(cases):
        suv = 0.8 + 0.1 * rng.standard_normal((40, 40, 40))
        labels = np.zeros((40, 40, 40), np.uint8)
        lo = 6 + n
        labels[lo : lo + 14, 8:22, 10:26] = 1
        centre = np.array([29, 28 - n, 20])
        labels[np.linalg.norm(ijk - centre, axis=-1) <= 7] = 2
        suv[labels == 1] += 2.5
        suv[labels == 2] += 7.0
        affine = np.diag([4.0, 4.0, 4.0, 1.0])
        nib.save(nib.Nifti1Image(suv.astype(np.float32), affine), folder / "imagesTr" / f"case{n}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), folder / "labelsTr" / f"case{n}.nii.gz")
    quality = {f"case{n}": ("noisy" if f"case{n}" in noisy else "clean") for n in range(cases)}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "PET"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases, "file_ending": ".nii.gz", "seganypet": {"label_quality": quality}}))
    return folder


def add_lesion_sites(folder: Path, sites: dict[str, str]) -> None:
    """Give each tiny-dataset case's lesion an instance file (id 1) and a site in ``metadata/{case}.json``."""
    (folder / "instancesTr").mkdir(exist_ok=True)
    (folder / "metadata").mkdir(exist_ok=True)
    for case, site in sites.items():
        labels = nib.load(folder / "labelsTr" / f"{case}.nii.gz")
        instances = (np.asarray(labels.dataobj) == 2).astype(np.uint8)
        nib.save(nib.Nifti1Image(instances, labels.affine), folder / "instancesTr" / f"{case}.nii.gz")
        (folder / "metadata" / f"{case}.json").write_text(json.dumps({"lesions": [{"id": 1, "site": site}]}))


# ---- a stand-in model whose prediction is known exactly: the crop's hot voxels -------------------
HOT = 4.0  # SUV inside the test objects; log1p(4) = 1.61
THRESHOLD = float(normalise_suv(np.float32(HOT / 2)))


class HotVoxelModel(torch.nn.Module):
    """Predicts 'hot' wherever the crop is hotter than HOT / 2 (in the model's normalised units)."""

    def __init__(self):
        super().__init__()
        self.config = PRESETS["test"]
        self.crop_size = self.mask_size = self.config.crop_size  # no low-res step: the crop's own voxels
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.embed_calls = 0

    def embed(self, crop):
        self.embed_calls += 1
        return ImageEmbedding(crop, None)

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None):
        return embedding.features - THRESHOLD, torch.ones(1, 1)

    def upsample(self, low):
        return F.interpolate(low, size=(self.crop_size,) * 3, mode="trilinear", align_corners=False)


def oblique_image(shape=(60, 50, 40), spacing=(2.0, 3.5, 5.0)) -> PetImage:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, :3] = affine[:3, :3] @ np.diag([1, -1, 1])  # and a flipped axis
    affine[:3, 3] = (-40.0, 75.0, 12.0)
    return PetImage(np.full(shape, 0.5, np.float32), affine, "LPS")


def add_sphere(image: PetImage, centre_mm, radius_mm: float) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), -1).reshape(-1, 3)
    inside = (np.linalg.norm(image.voxel_to_world(ijk) - centre_mm, axis=1) <= radius_mm).reshape(image.shape)
    image.array[inside] = HOT
    return inside


class ClickedHotObjectModel(HotVoxelModel):
    """Predicts the hot object under the last positive click (its connected hot voxels), like a reader would mean."""

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None):
        from scipy import ndimage

        hot = (embedding.features[0, 0] > THRESHOLD).cpu().numpy()
        components, _ = ndimage.label(hot)
        chosen = np.zeros_like(hot)
        if points is not None:
            positive = points[0][labels[0] == 1]
            if len(positive):
                ijk = tuple(np.clip(np.round(positive[-1].cpu().numpy()).astype(int), 0, hot.shape[0] - 1))
                chosen = components == components[ijk] if components[ijk] else chosen
        logits = torch.from_numpy(np.where(chosen, 1.0, -1.0).astype(np.float32))[None, None]
        return logits, torch.ones(1, 1)
