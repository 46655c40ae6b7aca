"""The model beside every classical method, same held-out cases, same simulated clicks.

    python benchmarks/compare.py -d Dataset903_PhantomTest10 [-d Dataset904_PhantomTest20 ...] -o results/compare
                                 [--checkpoint PATH] [--clicks 1,3,5] [--methods model,suv2.5,pct41,pct50,region-growing]

Runs ``seganypet evaluate`` once per dataset and method, each dataset into ``OUTPUT/<dataset folder name>``
(resumable: finished cases are kept), then pools every case and prints the Dice and NSD tables (structures, the
organ mean, lesions by size: < 10, 10-30, > 30 mm, and by true SUVmax) and the model card's table: the model beside
the best classical method at each click count, named, and 41 % SUVmax. Writes results/compare.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from seganypet.eval import EvalConfig, run_evaluation  # noqa: E402
from seganypet.eval.runner import load_rows, markdown_table, structure_order, summarise  # noqa: E402


def best_classical_table(summary: list[dict], reference: str = "pct41") -> str:
    """Per structure: the model, the best classical method at each click count (picked per count, so the column may
    change method), and ``reference`` (the method clinical PET reads use)."""
    cell = {(r["structure"], r["method"], r["clicks"]): r["dice_mean"] for r in summary}
    n = {r["structure"]: r["n"] for r in summary if r["method"] == "model"}
    clicks = sorted({r["clicks"] for r in summary})
    classical = sorted({r["method"] for r in summary} - {"model"})
    at = " | ".join(f"@{c}" for c in clicks)
    lines = [f"| structure | n | model {at} | best classical {at} | {reference} {at} |", "|---|---|" + "---|" * 3 * len(clicks)]
    for s in sorted(n, key=structure_order):
        if s.startswith("lesion in"):
            continue
        best = [max(((cell.get((s, m, c), -1.0), m) for m in classical)) for c in clicks]
        values = ([f"{cell[(s, 'model', c)]:.3f}" for c in clicks] + [f"{d:.3f} ({m})" for d, m in best]
                  + [f"{cell[(s, reference, c)]:.3f}" if (s, reference, c) in cell else "" for c in clicks])
        lines.append(f"| {s} | {n[s]} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, action="append", help="a dataset folder; repeat to pool several")
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "compare"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--clicks", default="1,3,5")
    parser.add_argument("--methods", default="model,suv2.5,pct41,pct50,region-growing")
    parser.add_argument("--protocol", default="largest_error")
    parser.add_argument("--split", default="Ts")
    args = parser.parse_args()
    clicks = tuple(int(c) for c in args.clicks.split(","))
    methods = args.methods.split(",")
    outputs = [Path(args.output) / Path(d).name for d in args.dataset]
    shared = sorted({o.name for o in outputs if outputs.count(o) > 1})
    if shared:
        raise SystemExit(f"compare.py: two datasets are both named {shared[0]}: their results would mix in {args.output}")
    seconds = dict.fromkeys(methods, 0.0)
    for dataset, out in zip(args.dataset, outputs):
        for method in methods:
            t = time.perf_counter()
            run_evaluation(EvalConfig(dataset, str(out), method, args.checkpoint, clicks, args.split, protocol=args.protocol))
            seconds[method] += time.perf_counter() - t
    summary = summarise([r for out in outputs for r in load_rows(out) if r["method"] in methods])
    print(markdown_table(summary))
    print(markdown_table(summary, "nsd_mean"))
    if "model" in methods and len(methods) > 1:
        print(best_classical_table(summary))
    report("compare", summary, {"datasets": args.dataset, "checkpoint": args.checkpoint, "protocol": args.protocol,
                                "seconds_per_method": seconds})


if __name__ == "__main__":
    main()
