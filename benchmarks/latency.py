"""Interactive latency per model size and precision, on a 200x200x300 whole-body phantom scan.

For each size (fp32 and bf16 encoder): time to embed one crop, time per click (p50/p95 over
--clicks clicks, the session's whole path: prompt -> decode -> paste back), time from
set_image to the first mask, and the process's peak RSS. Each configuration runs in a fresh
process so that its RSS is its own.

    python benchmarks/latency.py [--sizes test,small,base] [--clicks 50] [--checkpoint PATH]

Random weights unless a checkpoint is given (or shipped, for the small size); with random
weights auto-zoom is off (max_zoom 1), since an untrained model's mask fills every window.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report

SHAPE = (200, 200, 300)


def make_scan(path: Path) -> None:
    """A phantom cut or padded to SHAPE, saved once so that each measuring process only loads it."""
    from seganypet.phantom import LESION_LABEL, PhantomConfig, generate_case

    case = generate_case(11, PhantomConfig(scanner="siemens_biograph_vision", max_lesions=6))
    suv, lesions = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, bool)
    part = tuple(slice(0, min(a, b)) for a, b in zip(SHAPE, case.image.shape))
    suv[part], lesions[part] = case.image.array[part], case.labels[part] == LESION_LABEL
    np.savez(path, suv=suv, lesions=lesions, affine=case.image.affine)


def load_scan(path: Path):
    from seganypet.io import PetImage

    data = np.load(path)
    return PetImage(data["suv"], data["affine"], "LPS"), data["lesions"]


def one(size: str, precision: str, clicks: int, checkpoint: str | None, scan: Path) -> dict:
    import torch

    from seganypet.errors import SegAnyPetError
    from seganypet.infer import Session
    from seganypet.modeling import build_model, default_checkpoint, load_model, normalise_suv, set_precision

    torch.set_num_threads(2)
    image, lesions = load_scan(scan)
    if checkpoint is None and size == "small":
        try:
            checkpoint = str(default_checkpoint())
        except SegAnyPetError:  # none shipped yet
            checkpoint = None
    model = load_model(checkpoint, precision=precision) if checkpoint else set_precision(build_model(size).eval(), precision)
    session = Session(model, max_zoom=4.0 if checkpoint else 1.0)
    rng = np.random.default_rng(0)
    target = np.argwhere(lesions)
    centre = target[len(target) // 2] if len(target) else np.array(SHAPE) // 2

    t = time.perf_counter()
    session.set_image(image)
    crop = session.add_point(centre).crop
    first = time.perf_counter() - t

    tensor = torch.from_numpy(crop.sample(normalise_suv(image.array), edge=True))[None, None]
    embeds = []
    for _ in range(5):
        t = time.perf_counter()
        with torch.inference_mode():
            model.embed(tensor)
        embeds.append(time.perf_counter() - t)

    times = []
    for n in range(clicks):
        point = np.clip(centre + rng.integers(-3, 4, 3), 0, np.array(SHAPE) - 1)
        t = time.perf_counter()
        session.add_point(point, positive=bool(n % 3))
        times.append(time.perf_counter() - t)
    return {
        "size": size, "precision": precision, "weights": "checkpoint" if checkpoint else "random",
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "embed_ms": 1000 * float(np.median(embeds)), "click_p50_ms": 1000 * float(np.percentile(times, 50)),
        "click_p95_ms": 1000 * float(np.percentile(times, 95)), "first_mask_s": first,
        "encoder_calls": session.encoder_calls, "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="test,small,base")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--checkpoint")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(*args.child[:2], args.clicks, args.checkpoint, Path(args.child[2]))))
        return
    scan = Path(tempfile.mkdtemp()) / "scan.npz"
    make_scan(scan)
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            cmd = [sys.executable, __file__, "--child", size, precision, str(scan), "--clicks", str(args.clicks)]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{size} {precision}: done", file=sys.stderr)
    scan.unlink()
    report("latency", rows, {"scan_shape": SHAPE, "note": "click = session.add_point on one target (prompt, decode, "
                             "upsample, paste back); first_mask = set_image + first click incl. embedding"})


if __name__ == "__main__":
    main()
