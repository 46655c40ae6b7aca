"""Named model sizes, the one builder, and checkpoint I/O.

A size is data (a frozen `ModelConfig`); a checkpoint stores its config, so
``load_model(path)`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from seganypet.errors import SegAnyPetError
from seganypet.modeling.image_encoder import ImageEncoderViT3D
from seganypet.modeling.mask_decoder import MaskDecoder3D
from seganypet.modeling.prompt_encoder import PromptEncoder3D
from seganypet.modeling.sam import SegAnyPet

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ModelConfig:
    name: str
    crop_size: int  # voxels per side of the cubic input crop
    spacing_mm: float  # isotropic voxel size the crop is resampled to
    patch_size: int
    encoder_width: int
    encoder_depth: int
    encoder_heads: int
    embed_dim: int  # image embedding / prompt / decoder width
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    # the finest crop, as a fraction of spacing_mm, the model was trained at: the session segments a target
    # there while it fits. 1.0 in checkpoints from before zoomed-in training, which never saw a finer crop.
    min_zoom: float = 1.0
    # SAM's ambiguity masks for a lone click, beside the single mask (0: none; checkpoints from before them)
    multimask: int = 0

    @property
    def field_of_view_mm(self) -> float:
        return self.crop_size * self.spacing_mm


PRESETS: dict[str, ModelConfig] = {
    # a few hundred k parameters: forward and backward in well under a second, for tests
    "test": ModelConfig("test", crop_size=32, spacing_mm=4.0, patch_size=8, encoder_width=64, encoder_depth=2,
                        encoder_heads=2, embed_dim=32, decoder_heads=2, decoder_mlp=128),
    # the CPU model: 64^3 at 3 mm (a 19 cm field, SAM-Med3D's 128^3 x 1.5 mm) with an 8^3 token grid;
    # crops from 1 mm (a 6 cm field, where a 1 cm lesion spans 10 voxels) to 12 mm (min_zoom to the session's max_zoom)
    "small": ModelConfig("small", crop_size=64, spacing_mm=3.0, patch_size=8, encoder_width=256, encoder_depth=6,
                         encoder_heads=4, embed_dim=256, decoder_mlp=1024, min_zoom=1 / 3),
    # the paper's size (SAM-Med3D ViT-B at 128^3, patch 16, neck to 384), for GPUs
    "base": ModelConfig("base", crop_size=128, spacing_mm=1.5, patch_size=16, encoder_width=768, encoder_depth=12,
                        encoder_heads=12, embed_dim=384, min_zoom=2 / 3),
}


def _build(config: ModelConfig) -> SegAnyPet:
    grid = config.crop_size // config.patch_size
    return SegAnyPet(
        image_encoder=ImageEncoderViT3D(config.crop_size, config.patch_size, config.encoder_width, config.encoder_depth,
                                        config.encoder_heads, config.embed_dim),
        prompt_encoder=PromptEncoder3D(config.embed_dim, grid, config.crop_size),
        mask_decoder=MaskDecoder3D(config.embed_dim, config.decoder_depth, config.decoder_heads, config.decoder_mlp,
                                   config.multimask),
        crop_size=config.crop_size,
    )


def build_model(size: str | ModelConfig = "small") -> SegAnyPet:
    """A model with random weights; ``size`` is a preset name or a config."""
    config = PRESETS[size] if isinstance(size, str) else size
    model = _build(config)
    model.config = config
    return model


def build_test() -> SegAnyPet:
    return build_model("test")


def build_small() -> SegAnyPet:
    return build_model("small")


def build_base() -> SegAnyPet:
    return build_model("base")


def save_checkpoint(model: SegAnyPet, path: str | Path, extra: dict | None = None, half: bool = False) -> None:
    """Weights + config (+ anything in ``extra``: training state, provenance), written atomically.

    ``half``: store the weights in fp16 (the shipped file is half the size; `load_model` casts back to fp32)."""
    from seganypet.io.write import atomic_path

    dtype = torch.float16 if half else torch.float32
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(model.config), "model": weights, **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SegAnyPetError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise SegAnyPetError(f"not a readable seganypet checkpoint ({type(err).__name__})", path) from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise SegAnyPetError("not a seganypet checkpoint (no config/model entries)", path)
    return payload


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu", precision: str = "auto") -> SegAnyPet:
    """The model from a checkpoint (default: the one shipped in the package), in eval mode.

    ``precision``: "fp32", "bf16" (the encoder's weights in bf16) or "auto" (bf16 where the CPU has
    AMX/avx512_bf16 or the GPU supports it; measured 1.6-2.6x faster for the encoder on AMX).
    """
    payload = read_checkpoint(path or default_checkpoint())
    config = ModelConfig(**payload["config"])
    model = build_model(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise SegAnyPetError(f"checkpoint weights do not match its config: {str(err).splitlines()[0]}", path) from None
    model.to(device).eval()
    return set_precision(model, precision)


def set_precision(model: SegAnyPet, precision: str = "auto") -> SegAnyPet:
    """bf16 weights for the image encoder only: the decoder gains nothing from bf16 (17 vs 18 ms) and keeps fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise SegAnyPetError(f"precision {precision!r} is not one of auto, fp32, bf16")
    device = next(model.parameters()).device
    use = precision == "bf16" or (precision == "auto" and bf16_is_fast(device))
    model.image_encoder.to(torch.bfloat16 if use else torch.float32)
    return model


@functools.cache
def _cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls run on dedicated units; elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16_units()


def default_checkpoint() -> Path:
    """The small checkpoint shipped inside the package."""
    path = Path(str(resources.files("seganypet") / "weights" / "seganypet_small.pt"))
    if not path.is_file():
        raise SegAnyPetError("no checkpoint shipped in this installation; pass --checkpoint", path)
    return path
