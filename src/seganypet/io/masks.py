"""Masks made elsewhere, on a scan's grid: a label map (NIfTI/NRRD/MHA), a DICOM SEG or an RTSTRUCT.

Readers bring their outlines from where they drew them: 3D Slicer and nnU-Net write label maps, PACS and
AI tools DICOM SEG, radiotherapy and MIM RTSTRUCT contours. Each comes back as one integer label map on
the PET's own voxels, with a name per label, so the same quantification runs on all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.errors import InvalidDicomError

from seganypet.errors import SegAnyPetError
from seganypet.io.dicom import dcmread
from seganypet.io.image import PetImage
from seganypet.io.volume import is_volume_file, read_volume

log = logging.getLogger(__name__)


def read_mask(path: str | Path, image: PetImage) -> tuple[np.ndarray, dict[int, str]]:
    """A mask file on ``image``'s grid: (int32 label map, label -> name; names empty for a plain label map)."""
    path = Path(path)
    if not path.is_file():
        raise SegAnyPetError("no such mask file", path)
    if is_volume_file(path):
        labels, names = read_label_map(path, image).astype(np.int32), {}
    else:
        try:
            modality = str(dcmread(path, stop_before_pixels=True).get("Modality", ""))
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
            raise SegAnyPetError(f"neither a label map (NIfTI/NRRD/MHA) nor a readable DICOM file ({exc})", path) from None
        if modality == "SEG":
            from seganypet.io.dicom_seg import read_dicom_seg

            labels, names = read_dicom_seg(path, image)
            labels = labels.astype(np.int32)
        elif modality == "RTSTRUCT":
            labels, names = read_rtstruct(path, image)
        else:
            raise SegAnyPetError(f"a DICOM {modality or 'file without Modality'}, not a DICOM SEG or RTSTRUCT", path)
    if not labels.any():
        raise SegAnyPetError("the mask is empty on this scan's grid", path)
    return labels, names


def read_label_map(path: str | Path, image: PetImage) -> np.ndarray:
    """A label map file (NIfTI/NRRD/MHA) on ``image``'s grid, as uint16: refused when its shape or affine differ, since
    a label map flipped or shifted against its scan would be scored and measured on the wrong voxels, and when its
    values are not label numbers (rounding a probability map would choose its threshold silently)."""
    labels_image = read_volume(path)
    if labels_image.shape != image.shape or not np.allclose(labels_image.affine_in("RAS"), image.affine_in("RAS"), atol=1e-3):
        raise SegAnyPetError(f"label grid {labels_image.shape} does not match the scan's {image.shape} (shape or affine "
                             "differ)", path)
    values = labels_image.array
    if np.abs(values - np.rint(values)).max() > 1e-3 or values.min() < 0:
        raise SegAnyPetError(f"values {values.min():g}..{values.max():g} are not label numbers 0, 1, 2, ... (a "
                             "probability map? threshold it first)", path)
    return np.rint(values).astype(np.uint16)


def read_rtstruct(path: str | Path, image: PetImage) -> tuple[np.ndarray, dict[int, str]]:
    """An RTSTRUCT's closed planar contours filled on ``image``'s slices: (label map, label -> ROI name).

    A voxel belongs to an ROI when its centre lies inside (or on) the ROI's contours, by the even-odd rule, so a contour
    drawn inside another is a hole (as RTSTRUCT writers encode them). Contours are placed by their patient
    coordinates, so the scan may come from any file format, and they must lie parallel to its slices (an axial scan,
    axial contours). In a PET/CT they are often drawn on the CT, whose planes are not the PET's: each PET slice takes
    the ROI's plane nearest it, within half the planes' spacing (half a slice at least), never the contours of two
    planes at once, whose even-odd sum would cancel. ROIs are labelled 1, 2, ... in the file's order; where two
    overlap, the later one keeps the voxel.
    """
    path = Path(path)
    ds = dcmread(path)
    names_by_number = {int(r.ROINumber): str(r.get("ROIName", f"roi_{r.ROINumber}")) for r in ds.get("StructureSetROISequence", [])}
    to_ijk = np.linalg.inv(image.affine_in("LPS"))
    labels = np.zeros(image.shape, np.int32)
    names: dict[int, str] = {}
    for roi in ds.get("ROIContourSequence", []):
        planes: dict[float, list[np.ndarray]] = {}  # a plane's position in slices -> its contours (i, j)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue  # a point or an open line encloses no voxel
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            ijk = points @ to_ijk[:3, :3].T + to_ijk[:3, 3]
            if np.ptp(ijk[:, 2]) > 0.5:
                raise SegAnyPetError("a contour crosses the scan's slices: RTSTRUCT contours must lie parallel to "
                                     "its slices", path)
            planes.setdefault(round(float(ijk[:, 2].mean()), 3), []).append(ijk[:, :2])
        inside = np.zeros(image.shape, bool)
        if planes:
            at = np.array(sorted(planes))
            reach = max(0.5, float(np.median(np.diff(at))) / 2 if len(at) > 1 else 0.5)
            for k in range(image.shape[2]):
                nearest = at[np.argmin(np.abs(at - k))]
                if abs(nearest - k) <= reach + 1e-6:
                    for vertices in planes[nearest]:
                        _fill(inside[:, :, k], vertices)
        if not inside.any():
            continue
        value = len(names) + 1
        if (labels[inside] > 0).any():
            log.warning("%s: ROI %r overlaps an earlier one, which loses the voxels they share", path.name,
                        names_by_number.get(int(roi.ReferencedROINumber)))
        labels[inside] = value
        names[value] = names_by_number.get(int(roi.ReferencedROINumber), f"roi_{roi.ReferencedROINumber}")
    return labels, names


def _fill(plane: np.ndarray, vertices: np.ndarray) -> None:
    """Flip, in a bool slice, the voxels whose centres lie inside or on a polygon (voxel coordinates i, j).

    On counts as inside: writers that trace a mask's boundary voxels (rt-utils, OpenCV) put the contour through their
    centres, and the mask drawn must come back. matplotlib counts an edge point by the polygon's winding, so the
    polygon is first turned counter-clockwise and then widened by a thousandth of a voxel."""
    from matplotlib.path import Path as Polygon  # RTSTRUCT only: training and evaluation read label maps without it

    x, y = vertices[:, 0], vertices[:, 1]
    if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:
        vertices = vertices[::-1]
    lo = np.clip(np.floor(vertices.min(0)).astype(int), 0, plane.shape)
    hi = np.clip(np.ceil(vertices.max(0)).astype(int) + 1, 0, plane.shape)
    if np.any(hi <= lo):
        return  # the contour lies off the scan
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), indexing="ij")
    inside = Polygon(vertices).contains_points(np.column_stack([ii.ravel(), jj.ravel()]), radius=1e-3)
    plane[lo[0]:hi[0], lo[1]:hi[1]] ^= inside.reshape(ii.shape)
