"""Errors a user can fix (bad config, missing weights or data): callers print them as one line.

acemodel stands alone, so it owns these; the data platform's CLI re-exports the same classes,
which is why its one-line error handling also covers the trainer.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input, config or environment, with what is wrong and how to fix it."""


class ModelNotFound(UserError):
    """Model weights that are not on this machine (nothing is ever downloaded)."""

    def __init__(self, model: str, looked: list[str] | str, hint: str = "") -> None:
        where = ", ".join(looked) if isinstance(looked, list) else looked
        msg = f"model {model!r} not found (looked in: {where})"
        super().__init__(msg + (f"; {hint}" if hint else ""))
        self.model = model
