"""Shared test helpers (imported as ``tests.helpers``)."""

from __future__ import annotations

from planner.app.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the ``plan`` CLI in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
