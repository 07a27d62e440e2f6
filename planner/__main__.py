"""``python -m planner`` is the same as the ``plan`` command."""

from planner.app.cli import entry

entry()
