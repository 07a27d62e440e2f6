"""The CLI's own error type. Every user-input error in tuneplan derives from
:class:`profiles.errors.InputError` (profiles, setups, searches, calibration files, validation specs, output
folders) and carries a one-line message naming the bad value and what would be valid; the CLI
(:func:`planner.app.cli.main`) is the one place that turns them into ``error: ...`` and exit code 2.
"""

from __future__ import annotations

from profiles.errors import InputError


class CliError(InputError):
    """A bad flag value or combination found by a command (one line)."""
