"""Errors the CLI prints as one line with exit code 2.

Every user-input error in the project derives from ``ValueError`` and carries a one-line message that names
the bad value and what would be valid. :data:`UserError` is the tuple the CLI catches.
"""

from __future__ import annotations

from profiles.errors import ProfileError
from planner.engine.setup import SetupError


class CliError(ValueError):
    """A bad flag value or combination found by a command (one line)."""


UserError = (ProfileError, SetupError, CliError)
