"""All benchmark results in one Markdown report, with the machine they ran on.

    python benchmarks/report.py   # reads benchmarks/results/*.json, writes benchmarks/results/REPORT.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine  # noqa: E402


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows])


def main() -> None:
    facts = machine()
    parts = ["# Benchmark report", "", ", ".join(f"{k}: {v}" for k, v in facts.items()), ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        parts += [f"## {data.get('benchmark', path.stem)}", "",
                  "machine: " + ", ".join(f"{k}: {v}" for k, v in data.get("machine", {}).items()), "",
                  table(data.get("rows", [])), ""]
    out = RESULTS / "REPORT.md"
    out.write_text("\n".join(parts))
    print("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
