"""The layering of docs/ARCHITECTURE.md, read from the source: no import cycle, no library import of
the scripts' harness or the figure modules, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "lintrans"
#: Modules that present results (may import the library, never imported by it).
PRESENTATION = ("lintrans.cli", "lintrans.plots", "lintrans.experiment")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` for every ``import``/``from … import`` anywhere in the file (functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, tuple(a.name for a in node.names)))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for mod, names in _imports(path):
            if not mod.startswith("lintrans"):
                continue
            # `from lintrans import x` names a submodule when one exists
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in mods]
            deps.update(subs or [mod])
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _is_presentation(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PRESENTATION)


def test_library_never_imports_the_harness_or_plots():
    bad = [(m, d) for m, deps in _graph().items() if not _is_presentation(m)
           for d in deps if _is_presentation(d)]
    assert bad == [], f"library modules importing presentation modules: {bad}"


def _find_cycle(edges: dict[str, set[str]]) -> None:
    """Raise ``AssertionError`` naming the first import cycle found by depth-first search."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_cycle_finder_finds_a_cycle():
    import pytest

    with pytest.raises(AssertionError, match="a → b → c → a"):
        _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()})


def test_no_import_cycle():
    graph = _graph()
    # package __init__ files re-export their children; an edge child → package is not a cycle of code
    _find_cycle({m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()})


def test_no_private_names_across_modules():
    bad = []
    for path in list(PKG.rglob("*.py")) + list((ROOT / "experiments").glob("*.py")):
        for mod, names in _imports(path):
            if mod.startswith("lintrans"):
                bad += [(str(path.relative_to(ROOT)), mod, n) for n in names if n.startswith("_") and n != "__version__"]
    assert bad == [], f"private names imported across modules: {bad}"


def test_scripts_are_thin():
    lib = sum(len(p.read_text().splitlines()) for p in PKG.rglob("*.py"))
    scripts = sum(len(p.read_text().splitlines()) for p in (ROOT / "experiments").glob("*.py"))
    assert scripts <= 0.5 * lib, f"experiments/ holds {scripts} lines against {lib} in lintrans/"
