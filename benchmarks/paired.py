"""Two models (or two training arms) on the same held-out targets and clicks: the paired Dice difference.

    python benchmarks/paired.py --a eval_cpcl_s0 eval_cpcl_s1 --b eval_plain_s0 eval_plain_s1 [--name cpcl_vs_plain]

Each folder is a ``seganypet evaluate`` output. The i-th folder of ``--a`` is paired with the i-th of ``--b``
(one training seed each); a target's difference is A - B averaged over those seed pairs, and the interval is a
95 % bootstrap over targets. The per-seed columns show how much of the difference survives a change of seed,
which the target bootstrap alone does not. Prints a table, writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from seganypet.eval.runner import group_keys, load_rows, structure_order  # noqa: E402


def dice_by_target(folder: str, method: str) -> dict[tuple, tuple[float, list[str]]]:
    """(case, target, clicks) -> (Dice, the groups it counts in: ``group_keys``)."""
    rows = [r for r in load_rows(Path(folder)) if r["method"] == method]
    if not rows:
        raise SystemExit(f"{folder}: no rows of method {method!r}")
    return {(r["case"], r["target"], r["clicks"]):
            (r["dice"], group_keys(r)) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", required=True, help="evaluation folders of arm A, one per seed")
    parser.add_argument("--b", nargs="+", required=True, help="evaluation folders of arm B, in the same seed order")
    parser.add_argument("--method", default="model")
    parser.add_argument("--name", default="paired")
    parser.add_argument("--resamples", type=int, default=10000)
    args = parser.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit("--a and --b need the same number of folders (one per seed)")
    arms = [(dice_by_target(a, args.method), dice_by_target(b, args.method)) for a, b in zip(args.a, args.b)]
    keys = sorted(set.intersection(*(set(a) & set(b) for a, b in arms)))
    groups = sorted({g for k in keys for g in arms[0][0][k][1]}, key=structure_order)
    rng = np.random.default_rng(0)
    rows = []
    for clicks in sorted({k[2] for k in keys}):
        for group in groups:
            chosen = [k for k in keys if k[2] == clicks and group in arms[0][0][k][1]]
            if not chosen:
                continue
            per_seed = np.array([[a[k][0] - b[k][0] for k in chosen] for a, b in arms])  # (seeds, targets)
            diff = per_seed.mean(0)
            boot = diff[rng.integers(len(diff), size=(args.resamples, len(diff)))].mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            rows.append({"clicks": clicks, "group": group, "n": len(chosen),
                         "A": float(np.mean([[a[k][0] for k in chosen] for a, _ in arms])),
                         "B": float(np.mean([[b[k][0] for k in chosen] for _, b in arms])),
                         "A-B": float(diff.mean()), "ci_lo": float(lo), "ci_hi": float(hi),
                         "won": int((diff > 0).sum()), "lost": int((diff < 0).sum()),
                         **{f"A-B seed{i}": float(s.mean()) for i, s in enumerate(per_seed)}})
    report(args.name, rows, {"a": args.a, "b": args.b, "method": args.method})


if __name__ == "__main__":
    main()
