"""The ``seganypet`` command: one command, a verb per job, ``-i`` in and ``-o`` out.

Errors in the user's input print as one line on stderr and exit with status 1;
only a bug in seganypet itself shows a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seganypet.errors import SegAnyPetError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Promptable 3D segmentation of whole-body PET.",
)
log = logging.getLogger("seganypet")

InputOpt = Annotated[Path, typer.Option("-i", "--input", help="PET scan: NIfTI/NRRD/MHA file or DICOM folder.")]
SeriesOpt = Annotated[Optional[str], typer.Option("--series", help="SeriesInstanceUID, when a folder holds several.")]
UnitsOpt = Annotated[str, typer.Option("--units", help="Volume files only: 'suv' (as stored) or 'bqml'.")]
WeightOpt = Annotated[Optional[float], typer.Option("--weight", help="Patient weight in kg: with --units bqml, or for "
                                                    "DICOM in place of PatientWeight (missing or wrong).")]
DoseOpt = Annotated[Optional[float], typer.Option("--dose", help="Injected dose in MBq (with --units bqml).")]
UptakeOpt = Annotated[float, typer.Option("--uptake", help="Minutes from injection to scan (with --units bqml).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option("--checkpoint", "-c", help="Model checkpoint (default: the shipped one).")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="cpu or cuda[:N] (model only).")]


@app.callback()
def _configure(
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug output.")] = False,
) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # libraries: warnings only
    log.setLevel(level)


def read_input(path: Path, series: str | None, units: str, weight: float | None, dose: float | None, uptake: float):
    from seganypet.io import read_pet

    return read_pet(path, series_uid=series, units=units, weight_kg=weight, dose_mbq=dose, uptake_min=uptake)


@app.command()
def info(
    input: InputOpt,
    series: SeriesOpt = None,
    units: UnitsOpt = "suv",
    weight: WeightOpt = None,
    dose: DoseOpt = None,
    uptake: UptakeOpt = 0.0,
) -> None:
    """Print the geometry, units, SUV range and acquisition facts of a PET scan."""
    image = read_input(input, series, units, weight, dose, uptake)
    m = image.meta
    rows = {
        "source": str(image.source),
        "shape (i, j, k)": " x ".join(map(str, image.shape)),
        "spacing (mm)": " x ".join(f"{s:.4g}" for s in image.spacing),
        "origin (mm, " + image.space + ")": ", ".join(f"{v:.2f}" for v in image.origin),
        "units": f"{image.units} (stored as {m.source_units or 'unknown'})",
        "SUV range": f"{image.array.min():.3f} .. {image.array.max():.3f}",
        "tracer": m.tracer or m.radionuclide or "unknown",
        "weight (kg)": _fmt(m.patient_weight_kg),
        "injected dose (MBq)": _fmt(m.injected_dose_bq and m.injected_dose_bq / 1e6),
        "injection time": str(m.injection_time or "unknown"),
        "scan time": str(m.scan_time or "unknown"),
        "series UID": m.series_instance_uid or "n/a",
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {value}")
    for note in m.notes:
        typer.echo(f"note: {note}")


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


@app.command()
def convert(
    input: InputOpt,
    output: Annotated[Path, typer.Option("-o", "--output", help="SUV NIfTI to write (.nii.gz).")],
    series: SeriesOpt = None,
    units: UnitsOpt = "suv",
    weight: WeightOpt = None,
    dose: DoseOpt = None,
    uptake: UptakeOpt = 0.0,
) -> None:
    """Convert any supported PET input to an SUVbw NIfTI in the same physical space."""
    from seganypet.io import write_nifti

    image = read_input(input, series, units, weight, dose, uptake)
    write_nifti(image, output)
    log.info("wrote %s (%s, SUVbw max %.2f)", output, " x ".join(map(str, image.shape)), image.array.max())


def _load_targets(prompts_file: Path | None, point, negative, box, label: str, coords: str) -> tuple[list[dict], str]:
    """Targets from --point/--negative/--box, or from a prompts JSON file for many targets at once."""
    import json

    from seganypet.prompts import parse_numbers

    if prompts_file is None:
        return [{"name": label, "points": [parse_numbers(p) for p in point],
                 "negative": [parse_numbers(p, what="negative point") for p in negative],
                 "box": parse_numbers(box, 6, "--box") if box else None}], coords
    if not prompts_file.is_file():
        raise SegAnyPetError("no such prompts file", prompts_file)
    try:
        spec = json.loads(prompts_file.read_text())
        targets = spec["targets"]
        if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
            raise TypeError("'targets' must be a list of objects with points, negative and box")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegAnyPetError(f"not a prompts file with a 'targets' list ({exc})", prompts_file) from None
    return [{"name": t.get("name", f"target_{n}"), "points": t.get("points", []), "negative": t.get("negative", []),
             "box": t.get("box")} for n, t in enumerate(targets, start=1)], spec.get("coords", coords)


def _device(name: str) -> str:
    import torch

    if name == "cpu":
        return name
    if not name.startswith("cuda") or not torch.cuda.is_available():
        raise SegAnyPetError(f"device {name!r} is not available here (use cpu{', cuda' if torch.cuda.is_available() else ''})")
    return name


@app.command()
def segment(
    input: InputOpt,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder: mask, DICOM SEG, report, picture.")],
    point: Annotated[list[str], typer.Option("--point", "-p", help="Positive click x,y,z (repeatable).")] = [],  # noqa: B006
    negative: Annotated[list[str], typer.Option("--negative", "-n", help="Negative click x,y,z (repeatable).")] = [],  # noqa: B006
    box: Annotated[Optional[str], typer.Option("--box", help="Box x0,y0,z0,x1,y1,z1.")] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="model, suv2.5, pct41, pct50 or region-growing.")] = "pct41",
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    coords: Annotated[str, typer.Option("--coords", help="voxel (x,y,z = i,j,k of the file) or mm (file's own space).")] = "voxel",
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="JSON file with many targets.")] = None,
    label: Annotated[str, typer.Option("--label", help="Name of the structure (single target).")] = "lesion",
    series: SeriesOpt = None,
    units: UnitsOpt = "suv",
    weight: WeightOpt = None,
    dose: DoseOpt = None,
    uptake: UptakeOpt = 0.0,
) -> None:
    """Outline structures from clicks or boxes and write the mask, DICOM SEG, report and picture."""
    import numpy as np

    from seganypet.baselines import segment_classical
    from seganypet.prompts import make_prompts
    from seganypet.report import summary_line, write_outputs

    if coords not in ("voxel", "mm"):
        raise SegAnyPetError(f"--coords must be voxel or mm, got {coords!r}")
    targets, coords = _load_targets(prompts, point, negative, box, label, coords)
    image = read_input(input, series, units, weight, dose, uptake)
    labels = np.zeros(image.shape, np.uint8 if len(targets) < 256 else np.uint16)
    names = {}
    session = None
    if method == "model":
        from seganypet.infer import Session, segment_with_model
        from seganypet.modeling import load_model

        session = Session(load_model(checkpoint, device=_device(device)))
        session.set_image(image)
    for value, target in enumerate(targets, start=1):
        p = make_prompts(image, target["points"], target["negative"], target["box"], coords)
        if session is not None:
            mask = segment_with_model(session, p)
        else:
            mask = segment_classical(image, p, method)
        if not mask.any():
            raise SegAnyPetError(f"{method} found nothing for target {target['name']!r}: click on the structure itself")
        labels[mask & (labels == 0)] = value
        names[value] = target["name"]
    written, report = write_outputs(image, labels, names, output, method, {"coords": coords, "targets": targets})
    for s in report["structures"]:
        typer.echo(summary_line(s["name"], s["total"]))
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))


@app.command()
def quantify(
    input: InputOpt,
    mask: Annotated[Path, typer.Option("-m", "--mask", help="Label map on the scan's grid (NIfTI/NRRD/MHA), or a DICOM "
                                       "SEG or RTSTRUCT of it.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report JSON to write (CSV beside it).")],
    series: SeriesOpt = None,
    units: UnitsOpt = "suv",
    weight: WeightOpt = None,
    dose: DoseOpt = None,
    uptake: UptakeOpt = 0.0,
) -> None:
    """Measure SUVmax/mean/peak, MTV and TLG of an existing mask."""
    import json

    from seganypet.io.masks import read_mask
    from seganypet.io.write import write_atomic
    from seganypet.report import build_report, report_csv, summary_line

    image = read_input(input, series, units, weight, dose, uptake)
    labels, names = read_mask(mask, image)
    report = build_report(image, labels, names, "external mask", {"mask": str(mask)})
    write_atomic(output, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    write_atomic(output.with_suffix(".csv"), lambda tmp: tmp.write_text(report_csv(report)))
    for s in report["structures"]:
        typer.echo(summary_line(s["name"], s["total"]))


@app.command()
def phantom(
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset folder (nnU-Net v2 layout).")],
    cases: Annotated[int, typer.Option("--cases", "-n", help="Training cases (imagesTr).")] = 10,
    test_cases: Annotated[int, typer.Option("--test-cases", help="Held-out cases (imagesTs), seeds after the training ones.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="First seed; case i uses seed + i.")] = 0,
    noisy_labels: Annotated[float, typer.Option("--noisy-labels", help="Fraction of training cases with noisy labels.")] = 0.0,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write each case as a PET DICOM series.")] = False,
    mip: Annotated[bool, typer.Option("--mip", help="Also write a coronal MIP PNG per case.")] = False,
    scanner: Annotated[Optional[str], typer.Option("--scanner", help="Scanner matrix/voxel preset (default: drawn per case).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Cases generated in parallel (processes).")] = 1,
    nema: Annotated[list[float], typer.Option("--nema", help="Instead: the NEMA IEC body phantom at this sphere-to-background ratio (repeatable; --test-cases noise draws each, at least 1).")] = [],  # noqa: B006
) -> None:
    """Generate synthetic whole-body FDG PET cases with ground truth."""
    from seganypet.phantom import PhantomConfig
    from seganypet.phantom.dataset import write_nema_dataset, write_phantom_dataset
    from seganypet.phantom.generate import SCANNERS

    if cases < 0 or test_cases < 0:
        raise SegAnyPetError(f"--cases and --test-cases must not be negative, got {cases} and {test_cases}")
    if not 0.0 <= noisy_labels <= 1.0:
        raise SegAnyPetError(f"--noisy-labels must be between 0 and 1, got {noisy_labels}")
    if scanner is not None and scanner not in SCANNERS:
        raise SegAnyPetError(f"unknown scanner {scanner!r}; choose one of {', '.join(SCANNERS)}")
    if nema:
        if any(ratio <= 0 for ratio in nema):
            raise SegAnyPetError(f"--nema ratios must be positive, got {', '.join(f'{r:g}' for r in nema)}")
        write_nema_dataset(output, nema, max(test_cases, 1), scanner or "siemens_biograph_mct", dicom)
        log.info("wrote the NEMA IEC phantom at %s to %s", ", ".join(f"{r:g}:1" for r in nema), output)
        return
    write_phantom_dataset(output, cases, test_cases, seed, noisy_labels, dicom, mip, PhantomConfig(scanner=scanner), workers)
    log.info("wrote %d + %d cases to %s", cases, test_cases, output)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the demo's files.")] = Path("seganypet_demo"),
    seed: Annotated[int, typer.Option("--seed", help="Phantom seed.")] = 0,
) -> None:
    """Run the main job end to end on generated data, with nothing to download."""
    from seganypet.demo import run_demo

    run_demo(output, seed=seed)


@app.command()
def view(
    input: Annotated[Optional[Path], typer.Option("-i", "--input", help="PET scan to open (else open one in the page).")] = None,
    port: Annotated[int, typer.Option("--port", help="Port on HOST.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; other than 127.0.0.1 exposes the scans to the network.")] = "127.0.0.1",
    browser: Annotated[bool, typer.Option("--browser/--no-browser", help="Open the page in the default browser.")] = True,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest upload accepted.")] = 1024.0,
    max_sessions: Annotated[int, typer.Option("--max-sessions", help="Scans held open at once (least recently used goes).")] = 8,
    series: SeriesOpt = None,
    units: UnitsOpt = "suv",
    weight: WeightOpt = None,
    dose: DoseOpt = None,
    uptake: UptakeOpt = 0.0,
) -> None:
    """Open the local web viewer: scroll the PET, click to segment, read SUVmax/SUVpeak/MTV/TLG."""
    import threading
    import webbrowser

    import uvicorn

    from seganypet.modeling import load_model
    from seganypet.web import Limits, create_app

    if max_upload_mb <= 0 or max_sessions < 1:
        raise SegAnyPetError("--max-upload-mb must be positive and --max-sessions at least 1")
    if not 1 <= port <= 65535:
        raise SegAnyPetError(f"--port must be 1-65535, not {port}")
    scan = read_input(input, series, units, weight, dose, uptake) if input is not None else None
    model = load_model(checkpoint, device=_device(device))
    app_ = create_app(model, scan, Limits(upload_mb=max_upload_mb, sessions=max_sessions))
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can open the scans", host)
    log.info("seganypet viewer at %s (Ctrl-C to stop)", url)
    if browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def main(verb: list[str] | None = None) -> None:
    """Entry point; ``verb`` is put before the command-line arguments (``python -m seganypet.train``)."""
    try:
        app(args=[*(verb or []), *sys.argv[1:]])
    except SegAnyPetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except OSError as exc:  # the file system refused what no reader or writer above turned into a sentence
        typer.echo(f"error: {exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Option("-d", "--dataset", help="nnU-Net v2 dataset folder with labels.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Results folder (resumable).")],
    method: Annotated[str, typer.Option("--method", "-m", help="model, suv2.5, pct41, pct50 or region-growing.")] = "model",
    checkpoint: CheckpointOpt = None,
    clicks: Annotated[str, typer.Option("--clicks", help="Click counts to score, e.g. 1,3,5.")] = "1,3,5",
    split: Annotated[str, typer.Option("--split", help="Tr or Ts (imagesTs/labelsTs).")] = "Ts",
    targets: Annotated[list[str], typer.Option("--targets", help="Structure name to score (repeatable; default all).")] = [],  # noqa: B006
    protocol: Annotated[str, typer.Option("--protocol", help="largest_error, random, box or autopet (autoPET IV, lesions).")] = "largest_error",
    tolerance: Annotated[float, typer.Option("--tolerance", help="NSD tolerance in mm.")] = 2.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device")] = "cpu",
) -> None:
    """Score a method on a labelled dataset under simulated clicks: CSV/JSON rows, a Markdown summary, plots."""
    from seganypet.eval import EvalConfig, run_evaluation

    try:
        counts = tuple(sorted({int(c) for c in clicks.split(",")}))
    except ValueError:
        raise SegAnyPetError(f"--clicks must be numbers like 1,3,5, not {clicks!r}") from None
    if not counts or counts[0] < 1:
        raise SegAnyPetError("--clicks must be positive")
    if protocol not in ("largest_error", "random", "box", "autopet"):
        raise SegAnyPetError(f"--protocol must be largest_error, random, box or autopet, not {protocol!r}")
    cfg = EvalConfig(str(dataset), str(output), method, str(checkpoint) if checkpoint else None, counts, split,
                     tuple(targets), protocol, tolerance, seed, _device(device))
    summary = run_evaluation(cfg)
    typer.echo(summary.read_text())


def _name_weight(item: str) -> tuple[str, float]:
    name, _, value = item.rpartition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not name or not weight > 0:
        raise SegAnyPetError(f"--organ-weight takes NAME=W with a positive W, not {item!r}")
    return name, weight


@app.command()
def train(
    dataset: Annotated[Path, typer.Option("-d", "--dataset", help="nnU-Net v2 dataset folder (imagesTr, labelsTr, dataset.json).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder: checkpoints, log, cache.")],
    size: Annotated[str, typer.Option("--size", "-s", help="Model size: test, small or base.")] = "small",
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = 20000,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Crops per step and process.")] = 2,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = 4e-4,
    cpcl: Annotated[bool, typer.Option("--cpcl/--no-cpcl", help="Cross-prompting confident learning on noisy cases.")] = True,
    cpcl_k: Annotated[int, typer.Option("--cpcl-k", help="Prompt sets per noisy sample.")] = 5,
    cpcl_rampup: Annotated[int, typer.Option("--cpcl-rampup", help="Steps over which the CPCL weight ramps up to 1.")] = 2000,
    cpcl_start: Annotated[int, typer.Option("--cpcl-start", help="Train with the plain loss until this step, then ramp CPCL up.")] = 0,
    rounds: Annotated[int, typer.Option("--rounds", help="Click rounds per sample.")] = 4,
    exclude: Annotated[list[str], typer.Option("--exclude", help="Label name or lesion site to leave out (repeatable).")] = [],  # noqa: B006
    seed: Annotated[int, typer.Option("--seed")] = 0,
    save_every: Annotated[int, typer.Option("--save-every", help="Steps between checkpoints.")] = 250,
    bf16: Annotated[str, typer.Option("--bf16", help="auto, on or off.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    init: Annotated[Path | None, typer.Option("--init", help="Start from these weights (fine-tune a checkpoint).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Steps of linear learning-rate warm-up.")] = 300,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Processes that cache cases and prepare batches (0: in the training process).")] = 0,
    lesion_fraction: Annotated[float, typer.Option("--lesion-fraction", help="Share of crops drawn around a lesion (the rest: an organ).")] = 0.4,
    organ_weight: Annotated[list[str], typer.Option("--organ-weight", help="NAME=W: draw that organ W times as often as the others (repeatable).")] = [],  # noqa: B006
    suv_scale: Annotated[float, typer.Option("--suv-scale", help="Multiply each crop's SUV by a factor from 1/F to F (log-uniform).")] = 1.25,
    centre_clicks: Annotated[float, typer.Option("--centre-clicks", help="Share of first clicks at the target's centre (the rest: a random voxel of it).")] = 0.0,
    tube_crops: Annotated[float, typer.Option("--tube-crops", help="Share of a tube's crops (aorta, spine) in the window the session stretches along it.")] = 0.0,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="Train the prompt encoder and mask decoder only; the image encoder keeps its --init weights.")] = False,
    multimask: Annotated[int, typer.Option("--multimask", help="Ambiguity masks (SAM's) answering a lone click, beside the single mask; 0: none.")] = 0,
    multimask_only: Annotated[bool, typer.Option("--multimask-only", help="Train the ambiguity masks alone; every other weight keeps its --init value.")] = False,
    fit_iou_head: Annotated[bool, typer.Option("--fit-iou-head", help="Fit only the IoU head that picks among --init's ambiguity masks, on first clicks decoded once (minutes on a CPU); uses -d, -o, --init and --seed only.")] = False,
) -> None:
    """Train the promptable model with simulated clicks (and CPCL); run under torchrun for several processes."""
    if fit_iou_head:
        from seganypet.train.iou_head import fit_iou_head as fit

        if init is None:
            raise SegAnyPetError("--fit-iou-head fits the head of a trained checkpoint: give it with --init")
        fit(dataset, init, output, seed=seed)
        return
    from seganypet.train import LoopConfig, TrainConfig
    from seganypet.train import train as run

    config = TrainConfig(str(dataset), str(output), size=size, steps=steps, batch=batch, lr=lr, exclude=tuple(exclude),
                         seed=seed, save_every=save_every, bf16=bf16, cpcl_rampup=cpcl_rampup, cpcl_start=cpcl_start, init=str(init) if init else None,
                         warmup=warmup, workers=workers, lesion_fraction=lesion_fraction,
                         organ_weights=tuple(_name_weight(item) for item in organ_weight), suv_scale=suv_scale,
                         centre_clicks=centre_clicks, tube_crops=tube_crops, freeze_encoder=freeze_encoder,
                         multimask=multimask, multimask_only=multimask_only, loop=LoopConfig(rounds=rounds, cpcl=cpcl, cpcl_k=cpcl_k))
    run(config, resume=resume)


if __name__ == "__main__":
    main()
