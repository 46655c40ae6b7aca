"""Writing phantom cases as an nnU-Net v2 dataset folder (plus instance maps, clean labels, DICOM, MIPs).

Layout (nnU-Net v2, with seganypet's extras beside it)::

    DIR/dataset.json                      labels, channel_names, numTraining, file_ending, seganypet{...}
    DIR/imagesTr/phantom_00000_0000.nii.gz    SUVbw
    DIR/labelsTr/phantom_00000.nii.gz         the labels to train on (noisy for some cases)
    DIR/labelsTr_clean/phantom_00000.nii.gz   the true labels, always
    DIR/instancesTr/phantom_00000.nii.gz      0 or the lesion's id, one prompt target per lesion
    DIR/metadata/phantom_00000.json           lesions, uptake, physics, noise applied
    DIR/imagesTs, labelsTs, instancesTs       held-out cases (clean labels)
    DIR/dicom/phantom_00000/                  optional PET DICOM series
    DIR/mip/phantom_00000.png                 optional coronal MIP

The NEMA IEC body phantom goes into the same layout (held-out cases ``nema_4to1_00`` ..., each sphere a
lesion instance). Cases already written are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

from seganypet import __version__
from seganypet.errors import SegAnyPetError
from seganypet.io.dicom_write import write_pet_dicom
from seganypet.io.write import write_atomic, write_nifti
from seganypet.phantom.generate import LABELS, LESION_LABEL, PhantomCase, PhantomConfig, generate_case
from seganypet.phantom.nema import nema_iec_case
from seganypet.phantom.noise import corrupt_labels
from seganypet.progress import track, track_map

INSTANCES_DIR = {"Tr": "instancesTr", "Ts": "instancesTs"}


def case_name(seed: int) -> str:
    return f"phantom_{seed:05d}"


def noisy_seeds(train_seeds: list[int], rate: float, seed: int) -> set[int]:
    """Exactly round(rate * N) training cases get noisy labels, chosen by ``seed``."""
    count = int(round(rate * len(train_seeds)))
    rng = np.random.default_rng(seed + 7919)
    return {int(s) for s in rng.choice(train_seeds, size=count, replace=False)} if count else set()


def write_json(path: Path, payload: dict) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=str)))


def write_case(out: Path, seed: int, split: str, noisy: bool, dicom: bool, mip: bool, config: PhantomConfig | None) -> dict:
    case = generate_case(seed, config)
    noise_applied: list = []
    labels = case.labels
    if noisy:
        labels, noise_applied = corrupt_labels(case.labels, case.instances, np.random.default_rng(seed + 104729))
    return _write_files(out, case_name(seed), case, split, labels, dicom, mip,
                        {"seed": seed, "label_quality": "noisy" if noisy else "clean", "noise_applied": noise_applied})


def _write_files(out: Path, name: str, case: PhantomCase, split: str, labels: np.ndarray, dicom: bool, mip: bool,
                 extra: dict) -> dict:
    if dicom:
        write_pet_dicom(case.image, out / "dicom" / name, case.acquisition)
    if mip:
        from seganypet.viz import save_mip_png

        save_mip_png(case.image, out / "mip" / f"{name}.png", case.labels, {v: k for k, v in LABELS.items()},
                     title=f"{name} ({case.physics['scanner']})")
    write_nifti(case.image, out / f"labels{split}" / f"{name}.nii.gz", labels)
    if split == "Tr":
        write_nifti(case.image, out / "labelsTr_clean" / f"{name}.nii.gz", case.labels)
    write_nifti(case.image, out / INSTANCES_DIR[split] / f"{name}.nii.gz", case.instances)
    meta = {
        "case": name, "split": split, **extra, "lesions": [asdict(lesion) for lesion in case.lesions],
        "uptake_suv": {k: round(v, 3) for k, v in case.uptake.items()}, "physics": case.physics,
        "acquisition": asdict(case.acquisition), "shape": case.image.shape,
        "spacing_mm": [round(float(v), 4) for v in case.image.spacing],
    }
    write_json(out / "metadata" / f"{name}.json", meta)
    write_nifti(case.image, out / f"images{split}" / f"{name}_0000.nii.gz")  # written last: marks the case done
    return meta


def _write_job(out: Path, dicom: bool, mip: bool, config: PhantomConfig | None, job: tuple[int, str, bool]) -> dict:
    seed, split, noisy = job
    return write_case(out, seed, split, noisy, dicom, mip, config)


def write_phantom_dataset(
    out: str | Path,
    n_train: int,
    n_test: int = 0,
    seed: int = 0,
    noisy_rate: float = 0.0,
    dicom: bool = False,
    mip: bool = False,
    config: PhantomConfig | None = None,
    workers: int = 1,
) -> Path:
    """Generate ``n_train`` + ``n_test`` cases (seeds ``seed``, ``seed + 1``, ...) into ``out``; each case
    depends on its seed alone, so ``workers`` processes write the same files as one."""
    out = Path(out)
    train = list(range(seed, seed + n_train))
    test = list(range(seed + n_train, seed + n_train + n_test))
    noisy = noisy_seeds(train, noisy_rate, seed)
    jobs = [(s, split, s in noisy) for s, split in [(s, "Tr") for s in train] + [(s, "Ts") for s in test]
            if not (out / f"images{split}" / f"{case_name(s)}_0000.nii.gz").exists()]
    track_map(partial(_write_job, out, dicom, mip, config), jobs, "generating phantoms", workers)
    dataset = {
        "name": out.name,
        "description": "seganypet synthetic whole-body FDG PET phantoms (SUVbw)",
        "channel_names": {"0": "PET"},
        "labels": LABELS,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "seganypet": {
            "version": __version__,
            "units": "SUVbw",
            "instances": "instancesTr / instancesTs: one id per lesion",
            "clean_labels": "labelsTr_clean",
            "label_quality": {case_name(s): ("noisy" if s in noisy else "clean") for s in train},
            "train_seeds": [train[0], train[-1]] if train else [],
            "test_seeds": [test[0], test[-1]] if test else [],
        },
    }
    write_json(out / "dataset.json", dataset)
    return out


def write_nema_dataset(out: str | Path, ratios: list[float], realisations: int = 1, scanner: str = "siemens_biograph_mct",
                       dicom: bool = False) -> Path:
    """The NEMA IEC body phantom at each sphere-to-background ratio, ``realisations`` noise draws each, as held-out
    cases (``imagesTs``; each sphere a lesion instance), so that ``seganypet evaluate`` scores any method on it."""
    out = Path(out)
    description = "seganypet NEMA NU 2 / IEC body phantom, simulated (SUVbw)"
    existing = out / "dataset.json"
    if existing.is_file():
        try:
            ours = json.loads(existing.read_text()).get("description") == description
        except (json.JSONDecodeError, AttributeError):
            ours = False
        if not ours:
            raise SegAnyPetError("holds another dataset: write the NEMA phantom to a folder of its own", out)
    jobs = [(ratio, seed) for ratio in ratios for seed in range(realisations)]
    for ratio, seed in track(jobs, "writing NEMA phantoms"):
        name = f"nema_{ratio:g}to1_{seed:02d}".replace(".", "p")
        if (out / "imagesTs" / f"{name}_0000.nii.gz").exists():
            continue
        case = nema_iec_case(ratio, seed=seed, scanner=scanner)
        _write_files(out, name, case, "Ts", case.labels, dicom, False, {"seed": seed, "label_quality": "clean"})
    write_json(out / "dataset.json", {
        "name": out.name, "description": description,
        "channel_names": {"0": "PET"}, "labels": {"background": 0, "lesion": LESION_LABEL}, "numTraining": 0,
        "file_ending": ".nii.gz",
        "seganypet": {"version": __version__, "units": "SUVbw", "instances": "instancesTs: one id per sphere, 10 to 37 mm"},
    })
    return out
