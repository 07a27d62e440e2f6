"""``python -m planner`` is the same as the ``plan`` command."""

from planner.cli import entry

entry()
