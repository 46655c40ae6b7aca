"""Training: a step learns, a tiny model overfits, CPCL on a constructed case, resume, two processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import add_lesion_sites, write_tiny_dataset
from seganypet.clicks import centre_of, next_click
from seganypet.errors import SegAnyPetError
from seganypet.eval.runner import read_case
from seganypet.infer import Session
from seganypet.io import read_pet
from seganypet.modeling import PRESETS, build_model, load_model, normalise_suv, read_checkpoint
from seganypet.train import InteractiveLoss, LoopConfig, TrainConfig, mixed_loss, ramp_up, rectify, train
from seganypet.train.data import (
    TargetRef,
    TrainingData,
    choose_target,
    label_names,
    list_cases,
    read_dataset_json,
    sample_crop,
)
from seganypet.train.iou_head import prompted_iou
from seganypet.train.trainer import cpcl_weight_at


def fixed_batch(model):
    s = model.crop_size
    ijk = np.stack(np.meshgrid(*[np.arange(s)] * 3, indexing="ij"), -1)
    target = np.linalg.norm(ijk - [15, 17, 14], axis=-1) <= 6
    suv = 1 + 6 * target
    crops = torch.from_numpy(normalise_suv(suv.astype(np.float32)))[None, None].repeat(2, 1, 1, 1, 1)
    targets = torch.from_numpy(target.astype(np.float32))[None, None].repeat(2, 1, 1, 1, 1)
    return crops, targets, torch.tensor([False, True])


def test_training_steps_change_the_weights_and_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("test")
    step = InteractiveLoss(model, LoopConfig(rounds=2, box_probability=0.0, cpcl_k=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = fixed_batch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = step(*batch, seed=1, cpcl_weight=1.0)
    for _ in range(20):
        loss, _ = step(*batch, seed=1, cpcl_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, _ = step(*batch, seed=1, cpcl_weight=1.0)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "image_encoder.patch_embed.weight" in changed and "mask_decoder.iou_head.layers.0.weight" in changed
    assert last.item() < first.item() - 0.05


def test_past_the_scans_edge_a_crop_reads_the_edge_going_on_and_is_marked_unknown(tmp_path):
    """Training reads a crop as the session does: past the scan's edge, the edge going on (not SUV 0), and marks
    those voxels unknown, where the label reads background whatever the body holds there."""
    data = TrainingData(write_tiny_dataset(tmp_path / "Dataset001_Tiny"), tmp_path / "cache")
    config = build_model("test").config
    past = 0
    for seed in range(40):
        sample = sample_crop(data, config, np.random.default_rng(seed))
        known = sample.known if sample.crop is None else sample.crop.inside((40, 40, 40))
        assert np.array_equal(sample.known, known) or np.array_equal(sample.known, known[::-1])  # flipped with the crop
        assert not sample.target[~sample.known].any()
        assert (sample.suv[~sample.known] > 0.3).all()  # the tiny cases' background is SUV 0.8 +- 0.1, scaled
        past += int((~sample.known).any())
    assert past >= 5  # the lesion lies 3 voxels from the edge: many crops run past it


def test_nnunets_ignore_label_is_never_a_target_and_its_voxels_are_unknown(tmp_path):
    """nnU-Net's ignore label (``"ignore": N``, N above every other label) marks voxels nobody annotated: not a
    structure to train, and not background either, so its voxels are unknown as those past the scan's edge are."""
    data_dir = write_tiny_dataset(tmp_path / "Dataset002_Sparse", cases=1)
    path = data_dir / "labelsTr" / "case0.nii.gz"
    image = nib.load(path)
    labels = np.asarray(image.dataobj).copy()
    labels[:, 24:][labels[:, 24:] == 0] = 3  # background unannotated beyond j = 24 (the lesion lies across it)
    nib.save(nib.Nifti1Image(labels, image.affine), path)
    meta = json.loads((data_dir / "dataset.json").read_text())
    meta["labels"]["unannotated"] = 3  # first named as a structure, then marked as nnU-Net's ignore label
    (data_dir / "dataset.json").write_text(json.dumps(meta))
    assert {t.name for t in TrainingData(data_dir, tmp_path / "cache").targets} == {"organ", "lesion", "unannotated"}
    meta["labels"] = {**{k: v for k, v in meta["labels"].items() if k != "unannotated"}, "ignore": 3}
    (data_dir / "dataset.json").write_text(json.dumps(meta))
    data = TrainingData(data_dir, tmp_path / "cache")  # the same cache: its targets are read again, not trusted
    assert {t.name for t in data.targets} == {"organ", "lesion"}
    config = build_model("test").config
    ignored = 0
    for seed in range(30):
        sample = sample_crop(data, config, np.random.default_rng(seed))
        annotated = sample.crop.sample(data.arrays("case0").labels, order=0) != 3
        expected = sample.crop.inside((40, 40, 40)) & annotated
        assert np.array_equal(sample.known, expected) or np.array_equal(sample.known, expected[::-1])
        assert not sample.target[~sample.known].any()
        ignored += int((~annotated & sample.crop.inside((40, 40, 40))).sum())
    assert ignored > 1000  # the ignored voxels are in the crops, and unknown there
    meta["labels"]["ignore"] = 1
    (data_dir / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegAnyPetError, match="ignore label is one integer above every other label"):
        TrainingData(data_dir, tmp_path / "cache2")


def test_past_the_scans_edge_nothing_is_trained_and_no_click_lands(monkeypatch):
    """Voxels past the edge (``known`` False) have no label: the loss takes no gradient from the masks there, and
    no simulated click (the interactive rounds' or CPCL's prompt sets') is put there, though an untrained model's
    masks are wrong there as everywhere."""
    torch.manual_seed(0)
    model = build_model("test")
    crops, targets, noisy = fixed_batch(model)
    known = torch.ones_like(targets, dtype=torch.bool)
    known[..., 24:] = False  # the last quarter along k, whole low-res cells (the sphere ends at k = 20)
    step = InteractiveLoss(model, LoopConfig(rounds=4, box_probability=0.0, cpcl_k=3))
    clicks, lows, decode = [], [], model.decode

    def recorded_click(prediction, target, rng, *args, **kwargs):
        click = next_click(prediction, target, rng, *args, **kwargs)
        clicks.append(click)
        return click

    def recorded_decode(*args, **kwargs):
        low, iou = decode(*args, **kwargs)
        if low.requires_grad:
            low.retain_grad()
            lows.append(low)
        return low, iou

    monkeypatch.setattr("seganypet.train.loop.next_click", recorded_click)
    model.decode = recorded_decode
    loss, _ = step(crops, targets, noisy, seed=1, cpcl_weight=1.0, known=known)
    loss.backward()
    assert len(clicks) == 9, clicks  # 3 later rounds x 2 samples, and 3 CPCL prompt sets x 1 round on the noisy one
    assert all(c is None or c[0][2] < 24 for c in clicks), clicks
    assert lows and all(float(low.grad[..., 12:].abs().max()) == 0 for low in lows)
    assert all(float(low.grad[..., :12].abs().max()) > 0 for low in lows)


def test_cpcl_on_a_constructed_case():
    """K predictions agree everywhere except region A (they split 3:2 there); the given label has a wrong patch W
    that all K predictions confidently contradict."""
    shape = (1, 1, 8, 8, 8)
    truth = torch.zeros(shape)
    truth[..., 2:6, 2:6, 2:6] = 1
    probs = truth.expand(5, *shape).clone() * 0.95 + 0.02
    region_a = (slice(None), slice(None), slice(None), slice(6, 8), slice(0, 2), slice(0, 8))
    probs[region_a] = torch.tensor([0.9, 0.9, 0.9, 0.1, 0.1]).view(5, 1, 1, 1, 1, 1)  # mean 0.58 -> positive
    label = truth.clone()
    label[..., 2:4, 2:4, 2:4] = 0  # W: a wrong hole in the label
    result = rectify(probs, label)
    expected_a = torch.zeros(shape, dtype=torch.bool)
    expected_a[..., 6:8, 0:2, 0:8] = True
    assert torch.equal(result.uncertain, expected_a)
    expected_w = torch.zeros(shape, dtype=torch.bool)
    expected_w[..., 2:4, 2:4, 2:4] = True
    assert torch.equal(result.contradicted, expected_w)
    assert torch.all(result.rectified[expected_a] == 1)  # the ensemble's decision in the uncertain region
    assert torch.all(result.rectified[expected_w] == 1)  # the wrong patch is corrected
    elsewhere = ~(expected_a | expected_w)
    assert torch.equal(result.rectified[elsewhere], label[elsewhere])  # the given label everywhere else
    assert mixed_loss(torch.tensor(3.0), torch.tensor(0.0), 1.0) == pytest.approx(2.0)  # (2 L + L') / 3
    assert ramp_up(0, 100) < 0.01 and ramp_up(100, 100) == 1.0


def test_cpcl_waits_for_its_start_step_then_ramps_up_from_there():
    """``--cpcl-start``: the plain loss alone until then (a barely trained model's confident answers are no evidence
    against a label); from then on the same ramp-up as a run that starts with CPCL, shifted; 0 keeps the old schedule."""
    late = TrainConfig("d", "o", cpcl_start=100, cpcl_rampup=50, cpcl_weight=0.5)
    assert cpcl_weight_at(0, late) == cpcl_weight_at(99, late) == 0.0
    assert cpcl_weight_at(100, late) == pytest.approx(0.5 * ramp_up(0, 50)) and 0 < cpcl_weight_at(100, late) < 0.01
    assert cpcl_weight_at(125, late) == pytest.approx(0.5 * ramp_up(25, 50))
    assert cpcl_weight_at(150, late) == cpcl_weight_at(10_000, late) == 0.5
    from_zero = TrainConfig("d", "o", cpcl_rampup=50)
    assert [cpcl_weight_at(s, from_zero) for s in (0, 25, 50)] == [ramp_up(s, 50) for s in (0, 25, 50)]
    plain = TrainConfig("d", "o", loop=LoopConfig(cpcl=False))
    assert cpcl_weight_at(10_000, plain) == 0.0  # what log.jsonl records for a --no-cpcl run


@pytest.mark.slow
def test_a_tiny_model_overfits_a_tiny_dataset(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    # 500 steps left the spheres at Dice 0.87-0.89 on an AMX Xeon (the same with numpy 2.3 / scipy 1.16: the CPU's
    # kernels, not a library, set the trajectory); 800 at 0.89-0.90; 1200 at 0.956 / 0.959
    cfg = TrainConfig(str(data), str(tmp_path / "run"), size="test", steps=1200, batch=2, lr=2e-3, warmup=20,
                      save_every=1000, bf16="off", lesion_fraction=0.5, loop=LoopConfig(rounds=3, cpcl=False))
    model = load_model(train(cfg).checkpoint, precision="fp32")
    session = Session(model)
    dices = []
    for case in ("case0", "case1"):
        image = read_pet(data / "imagesTr" / f"{case}_0000.nii.gz")
        labels = np.rint(read_pet(data / "labelsTr" / f"{case}.nii.gz").array)
        session.set_image(image)
        for value in (1, 2):
            truth = labels == value
            session.new_target()
            session.add_point(centre_of(truth))
            for _ in range(2):  # two corrective clicks, as the model was trained (the first alone is not the claim)
                click = next_click(session.mask, truth, np.random.default_rng(0), "largest_error")
                if click:
                    session.add_point(click[0], positive=click[1])
            mask = session.mask
            dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    assert min(dices) > 0.9, dices


def test_kill_and_resume_continues_the_same_run(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", noisy=("case1",))
    common = dict(size="test", steps=6, batch=2, save_every=2, bf16="off", loop=LoopConfig(rounds=2, cpcl_k=2))
    train(TrainConfig(str(data), str(tmp_path / "straight"), **common))
    train(TrainConfig(str(data), str(tmp_path / "resumed"), **common), stop_after=3)  # "killed" after step 3
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 3
    shutil.rmtree(tmp_path / "resumed" / "cache")  # nothing but the checkpoint is needed to continue
    # ...and batches do not depend on where they are prepared: the rest of the run uses two loader workers
    train(TrainConfig(str(data), str(tmp_path / "resumed"), workers=2, **common), resume=True)
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(sa["exp_avg"], sb["exp_avg"], atol=1e-6) and sa["step"] == sb["step"]
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def test_sigterm_to_the_whole_process_group_stops_cleanly_with_loader_workers(tmp_path):
    """A scheduler (or `pkill`, or Ctrl-C's terminal cousin) signals every process of the job, loader
    workers included: the run must still write its checkpoint and say how to resume, not crash."""
    import signal
    import time

    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "seganypet.cli", "train", "-d", str(data), "-o", str(out), "--size", "test",
               "--steps", "100000", "--batch", "1", "--rounds", "1", "--bf16", "off", "-j", "2"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first log line: training (and the loader workers) are running
    assert job.poll() is None, job.stderr.read()[-2000:]
    os.killpg(job.pid, signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr[-2000:]
    assert "stopped at step" in stderr and "--resume" in stderr, stderr[-2000:]
    assert 25 <= read_checkpoint(out / "last.pt")["step"] < 100000


def test_two_processes_with_gloo_end_with_identical_parameters(tmp_path):
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", noisy=("case1",))
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys, torch\n"
        "from seganypet.train import LoopConfig, TrainConfig\n"
        "from seganypet.train import trainer\n"
        "cfg = TrainConfig(sys.argv[1], sys.argv[2], size='test', steps=3, batch=1, save_every=100, bf16='off',\n"
        "                  loop=LoopConfig(rounds=2, cpcl_k=2))\n"
        "model = trainer.train(cfg).model\n"
        "torch.save(model.state_dict(), f\"{sys.argv[2]}/rank{os.environ['RANK']}.pt\")\n")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29533", str(script), str(data), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r0 = torch.load(tmp_path / "run" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "run" / "rank1.pt", weights_only=True)
    initial = build_model("test").state_dict()
    assert any(not torch.equal(r0[k], initial[k]) for k in r0)  # they trained
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key


def test_an_error_in_a_step_ends_a_run_with_loader_workers_instead_of_hanging(tmp_path):
    """The loader's workers ignore SIGTERM (the training process stops them), so a run that failed and left them to
    the interpreter's exit waited for them forever."""
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    script = tmp_path / "fail.py"
    script.write_text(
        "import sys\n"
        "from seganypet.train import LoopConfig, TrainConfig, trainer\n"
        "def fail(*args, **kwargs):\n"
        "    raise RuntimeError('a failing step')\n"
        "trainer.InteractiveLoss.forward = fail\n"
        "trainer.train(TrainConfig(sys.argv[1], sys.argv[2], size='test', steps=50, batch=1, bf16='off', workers=1,\n"
        "                          loop=LoopConfig(rounds=1)))\n")
    done = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "a failing step" in done.stderr


def test_left_out_classes_and_lesion_sites_are_not_trained_on_even_from_noisy_labels(tmp_path):
    """The unseen-target experiment: ``exclude`` drops an organ class and a lesion site. A noisy case's
    lesions are its label's components; they keep the site of the clean lesion they overlap."""
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", noisy=("case1",))
    add_lesion_sites(data, {"case0": "liver", "case1": "bone"})
    everything = TrainingData(data, tmp_path / "cache")
    assert {(t.case, t.name, t.site) for t in everything.targets} == {
        ("case0", "organ", None), ("case0", "lesion", "liver"), ("case1", "organ", None), ("case1", "lesion", "bone")}
    without = TrainingData(data, tmp_path / "cache", exclude=("organ", "bone"))
    assert [(t.case, t.name, t.site) for t in without.targets] == [("case0", "lesion", "liver")]


def test_organ_weights_draw_a_weighted_organ_in_proportion_and_leave_the_lesion_share_alone():
    def ref(name, kind="class"):
        return TargetRef("case0", kind, 1, name, ((0, 0, 0), (1, 1, 1)), 8)

    targets = [ref("aorta"), ref("liver"), ref("spleen"), ref("lesion", "instance")]
    rng = np.random.default_rng(0)
    plain = [choose_target(targets, rng, 0.4).name for _ in range(6000)]
    weighted = [choose_target(targets, rng, 0.4, {"aorta": 4.0}).name for _ in range(6000)]
    organs = [n for n in weighted if n != "lesion"]
    assert abs(plain.count("aorta") / (6000 - plain.count("lesion")) - 1 / 3) < 0.03
    assert abs(organs.count("aorta") / len(organs) - 4 / 6) < 0.03
    assert abs(weighted.count("lesion") / 6000 - 0.4) < 0.03


def test_suv_scale_multiplies_a_whole_crop_by_one_log_uniform_factor(tmp_path):
    """The intensity augmentation: the same draw with ``suv_scale`` 1 and 2 gives the same crop up to one factor
    per crop, spread log-uniformly over 1/2..2 (so a lesion's outline is taught at SUVs from half to twice its own)."""
    data = TrainingData(write_tiny_dataset(tmp_path / "Dataset001_Tiny"), tmp_path / "cache")
    config = build_model("test").config
    factors = []
    for seed in range(120):
        plain = sample_crop(data, config, np.random.default_rng(seed), suv_scale=1.0)
        scaled = sample_crop(data, config, np.random.default_rng(seed), suv_scale=2.0)
        assert np.array_equal(plain.target, scaled.target)
        ratio = scaled.suv[plain.suv > 0.5] / plain.suv[plain.suv > 0.5]
        assert np.ptp(ratio) < 1e-4 * ratio.mean()
        factors.append(float(ratio.mean()))
    logs = np.log2(factors)
    assert logs.min() >= -1 - 1e-6 and logs.max() <= 1 + 1e-6
    assert np.histogram(logs, bins=4, range=(-1, 1))[0].min() >= 15  # every quarter of the log range is drawn


def test_centre_clicks_put_the_first_click_where_people_click_deep_inside_the_target(tmp_path):
    """``centre_clicks``: the first click of a click-centred crop at the target's deepest voxel (within the
    crop's one-voxel jitter), as a person's first click and the evaluation's; without it, anywhere inside."""
    data = TrainingData(write_tiny_dataset(tmp_path / "Dataset001_Tiny"), tmp_path / "cache")
    config = build_model("test").config

    def shortfalls(centre_clicks):  # how much shallower (crop voxels) each first click lies than the target's deepest voxel
        out = []
        for seed in range(60):
            sample = sample_crop(data, config, np.random.default_rng(seed), click_centred=1.0, centre_clicks=centre_clicks)
            if sample.click is not None:
                depth = ndimage.distance_transform_edt(np.pad(sample.target, 1))[1:-1, 1:-1, 1:-1]
                out.append(depth.max() - depth[sample.click])
        return np.array(out)

    centre, anywhere = shortfalls(1.0), shortfalls(0.0)
    assert len(centre) >= 40 and len(anywhere) >= 40
    assert centre.max() <= 2.5
    assert np.mean(anywhere > 2.5) > 0.3


def write_tube_dataset(folder: Path) -> Path:
    """One case at 4 mm: a 30 cm tube along k (28 mm across, longer than the test model's 12.8 cm field) and a
    compact block."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    i, j, _ = np.meshgrid(*[np.arange(n) for n in (40, 40, 150)], indexing="ij")
    labels = np.zeros((40, 40, 150), np.uint8)
    labels[:, :, 20:95][((i - 20) ** 2 + (j - 20) ** 2 <= 3.5**2)[:, :, 20:95]] = 1
    labels[4:14, 26:36, 110:120] = 2
    suv = (1 + 3 * (labels > 0)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(suv, affine), folder / "imagesTr" / "case0_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "labelsTr" / "case0.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "tube": 1, "block": 2}, "numTraining": 1}))
    return folder


def test_tube_crops_are_the_session_window_stretched_along_the_tube_and_compact_organs_keep_cubes(tmp_path):
    """``tube_crops``: a tube's crop has the model's voxel across it and three times that along it (the window
    ``Session._lengthwise`` redraws a tube in), so it holds at least 1.5 times the length of the tube that a cube
    window of that voxel holds; its first click lies on the tube.
    A compact organ is framed as before, and without the option no crop is stretched."""
    data = TrainingData(write_tube_dataset(tmp_path / "Dataset001_Tube"), tmp_path / "cache")
    config = build_model("test").config

    def draws(tube_crops):
        return [sample_crop(data, config, np.random.default_rng(seed), lesion_fraction=0.0, tube_crops=tube_crops)
                for seed in range(60)]

    stretched, plain = draws(1.0), draws(0.0)
    for sample in stretched:
        step_mm = np.asarray(sample.crop.step) * 4.0
        if sample.name == "block":
            assert np.ptp(step_mm) < 1e-6
            continue
        assert step_mm[2] == pytest.approx(3 * step_mm[0]) and step_mm[0] == pytest.approx(step_mm[1])
        assert 0.87 * config.spacing_mm - 1e-6 <= step_mm[0] <= 1.15 * config.spacing_mm + 1e-6
        width = np.ptp(np.argwhere(sample.target)[:, 0]) + 1
        assert abs(width * step_mm[0] - 28) <= step_mm[0] + 1e-6  # the cross-section sampled at the model's voxel
        assert sample.target.any(axis=(0, 1)).sum() * step_mm[2] >= 1.5 * config.crop_size * step_mm[0] - step_mm[2]
        assert sample.click is not None and sample.target[sample.click]
    assert 15 <= sum(s.name == "tube" for s in stretched) <= 45
    assert all(np.ptp(np.asarray(s.crop.step)) < 1e-6 for s in plain)


def test_a_weight_for_an_organ_the_dataset_lacks_is_a_clear_error(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    cfg = TrainConfig(str(data), str(tmp_path / "run"), size="test", steps=1, organ_weights=(("spleen", 2.0),))
    with pytest.raises(SegAnyPetError, match="organ weight for spleen: no such organ label"):
        train(cfg)


def test_a_frozen_encoder_fine_tune_trains_the_prompt_encoder_and_decoder_alone_and_resumes(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", noisy=("case1",))
    loop = LoopConfig(rounds=2, cpcl_k=2)
    start = train(TrainConfig(str(data), str(tmp_path / "start"), size="test", steps=2, batch=2, bf16="off", loop=loop)).checkpoint
    common = dict(size="test", steps=4, batch=2, save_every=2, bf16="off", init=str(start), freeze_encoder=True, loop=loop)
    train(TrainConfig(str(data), str(tmp_path / "straight"), **common))
    train(TrainConfig(str(data), str(tmp_path / "resumed"), **common), stop_after=2)
    train(TrainConfig(str(data), str(tmp_path / "resumed"), **common), resume=True)
    initial = read_checkpoint(start)["model"]
    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(tmp_path / "resumed" / "last.pt")
    encoder = [k for k in initial if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(a["model"][k], initial[k].float()) for k in encoder)
    assert not torch.equal(a["model"]["mask_decoder.iou_head.layers.0.weight"], initial["mask_decoder.iou_head.layers.0.weight"].float())
    assert not torch.equal(a["model"]["mask_decoder.detail_embed.0.weight"], initial["mask_decoder.detail_embed.0.weight"].float())
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    unfrozen = {k: v for k, v in common.items() if k != "freeze_encoder"}
    with pytest.raises(SegAnyPetError, match="this run was started with freeze-encoder True: resume it with the same"):
        train(TrainConfig(str(data), str(tmp_path / "resumed"), **unfrozen), resume=True)
    with pytest.raises(SegAnyPetError, match="started with size test"):  # a larger model would not load its weights
        train(TrainConfig(str(data), str(tmp_path / "resumed"), **{**common, "size": "small"}), resume=True)
    with pytest.raises(SegAnyPetError, match="--freeze-encoder keeps the image encoder as --init gives it"):
        train(TrainConfig(str(data), str(tmp_path / "random"), size="test", steps=1, freeze_encoder=True))


def test_a_lone_click_trains_only_the_best_ambiguity_mask():
    """SAM's rule: of the masks answering a lone click only the best one's loss counts (the others stay free to
    be other answers), and the IoU head learns every mask's IoU. The hypernetworks shape only their own mask, so
    exactly one of them gets a gradient."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(PRESETS["test"], multimask=3))
    model.mask_decoder.seed_multimask(torch.Generator().manual_seed(0))
    crops, targets, _ = fixed_batch(model)
    loss, _ = InteractiveLoss(model, LoopConfig(rounds=1, box_probability=0.0))(crops[:1], targets[:1], torch.tensor([False]), seed=3, cpcl_weight=0.0)
    loss.backward()
    grads = [sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
             for net in model.mask_decoder.multimask_hypernetworks]
    assert sum(g > 0 for g in grads) == 1, grads
    assert model.mask_decoder.multimask_iou_head.layers[-1].weight.grad.abs().sum() > 0


def test_the_second_round_corrects_the_ambiguity_mask_the_iou_head_picks():
    """The session answers a lone click with the ambiguity mask its IoU head scores highest, and the next click
    corrects that answer; trained on its own first answer instead, the single mask never learns to correct it."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(PRESETS["test"], multimask=3))
    model.mask_decoder.seed_multimask(torch.Generator().manual_seed(0))
    crops, targets, _ = fixed_batch(model)
    calls, decode = [], model.decode

    def recorded(*args, **kwargs):
        out = decode(*args, **kwargs)
        calls.append((kwargs.get("multimask", False), kwargs.get("mask_input"), out))
        return out

    model.decode = recorded
    InteractiveLoss(model, LoopConfig(rounds=2, box_probability=0.0, cpcl=False))(crops[:2], targets[:2], torch.tensor([False, False]), seed=3, cpcl_weight=0.0)
    (single, _, (low, _)), (multi, _, (low_m, iou_m)), (_, fed, _) = calls
    assert not single and multi and low_m.shape[1] == 3
    picked = low_m.float()[torch.arange(2), iou_m.argmax(1)][:, None]
    assert torch.equal(fed, picked) and not torch.equal(fed, low.float())


def test_ambiguity_masks_trained_alone_leave_every_other_weight_as_init_gives_it(tmp_path):
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", noisy=("case1",))
    loop = LoopConfig(rounds=1, cpcl_k=2)
    start = train(TrainConfig(str(data), str(tmp_path / "start"), size="test", steps=2, batch=2, bf16="off", loop=loop)).checkpoint
    run = train(TrainConfig(str(data), str(tmp_path / "multi"), size="test", steps=3, batch=2, bf16="off", init=str(start),
                            multimask=2, multimask_only=True, lr=1e-3, warmup=1, loop=loop))
    initial, after = read_checkpoint(start)["model"], read_checkpoint(tmp_path / "multi" / "last.pt")["model"]
    assert all(torch.equal(after[k], initial[k].float()) for k in initial)
    seeded_from = "mask_decoder.hypernetwork.layers.0.weight"
    assert not torch.equal(after["mask_decoder.multimask_hypernetworks.0.layers.0.weight"], initial[seeded_from].float())
    assert load_model(run.checkpoint).config.multimask == 2
    with pytest.raises(SegAnyPetError, match="--multimask-only trains the ambiguity masks on a trained model"):
        train(TrainConfig(str(data), str(tmp_path / "random"), size="test", steps=1, multimask=2, multimask_only=True))


def test_a_pet_ct_dataset_is_read_from_its_pet_channel_never_its_ct(tmp_path):
    """Laid out as nnU-Net's own AutoPET conversion: CT in channel 0, SUV in channel 1, both named "CT". Which one is
    the PET must be stated, and then training and evaluation both read it (the CT, read as SUV, would be refused)."""
    data = write_tiny_dataset(tmp_path / "petct")
    for pet in sorted((data / "imagesTr").glob("*_0000.nii.gz")):
        image = nib.load(pet)
        ct = np.where(np.asarray(image.dataobj) > 0.5, 40.0, -1000.0).astype(np.float32)  # HU: soft tissue, air
        pet.rename(pet.with_name(pet.name.replace("_0000", "_0001")))
        nib.save(nib.Nifti1Image(ct, image.affine), pet)
    meta = json.loads((data / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "CT"}
    (data / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegAnyPetError, match="pet_channel"):
        list_cases(data)
    for stated in ({"seganypet": {**meta["seganypet"], "pet_channel": 1}}, {"channel_names": {"0": "CT", "1": "PET"}}):
        (data / "dataset.json").write_text(json.dumps({**meta, **stated}))
        assert list_cases(data) == ["case0", "case1"]
        written = read_dataset_json(data)
        image, labels, _, _ = read_case(data, "case0", "Tr", written, label_names(written))
        assert image.source.name == "case0_0001.nii.gz" and image.array[labels == 2].mean() > 7
        training = TrainingData(data, tmp_path / f"cache{len(stated)}")
        assert training.arrays("case1").suv.max() > 7
    with pytest.raises(SegAnyPetError, match="as CT does in HU"):
        read_pet(data / "imagesTr" / "case0_0000.nii.gz")


def test_options_out_of_range_are_refused_together_before_anything_is_written(tmp_path):
    """An empty batch or a negative learning rate would stop torch minutes in, with a traceback."""
    data = write_tiny_dataset(tmp_path / "data")
    cfg = TrainConfig(str(data), str(tmp_path / "run"), size="test", steps=0, batch=0, lr=-1e-3, lesion_fraction=1.5,
                      cpcl_start=-1, tube_crops=2.0, loop=LoopConfig(cpcl_k=1))
    with pytest.raises(SegAnyPetError) as info:
        train(cfg)
    for named in ("--steps 0", "--batch 0", "--lr -0.001", "--lesion-fraction 1.5", "--cpcl-start -1", "--tube-crops 2", "--cpcl-k 1"):
        assert named in str(info.value)
    assert not (tmp_path / "run").exists()


def test_the_ambiguity_iou_head_reads_each_mask_own_inside_and_edge():
    """SAM's IoU token alone ranked a lesion's masks at chance, so the head also reads, per mask, the features
    inside it and on a shell around it and its size: mask k's inputs must come from mask k."""
    from seganypet.modeling.mask_decoder import mask_quality_inputs

    g, c = 8, 4
    features = torch.zeros(1, c, g, g, g)
    features[0, 0, 2:4, 2:4, 2:4] = 1.0  # channel 0 marks a 2x2x2 cube
    masks = torch.full((1, 2, g, g, g), -20.0)
    masks[0, 0, 2:4, 2:4, 2:4] = 20.0  # mask 0 is that cube, mask 1 empty
    token = torch.randn(1, 16)
    inputs = mask_quality_inputs(token, masks, features)
    assert inputs.shape == (1, 2, 16 + 2 + 3 * c + 1)
    assert torch.equal(inputs[0, 0, :16], token[0]) and torch.equal(inputs[0, 1, :16], token[0])
    assert inputs[0, 0, 16:18].tolist() == [1.0, 0.0] and inputs[0, 1, 16:18].tolist() == [0.0, 1.0]
    within, around = inputs[0, 0, 18:18 + c], inputs[0, 0, 18 + c:18 + 2 * c]
    assert within[0] == pytest.approx(1.0, abs=1e-6) and around[0] == pytest.approx(0.0, abs=1e-6)
    assert inputs[0, 0, -1] == pytest.approx(np.log1p(8.0), abs=1e-4) and inputs[0, 1, -1] == pytest.approx(0.0, abs=1e-4)
    model = build_model(dataclasses.replace(PRESETS["test"], multimask=3))
    crops, _, _ = fixed_batch(model)
    _, iou = model.decode(model.embed(crops[:1]), points=torch.tensor([[[15.0, 17.0, 14.0]]]), labels=torch.ones(1, 1),
                          multimask=True)
    assert iou.shape == (1, 3) and bool(((iou > 0) & (iou < 1)).all())


def test_an_ambiguity_masks_iou_is_scored_on_what_the_session_keeps_of_it():
    """The head learns the IoU of the answer the session would paste back: the part holding the click, and of it
    only what lies inside the scan (a window past the edge answers there too, and nothing of that is kept)."""
    truth = np.zeros((8, 8, 8), bool)
    truth[2:5, 2:5, 2:5] = True
    low = np.full((8, 8, 8), -1.0)
    low[2:5, 2:5, 2:8] = 1.0  # the target, going on past the scan's edge at k = 5
    low[6:8, 6:8, 0:2] = 1.0  # a stray part elsewhere
    inside = np.ones_like(truth)
    inside[..., 5:] = False
    assert prompted_iou(low, truth, np.array([3, 3, 3]), inside) == 1.0
    assert prompted_iou(low, truth, np.array([3, 3, 3]), np.ones_like(truth)) == 27 / 54
    assert prompted_iou(low, truth, np.array([0, 0, 7]), inside) == 27 / 35  # no part at the click: all of it


def test_fit_head_learns_an_iou_from_inputs_of_any_scale_and_folds_the_scaling_into_the_head():
    """An input 1000x larger than the rest carries the IoU: the fitted head predicts it from the raw inputs, since
    the standardisation it was fitted with lives in its first layer."""
    from seganypet.modeling.common import MLP
    from seganypet.train.iou_head import fit_head

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(600, 3, 5)).astype(np.float32)
    inputs[..., 2] *= 1000.0
    ious = 1 / (1 + np.exp(-inputs[..., 2] / 1000.0)).astype(np.float32)
    head = MLP(5, 32, 1, 3, sigmoid_output=True)
    fit_head(head, inputs, ious, epochs=60, seed=0)
    with torch.no_grad():
        predicted = head(torch.from_numpy(inputs))[..., 0].numpy()
    assert np.abs(predicted - ious).mean() < 0.03


def test_fit_iou_head_fits_only_the_head_reports_held_out_cases_and_reuses_its_cache(tmp_path, monkeypatch):
    from seganypet.train import iou_head

    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", cases=6)
    loop = LoopConfig(rounds=1, cpcl_k=2)
    start = train(TrainConfig(str(data), str(tmp_path / "start"), size="test", steps=2, batch=2, bf16="off", loop=loop)).checkpoint
    multi = train(TrainConfig(str(data), str(tmp_path / "multi"), size="test", steps=2, batch=2, bf16="off", init=str(start),
                              multimask=2, multimask_only=True, lr=1e-3, warmup=1, loop=loop)).checkpoint
    fitted = iou_head.fit_iou_head(data, multi, tmp_path / "fit", epochs=5)
    before, after = read_checkpoint(multi)["model"], read_checkpoint(fitted)["model"]
    head = "mask_decoder.multimask_iou_head."
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith(head))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(head))
    report = json.loads((tmp_path / "fit" / "iou_head.json").read_text())
    assert report["held_out_cases"] == ["case0"] and report["after"]["n"] > 0
    assert 0.0 <= report["after"]["picked_iou"] <= report["after"]["best_iou"] <= 1.0
    assert load_model(fitted).config.multimask == 2
    # a second run (a stopped one resumed) reads the cached first clicks instead of decoding them again
    monkeypatch.setattr(iou_head, "case_samples", lambda *a, **k: pytest.fail("decoded a cached case again"))
    iou_head.fit_iou_head(data, multi, tmp_path / "fit", epochs=1)
    with pytest.raises(SegAnyPetError, match="no ambiguity masks"):
        iou_head.fit_iou_head(data, start, tmp_path / "nomm")
    # a held-out case with nothing labelled leaves nothing to report on: one clear error, not numpy's
    monkeypatch.undo()
    label = data / "labelsTr" / "case0.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(nib.load(label).shape, np.uint8), nib.load(label).affine), label)
    with pytest.raises(SegAnyPetError, match="no labelled targets in the held-out cases"):
        iou_head.fit_iou_head(data, multi, tmp_path / "unlabelled", epochs=1)


def test_a_dataset_in_another_voxel_order_trains_on_the_same_crops(tmp_path):
    """Training reads each case in the axes the session answers in (``io.Reorientation``), so a dataset written by
    dcm2niix (j to the front) or slices-first trains the model exactly as one in DICOM's order does."""
    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny")
    turned = tmp_path / "Dataset002_Turned"
    shutil.copytree(data, turned)
    for path in turned.rglob("*.nii.gz"):
        img = nib.load(path)
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                               nib.orientations.axcodes2ornt(("S", "A", "L")))
        nib.save(img.as_reoriented(ornt), path)
    assert nib.aff2axcodes(nib.load(turned / "labelsTr" / "case0.nii.gz").affine) == ("S", "A", "L")
    original, other = TrainingData(data, tmp_path / "cache1"), TrainingData(turned, tmp_path / "cache2")
    assert [t.__dict__ for t in original.targets] == [t.__dict__ for t in other.targets]
    for seed in range(8):
        a, b = (sample_crop(d, PRESETS["test"], np.random.default_rng(seed)) for d in (original, other))
        assert np.array_equal(a.suv, b.suv) and np.array_equal(a.target, b.target) and a.click == b.click, seed
