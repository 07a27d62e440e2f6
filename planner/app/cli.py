"""The ``plan`` command line: a thin layer over the engine.

``plan --model M --gpus G`` (no subcommand) runs the plan search. Subcommands live one per module in
:mod:`planner.app.commands`; each module defines ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> int``. This is the only place that turns a domain error into an exit code: one line on
stderr, exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from profiles.errors import InputError

SUBCOMMANDS: dict[str, str] = {
    "estimate": "planner.app.commands.estimate",
    "capacity": "planner.app.commands.capacity",
    "configs": "planner.app.commands.configs",
    "profiles": "planner.app.commands.profiles",
    "trace": "planner.app.commands.trace",
    "validate": "planner.app.commands.validate",
    "calibrate": "planner.app.commands.calibrate",
    "data": "planner.app.commands.data",
    "select": "planner.app.commands.select",
}
SUMMARIES: dict[str, str] = {
    "estimate": "every byte and second of one explicit setup (--json for scripts)",
    "capacity": "what fits where: longest sequence, largest micro-batch, fewest GPUs; reports with figures",
    "configs": "write DeepSpeed / accelerate / LLaMA-Factory / torchtune configs and launch.sh for a plan",
    "profiles": "list and show model and GPU profiles",
    "trace": "exact tensor memory of the real model code under FakeTensorMode (no GPU needed)",
    "validate": "train the plan for a few steps on the device and compare with the estimate",
    "calibrate": "fit overhead, allocator factor and efficiency from validation runs",
    "data": "token counts, lengths, truncation, padding and packing of your training file",
    "select": "rank the catalogue's base models for your language, licence, GPUs and method",
}
SEARCH_MODULE = "planner.app.commands.search"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``plan estimate: error: ...``) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _top_help() -> str:
    lines = [
        "usage: plan --model MODEL --gpus GPUS [search flags]   rank the training plans that fit",
        "       plan COMMAND ...                                 see plan COMMAND --help",
        "",
        "commands:",
    ]
    for name in SUBCOMMANDS:
        lines.append(f"  {name:<10} {SUMMARIES[name]}")
    lines += [
        "",
        "examples:",
        "  plan --model llama3-8b --gpus 8xA800",
        "  plan estimate --model qwen2.5-7b --gpus 4090 --method qlora --checkpointing full",
        "  plan profiles models",
        "",
        "search flags: plan --help-search      version: plan --version",
    ]
    return "\n".join(lines)


def build_parser(name: str | None) -> OneLineParser:
    """The parser of one subcommand (``None``: the default plan search)."""
    modname = SEARCH_MODULE if name is None else SUBCOMMANDS[name]
    mod = importlib.import_module(modname)
    prog = "plan" if name is None else f"plan {name}"
    parser = OneLineParser(
        prog=prog,
        description=mod.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mod.add_arguments(parser)
    from planner.app.version import tuneplan_version

    parser.add_argument("--version", "-V", action="version", version=f"tuneplan {tuneplan_version()}",
                        help="print tuneplan's version and exit")
    parser.set_defaults(_run=mod.run)
    return parser


_UNSET = object()


class _UnsetList(list):
    """The "not given" marker for appending actions (see :func:`explicit_dests`)."""


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """The destinations the command line set, whatever their defaults: ``argv`` parsed once more into a
    namespace that holds a sentinel for every destination (argparse fills a default only where the namespace
    has none). Used by the one rule for flags a setup ignores (:func:`planner.app.commands.common.refuse_unused`)."""
    unset: dict[str, object] = {}
    for a in parser._actions:
        if a.dest == argparse.SUPPRESS:
            continue
        if isinstance(a, argparse._CountAction):
            unset[a.dest] = None  # counts start from None
        elif isinstance(a, (argparse._AppendAction, argparse._AppendConstAction)):
            unset[a.dest] = _UnsetList()  # appending actions copy the list they find, so its identity changes
        else:
            unset[a.dest] = _UNSET
    probe = argparse.Namespace(**unset)
    parser.parse_args(argv, namespace=probe)
    return frozenset(d for d, v in unset.items() if getattr(probe, d) is not v)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] in ("--version", "-V"):
        from planner.app.version import tuneplan_version

        print(f"tuneplan {tuneplan_version()}")
        return 0
    if argv[0] == "--help-search":
        build_parser(None).print_help()
        return 0
    name = argv[0] if argv[0] in SUBCOMMANDS else None
    if name is None and not argv[0].startswith("-"):
        from profiles.errors import unknown_choice_message

        print(f"plan: error: {unknown_choice_message('command', argv[0], SUBCOMMANDS)}", file=sys.stderr)
        return 2
    parser = build_parser(name)
    rest = argv[1:] if name else argv
    args = parser.parse_args(rest)
    args._explicit = explicit_dests(parser, rest)
    try:
        return int(args._run(args) or 0)
    except InputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


BROKEN_PIPE_EXIT = 1
"""Exit status when the reader of stdout went away (``plan ... --json | head -1``): 1, as in Python's documented
recipe and as rich's console does for the tables (``Console.on_broken_pipe``)."""


GC_THRESHOLDS = (100_000, 50, 100)
"""The cyclic garbage collector's thresholds for the ``plan`` process (CPython's default is (700, 10, 10)). Measured
on ``plan --model llama3-8b --gpus 8xA800`` (2-core VM, cached bytecode): the default runs about 110 collections,
most of them while pydantic and rich import, costing 60-90 ms of a 0.6-0.9 s answer and freeing almost nothing
(peak RSS 41.3 MB with them, 41.8 MB without: reference counting frees the rest). Long commands (trace, derive,
validate) still collect, every 100,000 net allocations."""


PYDANTIC_PLUGINS_OFF = ("PYDANTIC_DISABLE_PLUGINS", "__all__")
"""Set for the ``plan`` process unless the caller set it: pydantic looks for plugins by scanning the entry points
of every installed distribution when it builds its first model (``pydantic/plugin/_loader.py`` ``get_plugins``),
10-13 ms in an environment with torch and transformers, and tuneplan uses none. A caller who wants a plugin
(e.g. tracing) sets the variable to ``""`` or to the names to disable."""


def entry() -> None:
    """Console-script entry point (``plan`` and ``python -m planner``). A reader that closes stdout early
    (``| head``) ends the command quietly: no traceback, exit :data:`BROKEN_PIPE_EXIT`."""
    gc.set_threshold(*GC_THRESHOLDS)
    os.environ.setdefault(*PYDANTIC_PLUGINS_OFF)
    try:
        code = main()
        sys.stdout.flush()  # inside the try: the last buffered output can meet the closed pipe too
    except BrokenPipeError:
        # Python's documented recipe (library/signal.html, "Note on SIGPIPE"): point stdout at devnull so that
        # the interpreter's own flush at exit does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_EXIT)
    sys.exit(code)


if __name__ == "__main__":
    entry()
