"""Sphere recovery on the simulated NEMA IEC body phantom: one click on each sphere's centre, every method.

    python benchmarks/nema.py [--ratios 4 8] [--seeds 3] [--methods model pct41 pct50 region-growing]

Prints Dice and recovered volume (segmented / true voxels, 1 is right) per sphere diameter and sphere-to-background
ratio, mean over noise realisations, and writes results/nema.json. Geometry and physics are fixed
(``seganypet.phantom.nema``), independent of the whole-body phantoms the model was trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from seganypet.eval.metrics import dice  # noqa: E402
from seganypet.eval.segmenters import make_segmenter  # noqa: E402
from seganypet.phantom.nema import nema_iec_case  # noqa: E402
from seganypet.progress import track  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--seeds", type=int, default=3, help="noise realisations per ratio")
    parser.add_argument("--methods", nargs="+", default=["model", "pct41", "pct50", "region-growing"])
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()
    segmenters = [make_segmenter(m, args.checkpoint) for m in args.methods]
    results: dict[tuple, list[tuple[float, float]]] = {}
    jobs = [(ratio, seed) for ratio in args.ratios for seed in range(args.seeds)]
    for ratio, seed in track(jobs, "NEMA phantoms"):
        case = nema_iec_case(ratio, seed=seed)
        for segmenter in segmenters:
            segmenter.set_image(case.image)
            for sphere in case.lesions:
                truth = case.instances == sphere.id
                centre = case.image.world_to_voxel(np.array([sphere.center_mm]))[0]
                segmenter.new_target()
                mask = segmenter.add_point(tuple(int(v) for v in np.round(centre)), True)
                results.setdefault((ratio, sphere.diameter_mm, segmenter.name), []).append(
                    (dice(mask, truth), mask.sum() / truth.sum()))
    rows = []
    for ratio in args.ratios:
        for diameter in sorted({d for r, d, _ in results if r == ratio}):
            row: dict = {"ratio": f"{ratio:g}:1", "sphere_mm": diameter}
            for method in args.methods:
                values = np.array(results[(ratio, diameter, method)])
                row[f"{method} dice"], row[f"{method} volume"] = float(values[:, 0].mean()), float(values[:, 1].mean())
            rows.append(row)
    report("nema", rows, {"seeds": args.seeds, "clicks": "one, at the voxel nearest each sphere's centre"})


if __name__ == "__main__":
    main()
