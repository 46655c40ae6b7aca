"""Held-out phantoms cut as a clinical whole-body scan is cut: the field of view ends a few cm above the brain's base.

    python benchmarks/cut_fov.py -d Dataset903_PhantomTest10 -o Dataset913_PhantomTest10Cut [--brain-mm 36]
    seganypet evaluate -d Dataset913_PhantomTest10Cut -o OUT --method model

The phantoms hold the whole head; an eyes-to-thighs scan keeps only the brain's lowest few cm, and every other
structure whole. This writes a copy of a labelled dataset (images, labels, instances, dataset.json, metadata) with
every slice above the brain's lowest ``--brain-mm`` removed, so the evaluation harness scores what the model makes
of an organ cut by the scan's edge. Slices are taken with nibabel's slicer, which keeps each voxel's world position.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np


def head_axis(affine: np.ndarray) -> tuple[int, bool]:
    """The voxel axis that runs along the body, and whether it runs to the head."""
    orientation = nib.io_orientation(affine)  # per voxel axis: the RAS axis it runs along, and its sign
    k = int(np.nonzero(orientation[:, 0] == 2)[0][0])
    return k, bool(orientation[k, 1] > 0)


def cut_case(labels: nib.Nifti1Image, brain: int, brain_mm: float) -> tuple[slice, ...]:
    """The slicer that keeps the scan from its lower end to ``brain_mm`` above the brain's lowest slice."""
    k, up = head_axis(labels.affine)
    data = np.asanyarray(labels.dataobj)
    slices = np.nonzero((data == brain).any(tuple(a for a in range(3) if a != k)))[0]
    if not len(slices):
        raise SystemExit(f"cut_fov.py: {labels.get_filename()}: no brain in this label map, so no cut to place")
    keep = int(round(brain_mm / labels.header.get_zooms()[k]))
    index = [slice(None)] * 3
    index[k] = slice(0, slices.min() + keep) if up else slice(slices.max() + 1 - keep, None)
    return tuple(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--brain-mm", type=float, default=36.0, help="how much of the brain the scan keeps, in mm")
    parser.add_argument("--split", default="Ts")
    args = parser.parse_args()
    meta = json.loads((args.dataset / "dataset.json").read_text())
    if "brain" not in meta.get("labels", {}):
        raise SystemExit(f"cut_fov.py: {args.dataset / 'dataset.json'} has no 'brain' label: the cut is placed by the brain")
    ending, brain = meta["file_ending"], meta["labels"]["brain"]
    args.output.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.dataset / "dataset.json", args.output / "dataset.json")
    if (args.dataset / "metadata").is_dir():
        shutil.copytree(args.dataset / "metadata", args.output / "metadata", dirs_exist_ok=True)
    for label_path in sorted((args.dataset / f"labels{args.split}").glob(f"*{ending}")):
        case = label_path.name[: -len(ending)]
        labels = nib.load(label_path)
        index = cut_case(labels, brain, args.brain_mm)
        for folder, name in ((f"images{args.split}", f"{case}_0000"), (f"labels{args.split}", case), (f"instances{args.split}", case)):
            source = args.dataset / folder / f"{name}{ending}"
            if source.exists():
                (args.output / folder).mkdir(exist_ok=True)
                nib.save(nib.load(source).slicer[index], args.output / folder / f"{name}{ending}")
        print(f"{case}: {labels.shape} -> {labels.slicer[index].shape}")


if __name__ == "__main__":
    main()
