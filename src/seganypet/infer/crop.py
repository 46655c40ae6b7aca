"""The crop: an axis-aligned window of the image, resampled to the model's grid, and its exact inverse.

The crop's axes are the image's own voxel axes, so the map between them is a per-axis
scale and offset (``image_ijk = origin + step * crop_ijk``) whatever the image's affine
(rotated, flipped, anisotropic): resampling into the crop and pasting back are the same
affine map, once forward and once inverted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class CropGeometry:
    origin: tuple[float, float, float]  # image voxel position (i, j, k) of crop voxel (0, 0, 0)
    step: tuple[float, float, float]  # image voxels per crop voxel, per axis
    size: int  # crop voxels per side

    @classmethod
    def centred(cls, centre_ijk, image_spacing, crop_spacing_mm: float | np.ndarray, size: int) -> CropGeometry:
        """``crop_spacing_mm``: one voxel size, or one per axis (a window stretched along a tube)."""
        step = crop_spacing_mm / np.asarray(image_spacing, float)
        origin = np.asarray(centre_ijk, float) - step * (size - 1) / 2
        return cls(tuple(float(v) for v in origin), tuple(float(v) for v in step), size)  # type: ignore[arg-type]

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.origin) + np.asarray(self.step) * (self.size - 1) / 2

    def to_crop(self, ijk) -> np.ndarray:
        """Image voxel positions (..., 3) -> continuous crop voxel positions."""
        return (np.asarray(ijk, float) - self.origin) / self.step

    def to_image(self, crop_ijk) -> np.ndarray:
        return np.asarray(self.origin) + np.asarray(crop_ijk, float) * self.step

    def coarsened(self, factor: int) -> CropGeometry:
        """The same window on a grid ``factor`` times coarser (e.g. the decoder's low-res mask grid)."""
        step = np.asarray(self.step) * factor
        origin = np.asarray(self.origin) + np.asarray(self.step) * (factor - 1) / 2
        return CropGeometry(tuple(origin.tolist()), tuple(step.tolist()), self.size // factor)  # type: ignore[arg-type]

    def relative_to(self, other: CropGeometry) -> CropGeometry:
        """This window with ``other``'s crop voxels as its "image": resamples one crop's array into another's grid."""
        return CropGeometry(tuple(other.to_crop(self.origin).tolist()), tuple((np.asarray(self.step) / other.step).tolist()),
                            self.size)  # type: ignore[arg-type]

    def sample(self, volume: np.ndarray, order: int = 1, cval: float = 0.0, edge: bool = False) -> np.ndarray:
        """(size,)*3 float32 values of ``volume`` at the crop's voxels; ``cval`` outside the image, or with ``edge``
        the value of the image's nearest edge voxel.

        ``edge`` is for the scan the model reads: the body goes on past a scan's field of view (the brain above an
        eyes-to-thighs scan, the arms beside a narrow one), and a window that runs past the edge shows it going on
        rather than ending in SUV 0 at a line no organ has. Only the sub-volume under the crop is read (so a
        memory-mapped volume stays on disk)."""
        corners = self.to_image(np.array([[0.0] * 3, [self.size - 1.0] * 3]))
        shape = np.asarray(volume.shape)
        lo = np.clip(np.floor(corners.min(0)) - 1, 0, shape - edge).astype(int)
        hi = np.clip(np.ceil(corners.max(0)) + 2, lo + edge, shape).astype(int)
        if np.any(hi <= lo):
            return np.full((self.size,) * 3, cval, np.float32)
        part = np.asarray(volume[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
        return ndimage.affine_transform(part, np.asarray(self.step), offset=np.asarray(self.origin) - lo,
                                        output_shape=(self.size,) * 3, order=order, mode="nearest" if edge else "constant",
                                        cval=cval, output=np.float32, prefilter=False)

    def inside(self, shape) -> np.ndarray:
        """(size,)*3 bool: the crop voxels :meth:`sample` reads from the image rather than makes up (``cval`` or the
        edge going on), read by the same interpolation so the two agree to the voxel: past the edge a label is
        unknown."""
        axes = [ndimage.affine_transform(np.ones(n, np.float32), [step], offset=[origin], output_shape=(self.size,),
                                         order=0, mode="constant", cval=0.0, prefilter=False) > 0
                for n, step, origin in zip(shape, self.step, self.origin)]
        return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]

    def footprint(self, shape) -> Region:
        """The image voxels whose crop position lies in [-0.5, size - 0.5), clipped to the image."""
        lo = np.ceil(self.to_image([-0.5] * 3) - 1e-6)
        hi = np.ceil(self.to_image([self.size - 0.5] * 3) - 1e-6)
        lo = np.clip(lo, 0, np.asarray(shape)).astype(int)
        hi = np.clip(hi, 0, np.asarray(shape)).astype(int)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def paste(self, crop_values: np.ndarray, shape) -> tuple[Region, np.ndarray]:
        """Crop-grid values -> (footprint region, the values resampled onto the image voxels in it).

        Linear interpolation of the crop values at each image voxel's crop position; positions in
        the last half crop voxel take the edge value.
        """
        region = self.footprint(shape)
        start = np.array([s.start for s in region], float)
        out_shape = tuple(s.stop - s.start for s in region)
        inverse = 1 / np.asarray(self.step)
        values = ndimage.affine_transform(crop_values.astype(np.float32), inverse, offset=(start - self.origin) * inverse,
                                          output_shape=out_shape, order=1, mode="nearest", output=np.float32,
                                          prefilter=False)
        return region, values

    def border_faces_inside(self, shape) -> list[tuple[int, int]]:
        """(axis, 0 or size-1) for each face of the crop that lies inside the image: an object touching
        such a face may continue beyond the crop; one touching a face outside the image cannot."""
        faces = []
        for axis in range(3):
            for index in (0, self.size - 1):
                position = self.origin[axis] + self.step[axis] * index
                if 0 <= position <= shape[axis] - 1:
                    faces.append((axis, index))
        return faces
