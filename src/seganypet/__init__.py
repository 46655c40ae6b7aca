"""seganypet: promptable 3D segmentation of whole-body PET.

Importing the package has no side effects; the heavy parts (torch, the model)
load only when used.
"""

from importlib.metadata import PackageNotFoundError, version

from seganypet.errors import SegAnyPetError

try:
    __version__ = version("seganypet")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["SegAnyPetError", "__version__"]
