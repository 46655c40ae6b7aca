"""Writing volumes and masks in the source geometry, atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A reader never sees a half-written file, and an interrupted job leaves the
    previous version in place.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    except OSError as exc:  # a folder that cannot be made or written to
        raise SegAnyPetError(f"cannot write here ({exc.strerror or exc})", path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should read like any other file
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota
        raise SegAnyPetError(f"cannot write ({exc.strerror or exc})", path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_nifti(image: PetImage, path: str | Path, array: np.ndarray | None = None) -> Path:
    """Write ``array`` (default: the image's own) on the image's grid as NIfTI (RAS affine).

    Masks (bool/integer arrays) are written as uint8/int16 labels, volumes as float32.
    """
    data = image.array if array is None else array
    if data.shape != image.array.shape:
        raise ValueError(f"array shape {data.shape} differs from image shape {image.array.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.uint8 if data.min() >= 0 and data.max() < 256 else np.int16)
    else:
        data = data.astype(np.float32)
    affine = image.affine_in("RAS")
    nifti = nib.Nifti1Image(data, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    if data.dtype == np.float32 and image.units:
        nifti.header["descrip"] = image.units.encode()[:79]
    return write_atomic(path, lambda tmp: nib.save(nifti, tmp))
