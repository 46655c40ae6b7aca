"""Progress bars for long work, quiet when the user asked for quiet."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr; silent below INFO logging (``-q``)."""
    quiet = not logging.getLogger("seganypet").isEnabledFor(logging.INFO)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True, disable=quiet) as progress:
        yield from progress.track(items, total=total, description=description)


def track_map(fn: Callable[..., T], items: Iterable, description: str, workers: int = 1) -> list[T]:
    """``[fn(item) for item in items]`` with a progress bar, in ``workers`` processes when more than one
    (``fn`` and the items must pickle); for jobs that each depend on their item alone, so the result
    does not depend on ``workers``."""
    items = list(items)
    parallel = workers > 1 and len(items) > 1
    with ProcessPoolExecutor(min(workers, len(items))) if parallel else nullcontext() as pool:
        results = pool.map(fn, items) if pool else map(fn, items)
        return list(track(results, description, total=len(items)))


class _TrainingBar:
    def __init__(self, progress: Progress | None, task) -> None:
        self.progress, self.task = progress, task

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, rate=samples_per_s)


@contextmanager
def training_bar(total: int, start: int = 0, enabled: bool = True) -> Iterator[_TrainingBar]:
    """A bar with the loss and samples/s; silent on other ranks and below INFO logging."""
    quiet = not enabled or not logging.getLogger("seganypet").isEnabledFor(logging.INFO)
    if quiet:
        yield _TrainingBar(None, None)
        return
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
               TextColumn("{task.fields[rate]:.1f} samples/s"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        yield _TrainingBar(progress, progress.add_task("training", total=total, completed=start, loss=float("nan"), rate=0.0))
