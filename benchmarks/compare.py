"""The model beside every classical method, same held-out cases, same simulated clicks.

    python benchmarks/compare.py -d Dataset902_PhantomTest -o results/compare [--checkpoint PATH] [--clicks 1,3,5]
                                 [--methods model,suv2.5,pct41,pct50,region-growing] [--cases N]

Runs ``seganypet evaluate`` once per method into one folder (resumable), prints the Dice and NSD
tables (structures, and lesions by size: < 10, 10-30, > 30 mm) and writes results/compare.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from seganypet.eval import EvalConfig, run_evaluation  # noqa: E402
from seganypet.eval.runner import load_rows, markdown_table, summarise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "compare"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--clicks", default="1,3,5")
    parser.add_argument("--methods", default="model,suv2.5,pct41,pct50,region-growing")
    parser.add_argument("--protocol", default="largest_error")
    parser.add_argument("--split", default="Ts")
    args = parser.parse_args()
    clicks = tuple(int(c) for c in args.clicks.split(","))
    seconds = {}
    for method in args.methods.split(","):
        t = time.perf_counter()
        run_evaluation(EvalConfig(args.dataset, args.output, method, args.checkpoint, clicks, args.split, protocol=args.protocol))
        seconds[method] = time.perf_counter() - t
    summary = summarise(load_rows(Path(args.output)))
    print(markdown_table(summary))
    print(markdown_table(summary, "nsd_mean"))
    report("compare", summary, {"dataset": args.dataset, "checkpoint": args.checkpoint, "protocol": args.protocol,
                                "seconds_per_method": seconds})


if __name__ == "__main__":
    main()
