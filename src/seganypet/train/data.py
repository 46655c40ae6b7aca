"""Training data from any nnU-Net v2 dataset folder: (case, target) pairs cropped as inference crops them.

``DATASET/imagesTr/{case}_0000{ending}`` (PET in SUV; in a PET/CT dataset the channel ``dataset.json`` names
PET, or gives as ``"seganypet": {"pet_channel": N}``), ``labelsTr/{case}{ending}``, ``dataset.json``;
optional ``instancesTr/{case}{ending}`` (one id per lesion, else lesions are the connected components
of the ``lesion`` label) and ``metadata/{case}.json`` (lesion sites, for leave-one-site-out runs).
Label quality: ``dataset.json["seganypet"]["label_quality"]`` ({case: "clean"|"noisy"}) or a file
``high_quality.txt`` listing the clean cases; without either every case counts as clean.

Each case is read once into an uncompressed cache (``.npy``, memory-mapped) so that a training
step reads only the voxels under its crop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

from seganypet.clicks import centre_of
from seganypet.errors import SegAnyPetError
from seganypet.infer.crop import CropGeometry
from seganypet.infer.session import TUBE_ELONGATION, TUBE_STRETCH
from seganypet.io import Reorientation, read_pet
from seganypet.io.masks import read_label_map
from seganypet.io.write import write_atomic
from seganypet.modeling import ModelConfig
from seganypet.progress import track_map

log = logging.getLogger(__name__)
LESION_NAMES = ("lesion", "lesions", "tumor", "tumour")
MIN_TARGET_VOXELS = 3


@dataclass(frozen=True)
class TargetRef:
    case: str
    kind: str  # "class" (every voxel of a label value) or "instance" (one lesion)
    value: int  # label value or instance id
    name: str
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]  # inclusive voxel corners
    voxels: int
    site: str | None = None


@dataclass
class CaseArrays:
    suv: np.ndarray  # float16, memory-mapped
    labels: np.ndarray  # uint8/uint16
    instances: np.ndarray | None
    spacing: np.ndarray
    noisy: bool


def read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    if not path.is_file():
        raise SegAnyPetError("not an nnU-Net dataset folder: dataset.json is missing", folder)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SegAnyPetError(f"dataset.json is not valid JSON ({err.msg}, line {err.lineno})", path) from None


def label_names(meta: dict) -> dict[int, str]:
    """{label value: name} of the dataset's structures, background and nnU-Net's ignore label left out.

    nnU-Net's region-based datasets also list regions, unions of labels (``"whole tumour": [1, 2, 3]``); each label in
    them is a target already, so a region is left out, with a warning."""
    names, regions = {}, []
    for name, value in meta.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            regions.append(name)
        elif isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise SegAnyPetError(f"dataset.json label {name!r} has the value {value!r}: a label value is an integer")
        elif int(value) != 0 and name != "ignore":
            names[int(value)] = name
    if regions:
        log.warning("dataset.json regions %s are unions of labels; their labels are the targets", ", ".join(regions))
    ignore_value(meta)  # checked with the other labels, so a bad one stops a run before any work
    return names


def ignore_value(meta: dict) -> int | None:
    """nnU-Net's ignore label (``"ignore": N`` in ``labels``, N the highest value): voxels nobody annotated, which
    are neither a structure nor background. Training leaves them out of its loss and clicks, evaluation out of
    its scores, as nnU-Net does; read as background they would teach and score an unannotated organ as absent."""
    labels = meta.get("labels", {})
    if "ignore" not in labels:
        return None
    value = labels["ignore"]
    highest = max((int(v) for n, v in labels.items() if n != "ignore" and not isinstance(v, (list, tuple))), default=0)
    if isinstance(value, bool) or not str(value).isdigit() or int(value) <= highest:
        raise SegAnyPetError(f"dataset.json label 'ignore' has the value {value!r}: nnU-Net's ignore label is one "
                             f"integer above every other label (here {highest + 1} or more)")
    return int(value)


def label_quality(folder: Path, meta: dict, cases: list[str]) -> dict[str, bool]:
    """{case: noisy?}."""
    quality = meta.get("seganypet", {}).get("label_quality")
    if quality:
        return {c: quality.get(c, "clean") != "clean" for c in cases}
    listed = folder / "high_quality.txt"
    if listed.is_file():
        clean = {line.strip() for line in listed.read_text().splitlines() if line.strip()}
        return {c: c not in clean for c in cases}
    return dict.fromkeys(cases, False)


def pet_channel(meta: dict) -> int:
    """Which ``_000N`` image of a case is the PET.

    nnU-Net's ``channel_names`` say how to normalise a channel, not what it holds: its own AutoPET conversion
    (Dataset221) puts the CT in channel 0 and the SUV in channel 1 and names both "CT". So the channel is the only
    one, or the one named PET (or PT, SUV), or the one the dataset states; else the dataset must say."""
    channels = {int(k): str(v) for k, v in (meta.get("channel_names") or meta.get("modality") or {"0": "PET"}).items()}
    stated = meta.get("seganypet", {}).get("pet_channel")
    if stated is not None:
        if int(stated) not in channels:
            raise SegAnyPetError(f"dataset.json states pet_channel {stated}, but its channels are {channels}")
        return int(stated)
    named = [k for k, v in channels.items() if any(word in v.upper() for word in ("PET", "SUV")) or v.upper() == "PT"]
    if len(channels) == 1:
        return next(iter(channels))
    if len(named) == 1:
        return named[0]
    raise SegAnyPetError(f"dataset.json lists channels {channels} and does not say which is the PET: add "
                         '"seganypet": {"pet_channel": N} to it, N being the one of imagesTr/CASE_000N')


def image_file(folder: Path, split: str, case: str, meta: dict) -> Path:
    """A case's PET image: ``images{split}/{case}_000N{ending}``, N the PET channel."""
    return folder / f"images{split}" / f"{case}_{pet_channel(meta):04d}{meta.get('file_ending', '.nii.gz')}"


def list_cases(folder: Path, split: str = "Tr") -> list[str]:
    meta = read_dataset_json(folder)
    suffix = image_file(folder, split, "", meta).name
    cases = [p.name[: -len(suffix)] for p in sorted((folder / f"images{split}").glob(f"*{suffix}"))]
    if not cases:
        raise SegAnyPetError(f"no images{split}/*{suffix} files", folder)
    return cases


def lesion_sites(path: Path) -> dict[int, str]:
    """{instance id: site} from a case's ``metadata/{case}.json`` (empty without one)."""
    if not path.is_file():
        return {}
    try:
        lesions = json.loads(path.read_text()).get("lesions", [])
    except json.JSONDecodeError as err:
        raise SegAnyPetError(f"not valid JSON ({err.msg}, line {err.lineno})", path) from None
    return {int(les["id"]): les["site"] for les in lesions if isinstance(les, dict) and "id" in les and les.get("site")}


def lesion_components(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """One id per lesion where a dataset has no instance map: the 26-connected components of its lesion label(s)."""
    lesion_values = [v for v, n in names.items() if n.lower() in LESION_NAMES]
    return ndimage.label(np.isin(labels, lesion_values), structure=np.ones((3, 3, 3)))[0]


def case_targets(case: str, labels: np.ndarray, instances: np.ndarray | None, names: dict[int, str], sites: dict[int, str],
                 site_instances: np.ndarray | None = None) -> list[TargetRef]:
    """Every organ class and every lesion of one case. Lesions are ``instances`` or, without them, the
    components of the lesion label; a lesion's site is that of the ``site_instances`` id (default:
    ``instances``) it overlaps most, so the components of a noisy label keep the sites of the clean
    lesions they came from and a left-out site stays left out."""
    site_instances = instances if site_instances is None else site_instances
    lesion_values = [v for v, n in names.items() if n.lower() in LESION_NAMES]
    targets = []
    for value, name in names.items():
        if value in lesion_values:
            continue
        mask = labels == value
        if mask.sum() >= MIN_TARGET_VOXELS:
            targets.append(_ref(case, "class", value, name, mask))
    if lesion_values:
        if instances is None:
            instances = lesion_components(labels, names)
        for index, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is None:
                continue
            local = instances[box] == index
            if local.sum() >= MIN_TARGET_VOXELS:
                lo = [s.start for s in box]
                coords = np.argwhere(local) + lo
                owners = site_instances[box][local] if site_instances is not None else np.zeros(0, int)
                owners = owners[owners > 0]
                site = sites.get(int(np.bincount(owners).argmax())) if owners.size else None
                targets.append(TargetRef(case, "instance", index, "lesion",
                                         (tuple(int(v) for v in coords.min(0)), tuple(int(v) for v in coords.max(0))),
                                         int(local.sum()), site))
    return targets


def _ref(case: str, kind: str, value: int, name: str, mask: np.ndarray) -> TargetRef:
    coords = np.argwhere(mask)
    return TargetRef(case, kind, value, name, (tuple(int(v) for v in coords.min(0)), tuple(int(v) for v in coords.max(0))),
                     int(len(coords)))


class TrainingData:
    """Cases of one nnU-Net dataset, cached, with their targets; samples crops the way the session does."""

    def __init__(self, folder: str | Path, cache: str | Path, exclude: tuple[str, ...] = (), split: str = "Tr",
                 labels_folder: str | None = None, workers: int = 1) -> None:
        self.folder, self.cache = Path(folder), Path(cache)
        self.meta = read_dataset_json(self.folder)
        self.names = label_names(self.meta)
        self.ignore = ignore_value(self.meta)
        self.cases = list_cases(self.folder, split)
        self.noisy = label_quality(self.folder, self.meta, self.cases)
        ending = self.meta.get("file_ending", ".nii.gz")
        self.cache.mkdir(parents=True, exist_ok=True)
        self._arrays: dict[str, CaseArrays] = {}
        labels_dir = labels_folder or f"labels{split}"
        cache_case = partial(self._cache_case, ending=ending, labels_dir=labels_dir, split=split)
        excluded = {e.lower() for e in exclude}
        # a class target only while dataset.json still names it: a cache outlives an edit that makes a label "ignore"
        self.targets: list[TargetRef] = [t for targets in track_map(cache_case, self.cases, "caching cases", workers) for t in targets
                                         if t.name.lower() not in excluded and (t.site or "").lower() not in excluded
                                         and (t.kind == "instance" or t.value in self.names)]
        if not self.targets:
            raise SegAnyPetError("no targets to train on (all excluded, or labels empty)", self.folder)
        by_case: dict[str, list[TargetRef]] = {}
        for t in self.targets:
            by_case.setdefault(t.case, []).append(t)
        self.by_case = by_case
        log.info("%d cases, %d targets (%d lesions), %d noisy", len(self.cases), len(self.targets),
                 sum(t.kind == "instance" for t in self.targets), sum(self.noisy.values()))

    def _cache_case(self, case: str, ending: str, labels_dir: str, split: str) -> list[TargetRef]:
        index = self.cache / f"{case}.{labels_dir}.targets-v3.json"  # v3: in the model's axes
        if index.is_file():
            return [TargetRef(**{**t, "bbox": tuple(map(tuple, t["bbox"]))}) for t in json.loads(index.read_text())]
        image = read_pet(image_file(self.folder, split, case, self.meta))
        label_path = self.folder / labels_dir / f"{case}{ending}"
        if not label_path.is_file():
            raise SegAnyPetError(f"no label file for case {case}", label_path)
        labels = read_label_map(label_path, image)
        inst_path = self.folder / f"instances{split}" / f"{case}{ending}"
        instances = read_label_map(inst_path, image) if inst_path.is_file() else None
        # trained in the axes the session answers in, whatever the files' own order (io.Reorientation)
        orient = Reorientation.to_lps(image)
        image, labels = orient.image(image), orient.array(labels)
        instances = None if instances is None else orient.array(instances)
        sites = lesion_sites(self.folder / "metadata" / f"{case}.json")
        for suffix, array in (("suv", image.array.astype(np.float16)), ("seg", labels.astype(np.uint8 if labels.max() < 256 else np.uint16)),
                              ("spacing", image.spacing)):
            _save_npy(self.cache / f"{case}.{suffix}.npy", array)
        if instances is not None:
            _save_npy(self.cache / f"{case}.inst.npy", instances)
        # instances belong to the clean truth; with noisy labels, lesions are the label's own components
        use_instances = instances if labels_dir == f"labels{split}" and not self.noisy.get(case) else None
        targets = case_targets(case, labels, use_instances, self.names, sites, site_instances=instances)
        payload = json.dumps([t.__dict__ for t in targets])
        write_atomic(index, lambda tmp: tmp.write_text(payload))
        return targets

    def __getstate__(self) -> dict:
        """Worker processes open their own memory maps instead of being sent copies of the arrays."""
        return {**self.__dict__, "_arrays": {}}

    def arrays(self, case: str) -> CaseArrays:
        if case not in self._arrays:
            inst = self.cache / f"{case}.inst.npy"
            self._arrays[case] = CaseArrays(
                np.load(self.cache / f"{case}.suv.npy", mmap_mode="r"), np.load(self.cache / f"{case}.seg.npy", mmap_mode="r"),
                np.load(inst, mmap_mode="r") if inst.is_file() else None, np.load(self.cache / f"{case}.spacing.npy"),
                self.noisy[case])
        return self._arrays[case]

    def target_mask(self, target: TargetRef, crop: CropGeometry) -> np.ndarray:
        arrays = self.arrays(target.case)
        if target.kind == "instance" and arrays.instances is not None and not arrays.noisy:
            values = crop.sample(arrays.instances, order=0, cval=0)
        else:
            values = crop.sample(arrays.labels, order=0, cval=0)
            if target.kind == "instance":  # a lesion component of the (possibly noisy) label
                lesion = np.isin(values, [v for v, n in self.names.items() if n.lower() in LESION_NAMES])
                return _component_near(lesion, crop.to_crop(np.mean(target.bbox, 0)))
        return values == target.value


def _component_near(mask: np.ndarray, point) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask
    coords = np.argwhere(labels > 0)
    nearest = coords[np.argmin(((coords - point) ** 2).sum(1))]
    return labels == labels[tuple(nearest)]


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


@dataclass
class Sample:
    suv: np.ndarray  # (S, S, S) float32 SUV (augmented)
    target: np.ndarray  # (S, S, S) bool
    noisy: bool
    name: str
    known: np.ndarray  # (S, S, S) bool: the voxels whose label is known: inside the scan, not nnU-Net's ignore label
    click: tuple[int, int, int] | None = None  # the first click (crop voxel) where the crop was centred on it
    crop: CropGeometry | None = None  # where in the case the crop lies (before the flip)


def choose_target(targets: list[TargetRef], rng: np.random.Generator, lesion_fraction: float = 0.4,
                  weights: dict[str, float] | None = None) -> TargetRef:
    """A lesion with probability ``lesion_fraction`` (when the case has one), else an organ class, drawn in
    proportion to ``weights[name]`` (default 1): thin or faint structures (aorta, spine, a cold myocardium)
    are the ones a uniform draw under-trains, and a run can give them more of its crops."""
    lesions = [t for t in targets if t.kind == "instance"]
    organs = [t for t in targets if t.kind != "instance"]
    pool = lesions if lesions and (not organs or rng.random() < lesion_fraction) else organs
    if pool is lesions or not weights:
        return pool[rng.integers(len(pool))]
    p = np.array([weights.get(t.name, 1.0) for t in pool], float)
    return pool[rng.choice(len(pool), p=p / p.sum())]


def sample_crop(data: TrainingData, config: ModelConfig, rng: np.random.Generator, lesion_fraction: float = 0.4,
                max_zoom: float = 4.0, click_centred: float = 0.5, weights: dict[str, float] | None = None,
                suv_scale: float = 1.25, centre_clicks: float = 0.0, tube_crops: float = 0.0) -> Sample:
    """One (case, target) crop, flipped left-right at random, its SUV multiplied by a factor drawn log-uniformly
    from 1/``suv_scale`` to ``suv_scale`` (calibration, uptake time, habitus and tracer move a lesion's SUV while
    its outline stays; with too narrow a spread the model learns an absolute SUV level for an edge). Two
    framings, as the session makes them:

    - fitted (the crop after auto-zoom or later clicks): centred near the target's box centre, zoomed to fit it
      (in to ``config.min_zoom`` for a small lesion, out for a large organ), +-15 % zoom jitter;
    - click-centred (the session's first crops, fraction ``click_centred``): centred within a voxel or two
      on a random voxel of the target, which becomes the first click, at a zoom from ``config.min_zoom`` to 1.5
      (the session segments a target in the finest crop while it fits and then at the model's scale or wider,
      so an organ clicked in a fine crop must fill it and a 1 cm lesion must be outlined at 1 mm). Without these the model learned
      that a click at the crop centre means a small lesion (fitted lesion crops put every click there) and
      answered an organ's first click with a blob (measured: bladder Dice 0.05 at the centre, 0.71 five
      voxels off it). That click is a random voxel of the target or, with probability ``centre_clicks``, its
      centre (the deepest voxel), where people click and the evaluation's first click lands. A random voxel
      seldom is: in a large organ it is rarely deep enough for the fine crop to lie wholly inside the organ,
      and in a kidney it is rarely on the hot pelvis at its centre.

    A third framing, for a tube (an organ longer than the model's field and ``TUBE_ELONGATION`` times longer along
    one axis than across: the aorta, the spine), with probability ``tube_crops``: the window the session redraws a
    tube in (``Session._lengthwise``), see :func:`_lengthwise_crop`."""
    cases = list(data.by_case)  # cases with at least one target left after exclusions
    target = choose_target(data.by_case[cases[rng.integers(len(cases))]], rng, lesion_fraction, weights)
    arrays = data.arrays(target.case)
    axis = _tube_axis(target, arrays.spacing, config) if tube_crops > 0 else None
    if axis is not None and rng.random() < tube_crops:  # no draw otherwise: the same crops as before
        crop, mask, click = _lengthwise_crop(data, target, config, rng, axis, centre_clicks)
    else:
        crop, mask, click = _framed_crop(data, target, config, rng, max_zoom, click_centred, centre_clicks)
    # past the scan's edge the crop reads the edge going on, as the session does, and ``known`` marks it so that the
    # loss leaves it out: its label is unknown (read as background), and a cut organ must not be taught to end at the cut
    suv = crop.sample(arrays.suv, edge=True) * np.exp(rng.uniform(-np.log(suv_scale), np.log(suv_scale)))
    known = crop.inside(arrays.suv.shape)
    if data.ignore is not None:  # nnU-Net's ignore label: not annotated, so unknown as well
        known &= crop.sample(arrays.labels, order=0, cval=0) != data.ignore
    if rng.random() < 0.5:  # axis 0 runs from the patient's right to left: every case is read in the model's axes
        suv, mask, known = suv[::-1].copy(), mask[::-1].copy(), known[::-1].copy()
        click = (config.crop_size - 1 - click[0], *click[1:]) if click else None
    return Sample(suv, mask, arrays.noisy, target.name, known, click, crop)


def _framed_crop(data: TrainingData, target: TargetRef, config: ModelConfig, rng: np.random.Generator,
                 max_zoom: float, click_centred: float, centre_clicks: float):
    """The fitted or the click-centred framing of :func:`sample_crop`: (crop, target mask, first click or None)."""
    arrays = data.arrays(target.case)
    lo, hi = np.asarray(target.bbox[0], float), np.asarray(target.bbox[1], float)
    extent_mm = (hi - lo + 1) * arrays.spacing
    zoom = np.clip(extent_mm.max() / (0.75 * config.field_of_view_mm), config.min_zoom, max_zoom) * rng.uniform(0.87, 1.15)
    zoom = max(zoom, 0.87 * config.min_zoom)
    centre = (lo + hi) / 2 + rng.normal(0, 0.1, 3) * (hi - lo + 1)
    crop = CropGeometry.centred(centre, arrays.spacing, config.spacing_mm * zoom, config.crop_size)
    mask = data.target_mask(target, crop)
    if mask.sum() < 1:  # a thin target can vanish at a coarse zoom: centre on its box and use the nearest grid
        crop = CropGeometry.centred((lo + hi) / 2, arrays.spacing, config.spacing_mm, config.crop_size)
        mask = data.target_mask(target, crop)
    click = None
    if rng.random() < click_centred:
        if centre_clicks > 0 and rng.random() < centre_clicks:  # no draw at 0: the same crops as before
            voxel = np.asarray(centre_of(mask))
        else:
            inside = np.argwhere(mask)
            voxel = inside[rng.integers(len(inside))]
        point = crop.to_image(voxel)
        zoom = np.exp(rng.uniform(np.log(0.9 * config.min_zoom), np.log(1.5)))
        centred = CropGeometry.centred(point + rng.normal(0, 1.0, 3), arrays.spacing, config.spacing_mm * zoom, config.crop_size)
        centred_mask = data.target_mask(target, centred)
        voxel = tuple(int(v) for v in np.clip(np.round(centred.to_crop(point)), 0, config.crop_size - 1))
        if centred_mask[voxel]:
            crop, mask, click = centred, centred_mask, voxel
    return crop, mask, click


def _tube_axis(target: TargetRef, spacing: np.ndarray, config: ModelConfig) -> int | None:
    """The axis an organ runs along if it is a tube by the session's test: longer than the model's field along one
    axis and ``TUBE_ELONGATION`` times longer along it than across (the aorta, the spine; not the lungs or liver)."""
    extent_mm = (np.asarray(target.bbox[1]) - target.bbox[0] + 1) * spacing
    axis = int(np.argmax(extent_mm))
    if target.kind != "class" or extent_mm[axis] <= config.field_of_view_mm:
        return None
    return axis if extent_mm[axis] >= TUBE_ELONGATION * np.delete(extent_mm, axis).max() else None


def _lengthwise_crop(data: TrainingData, target: TargetRef, config: ModelConfig, rng: np.random.Generator, axis: int,
                     centre_clicks: float):
    """A tube's window as the session redraws it: ``TUBE_STRETCH`` times the model's voxel along the tube and the
    model's voxel (+-15 %) across, around a first click inside it (its deepest voxel with probability
    ``centre_clicks``, else a random one). As in the session, the window is centred along the tube on the part of
    it that a cube window around the click holds (the first answer), +- a sixteenth of its length.

    Without it the model meets such windows only at inference and answers a tube with a piece of it (model card,
    sessions 30-31): in cube crops at the model's scale a tube always fills the window along its length, so the
    model never learns where a tube ends."""
    arrays = data.arrays(target.case)
    lo, hi = target.bbox
    inside = np.asarray(arrays.labels[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]) == target.value
    if centre_clicks > 0 and rng.random() < centre_clicks:
        voxel = np.asarray(centre_of(inside, arrays.spacing))
    else:
        coords = np.argwhere(inside)
        voxel = coords[rng.integers(len(coords))]
    point = (voxel + np.asarray(lo)).astype(float)
    step_mm = np.full(3, config.spacing_mm * rng.uniform(0.87, 1.15))
    half = step_mm[axis] * config.crop_size / 2 / arrays.spacing[axis]  # the cube window's half-length, image voxels
    seen = max(point[axis] - half, lo[axis]), min(point[axis] + half, hi[axis])  # the tube in it: the first answer
    step_mm[axis] *= TUBE_STRETCH
    centre = point.copy()
    centre[axis] = np.mean(seen) + rng.uniform(-1, 1) / 16 * TUBE_STRETCH * 2 * half
    crop = CropGeometry.centred(centre, arrays.spacing, step_mm, config.crop_size)
    mask = data.target_mask(target, crop)
    if not mask.any():
        return crop, mask, None
    on_tube = np.argwhere(mask)  # the click on the crop's grid: the tube voxel nearest (in mm) to where it was drawn
    nearest = on_tube[np.argmin((((on_tube - crop.to_crop(point)) * step_mm) ** 2).sum(1))]
    return crop, mask, tuple(int(v) for v in nearest)
