"""The import rules of docs/architecture.md: every import (module level or inside a function) points down
the layers or stays in its own layer, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import dermctl

PACKAGE = Path(dermctl.__file__).parent

# layer -> its modules (a name covers its submodules). Order is bottom to top.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "dermctl",
        "dermctl.errors",
        "dermctl.provenance",
        "dermctl.workspace",
        "dermctl.results",
    ),
    "runtime": ("dermctl.runtime",),
    "data": ("dermctl.data",),
    "models": ("dermctl.models",),
    "methods": ("dermctl.methods",),
    "eval": ("dermctl.eval",),
    "train": ("dermctl.train",),
    "report": ("dermctl.report",),
    "app": ("dermctl.cli", "dermctl.demo", "dermctl.__main__"),
}
# layer -> the layers below it that it may import (its own layer is always allowed).
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),
    "runtime": {"foundation"},
    "data": {"foundation"},
    "models": {"foundation"},
    "methods": {"foundation", "runtime", "models"},
    "eval": {"foundation", "runtime", "data", "models"},  # frozen evaluation: no training code
    "train": {"foundation", "runtime", "data", "models", "methods", "eval"},
    "report": {"foundation"},  # reads result files only
    "app": set(LAYERS) - {"app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    best = ""
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, found = p, layer
    if not best:
        raise AssertionError(f"{module} belongs to no layer of tests/test_architecture.py")
    return found


def import_edges() -> dict[str, set[str]]:
    """module -> the dermctl modules it imports (a `from package import submodule` counts as the submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = subs or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[mod].update(t for t in targets if t in modules)
    return edges


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in edges.items():
        for dst in targets:
            a, b = layer_of(src), layer_of(dst)
            if a != b and b not in MAY_IMPORT[a]:
                out.append(f"{src} ({a}) imports {dst} ({b})")
    return sorted(out)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    for mod in import_edges():
        layer_of(mod)


def test_no_import_runs_up_a_layer() -> None:
    assert violations(import_edges()) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_edges()) == []


def test_frozen_evaluation_imports_no_training_code() -> None:
    edges = import_edges()
    assert any(s.startswith("dermctl.eval.") for s in edges)  # the check below has something to look at
    upward = [
        f"{s} -> {d}"
        for s, ds in edges.items()
        if s.startswith("dermctl.eval")
        for d in ds
        if d.startswith(("dermctl.train", "dermctl.methods"))
    ]
    assert upward == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The rules fail on an upward import and on a circle (a check that cannot fail proves nothing)."""
    edges = {"dermctl.eval.knn": {"dermctl.train.engine"}, "dermctl.train.engine": set()}
    assert violations(edges) == ["dermctl.eval.knn (eval) imports dermctl.train.engine (train)"]
    edges = {"dermctl.eval.a": {"dermctl.eval.b"}, "dermctl.eval.b": {"dermctl.eval.a"}}
    assert cycles(edges) == [["dermctl.eval.a", "dermctl.eval.b"]]
    assert violations({"dermctl.report.html": {"dermctl.eval.knn"}, "dermctl.eval.knn": set()})
