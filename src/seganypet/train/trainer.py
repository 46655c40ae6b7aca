"""The training run: data, model, optimiser, DDP, checkpoints and resume.

Single process: ``seganypet train -d DATASET -o OUT``. Several processes or machines:
``torchrun --nproc_per_node=N [--nnodes=M ...] -m seganypet.train -d DATASET -o OUT`` (gloo on CPU,
nccl on GPU). Every random choice of step ``s`` on rank ``r`` comes from a generator seeded with
``(seed, r, s)``, so a resumed run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from seganypet.errors import SegAnyPetError
from seganypet.modeling import PRESETS, bf16_is_fast, build_model, normalise_suv, read_checkpoint, save_checkpoint
from seganypet.train.cpcl import ramp_up
from seganypet.train.data import LESION_NAMES, TrainingData, label_names, read_dataset_json, sample_crop
from seganypet.train.loop import InteractiveLoss, LoopConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    out: str
    size: str = "small"
    steps: int = 20000
    batch: int = 2  # per process
    lr: float = 4e-4
    weight_decay: float = 0.05
    warmup: int = 300
    seed: int = 0
    save_every: int = 250
    exclude: tuple[str, ...] = ()  # label names or lesion sites left out (unseen-target experiments)
    lesion_fraction: float = 0.4
    organ_weights: tuple[tuple[str, float], ...] = ()  # (label name, weight): organs drawn in proportion (default 1)
    suv_scale: float = 1.25  # crops' SUV multiplied by a log-uniform factor in [1/suv_scale, suv_scale]
    centre_clicks: float = 0.0  # share of click-centred crops whose first click is the target's centre
    tube_crops: float = 0.0  # share of a tube's crops (aorta, spine) in the session's window stretched along it
    bf16: str = "auto"  # autocast the step in bf16: auto (where bf16 units exist), on, off
    cpcl_rampup: int = 2000
    cpcl_weight: float = 1.0
    cpcl_start: int = 0  # plain loss before this step: CPCL rectifies with the model's own answers, so let it learn first
    init: str | None = None  # start from these weights (fine-tuning, e.g. the shipped checkpoint)
    freeze_encoder: bool = False  # train the prompt encoder and mask decoder only (a cheaper fine-tune of --init)
    multimask: int = 0  # SAM's ambiguity masks for a lone click (0: the single mask only)
    multimask_only: bool = False  # train the ambiguity masks alone: every other weight keeps --init
    workers: int = 0  # processes that cache cases and prepare batches; 0: the training process does it
    loop: LoopConfig = field(default_factory=LoopConfig)


def _distributed() -> tuple[int, int]:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class StepBatches(torch.utils.data.Dataset):
    """Item ``s``: the batch of step ``s`` on this rank and the seed of its click simulation, drawn from
    ``(seed, rank, s)`` alone, so batches are the same with any number of loader workers and after a resume."""

    def __init__(self, data: TrainingData, config, cfg: TrainConfig, rank: int) -> None:
        self.data, self.config, self.cfg, self.rank = data, config, cfg, rank
        self.weights = dict(cfg.organ_weights)

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.cfg.seed, self.rank, step])
        samples = [sample_crop(self.data, self.config, rng, self.cfg.lesion_fraction, weights=self.weights,
                               suv_scale=self.cfg.suv_scale, centre_clicks=self.cfg.centre_clicks,
                               tube_crops=self.cfg.tube_crops)
                   for _ in range(self.cfg.batch)]
        crops = torch.from_numpy(np.stack([normalise_suv(s.suv) for s in samples]))[:, None]
        targets = torch.from_numpy(np.stack([s.target for s in samples]).astype(np.float32))[:, None]
        noisy = torch.tensor([s.noisy for s in samples])
        known = torch.from_numpy(np.stack([s.known for s in samples]))[:, None]
        return crops, targets, noisy, known, [s.click for s in samples], int(rng.integers(2**31))


def _ignore_sigterm(_worker_id: int) -> None:
    """Loader workers leave SIGTERM to the training process: a scheduler or ``pkill`` signals the whole
    process group, and a worker dying of it first would crash the run before it saves. The training
    process stops after its current step and shuts the workers down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _batches(data: TrainingData, config, cfg: TrainConfig, rank: int, start: int, device):
    """Batches of steps ``start``... in order, prepared ``cfg.workers`` at a time in worker processes."""
    loader = torch.utils.data.DataLoader(
        StepBatches(data, config, cfg, rank), batch_size=None, sampler=range(start, cfg.steps), num_workers=cfg.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers else None, worker_init_fn=_ignore_sigterm)
    for crops, targets, noisy, known, clicks, loop_seed in loader:
        yield (crops.to(device, non_blocking=True), targets.to(device, non_blocking=True), noisy.to(device),
               known.to(device), clicks, loop_seed)


def cpcl_weight_at(step: int, cfg: TrainConfig) -> float:
    """The rectified label's weight in the loss at ``step``: none before ``cpcl_start`` (a barely trained model's
    confident answers are not yet evidence against a label), then ramped up over ``cpcl_rampup`` steps."""
    if not cfg.loop.cpcl or step < cfg.cpcl_start:
        return 0.0
    return cfg.cpcl_weight * ramp_up(step - cfg.cpcl_start, cfg.cpcl_rampup)


def _schedule(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * 0.97 + 0.03
    return factor


def initialise(model: torch.nn.Module, path: str | Path, seed: int) -> list[str]:
    """Copy every weight of ``path`` whose name and shape match (a checkpoint of the same size, or an
    older layout of it); the rest keep their fresh initialisation, and the log names them. Ambiguity masks
    the checkpoint lacks start as copies of its single mask. Returns the names left fresh."""
    weights, own = read_checkpoint(path)["model"], model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise SegAnyPetError("no weight of this checkpoint fits the model being trained", path)
    model.load_state_dict(matched, strict=False)
    fresh = sorted(set(own) - set(matched))
    if any(name.startswith("mask_decoder.multimask_tokens") for name in fresh):
        model.mask_decoder.seed_multimask(torch.Generator().manual_seed(seed))
    log.info("initialised %d of %d tensors from %s%s", len(matched), len(own), path,
             f"; fresh: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}" if fresh else "")
    return fresh


def _check_organ_weights(cfg: TrainConfig) -> None:
    excluded = {e.lower() for e in cfg.exclude}
    organs = {n for n in label_names(read_dataset_json(Path(cfg.dataset))).values()
              if n.lower() not in LESION_NAMES and n.lower() not in excluded}
    unknown = sorted({name for name, _ in cfg.organ_weights} - organs)
    if unknown:
        raise SegAnyPetError(f"organ weight for {', '.join(unknown)}: no such organ label to train on", cfg.dataset)


@dataclass
class TrainResult:
    checkpoint: Path  # OUT/model.pt, the weights to ship (written once the last step is done)
    model: torch.nn.Module  # this process's model
    step: int


def _check_options(cfg: TrainConfig) -> None:
    """The options' ranges, before anything is written or cached: torch would otherwise stop on them with a traceback
    minutes into the run (an empty batch, a negative learning rate)."""
    if cfg.size not in PRESETS:
        raise SegAnyPetError(f"unknown model size {cfg.size!r}; choose one of {', '.join(PRESETS)}")
    if cfg.freeze_encoder and not cfg.init:
        raise SegAnyPetError("--freeze-encoder keeps the image encoder as --init gives it: name the checkpoint to start from")
    if cfg.multimask_only and not (cfg.init and cfg.multimask):
        raise SegAnyPetError("--multimask-only trains the ambiguity masks on a trained model: give --multimask N and --init")
    wrong = [f"--{name} {value:g} ({rule})" for name, value, ok, rule in (
        ("steps", cfg.steps, cfg.steps >= 1, "at least 1"),
        ("batch", cfg.batch, cfg.batch >= 1, "at least 1"),
        ("lr", cfg.lr, cfg.lr > 0, "positive"),
        ("weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, "not negative"),
        ("warmup", cfg.warmup, cfg.warmup >= 0, "not negative"),
        ("save-every", cfg.save_every, cfg.save_every >= 1, "at least 1"),
        ("lesion-fraction", cfg.lesion_fraction, 0 <= cfg.lesion_fraction <= 1, "between 0 and 1"),
        ("suv-scale", cfg.suv_scale, cfg.suv_scale >= 1, "at least 1"),
        ("centre-clicks", cfg.centre_clicks, 0 <= cfg.centre_clicks <= 1, "between 0 and 1"),
        ("tube-crops", cfg.tube_crops, 0 <= cfg.tube_crops <= 1, "between 0 and 1"),
        ("cpcl-rampup", cfg.cpcl_rampup, cfg.cpcl_rampup >= 0, "not negative"),
        ("cpcl-weight", cfg.cpcl_weight, cfg.cpcl_weight >= 0, "not negative"),
        ("cpcl-start", cfg.cpcl_start, cfg.cpcl_start >= 0, "not negative"),
        ("workers", cfg.workers, cfg.workers >= 0, "not negative"),
        ("multimask", cfg.multimask, cfg.multimask >= 0, "not negative"),
        ("rounds", cfg.loop.rounds, cfg.loop.rounds >= 1, "at least 1"),
        ("cpcl-k", cfg.loop.cpcl_k, cfg.loop.cpcl_k >= 2, "at least 2: one prompt set has no spread")) if not ok]
    if cfg.bf16 not in ("auto", "on", "off"):
        wrong.append(f"--bf16 {cfg.bf16!r} (auto, on or off)")
    if wrong:
        raise SegAnyPetError("out of range: " + "; ".join(wrong))


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train; ``OUT/last.pt`` holds the full state every ``save_every`` steps and when stopped (Ctrl-C,
    SIGTERM), ``OUT/model.pt`` the final weights. ``stop_after``: leave after that many steps of this call."""
    _check_options(cfg)
    _check_organ_weights(cfg)  # before the cache is filled: a misspelt name should not cost minutes
    rank, world = _distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = TrainingData(cfg.dataset, out / "cache", cfg.exclude, workers=cfg.workers) if rank == 0 else None
    if world > 1:
        dist.barrier()  # rank 0 fills the cache first
        data = data or TrainingData(cfg.dataset, out / "cache", cfg.exclude)

    torch.manual_seed(cfg.seed)
    model = build_model(dataclasses.replace(PRESETS[cfg.size], multimask=cfg.multimask)).to(device)
    # a box is not ambiguous: ambiguity masks trained alone learn from lone clicks only
    loop = dataclasses.replace(cfg.loop, box_probability=0.0) if cfg.multimask_only else cfg.loop
    step_module = InteractiveLoss(model, loop).to(device)
    model.image_encoder.requires_grad_(not cfg.freeze_encoder)
    if cfg.multimask_only:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("mask_decoder.multimask"))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    step = 0
    last = out / "last.pt"
    if cfg.init and not (resume and last.is_file()):
        initialise(model, cfg.init, cfg.seed)
    if resume and last.is_file():
        state = read_checkpoint(last)
        started = json.loads(state.get("train_config", "{}"))
        # what shapes the model and its optimiser must match; the rest (steps, lr, ...) may change on resuming
        changed = [name for name in ("size", "freeze_encoder", "multimask", "multimask_only") if started.get(name, getattr(cfg, name)) != getattr(cfg, name)]
        if changed:
            then = ", ".join(f"{name.replace('_', '-')} {started[name]}" for name in changed)
            raise SegAnyPetError(f"this run was started with {then}: resume it with the same --size, "
                                 "--freeze-encoder, --multimask and --multimask-only", last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d", last, step)
    wrapped = DistributedDataParallel(step_module, find_unused_parameters=True) if world > 1 else step_module
    autocast = cfg.bf16 == "on" or (cfg.bf16 == "auto" and bf16_is_fast(device))

    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True)) if rank == 0 else None

    def checkpoint(path: Path) -> None:
        if rank == 0:
            save_checkpoint(model, path, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                          "step": step, "torch_rng": torch.get_rng_state(),
                                          "train_config": json.dumps(dataclasses.asdict(cfg))})

    from seganypet.progress import training_bar

    started, first_step, samples = time.perf_counter(), step, 0
    batches = _batches(data, model.config, cfg, rank, step, device)
    with training_bar(cfg.steps, step, enabled=rank == 0) as bar:
        try:
            while step < cfg.steps and not stop["now"]:
                crops, targets, noisy, known, clicks, loop_seed = next(batches)
                weight = cpcl_weight_at(step, cfg)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, stats = wrapped(crops, targets, noisy, loop_seed, weight, clicks, known)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                samples += cfg.batch * world
                rate = samples / (time.perf_counter() - started)
                bar.update(step, stats["loss"], rate)
                if rank == 0 and (step % 25 == 0 or step == cfg.steps):
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, **stats, "lr": scheduler.get_last_lr()[0], "samples_per_s": rate,
                                            "cpcl_weight": weight}) + "\n")
                if step % cfg.save_every == 0:
                    checkpoint(last)
                if stop_after is not None and step - first_step >= stop_after:
                    break
        except KeyboardInterrupt:
            stop["now"] = True
        finally:
            # shuts the loader's workers down now: they ignore SIGTERM, so left to the interpreter's exit after an
            # error they would be waited for forever
            batches.close()
    checkpoint(last)
    if rank == 0 and previous is not None:
        signal.signal(signal.SIGTERM, previous)
    final = out / "model.pt"
    if rank == 0 and step >= cfg.steps:
        save_checkpoint(model, final, {"steps": step, "train_config": json.dumps(dataclasses.asdict(cfg))}, half=True)
        log.info("wrote %s", final)
    if world > 1:
        dist.barrier()
    if stop["now"] and rank == 0:
        log.info("stopped at step %d; continue with --resume", step)
    return TrainResult(final, model, step)

