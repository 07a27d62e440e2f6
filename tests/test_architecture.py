"""The house's dependency rules (shared/design.md, "Dependency rules"), checked on the source: every import,
module-level or inside a function, is an arrow.

Layers, lowest first: ``profiles`` (data, depends on nothing of ours); ``planner.units`` / ``planner.fileio``
/ ``planner.plan_file`` (shared utilities); ``planner.engine`` (pure formulas); ``planner.search`` and
``planner.emit`` (built on the engine); ``planner.app`` (CLI, commands, rendering: the only layer that talks
to the user and the only one that may import ``validation``, lazily); ``validation`` (runs and traces plans;
may use the engine, the emitters and the utilities, never the app layer).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("planner", "profiles", "validation")
UTILITIES = ("planner.units", "planner.fileio", "planner.plan_file")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import of one of our packages in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".")[: -node.level] if not path.name == "__init__.py" else name.split(".")[: len(name.split(".")) - node.level + 1]
                mods = [".".join(base + ([node.module] if node.module else []))]
            else:
                mods = [node.module or ""]
            # "from planner.search import capacity" imports the submodule
            mods += [f"{mods[0]}.{a.name}" for a in node.names if _is_module(f"{mods[0]}.{a.name}")]
        else:
            continue
        for m in mods:
            if m.split(".")[0] in PACKAGES:
                out.append((m, id(node) in top))
    return out


def _is_module(dotted: str) -> bool:
    p = ROOT.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, list[tuple[str, bool]]]:
    g: dict[str, list[tuple[str, bool]]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = _module_name(path)
            g[name] = _imports(path, name)
    return g


GRAPH = _graph()


def _layer(mod: str) -> str:
    if mod.startswith(UTILITIES):
        return "utility"
    for prefix in ("planner.engine", "planner.search", "planner.emit", "planner.app"):
        if mod == prefix or mod.startswith(prefix + "."):
            return prefix.split(".")[1]
    if mod in ("planner", "planner.__main__"):
        return "entry"
    return mod.split(".")[0]


ALLOWED = {
    "profiles": {"profiles"},
    "utility": {"profiles", "utility"},
    "engine": {"profiles", "utility", "engine"},
    "search": {"profiles", "utility", "engine", "search"},
    "emit": {"profiles", "utility", "engine", "emit"},
    "app": {"profiles", "utility", "engine", "search", "emit", "app", "validation"},
    "validation": {"profiles", "utility", "engine", "emit", "validation"},
    "entry": {"app"},
}


def test_every_module_is_in_a_layer():
    unknown = sorted(m for m in GRAPH if _layer(m) not in ALLOWED)
    assert not unknown, f"modules outside the known layers: {unknown}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer):
    bad = [
        f"{src} -> {dst}"
        for src, deps in GRAPH.items() if _layer(src) == layer
        for dst, _ in deps if _layer(dst) not in ALLOWED[layer]
    ]
    assert not bad, "forbidden arrows:\n" + "\n".join(bad)


def test_app_imports_validation_only_lazily():
    eager = [f"{src} -> {dst}" for src, deps in GRAPH.items() if _layer(src) == "app"
             for dst, top in deps if top and _layer(dst) == "validation"]
    assert not eager, "the app layer must import validation inside the commands that need it:\n" + "\n".join(eager)


def test_no_import_cycles():
    """No module reaches itself through imports (lazy ones included: a lazy import that closes a circle hides
    a dependency that goes both ways). Packages' ``__init__`` re-exports are arrows too."""
    edges: dict[str, set[str]] = defaultdict(set)
    for src, deps in GRAPH.items():
        for dst, _ in deps:
            target = dst if dst in GRAPH else dst.rsplit(".", 1)[0]
            if target in GRAPH and target != src:
                edges[src].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)
    # a package importing its own submodules from __init__ (re-exports) is not a circle unless a submodule
    # imports the package back
    real = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)
