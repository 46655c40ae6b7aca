"""Evaluation: metrics against hand-computed values, click simulation, the runner's files and resume."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import add_lesion_sites, write_tiny_dataset
from seganypet import SegAnyPetError
from seganypet.baselines import segment_classical
from seganypet.clicks import centre_of, first_click, jittered_box, next_click
from seganypet.eval import EvalConfig, area_under_curve, dice, false_volumes, nsd, run_evaluation
from seganypet.eval import runner as runner_module
from seganypet.eval.metrics import equivalent_diameter_mm
from seganypet.io import read_pet
from seganypet.prompts import Prompts


def cube(shape=(10, 10, 10), lo=(0, 0, 0), size=4):
    mask = np.zeros(shape, bool)
    mask[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return mask


def test_dice_by_hand():
    a, b = cube(lo=(1, 1, 1)), cube(lo=(2, 1, 1))  # overlap 3 x 4 x 4 = 48 of 64 + 64
    assert dice(a, b) == pytest.approx(96 / 128)
    assert dice(a, np.zeros_like(a)) == 0.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_nsd_by_hand_with_anisotropic_spacing():
    """Two 4^3 cubes one voxel apart along i, voxels 2 x 1 x 1 mm, tolerance 1.5 mm. Each cube's surface has 56
    voxels; only the 16 on the face that sticks out (2 mm from the other surface) fail: (40 + 40) / 112."""
    a, b = cube(lo=(1, 1, 1)), cube(lo=(2, 1, 1))
    assert nsd(a, b, (2.0, 1.0, 1.0), 1.5) == pytest.approx(80 / 112)
    assert nsd(a, b, (1.0, 1.0, 1.0), 1.0) == pytest.approx(1.0)  # with 1 mm voxels every surface voxel is within 1 mm
    assert nsd(a, a, (2.0, 1.0, 1.0), 0.0) == 1.0
    assert nsd(a, np.zeros_like(a), (1, 1, 1)) == 0.0


def test_autopet_volumes_and_curve_area():
    lesions = np.zeros((20, 20, 20), np.uint8)
    lesions[2:5, 2:5, 2:5] = 1  # 27 voxels, hit
    lesions[10:12, 10:12, 10:12] = 2  # 8 voxels, missed
    prediction = np.zeros_like(lesions, bool)
    prediction[3:6, 3:6, 3:6] = True  # touches lesion 1
    prediction[15:17, 15:17, 15] = True  # 4 voxels touching nothing
    fpv, fnv = false_volumes(prediction, lesions, voxel_ml=0.064)
    assert fpv == pytest.approx(4 * 0.064) and fnv == pytest.approx(8 * 0.064)
    assert area_under_curve([0.0, 0.5, 1.0]) == pytest.approx(0.5)


def test_the_first_click_on_a_tube_is_its_middle_in_any_voxel_order():
    """A voxelised tube is equally deep along its length; the first of those in index order was one end of it, and
    which end depended on the order the file stores its voxels in. (Two mirror-image voxels equally near the middle
    still tie: the click may move by one voxel.)"""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (20, 24, 60)], indexing="ij"), -1)
    tube = (np.hypot(ijk[..., 0] - 9.5, ijk[..., 1] - 11) <= 4) & (ijk[..., 2] >= 5) & (ijk[..., 2] <= 54)
    spacing = (2.0, 2.0, 3.0)
    click = np.array(centre_of(tube, spacing))
    assert tube[tuple(click)] and abs(click[2] - 29.5) <= 0.5  # half way along its 50 slices
    flipped = np.array(centre_of(tube[:, ::-1, ::-1], spacing))
    assert np.abs(np.array([flipped[0], 23 - flipped[1], 59 - flipped[2]]) - click).max() <= 1
    turned = np.array(centre_of(tube.transpose(2, 0, 1), (3.0, 2.0, 2.0)))
    assert np.abs(turned[[1, 2, 0]] - click).max() <= 1


def test_clicks_land_inside_the_target_then_in_the_largest_error():
    rng = np.random.default_rng(3)
    target = cube((30, 30, 30), (5, 5, 5), 12)
    for _ in range(20):
        voxel, positive = first_click(target, rng, "random")
        assert positive and target[voxel]
    assert centre_of(target) in {(10, 10, 10), (11, 11, 11), (10, 11, 10), (11, 10, 11), (10, 10, 11), (11, 11, 10),
                                 (10, 11, 11), (11, 10, 10)}
    prediction = target.copy()
    prediction[5:17, 5:17, 5:10] = False  # a large miss (12 x 12 x 5)
    prediction[5:7, 5:7, 14:17] = False  # a small miss
    voxel, positive = next_click(prediction, target, rng, "largest_error")
    assert positive and 5 <= voxel[2] < 10 and not prediction[voxel] and target[voxel]
    prediction = target.copy()
    prediction[20:28, 20:28, 20:28] = True  # a large false positive
    prediction[5:7, 5:7, 5:7] = False
    voxel, positive = next_click(prediction, target, rng, "largest_error")
    assert not positive and all(20 <= v < 28 for v in voxel)
    for _ in range(10):
        voxel, positive = next_click(prediction, target, rng, "random")
        assert prediction[voxel] != target[voxel] and positive == target[voxel]
    assert next_click(target, target, rng) is None
    lo, hi = jittered_box(target, rng, jitter_mm=2.0)
    assert all(3 <= v <= 7 for v in lo) and all(14 <= v <= 18 for v in hi)


def test_runner_files_agree_with_a_recomputation_and_resume_skips_finished_cases(tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    out = tmp_path / "eval"
    cfg = EvalConfig(str(data), str(out), "pct41", clicks=(1, 2), split="Tr")
    summary = run_evaluation(cfg)
    for name in ("results.csv", "results.json", "summary.md", "dice_vs_clicks.png", "dice_boxplot.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["structure"] for r in rows} == {"organ", "lesion"} and {r["clicks"] for r in rows} == {1, 2}
    assert "| organ |" in summary.read_text()

    # recompute one row by hand: the first click of the largest_error protocol is the target's centre
    image = read_pet(data / "imagesTr" / "case0_0000.nii.gz")
    truth = np.rint(read_pet(data / "labelsTr" / "case0.nii.gz").array) == 2
    mask = segment_classical(image, Prompts(positive=[centre_of(truth, image.spacing)]), "pct41")
    row = next(r for r in rows if r["case"] == "case0" and r["structure"] == "lesion" and r["clicks"] == 1)
    assert row["dice"] == pytest.approx(dice(mask, truth))
    assert row["err_mtv"] == pytest.approx(mask.sum() / truth.sum() - 1)

    calls = []
    original = runner_module.evaluate_case
    monkeypatch.setattr(runner_module, "evaluate_case", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    (out / "cases" / "pct41" / "case1.json").unlink()
    run_evaluation(cfg)
    assert calls == ["case1"]  # case0 was finished and is not redone
    assert len(json.loads((out / "results.json").read_text())["rows"]) == len(rows)


def test_autopet_protocol_clicks_lesion_centres_and_hot_spots():
    from seganypet.eval.autopet import background_clicks, evaluate_autopet_case, lesion_clicks
    from seganypet.eval.segmenters import ClassicalSegmenter
    from seganypet.io import PetImage

    suv = np.full((40, 40, 40), 1.0, np.float32)
    lesions = np.zeros(suv.shape, np.int32)
    lesions[5:12, 5:12, 5:12] = 1  # 7^3, the larger
    lesions[25:28, 25:28, 25:28] = 2
    suv[lesions > 0] = 8.0
    suv[30:34, 5:9, 30:34] = 12.0  # a physiological hot spot (e.g. bladder)
    image = PetImage(suv, np.diag([4.0, 4.0, 4.0, 1.0]), "RAS")
    rng = np.random.default_rng(0)
    positives = lesion_clicks(lesions, image.spacing, rng)
    assert len(positives) == 10 and positives[0] == (8, 8, 8) and positives[1] == (26, 26, 26)
    assert all(lesions[p] > 0 for p in positives)
    negatives = background_clicks(image, lesions)
    assert negatives and 30 <= negatives[0][0] < 34 and lesions[negatives[0]] == 0
    rows = evaluate_autopet_case(ClassicalSegmenter("pct41"), image, lesions, rng)
    assert [r["step"] for r in rows] == list(range(11))
    assert rows[0]["dice"] == 0.0 and rows[0]["fnv_ml"] == pytest.approx((343 + 27) * 0.064)
    assert rows[-1]["dice"] > 0.9 and rows[-1]["fnv_ml"] == 0.0 and rows[-1]["fpv_ml"] == 0.0


def test_lesions_are_also_summarised_by_the_site_their_metadata_names(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    add_lesion_sites(data, {"case0": "bone", "case1": "liver"})
    run_evaluation(EvalConfig(str(data), str(tmp_path / "eval"), "pct41", clicks=(1,), split="Tr"))
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    lesion = {r["case"]: r for r in result["rows"] if r["structure"] == "lesion"}
    assert lesion["case0"]["site"] == "bone" and lesion["case1"]["site"] == "liver"
    by_group = {s["structure"]: s for s in result["summary"]}
    assert by_group["lesion in bone"]["n"] == 1
    assert by_group["lesion in bone"]["dice_mean"] == pytest.approx(lesion["case0"]["dice"])
    assert by_group["lesion in liver"]["dice_mean"] == pytest.approx(lesion["case1"]["dice"])
    assert by_group["lesion"]["n"] == 2
    assert all(r["site"] == "" for r in result["rows"] if r["structure"] == "organ")


def test_without_instance_files_a_lesion_is_scored_against_its_component_and_summarised_by_its_suvmax(tmp_path):
    """The tiny dataset has no instancesTr, as most users' nnU-Net datasets: a lesion is a component of the lesion
    label (it was once scored against the label value equal to the component's index: here the organ)."""
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    run_evaluation(EvalConfig(str(data), str(tmp_path / "eval"), "pct41", clicks=(1,), split="Tr"))
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    image = read_pet(data / "imagesTr" / "case0_0000.nii.gz")
    truth = np.rint(read_pet(data / "labelsTr" / "case0.nii.gz").array) == 2
    lesion = next(r for r in result["rows"] if r["case"] == "case0" and r["structure"] == "lesion")
    assert lesion["diameter_mm"] == pytest.approx(equivalent_diameter_mm(truth, image.spacing), abs=0.05)
    assert lesion["suvmax"] == pytest.approx(float(image.array[truth].max()), abs=1e-3)
    assert 5 <= lesion["suvmax"] < 10  # 0.8 + 7 with noise: the middle group
    by_group = {s["structure"]: s for s in result["summary"]}
    assert by_group["lesion SUVmax 5-10"]["n"] == 2 and "lesion SUVmax < 5" not in by_group
    assert runner_module.group_keys({**lesion, "suvmax": 4.99}) == ["lesion", f"lesion {lesion['size_group']}", "lesion SUVmax < 5"]
    assert runner_module.group_keys({**lesion, "suvmax": 10.0})[-1] == "lesion SUVmax >= 10"
    organ = next(r for r in result["rows"] if r["structure"] == "organ")
    assert runner_module.group_keys(organ) == ["organ", "organ mean"]
    assert by_group["organ mean"]["n"] == len([r for r in result["rows"] if not r["size_group"]]) > 0


def test_a_region_based_dataset_json_evaluates_its_labels_and_a_bad_label_value_is_named(tmp_path, caplog):
    """nnU-Net's region-based datasets list unions of labels (``[1, 2]``) beside the labels: the labels are the targets,
    the region is left out with a warning, not a traceback; a value that is no label is a one-line error."""
    data = write_tiny_dataset(tmp_path / "regions")
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["organ or lesion"] = [1, 2]
    meta["regions_class_order"] = [1, 2]
    (data / "dataset.json").write_text(json.dumps(meta))
    run_evaluation(EvalConfig(str(data), str(tmp_path / "out"), "pct41", clicks=(1,), split="Tr"))
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert {r["structure"] for r in rows} == {"organ", "lesion"} and "organ or lesion" in caplog.text
    meta["labels"]["organ"] = "one"
    (data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegAnyPetError, match="'organ' has the value 'one'"):
        run_evaluation(EvalConfig(str(data), str(tmp_path / "out2"), "pct41", clicks=(1,), split="Tr"))


def test_a_label_map_on_another_grid_than_its_image_is_refused_not_scored(tmp_path):
    """A label map of the right shape but flipped against its image would be scored on the wrong voxels."""
    data = write_tiny_dataset(tmp_path / "flipped")
    path = data / "labelsTr" / "case1.nii.gz"
    labels = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(labels.dataobj), np.diag([-4.0, 4.0, 4.0, 1.0])), path)
    with pytest.raises(SegAnyPetError, match="does not match"):
        run_evaluation(EvalConfig(str(data), str(tmp_path / "out"), "pct41", clicks=(1,), split="Tr"))


def test_nnunets_ignore_label_is_neither_a_target_nor_scored(tmp_path):
    """nnU-Net's ignore label marks voxels nobody annotated (sparse annotation). Here the far half of the organ is
    unannotated: 41 % SUVmax outlines the whole organ, and scored against the ignored half as background it would
    lose a third of its Dice for voxels that are organ."""
    data = write_tiny_dataset(tmp_path / "sparse", cases=1)
    run_evaluation(EvalConfig(str(data), str(tmp_path / "dense"), "pct41", clicks=(1, 3), split="Tr"))
    path = data / "labelsTr" / "case0.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj).copy()
    labels[13:20][labels[13:20] == 1] = 3  # the organ block spans i = 6..19: its far half unannotated
    nib.save(nib.Nifti1Image(labels, image.affine), path)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (data / "dataset.json").write_text(json.dumps(meta))
    run_evaluation(EvalConfig(str(data), str(tmp_path / "sparse_out"), "pct41", clicks=(1, 3), split="Tr"))
    dense, sparse = ({(r["structure"], r["clicks"]): r["dice"] for r in json.loads((tmp_path / out / "results.json")
                     .read_text())["rows"]} for out in ("dense", "sparse_out"))
    assert set(sparse) == set(dense) == {(s, n) for s in ("organ", "lesion") for n in (1, 3)}
    assert dense[("organ", 1)] > 0.9
    for key in sparse:
        assert abs(sparse[key] - dense[key]) < 0.05, (key, sparse[key], dense[key])
    meta["labels"]["ignore"] = 2  # not above every other label: nnU-Net's rule
    (data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegAnyPetError, match="ignore label is one integer above every other label"):
        run_evaluation(EvalConfig(str(data), str(tmp_path / "bad"), "pct41", clicks=(1,), split="Tr"))
