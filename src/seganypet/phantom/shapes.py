"""Shape primitives painted into a voxel grid, each evaluated only inside its bounding box.

Coordinates are millimetres in patient LPS (x to the patient's left, y to the
back, z to the head); the grid is axis-aligned with voxel centres at
``origin + index * spacing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering the mm box [lo, hi], or None if it misses the grid."""
        o, s = np.asarray(self.origin), np.asarray(self.spacing)
        a = np.maximum(np.floor((lo - o) / s).astype(int), 0)
        b = np.minimum(np.ceil((hi - o) / s).astype(int) + 1, self.shape)
        if np.any(b <= a):
            return None
        return tuple(slice(int(i), int(j)) for i, j in zip(a, b))  # type: ignore[return-value]

    def points(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """(X, Y, Z, 3) mm coordinates of the voxel centres in ``box``."""
        axes = [self.origin[d] + self.spacing[d] * np.arange(box[d].start, box[d].stop) for d in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def random_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A rotation by at most ``max_angle`` radians about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@dataclass
class Blob:
    """An ellipsoid whose surface is bent by a few smooth harmonics, so no two organs are plain ellipsoids."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    wobble: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (frequency, phase, amplitude)

    @classmethod
    def random(cls, rng: np.random.Generator, center, radii, tilt: float = 0.25, bumps: float = 0.12) -> Blob:
        wobble = [(rng.normal(size=3) * rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0) * bumps)
                  for _ in range(3)]
        return cls(np.asarray(center, float), np.asarray(radii, float), random_rotation(rng, tilt), wobble)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.radii.max() * (1.0 + sum(abs(a) for _, _, a in self.wobble)) + 1.0
        return self.center - reach, self.center + reach

    def level(self, points: np.ndarray) -> np.ndarray:
        """< 1 inside; a smooth 'radius' in units of the ellipsoid."""
        local = (points - self.center) @ self.rotation / self.radii
        r = np.linalg.norm(local, axis=-1)
        unit = local / np.maximum(r[..., None], 1e-9)
        bend = sum(a * np.sin(unit @ f + p) for f, p, a in self.wobble) if self.wobble else 0.0
        return r / (1.0 + bend)


@dataclass
class Tube:
    """A tube of radius ``radius`` mm around a polyline (vessels, ureters, bowel, limbs)."""

    path: np.ndarray  # (N, 3)
    radius: float

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        return self.path.min(0) - self.radius - 1.0, self.path.max(0) + self.radius + 1.0

    def level(self, points: np.ndarray) -> np.ndarray:
        flat = points.reshape(-1, 3)
        best = np.full(len(flat), np.inf)
        for a, b in zip(self.path[:-1], self.path[1:]):
            ab = b - a
            t = np.clip((flat - a) @ ab / max(ab @ ab, 1e-9), 0.0, 1.0)
            best = np.minimum(best, np.linalg.norm(flat - (a + t[:, None] * ab), axis=1))
        return (best / self.radius).reshape(points.shape[:-1])


def paint(grid: Grid, shape: Blob | Tube, target: np.ndarray, value, inside: float = 1.0, where=None) -> int:
    """Set ``target`` to ``value`` where ``shape.level < inside`` and ``where(box_values)`` holds; return the voxel count.

    where: optional callable on the target's current values in the box, e.g. to paint
    only over background or only inside one organ.
    """
    box = grid.box(*shape.extent())
    if box is None:
        return 0
    mask = shape.level(grid.points(box)) < inside
    if where is not None:
        mask &= where(target[box])
    target[box][mask] = value
    return int(mask.sum())
