"""The first click answered in single windows of several widths: how far the session's choice is from the best window,
and which rule finds it.

    python benchmarks/first_click.py -d Dataset903_PhantomTest10 [-d Dataset904_PhantomTest20] [--checkpoint PATH]
                                     [--zooms 0.333,0.5,0.75,1,1.5] [--cases N]

Each target of each case (the harness's targets; lesions one by one) gets the harness's first click (its centre). The
session answers it with its rules (fine crop, model scale, AutoZoom, closer redraw); then the same click is answered
once in a window centred on it at each zoom (a multiple of the model's spacing), without mask prompt, with the
session's own decoding (the click's connected part kept). Every answer is scored by Dice against the whole target.

A column per way of choosing among the single windows, "free" meaning the windows whose answer touches no crop face
inside the image (else the widest): the best one (the oracle: what a perfect choice would reach), the finest, the
IoU head's highest score, a perfect IoU head (the true IoU inside each window: what training the head better could
reach at most), SAM's stability score (voxels above logit +1 over those above -1), the sharpest edge in SUV (the
session's own cue: mean SUV on the answer's inner border minus that on its outer border), the answer that agrees best
(mean Dice) with the other free ones, the free windows' logits averaged, and the answer (the session's or a free
window's) that agrees best with region growing from the same click (beside region growing's own Dice). Writes
results/first_click.json.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from seganypet.baselines import segment_classical  # noqa: E402
from seganypet.eval.metrics import dice, equivalent_diameter_mm  # noqa: E402
from seganypet.eval.runner import SIZE_GROUPS, first_click_on, group_keys, group_of, read_case, structure_order  # noqa: E402
from seganypet.infer.crop import CropGeometry  # noqa: E402
from seganypet.infer.session import Session, Target  # noqa: E402
from seganypet.io import Reorientation  # noqa: E402
from seganypet.modeling import load_model  # noqa: E402
from seganypet.progress import track  # noqa: E402
from seganypet.prompts import Prompts  # noqa: E402
from seganypet.train.data import case_targets, label_names, list_cases, read_dataset_json  # noqa: E402


def window_answers(session: Session, click: np.ndarray, zooms: list[float], region, truth: np.ndarray) -> list[dict]:
    """The click answered in one window per zoom: logits pasted into ``region`` of the image (NaN outside the window),
    and the IoU with the truth on the window's own grid (what the IoU head is trained to predict)."""
    config, image = session.model.config, session.image
    target = Target(0, points=[(click, True)])
    shape = tuple(s.stop - s.start for s in region)
    start = np.array([s.start for s in region], float)
    answers = []
    for zoom in zooms:
        crop = CropGeometry.centred(click, image.spacing, config.spacing_mm * zoom, config.crop_size)
        logits, score = session._decode(target, crop, None)  # the session's single-window step, as it decodes
        crop_logits = session._upsampled(logits)
        window_truth, window_mask = crop.sample(truth, order=0) > 0.5, crop_logits > 0  # reads only the window's voxels
        union = (window_mask | window_truth).sum()
        local = CropGeometry(tuple(np.asarray(crop.origin) - start), crop.step, crop.size)
        footprint, values = local.paste(crop_logits, shape)
        pasted = np.full(shape, np.nan, np.float32)
        pasted[footprint] = values
        answers.append({"zoom": zoom, "logits": pasted, "mask": pasted > 0, "score": score,
                        "border": session._touches_border(crop, window_mask),
                        "window_iou": float((window_mask & window_truth).sum() / union) if union else 1.0,
                        "edge": session._edge(crop, crop_logits)[0],
                        "stability": float((crop_logits > 1).sum() / max((crop_logits > -1).sum(), 1))})
    return answers


def score_first_click(session: Session, click: np.ndarray, truth: np.ndarray, zooms: list[float]) -> dict[str, float]:
    """Dice against the whole target of the session's answer, of each window's, and of each rule's choice."""
    session.new_target()
    session.add_point(click)
    config = session.model.config
    widest = CropGeometry.centred(click, session.image.spacing, config.spacing_mm * max(zooms), config.crop_size)
    region = widest.footprint(truth.shape)
    local_truth, total = truth[region], int(truth.sum())

    def full_dice(mask: np.ndarray) -> float:
        return 2 * float((mask & local_truth).sum()) / max(int(mask.sum()) + total, 1)

    answers = window_answers(session, click, zooms, region, truth)
    for a in answers:
        a["dice"] = full_dice(a["mask"])
    free = [a for a in answers if not a["border"] and a["mask"].any()] or [answers[-1]]

    def agreement(a: dict) -> float:
        return float(np.mean([dice(a["mask"], b["mask"]) for b in free if b is not a] or [0.0]))

    grown = segment_classical(session.image, Prompts(positive=[tuple(int(v) for v in click)]), "region-growing")
    return {
        "session": dice(session.mask, truth),
        **{f"z{a['zoom']:g}": a["dice"] for a in answers},
        "best": max(a["dice"] for a in answers),
        "best free": max(a["dice"] for a in free),
        "finest free": free[0]["dice"],
        "IoU head": max(answers, key=lambda a: a["score"])["dice"],
        "IoU head free": max(free, key=lambda a: a["score"])["dice"],
        "true window IoU free": max(free, key=lambda a: a["window_iou"])["dice"],
        "stability free": max(free, key=lambda a: a["stability"])["dice"],
        "SUV edge free": max(free, key=lambda a: a["edge"])["dice"],
        "agreement free": max(free, key=agreement)["dice"],
        "mean logits free": full_dice(np.nansum(np.stack([a["logits"] for a in free]), 0) > 0),  # the mean's sign
        "region growing": dice(grown, truth),
        "region growing agreement": max([(dice(a["mask"], grown[region]), a["dice"]) for a in free]
                                        + [(dice(session.mask, grown), dice(session.mask, truth))])[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", action="append", required=True, help="nnU-Net dataset folder (repeatable)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--zooms", default="0.333,0.5,0.75,1,1.5", help="window voxel sizes, multiples of the model's spacing")
    parser.add_argument("--split", default="Ts")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases of each dataset only")
    args = parser.parse_args()
    zooms = [float(z) for z in args.zooms.split(",")]
    session = Session(load_model(args.checkpoint))
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    jobs = [(Path(d), case) for d in args.dataset for case in list_cases(Path(d), args.split)[:args.cases]]
    for folder, case in track(jobs, "first clicks"):
        meta = read_dataset_json(folder)
        names = label_names(meta)
        image, labels, instances, sites = read_case(folder, case, args.split, meta, names)
        orient = Reorientation.to_lps(image)  # the windows below are the session's own, in the model's axes
        image, labels = orient.image(image), orient.array(labels)
        instances = None if instances is None else orient.array(instances)
        session.set_image(image)
        for index, target in enumerate(case_targets(case, labels, instances, names, sites)):
            truth = (instances if target.kind == "instance" else labels) == target.value
            rng = np.random.default_rng([0, zlib.crc32(case.encode()), index])  # the harness's, as for its first click
            click, _ = first_click_on(truth, rng, "largest_error", image.spacing)
            rules = score_first_click(session, click.astype(float), truth, zooms)
            lesion = target.kind == "instance"
            row = {"structure": target.name, "site": target.site or "", "suvmax": float(image.array[truth].max()),
                   "size_group": group_of(SIZE_GROUPS, equivalent_diameter_mm(truth, image.spacing)) if lesion else ""}
            for group in group_keys(row):
                for rule, value in rules.items():
                    scores[group][rule].append(value)
    rows = [{"structure": g, "n": len(scores[g]["session"]), **{r: float(np.mean(v)) for r, v in scores[g].items()}}
            for g in sorted(scores, key=structure_order)]
    report("first_click", rows, {"datasets": args.dataset, "zooms": zooms, "checkpoint": args.checkpoint or "shipped"})


if __name__ == "__main__":
    main()
