"""Helpers shared by the benchmark scripts: timing, peak memory, a printed table, JSON beside it."""

from __future__ import annotations

import json
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy
    import torch

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def measure(fn: Callable, repeat: int = 1):
    """(result, seconds per call (best of ``repeat``), peak traced MB of one call)."""
    best = float("inf")
    result = None
    for n in range(repeat):
        if n == 0:
            tracemalloc.start()
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
        if n == 0:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return result, best, peak


def report(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Print ``rows`` as a table and write them with the machine facts to results/NAME.json."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-+-".join("-" * widths[k] for k in keys))
    for r in rows:
        print(" | ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}, indent=2, default=str))
    tmp.replace(path)
    print(f"wrote {path}")
    return path
