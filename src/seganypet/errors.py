"""The one exception type users see.

Every failure caused by the user's input (a file, a prompt, an option) raises
:class:`SegAnyPetError` with the file and the problem in one sentence, so the
CLI can print it as one line and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class SegAnyPetError(Exception):
    """A problem with the user's input, phrased so the user can act on it."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
