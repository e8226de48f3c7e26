"""Points where the compiled loops let other threads of the process run (``connectors.let_go`` says why)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

# How many events parsed or applied and wake-ups handled between two calls (``Shard.let_go``).
LET_GO_EVERY: Final = 128


class LetGo:
    """Calls ``fn`` (an interpreted function: a call into the interpreter hands the GIL to a thread that asked for
    it, compiled loops never do) once every ``every`` calls of ``count``."""

    def __init__(self, fn: Callable[[], None], every: int = LET_GO_EVERY) -> None:
        self.fn = fn
        self.every = every
        self.left = every

    def count(self) -> None:
        """One more event or wake-up."""
        self.left -= 1
        if self.left <= 0:
            self.left = self.every
            self.fn()
