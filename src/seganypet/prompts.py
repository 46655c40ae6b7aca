"""Prompts in the package's one voxel convention, and their conversion from what users type.

A point is ``(x, y, z)`` = voxel indices ``(i, j, k)`` of the input file; a box is
two opposite corners, inclusive. With ``coords="mm"`` they are millimetres in the
file's own space (RAS for NIfTI, LPS for DICOM/NRRD/MHA) and are rounded to the
nearest voxel here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage

Coords = Literal["voxel", "mm"]


@dataclass
class Prompts:
    positive: list[tuple[int, int, int]] = field(default_factory=list)
    negative: list[tuple[int, int, int]] = field(default_factory=list)
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # (lo, hi) inclusive

    def __bool__(self) -> bool:
        return bool(self.positive or self.box)


def parse_numbers(text: str, count: int = 3, what: str = "point") -> tuple[float, ...]:
    """``"x,y,z"`` as typed on the command line (six numbers for a box)."""
    return tuple(as_numbers(text.replace(" ", "").split(","), count, what, shown=text))


def as_numbers(value, count: int, what: str, shown=None) -> np.ndarray:
    """``count`` finite numbers from a user's list (a prompts file's, the viewer's, a split string), or a one-line error."""
    try:
        numbers = np.asarray(value, float).ravel()
    except (TypeError, ValueError):
        numbers = np.array([np.nan])
    if numbers.size != count or not np.isfinite(numbers).all():
        raise SegAnyPetError(f"{what} {shown if shown is not None else value!r} is not {count} numbers"
                             + (" x,y,z" if count == 3 else " x0,y0,z0,x1,y1,z1"))
    return numbers


def to_voxel(image: PetImage, xyz, coords: Coords = "voxel", what: str = "point") -> tuple[int, int, int]:
    """One point to integer voxel indices, refusing points outside the volume."""
    xyz = as_numbers(xyz, 3, what)
    ijk = image.world_to_voxel(xyz)[0] if coords == "mm" else xyz
    voxel = np.rint(ijk).astype(int)
    if np.any(voxel < 0) or np.any(voxel >= image.shape):
        shown = ",".join(f"{v:g}" for v in xyz)
        raise SegAnyPetError(f"{what} {shown} ({coords}) lies outside the volume of {'x'.join(map(str, image.shape))} voxels",
                             image.source)
    return tuple(int(v) for v in voxel)  # type: ignore[return-value]


def make_prompts(image: PetImage, positive=(), negative=(), box=None, coords: Coords = "voxel") -> Prompts:
    """Prompts from user coordinates (triplets, or six numbers for the box)."""
    prompts = Prompts(
        positive=[to_voxel(image, p, coords) for p in positive],
        negative=[to_voxel(image, p, coords, "negative point") for p in negative],
    )
    if box is not None:
        corners = as_numbers(box, 6, "box").reshape(2, 3)
        a, b = (np.asarray(to_voxel(image, c, coords, "box corner")) for c in corners)
        prompts.box = (tuple(int(v) for v in np.minimum(a, b)), tuple(int(v) for v in np.maximum(a, b)))
    if not prompts:
        raise SegAnyPetError("give at least one positive point or a box")
    return prompts
