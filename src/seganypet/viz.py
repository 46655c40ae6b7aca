"""Pictures a nuclear-medicine reader expects: a coronal MIP and slices, inverted grey, labels in colour.

Every view is shown in radiological convention (patient's right on the
viewer's left, head up), whatever the file's own orientation.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from seganypet.io.image import PetImage  # noqa: E402
from seganypet.io.write import write_atomic  # noqa: E402


def to_lps_canonical(image: PetImage, *arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Reorient ``arrays`` (on the image's grid) so i, j, k run to patient Left, Posterior, Superior.

    Returns the arrays and the spacing along the new axes.
    """
    ornt = nib.orientations.io_orientation(image.affine_in("LPS"))
    out = [nib.orientations.apply_orientation(a, ornt) for a in arrays]
    spacing = image.spacing[ornt[:, 0].astype(int)]
    return out, spacing


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _draw_labels(ax, planes: Mapping[str, np.ndarray], extent) -> None:
    for (name, plane), color in zip(planes.items(), _colors(len(planes))):
        if plane.any():
            ax.contour(plane.T.astype(float), levels=[0.5], colors=[color], linewidths=0.8, origin="lower", extent=extent)
            ax.plot([], [], color=color, label=name)


def save_mip_png(
    image: PetImage,
    path: str | Path,
    labels: np.ndarray | None = None,
    names: Mapping[int, str] | None = None,
    suv_max: float = 6.0,
    title: str | None = None,
    axial_through: Sequence[int] | None = None,
) -> Path:
    """Coronal MIP of the SUV (inverted grey, 0..``suv_max``), label outlines projected on it.

    axial_through: a voxel (i, j, k) of the input grid; adds the axial slice through it.
    """
    arrays = [image.array] + ([labels] if labels is not None else [])
    if axial_through is not None:
        marker = np.zeros(image.shape, bool)
        marker[tuple(int(v) for v in axial_through)] = True
        arrays.append(marker)
    reoriented, spacing = to_lps_canonical(image, *arrays)
    suv = reoriented[0]
    lab = reoriented[1] if labels is not None else None
    panels = 2 if axial_through is not None else 1
    width = suv.shape[0] * spacing[0]
    height = suv.shape[2] * spacing[2]
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels * max(width / height, 0.45) + 1.5, 6.5), squeeze=False)
    ax = axes[0, 0]
    extent = (0, width, 0, height)
    ax.imshow(suv.max(axis=1).T, cmap="gray_r", vmin=0, vmax=suv_max, origin="lower", extent=extent, interpolation="bilinear")
    ids = [int(v) for v in np.unique(lab) if v] if lab is not None else []
    if lab is not None and ids:
        planes = {(names or {}).get(i, str(i)): (lab == i).any(axis=1) for i in ids}
        _draw_labels(ax, planes, extent)
        ax.legend(loc="upper right", fontsize=6, frameon=True, framealpha=0.7)
    ax.set_title(textwrap.fill(title or "coronal MIP (SUV 0-%g)" % suv_max, 44), fontsize=9)  # long method names wrap
    ax.text(2, height - 2, "R", va="top", fontsize=9)
    ax.text(width - 2, height - 2, "L", va="top", ha="right", fontsize=9)
    ax.set_axis_off()
    if axial_through is not None:
        k = int(np.argwhere(reoriented[-1])[0][2])
        ax2 = axes[0, 1]
        axial = suv[:, :, k]
        ext2 = (0, suv.shape[0] * spacing[0], suv.shape[1] * spacing[1], 0)  # anterior up
        ax2.imshow(axial.T, cmap="gray_r", vmin=0, vmax=suv_max, extent=ext2, interpolation="bilinear")
        if lab is not None:
            for i, color in zip(ids, _colors(len(ids))):
                plane = lab[:, :, k] == i
                if plane.any():
                    ax2.contour(plane.T.astype(float), levels=[0.5], colors=[color], linewidths=1.0, extent=(0, ext2[1], 0, ext2[2]), origin="lower")
        ax2.set_title(f"axial slice {k} (through SUVmax)", fontsize=9)
        ax2.set_axis_off()
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    try:
        return write_atomic(path, save)
    finally:
        plt.close(fig)
