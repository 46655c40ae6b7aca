"""The one image object every part of seganypet passes around.

Voxel convention (said once, used everywhere): a point ``(x, y, z)`` is the
array index ``(i, j, k)`` of the input file, and ``PetImage.array[i, j, k]`` is
that voxel. For NIfTI/NRRD/MHA that is the file's own index order (as ITK-SNAP
and NiiVue show it); for a DICOM series ``i`` is the column, ``j`` the row and
``k`` the slice number counted in ascending position along the slice normal.
World coordinates are millimetres in the file's own space: RAS for NIfTI,
LPS for DICOM, NRRD and MHA (``PetImage.space`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

Space = Literal["RAS", "LPS"]
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS


@dataclass
class PetMetadata:
    """What quantification, reports and DICOM SEG export need from the source."""

    patient_weight_kg: float | None = None
    patient_height_m: float | None = None
    patient_sex: str | None = None
    tracer: str | None = None
    radionuclide: str | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    injection_time: datetime | None = None
    scan_time: datetime | None = None
    source_units: str | None = None  # Units (0054,1001) as stored, e.g. BQML
    decay_correction: str | None = None
    suv_factor: float | None = None  # SUVbw per stored (rescaled) unit, where one factor holds
    manufacturer: str | None = None
    modality: str | None = "PT"
    patient_id: str | None = None
    patient_name: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_instance_uids: list[str] = field(default_factory=list)  # one per slice k
    source_files: list[Path] = field(default_factory=list)  # one per slice k (DICOM)
    notes: list[str] = field(default_factory=list)  # assumptions made on the way


@dataclass
class PetImage:
    """A PET volume in SUVbw with its geometry.

    array: float32, shape (I, J, K), indexed ``[i, j, k]`` (see module doc).
    affine: 4x4, maps ``(i, j, k, 1)`` to millimetres in ``space``.
    units: ``"SUVbw"`` once converted; ``"unknown"`` if the user declined conversion.
    """

    array: np.ndarray
    affine: np.ndarray
    space: Space
    units: str = "SUVbw"
    meta: PetMetadata = field(default_factory=PetMetadata)
    source: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3, columns are the unit world directions of i, j, k."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def affine_in(self, space: Space) -> np.ndarray:
        """The affine expressed in RAS or LPS."""
        return self.affine.copy() if space == self.space else _FLIP_XY @ self.affine

    def voxel_to_world(self, ijk: np.ndarray, space: Space | None = None) -> np.ndarray:
        """(N, 3) voxel indices -> (N, 3) mm in ``space`` (default: the image's own)."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        affine = self.affine_in(space or self.space)
        return ijk @ affine[:3, :3].T + affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray, space: Space | None = None) -> np.ndarray:
        """(N, 3) mm in ``space`` (default: the image's own) -> (N, 3) fractional voxel indices."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        inv = np.linalg.inv(self.affine_in(space or self.space))
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def with_array(self, array: np.ndarray, units: str | None = None) -> PetImage:
        """A copy on the same grid with other voxel values (e.g. a mask)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from image shape {self.array.shape}")
        return replace(self, array=array, units=units or self.units)


@dataclass(frozen=True)
class Reorientation:
    """The axis permutation and flips that turn an image's voxel axes into i to the patient's left, j to the back, k
    to the head: DICOM's axial order, the order the phantoms are written in and so the one the model was trained in.

    A NIfTI from dcm2niix runs j to the front, one written by numpy users often runs k first. The model reads a crop
    in the image's own voxel axes, and on an AP-flipped phantom its first clicks on the kidneys, spleen and spine fall
    from Dice 0.83-0.95 to 0.10-0.46; so the session works on this view of the image. Nothing is resampled, arrays
    come back as views (writes go through to the caller's buffer), and points and regions are mapped both ways."""

    ornt: np.ndarray  # nibabel's orientation: for each input axis, the LPS axis it runs along and +1 or -1
    shape: tuple[int, int, int]  # the input's shape

    @classmethod
    def to_lps(cls, image: PetImage) -> Reorientation:
        return cls(nib.orientations.io_orientation(image.affine_in("LPS")), image.shape)

    def array(self, array: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(array, self.ornt)

    def image(self, image: PetImage) -> PetImage:
        """The image in LPS order, the same voxels in the same world space."""
        affine = image.affine @ nib.orientations.inv_ornt_aff(self.ornt, self.shape)
        return replace(image, array=self.array(image.array), affine=affine)

    def point(self, ijk) -> np.ndarray:
        """Input voxel position (continuous) -> the same voxel's position in LPS order."""
        ijk, out = np.asarray(ijk, float), np.empty(3)
        for axis, (new_axis, flip) in enumerate(self.ornt.astype(int)):
            out[new_axis] = ijk[axis] if flip == 1 else self.shape[axis] - 1 - ijk[axis]
        return out

    def point_back(self, ijk) -> np.ndarray:
        """A voxel position in LPS order -> the same voxel's position in the input."""
        ijk, out = np.asarray(ijk, float), np.empty(3)
        for axis, (new_axis, flip) in enumerate(self.ornt.astype(int)):
            out[axis] = ijk[new_axis] if flip == 1 else self.shape[axis] - 1 - ijk[new_axis]
        return out

    def region_back(self, region: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
        """A box of the LPS-ordered array -> the same voxels' box in the input's."""
        out = [slice(0)] * 3
        for axis, (new_axis, flip) in enumerate(self.ornt.astype(int)):
            part = region[new_axis]
            out[axis] = part if flip == 1 else slice(self.shape[axis] - part.stop, self.shape[axis] - part.start)
        return tuple(out)  # type: ignore[return-value]
