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
import numpy as np  # noqa: E402

from seganypet.io import PetImage, Reorientation  # noqa: E402
from seganypet.io.write import write_atomic  # noqa: E402


def to_lps_canonical(image: PetImage, *arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Reorient ``arrays`` (on the image's grid) so i, j, k run to patient Left, Posterior, Superior.

    Returns the arrays and the spacing along the new axes.
    """
    orient = Reorientation.to_lps(image)
    return [orient.array(a) for a in arrays], orient.image(image).spacing


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _outline(ax, plane: np.ndarray, color, extent, linewidth: float) -> None:
    """A mask's outline on a plane; none on a plane one voxel thin (the coronal MIP of a single slice), which has no
    inside to outline and which matplotlib cannot contour."""
    if plane.any() and min(plane.shape) >= 2:
        ax.contour(plane.T.astype(float), levels=[0.5], colors=[color], linewidths=linewidth, origin="lower", extent=extent)


def _draw_labels(ax, planes: Mapping[str, np.ndarray], extent) -> None:
    for (name, plane), color in zip(planes.items(), _colors(len(planes))):
        if plane.any():
            _outline(ax, plane, color, extent, 0.8)
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

    axial_through: a voxel (i, j, k) of the input grid; adds the axial slice through it. A volume of a few slices
    (a single-slice DICOM, a short axial range) makes a coronal MIP a strip with nothing to read: it gets the
    axial slice alone, through ``axial_through`` or else through its SUVmax.
    """
    reoriented, spacing = to_lps_canonical(image, image.array)
    width, height = reoriented[0].shape[0] * spacing[0], reoriented[0].shape[2] * spacing[2]
    coronal = height >= width / 10
    if not coronal and axial_through is None:
        axial_through = np.unravel_index(int(np.argmax(image.array)), image.shape)
    arrays = [image.array] + ([labels] if labels is not None else [])
    if axial_through is not None:
        marker = np.zeros(image.shape, bool)
        marker[tuple(int(v) for v in axial_through)] = True
        arrays.append(marker)
    reoriented, spacing = to_lps_canonical(image, *arrays)
    suv = reoriented[0]
    lab = reoriented[1] if labels is not None else None
    ids = [int(v) for v in np.unique(lab) if v] if lab is not None else []
    panels = int(coronal) + int(axial_through is not None)
    aspect = max(width / height, 0.45) if coronal else 1.0
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels * aspect + 1.5, 6.5), squeeze=False)
    heading = textwrap.fill(title or "coronal MIP (SUV 0-%g)" % suv_max, 44)  # long method names wrap
    if coronal:
        ax = axes[0, 0]
        extent = (0, width, 0, height)
        ax.imshow(suv.max(axis=1).T, cmap="gray_r", vmin=0, vmax=suv_max, origin="lower", extent=extent, interpolation="bilinear")
        if ids:
            planes = {(names or {}).get(i, str(i)): (lab == i).any(axis=1) for i in ids}
            _draw_labels(ax, planes, extent)
            ax.legend(loc="lower right", fontsize=6, frameon=True, framealpha=0.7)  # the L marker is up there
        ax.set_title(heading, fontsize=9)
        ax.text(2, height - 2, "R", va="top", fontsize=9)
        ax.text(width - 2, height - 2, "L", va="top", ha="right", fontsize=9)
        ax.set_axis_off()
    if axial_through is not None:
        k = int(np.argwhere(reoriented[-1])[0][2])
        ax2 = axes[0, -1]
        axial = suv[:, :, k]
        ext2 = (0, suv.shape[0] * spacing[0], suv.shape[1] * spacing[1], 0)  # anterior up
        ax2.imshow(axial.T, cmap="gray_r", vmin=0, vmax=suv_max, extent=ext2, interpolation="bilinear")
        for i, color in zip(ids, _colors(len(ids))):
            _outline(ax2, lab[:, :, k] == i, color, (0, ext2[1], 0, ext2[2]), 1.0)
            if not coronal and (lab[:, :, k] == i).any():
                ax2.plot([], [], color=color, label=(names or {}).get(i, str(i)))
        if not coronal and ids:
            ax2.legend(loc="upper right", fontsize=6, frameon=True, framealpha=0.7)
        ax2.set_title(f"axial slice {k} (through SUVmax)" if coronal else heading.replace("coronal MIP", f"axial slice {k}"),
                      fontsize=9)
        ax2.set_axis_off()
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    try:
        return write_atomic(path, save)
    finally:
        plt.close(fig)
