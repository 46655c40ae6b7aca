"""Every method behind one interactive interface, so the harness gives them the same clicks."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from seganypet.baselines import METHODS, segment_classical
from seganypet.errors import SegAnyPetError
from seganypet.io.image import PetImage
from seganypet.prompts import Prompts


class Segmenter(Protocol):
    name: str

    def set_image(self, image: PetImage) -> None: ...
    def new_target(self) -> None: ...
    def add_point(self, voxel, positive: bool) -> np.ndarray: ...
    def add_box(self, lo, hi) -> np.ndarray: ...


class ModelSegmenter:
    """The promptable model through the session (embedding cached, previous mask fed back)."""

    def __init__(self, checkpoint=None, device: str = "cpu", precision: str = "auto") -> None:
        from seganypet.infer import Session
        from seganypet.modeling import load_model

        self.session = Session(load_model(checkpoint, device=device, precision=precision))
        self.name = "model"

    def set_image(self, image: PetImage) -> None:
        self.session.set_image(image)

    def new_target(self) -> None:
        self.session.new_target()

    def add_point(self, voxel, positive: bool) -> np.ndarray:
        self.session.add_point(voxel, positive=positive)
        return self.session.mask

    def add_box(self, lo, hi) -> np.ndarray:
        self.session.add_box(lo, hi)
        return self.session.mask


class ClassicalSegmenter:
    """A classical method re-run on all prompts so far (they have no state to carry)."""

    def __init__(self, method: str) -> None:
        if method not in METHODS:
            raise SegAnyPetError(f"unknown method {method!r}; choose model or one of {', '.join(METHODS)}")
        self.name = method
        self.image: PetImage | None = None
        self.prompts = Prompts()

    def set_image(self, image: PetImage) -> None:
        self.image = image
        self.new_target()

    def new_target(self) -> None:
        self.prompts = Prompts()

    def _run(self) -> np.ndarray:
        if not self.prompts:
            return np.zeros(self.image.shape, bool)
        return segment_classical(self.image, self.prompts, self.name)

    def add_point(self, voxel, positive: bool) -> np.ndarray:
        (self.prompts.positive if positive else self.prompts.negative).append(tuple(int(v) for v in voxel))
        return self._run()

    def add_box(self, lo, hi) -> np.ndarray:
        self.prompts.box = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
        return self._run()


def make_segmenter(method: str, checkpoint=None, device: str = "cpu") -> Segmenter:
    return ModelSegmenter(checkpoint, device) if method == "model" else ClassicalSegmenter(method)
