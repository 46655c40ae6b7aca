"""Cost of quantifying a whole-body lesion mask (SUVpeak included) and of classical segmentation from one click.

    python benchmarks/quant_bench.py [--lesions 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, report  # noqa: E402

from seganypet.baselines import METHODS, segment_classical  # noqa: E402
from seganypet.demo import click_inside  # noqa: E402
from seganypet.phantom import LESION_LABEL, PhantomConfig, generate_case  # noqa: E402
from seganypet.prompts import Prompts  # noqa: E402
from seganypet.quant import lesion_table, quantify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lesions", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    case = generate_case(7, PhantomConfig(scanner="siemens_biograph_vision", max_lesions=args.lesions))
    mask = case.labels == LESION_LABEL
    shape = "x".join(map(str, case.image.shape))
    rows = []
    table, seconds, peak = measure(lambda: lesion_table(case.image, mask), args.repeat)
    rows.append({"task": f"lesion table ({len(table)} components)", "shape": shape, "seconds": seconds, "peak_MB": peak})
    _, seconds, peak = measure(lambda: quantify(case.image, mask), args.repeat)
    rows.append({"task": "quantify whole lesion mask", "shape": shape, "seconds": seconds, "peak_MB": peak})
    largest = max(case.lesions, key=lambda lesion: (case.instances == lesion.id).sum())
    click = click_inside(case.instances == largest.id)
    for method in METHODS:
        _, seconds, peak = measure(lambda method=method: segment_classical(case.image, Prompts(positive=[click]), method), args.repeat)
        rows.append({"task": f"{method} from one click", "shape": shape, "seconds": seconds, "peak_MB": peak})
    report("quant_bench", rows)


if __name__ == "__main__":
    main()
