"""Errors a user can fix: the CLI prints them as one line, without a traceback.

The classes live in the standalone trainer package (`acemodel.errors`, the lower layer) so that
one `except UserError` covers the data platform and the trainer alike.
"""

from __future__ import annotations

from acemodel.errors import ModelNotFound, UserError

__all__ = ["ModelNotFound", "UserError"]
