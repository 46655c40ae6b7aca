"""The model's parts: shapes per named size, prompt positions, checkpoints, bf16 vs fp32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from seganypet.errors import SegAnyPetError
from seganypet.modeling import (
    PRESETS,
    build_model,
    load_model,
    normalise_suv,
    save_checkpoint,
    set_precision,
)


@pytest.mark.parametrize("size", list(PRESETS))
def test_output_shapes_for_every_size(size):
    torch.manual_seed(0)
    model = build_model(size).eval()
    cfg, s = model.config, model.crop_size
    grid = cfg.crop_size // cfg.patch_size
    with torch.inference_mode():
        emb = model.embed(torch.rand(2, 1, s, s, s))
        assert emb.features.shape == (2, cfg.embed_dim, grid, grid, grid)
        points = torch.tensor([[[s / 2, s / 3, s / 4], [1.0, 2.0, 3.0]]] * 2)
        labels = torch.tensor([[1, 0]] * 2)
        low, iou = model.decode(emb, points, labels)
        assert low.shape == (2, 1, 4 * grid, 4 * grid, 4 * grid) and iou.shape == (2, 1)
        box = torch.tensor([[[2.0, 2, 2], [s - 3.0, s - 3, s - 3]]] * 2)
        low, iou = model.decode(emb, boxes=box, mask_input=low)
        assert low.shape == (2, 1, 4 * grid, 4 * grid, 4 * grid) and iou.shape == (2, 1)
        assert model.upsample(low).shape == (2, 1, s, s, s)


def test_ambiguity_masks_added_to_a_trained_model_leave_its_single_mask_as_it_was(tmp_path):
    """The ambiguity masks decode in a pass of their own, so a checkpoint fine-tuned to add them answers every prompt
    that uses the single mask bit for bit as before; seeded from the single mask, they start alike."""
    torch.manual_seed(0)
    plain = build_model("test").eval()
    multi = build_model(dataclasses.replace(PRESETS["test"], multimask=3)).eval()
    missing, unexpected = multi.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("mask_decoder.multimask") for k in missing) and not unexpected
    multi.mask_decoder.seed_multimask(torch.Generator().manual_seed(0))
    save_checkpoint(multi, tmp_path / "multi.pt")
    loaded = load_model(tmp_path / "multi.pt", precision="fp32")
    assert loaded.config.multimask == 3
    s = plain.crop_size
    points, labels = torch.tensor([[[s / 2, s / 3, s / 4]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.inference_mode():
        crop = torch.rand(1, 1, s, s, s)
        single, single_iou = plain.decode(plain.embed(crop), points, labels)
        again, again_iou = loaded.decode(loaded.embed(crop), points, labels)
        masks, ious = loaded.decode(loaded.embed(crop), points, labels, multimask=True)
        with pytest.raises(ValueError, match="no ambiguity masks"):
            plain.decode(plain.embed(crop), points, labels, multimask=True)
    assert torch.equal(single, again) and torch.equal(single_iou, again_iou)
    assert masks.shape == (1, 3, *single.shape[2:]) and ious.shape == (1, 3)
    assert bool(((ious > 0) & (ious < 1)).all())  # an IoU each, from the head that reads each mask
    assert not torch.equal(masks[:, 1], masks[:, 2])  # their tokens nudged apart


def test_small_size_is_in_the_cpu_budget_of_parameters():
    n = sum(p.numel() for p in build_model("small").parameters())
    assert 9e6 <= n <= 25e6


def test_point_encoding_matches_the_dense_grid_at_that_voxel():
    """A click at the centre of token cell (a, b, c) is encoded exactly as the dense positional grid at (a, b, c):
    the prompt and the image share one (i, j, k) frame, with no axis swapped or flipped."""
    model = build_model("test")
    pe, cfg = model.prompt_encoder, model.config
    p = cfg.patch_size
    grid = pe.get_dense_pe()[0]
    for cell in [(0, 1, 2), (3, 0, 1), (2, 3, 3)]:
        voxel = torch.tensor([(c + 0.5) * p - 0.5 for c in cell])  # crop voxel at the cell's centre
        encoded = pe.pe_layer.encode((voxel + 0.5) / cfg.crop_size)
        assert torch.allclose(encoded, grid[:, cell[0], cell[1], cell[2]], atol=1e-5)
        other = grid[:, cell[2], cell[1], cell[0]]
        assert not torch.allclose(encoded, other, atol=1e-3)


def test_patch_embedding_is_a_strided_convolution():
    """The reshape + Linear patch embedding must equal Conv3d(kernel = stride = patch) with the same weights,
    so that token n covers the voxels we think it does."""
    model = build_model("test")
    enc, p = model.image_encoder, model.config.patch_size
    x = torch.rand(1, 1, 32, 32, 32)
    conv = torch.nn.functional.conv3d(x, enc.patch_embed.weight.view(-1, 1, p, p, p), enc.patch_embed.bias, stride=p)
    linear = enc.patch_embed(enc.patchify(x)).transpose(1, 2).reshape(conv.shape)
    assert torch.allclose(conv, linear, atol=1e-5)


def test_checkpoint_round_trip_keeps_config_and_outputs(tmp_path):
    torch.manual_seed(1)
    model = build_model("test").eval()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    loaded = load_model(path, precision="fp32")
    assert loaded.config == model.config
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.inference_mode():
        a = model.decode(model.embed(x), torch.tensor([[[5.0, 6, 7]]]), torch.tensor([[1]]))[0]
        b = loaded.decode(loaded.embed(x), torch.tensor([[[5.0, 6, 7]]]), torch.tensor([[1]]))[0]
    assert torch.equal(a, b)


def test_bad_checkpoints_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(SegAnyPetError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SegAnyPetError, match="not a readable"):
        load_model(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(SegAnyPetError, match="no config"):
        load_model(tmp_path / "other.pt")


def test_bf16_encoder_gives_the_same_mask_as_fp32():
    """bf16 encoder weights (the AMX fast path) change the mask on < 2 % of the voxels near the predicted object
    and keep the logits within 5 % of their spread. The input is a smooth blob, as a PET crop is."""
    torch.manual_seed(0)
    model = build_model("small").eval()
    s = model.crop_size
    grid = np.stack(np.meshgrid(*[np.arange(s)] * 3, indexing="ij"), -1)
    blob = 1 + 8 * np.exp(-((grid - [30, 34, 28]) ** 2).sum(-1) / (2 * 6.0**2))
    x = torch.from_numpy(normalise_suv(blob.astype(np.float32)))[None, None]
    prompts = dict(points=torch.tensor([[[30.0, 34, 28]]]), labels=torch.tensor([[1]]))
    with torch.inference_mode():
        set_precision(model, "fp32")
        ref = model.upsample(model.decode(model.embed(x), **prompts)[0])
        set_precision(model, "bf16")
        assert model.image_encoder.patch_embed.weight.dtype == torch.bfloat16
        low = model.upsample(model.decode(model.embed(x), **prompts)[0])
    assert (low - ref).abs().max() <= 0.05 * (ref.max() - ref.min())
    assert ((low > 0) != (ref > 0)).float().mean() < 0.02
