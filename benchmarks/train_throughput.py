"""Training throughput (samples/s) for 1 and 2 processes (torchrun, gloo on CPU / nccl on GPU).

    python benchmarks/train_throughput.py -d DATASET [--size small] [--steps 60] [--procs 1,2] [--cache DIR] [--workers N]

On a GPU machine (one GPU: ``--procs 1``) the result goes to ``results/train_throughput_gpu.json``.

Each configuration trains ``--steps`` steps in a fresh run folder (the dataset cache is built by the
first and shared, or taken from ``--cache``, an earlier run's ``cache`` folder) and reports the
run's own samples/s over all its steps (data loading, click
simulation and CPCL included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--workers", type=int, default=0, help="batch-preparing processes per training process")
    parser.add_argument("--cache", help="an earlier run's cache folder for this dataset (skips reading every case)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    if args.cache:
        (work / "cache").symlink_to(Path(args.cache).resolve())
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    rows = []
    for procs in (int(p) for p in args.procs.split(",")):
        run = work / f"p{procs}"
        if (work / "cache").exists():
            run.mkdir()
            (run / "cache").symlink_to(work / "cache")
        cmd = [torchrun, f"--nproc_per_node={procs}", "--master_port=29577", "-m", "seganypet.train", "-d", args.dataset,
               "-o", str(run), "--size", args.size, "--steps", str(args.steps), "--batch", str(args.batch),
               "--save-every", "100000", "--workers", str(args.workers)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        if not (work / "cache").exists():
            (run / "cache").rename(work / "cache")
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        rows.append({"processes": procs, "threads_per_process": env["OMP_NUM_THREADS"], "size": args.size,
                     "batch_per_process": args.batch, "loader_workers": args.workers, "steps": log[-1]["step"],
                     "samples_per_s": round(log[-1]["samples_per_s"], 3)})
    shutil.rmtree(work, ignore_errors=True)
    report("train_throughput_gpu" if torch.cuda.is_available() else "train_throughput", rows, {"dataset": args.dataset})


if __name__ == "__main__":
    main()
