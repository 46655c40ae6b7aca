"""The SegAnyPET model, one part per file (as segment-anything's ``modeling``)."""

from seganypet.modeling.build import (
    PRESETS,
    ModelConfig,
    bf16_is_fast,
    build_base,
    build_model,
    build_small,
    build_test,
    default_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    set_precision,
)
from seganypet.modeling.sam import ImageEmbedding, SegAnyPet, normalise_suv

__all__ = ["PRESETS", "ImageEmbedding", "ModelConfig", "SegAnyPet", "bf16_is_fast", "build_base", "build_model",
           "build_small", "build_test", "default_checkpoint", "load_model", "normalise_suv", "read_checkpoint", "save_checkpoint",
           "set_precision"]
