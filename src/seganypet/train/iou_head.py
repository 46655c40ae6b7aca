"""Fit the ambiguity masks' IoU head alone, on features cached once per first click.

The head is what picks among the ambiguity masks, so it decides a lone click's answer; its inputs
depend on weights that stay fixed here. So each sample's inputs (the first click's decode, at the
two scales the session answers a lone click in) are computed once, and the head, a small MLP, is
fitted on them in seconds: on a 2-core CPU that is ~1 s per target against the ~0.2 s per crop a
training step spends on the image encoder alone, for each of far more steps.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from seganypet.errors import SegAnyPetError
from seganypet.eval.runner import first_click_on, read_case, target_truth
from seganypet.infer.crop import CropGeometry
from seganypet.io.write import write_atomic
from seganypet.modeling import ModelConfig, SegAnyPet, build_model, normalise_suv, read_checkpoint, save_checkpoint, set_precision
from seganypet.progress import track
from seganypet.train.data import case_targets, ignore_value, label_names, list_cases, read_dataset_json
from seganypet.train.trainer import initialise

log = logging.getLogger(__name__)
HOLDOUT_EVERY = 6  # every 6th case is held out of the fit and reported
HEAD = "mask_decoder.multimask_iou_head."


def prompted_iou(low_res: np.ndarray, truth: np.ndarray, at: np.ndarray, inside: np.ndarray) -> float:
    """IoU of the connected part of ``low_res > 0`` that holds the click (all of it where none does), as the session
    keeps only that part, and of that only the cells ``inside`` (in the scan, where the session pastes a mask back,
    and not under nnU-Net's ignore label, where there is no truth)."""
    mask = low_res > 0
    parts, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if np.all(at >= 0) and np.all(at < mask.shape) and parts[tuple(at)]:
        mask = parts == parts[tuple(at)]
    mask &= inside
    return float((mask & truth).sum() / max((mask | truth).sum(), 1))


def first_click_crops(model: SegAnyPet, click: np.ndarray, spacing) -> list[CropGeometry]:
    """The windows the session answers a lone click in: the fine one (where the model has one) and its own scale."""
    config = model.config
    zooms = ([config.min_zoom] if config.min_zoom < 1 else []) + [1.0]
    return [CropGeometry.centred(click, spacing, config.spacing_mm * z, config.crop_size) for z in zooms]


def case_samples(model: SegAnyPet, folder: Path, case: str, meta: dict, names: dict[int, str], seed: int) -> dict:
    """Head inputs (N, M, D), each mask's IoU (N, M) and whether the target is a lesion (N,), for two first clicks
    per target (its centre, a random voxel of it) at each scale of `first_click_crops`."""
    image, labels, instances, _ = read_case(folder, case, "Tr", meta, names)
    ignore = ignore_value(meta)
    volume = normalise_suv(image.array)
    head = model.mask_decoder.multimask_iou_head
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0][0].float().cpu()))
    inputs, ious, lesion = [], [], []
    try:
        for index, target in enumerate(case_targets(case, labels, instances, names, {})):
            truth = target_truth(labels, instances, target)
            rng = np.random.default_rng([seed, zlib.crc32(case.encode()), index])
            centre = first_click_on(truth, rng, "largest_error", image.spacing)[0]
            voxels = np.argwhere(truth)
            for click in (np.asarray(centre, float), voxels[rng.integers(len(voxels))].astype(float)):
                for crop in first_click_crops(model, click, image.spacing):
                    low = crop.coarsened(model.crop_size // model.mask_size)
                    crop_truth = low.sample(truth.astype(np.float32), order=0) > 0.5
                    at = np.round(low.to_crop(click)).astype(int)
                    tensor = torch.from_numpy(crop.sample(volume, edge=True))[None, None]  # as the session reads it
                    point = torch.tensor(crop.to_crop(click), dtype=torch.float32)[None, None]
                    with torch.inference_mode():
                        logits, _ = model.decode(model.embed(tensor), points=point, labels=torch.ones(1, 1, dtype=torch.long),
                                                 multimask=True)
                    inputs.append(seen.pop().numpy())
                    inside = low.inside(truth.shape)
                    if ignore is not None:  # nnU-Net's ignore label: no truth there to score against
                        inside &= low.sample(labels, order=0) != ignore
                    ious.append([prompted_iou(m, crop_truth, at, inside) for m in logits[0].float().numpy()])
                    lesion.append(target.kind == "instance")
    finally:
        hook.remove()
    return {"inputs": np.array(inputs, np.float32), "ious": np.array(ious, np.float32), "lesion": np.array(lesion, bool)}


def ranking(predicted: np.ndarray, ious: np.ndarray) -> dict[str, float]:
    """How the head's pick compares with the best mask: mean IoU of the pick, of the best, and how often they agree."""
    pick = predicted.argmax(1)
    return {"n": int(len(ious)), "picked_iou": float(ious[np.arange(len(ious)), pick].mean()),
            "best_iou": float(ious.max(1).mean()), "agree": float((pick == ious.argmax(1)).mean()),
            "mae": float(np.abs(predicted - ious).mean())}


def fit_head(head: torch.nn.Module, inputs: np.ndarray, ious: np.ndarray, epochs: int, seed: int) -> None:
    """MSE on each mask's IoU (SAM's IoU loss), with the inputs standardised inside the first layer: the pooled
    features and the log size differ in scale by ~100x, and folded in, the head stays a plain MLP."""
    torch.manual_seed(seed)
    flat = inputs.reshape(-1, inputs.shape[-1])
    mean, std = torch.tensor(flat.mean(0)), torch.tensor(flat.std(0) + 1e-6)
    first = head.layers[0]
    with torch.no_grad():
        for layer in head.layers:
            layer.reset_parameters()
    x = (torch.tensor(inputs) - mean) / std
    y = torch.tensor(ious)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05)
    head.train()
    for _ in track(range(epochs), "fitting the IoU head"):
        for batch in torch.randperm(len(x)).split(256):
            loss = torch.nn.functional.mse_loss(head(x[batch])[..., 0], y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()
    with torch.no_grad():  # fold the standardisation into the first layer: W (x - m) / s + b
        first.bias -= (first.weight * (mean / std)).sum(1)
        first.weight /= std


def fit_iou_head(dataset: str | Path, init: str | Path, out: str | Path, epochs: int = 100, seed: int = 0) -> Path:
    """Fit the IoU head of ``init``'s ambiguity masks on ``dataset`` (its training cases); writes OUT/model.pt and
    OUT/iou_head.json (the pick against the best mask on held-out cases, before and after). Features are cached per
    case under OUT/features, so a stopped run picks up where it was."""
    folder, out = Path(dataset), Path(out)
    # the dataset first: a wrong folder should not wait for the model
    meta = read_dataset_json(folder)
    names = label_names(meta)
    cases = list_cases(folder, "Tr")
    if len(cases) < HOLDOUT_EVERY:
        raise SegAnyPetError(f"{len(cases)} training cases: the fit holds out one case in {HOLDOUT_EVERY}, so needs "
                             f"at least {HOLDOUT_EVERY}", folder)
    config = ModelConfig(**read_checkpoint(init)["config"])
    if not config.multimask:
        raise SegAnyPetError("this checkpoint has no ambiguity masks: train them first (--multimask N)", init)
    model = build_model(config)
    fresh = initialise(model, init, seed)
    missing = [k for k in fresh if not k.startswith(HEAD)]
    if missing:
        raise SegAnyPetError(f"checkpoint lacks weights the head's inputs depend on ({missing[0]} ...)", init)
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(HEAD)}
    set_precision(model.eval())  # the encoder as the session runs it, so the head learns the inputs it will get
    cache = out / "features"
    cache.mkdir(parents=True, exist_ok=True)
    samples = {}
    for case in track(cases, "decoding first clicks"):
        path = cache / f"{case}.npz"
        if not path.is_file():
            arrays = case_samples(model, folder, case, meta, names, seed)
            write_atomic(path, lambda tmp, a=arrays: np.savez(tmp, **a))
        with np.load(path) as f:
            samples[case] = {k: f[k] for k in f.files}
    held = set(cases[::HOLDOUT_EVERY])

    def stacked(which: bool, key: str) -> np.ndarray:
        parts = [s[key] for c, s in samples.items() if (c in held) == which and len(s[key])]
        if not parts:
            raise SegAnyPetError(f"no labelled targets in the {'held-out' if which else 'fitted'} cases", folder)
        return np.concatenate(parts)

    head = model.mask_decoder.multimask_iou_head
    held_inputs, held_ious = stacked(True, "inputs"), stacked(True, "ious")

    def scored() -> np.ndarray:
        with torch.no_grad():
            return head(torch.tensor(held_inputs))[..., 0].numpy()

    before = None if fresh else ranking(scored(), held_ious)  # a head of this layout came with the checkpoint
    fit_head(head, stacked(False, "inputs"), stacked(False, "ious"), epochs, seed)
    predicted, lesion = scored(), stacked(True, "lesion")
    after = ranking(predicted, held_ious)
    report = {"held_out_cases": sorted(held), "before": before, "after": after,
              "after_lesions": ranking(predicted[lesion], held_ious[lesion]),
              "after_organs": ranking(predicted[~lesion], held_ious[~lesion]),
              "epochs": epochs, "seed": seed, "init": str(init), "dataset": str(folder)}
    text = json.dumps(report, indent=2)
    write_atomic(out / "iou_head.json", lambda tmp: tmp.write_text(text))
    final = out / "model.pt"
    # every other weight as it came (the encoder ran in bf16): the fit changes the head alone
    set_precision(model, "fp32")
    model.load_state_dict(kept, strict=False)
    save_checkpoint(model, final, {"iou_head": text}, half=True)
    log.info("IoU head on %d held-out samples: picks %.3f of the best mask's %.3f (agrees %.0f %%); wrote %s",
             after["n"], after["picked_iou"], after["best_iou"], 100 * after["agree"], final)
    return final
