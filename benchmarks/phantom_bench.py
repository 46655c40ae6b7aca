"""Phantom realism against published FDG values, generation cost, and classical segmenters on its lesions.

    python benchmarks/phantom_bench.py [--cases 20] [--seed 1000]

Prints three tables (realism, cost, Dice per lesion size) and writes results/phantom_bench.json.
Literature ranges: liver SUVmean 2-2.5 and liver CoV 10-15 % (EARL/PERCIST reference region), blood pool
SUVmean 1.5-2, brain SUVmean 7-10 in grey matter, lesions SUVmax 2-25.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, report  # noqa: E402

from seganypet.baselines import METHODS, segment_classical  # noqa: E402
from seganypet.demo import click_inside  # noqa: E402
from seganypet.phantom import LABELS, generate_case  # noqa: E402
from seganypet.prompts import Prompts  # noqa: E402

LITERATURE = {"liver SUVmean": (2.0, 2.5), "liver CoV %": (10, 15), "blood pool SUVmean": (1.5, 2.0),
              "brain grey SUVmean": (7.0, 10.0), "lesion SUVmax": (2.0, 25.0)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    stats = {k: [] for k in LITERATURE}
    cost, lesion_rows = [], []
    for seed in range(args.seed, args.seed + args.cases):
        case, seconds, peak = measure(lambda seed=seed: generate_case(seed))
        cost.append({"seed": seed, "scanner": case.physics["scanner"], "shape": "x".join(map(str, case.image.shape)),
                     "seconds": seconds, "peak_MB": peak, "lesions": len(case.lesions)})
        suv = case.image.array
        liver = ndimage.binary_erosion(case.labels == LABELS["liver"], iterations=2)
        # a 3 cm sphere in the right lobe, as PERCIST's reference region
        centre = np.array(click_inside(liver))
        grid = np.indices(suv.shape).transpose(1, 2, 3, 0)
        sphere = (np.linalg.norm((grid - centre) * case.image.spacing, axis=-1) <= 15.0) & liver
        stats["liver SUVmean"].append(float(suv[liver].mean()))
        stats["liver CoV %"].append(float(100 * suv[sphere].std() / suv[sphere].mean()))
        aorta = ndimage.binary_erosion(case.labels == LABELS["aorta"], iterations=1)
        stats["blood pool SUVmean"].append(float(suv[aorta].mean()) if aorta.any() else np.nan)
        stats["brain grey SUVmean"].append(case.uptake["brain_grey"])
        for lesion in case.lesions:
            truth = case.instances == lesion.id
            measured = float(suv[truth].max())
            stats["lesion SUVmax"].append(measured)
            row = {"seed": seed, "site": lesion.site, "diameter_mm": lesion.diameter_mm, "SUVmax": measured}
            click = click_inside(truth)
            for method in METHODS:
                row[method] = dice(segment_classical(case.image, Prompts(positive=[click]), method), truth)
            lesion_rows.append(row)
    realism = []
    for key, values in stats.items():
        v = np.array(values, float)
        v = v[np.isfinite(v)]
        realism.append({"quantity": key, "phantom median": float(np.median(v)), "phantom p5": float(np.percentile(v, 5)),
                        "phantom p95": float(np.percentile(v, 95)), "literature": f"{LITERATURE[key][0]}-{LITERATURE[key][1]}"})
    print("\nRealism (phantom vs published FDG values)")
    report("phantom_realism", realism)
    print("\nGeneration cost per case")
    report("phantom_cost", cost)
    groups = {"< 10 mm": lambda d: d < 10, "10-30 mm": lambda d: 10 <= d <= 30, "> 30 mm": lambda d: d > 30, "all": lambda d: True}
    summary = []
    for name, keep in groups.items():
        rows = [r for r in lesion_rows if keep(r["diameter_mm"])]
        if rows:
            summary.append({"lesions": name, "n": len(rows), **{m: float(np.mean([r[m] for r in rows])) for m in METHODS}})
    print("\nClassical segmenters, one click at the lesion's deepest voxel: mean Dice per lesion")
    report("phantom_classical_dice", summary, {"per_lesion": lesion_rows})


if __name__ == "__main__":
    main()
