"""The package's import graph: layers without cycles.

Every ``import`` / ``from ... import`` statement of every module of ``mixedlm_sklearn`` is read
with :mod:`ast` at any depth (module level, inside functions and methods, under ``if
TYPE_CHECKING:``), together with ``importlib.import_module("literal")`` calls, so a "lazy"
import inside a function counts like any other. The edges between the package's modules must
obey:

1. no cycle: no strongly connected component of more than one module;
2. layers: an edge ``a -> b`` needs ``layer(b) < layer(a)``, or both modules in the same layer
   and the same package (``LAYERS`` below; a module takes the layer of its longest prefix);
3. the engine (every private module ``_x`` but the estimators' base ``_base``) imports neither
   scikit-learn nor the estimators, the formula parser or inference; no module of a layer
   below ``NO_SKLEARN_FROM`` imports scikit-learn;
4. the formula parser imports no estimator, no inference, and of the package only
   ``FORMULA_MAY_IMPORT``;
5. inference imports no estimator module.

Today's code breaks some of these. The edges that do are listed, each with its reason, in
``ALLOWED``; the list must only shrink: a violating edge not in it fails, and so does an entry
whose edge is gone or no longer violates anything (delete the entry when the refactor removes
the edge). When modules move (``_engine/``, ``_input/``, ``_util/``, ``formula/``, ...), edit
``LAYERS`` and rename the entries of ``ALLOWED``; the rules themselves name no module files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mixedlm_sklearn"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

# Module-name prefix (relative to the package) -> layer. A module imports only lower layers or
# modules of its own package in its own layer. "__init__" is the package's root module. Today's
# flat modules are listed with the sub-package they move to (design of issues 23-24, 5.1).
LAYERS: dict[str, int] = {
    # 0: leaves (-> _util/, _table.py, and the public helpers that import nothing of ours)
    "_util": 0, "_threads": 0, "_batched": 0, "_tiled": 0, "_table": 0, "_fit_text": 0, "design": 0, "datasets": 0,
    # 1: the engine (-> _engine/)
    "_engine": 1, "_terms": 1, "_rounds": 1, "_factor": 1, "_crossprod": 1, "_deviance": 1,
    "_iterative": 1, "_glmm": 1, "_basis": 1, "_batched_refit": 1, "_optimize": 1, "_model": 1,
    "_refit": 1, "_many": 1, "_rows": 1, "_correlation": 1, "_family": 1, "_newton": 1,
    # 2: user input -> arrays (-> _input/), and the formula parser
    "_input": 2, "_validation": 2, "_rank": 2, "_checks": 2, "_design": 2, "_chunked": 2, "formula": 2,
    "_glmm_chunks": 2,
    # 3: inference on a fitted model; plots
    "inference": 3, "plotting": 3,
    # 4-7: the estimators' base, the estimators, formula-in functions and shims, the root
    "_base": 4, "formula_mode": 4,
    "linear": 5, "generalized": 5, "families": 5,
    "api": 6, "estimator": 6, "glm_estimator": 6,
    "__init__": 7,
}

# Modules below this layer import no scikit-learn.
NO_SKLEARN_FROM = 3

# Of the package, the formula parser imports only these (besides its own modules).
FORMULA_MAY_IMPORT = ("_util", "_threads", "_batched", "_engine.terms", "_terms")

# The estimator modules (today's and those of the planned layout).
ESTIMATORS = ("estimator", "glm_estimator", "_base", "linear", "generalized", "api")

# Today's violating edges (importer, imported) -> why the edge exists and what removes it.
# This list must only shrink.
ALLOWED: dict[tuple[str, str], str] = {}


# ---- reading the imports -------------------------------------------------------------------


def module_name(path: Path, root: Path = ROOT) -> str:
    """Dotted name of a file of the package: ``mixedlm_sklearn.inference.anova``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _resolve(importer: str, modules: dict[str, Path], level: int, module: str | None) -> str:
    """Absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    package = importer if _is_package(importer, modules) else importer.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{importer}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_names(importer: str, source: str, modules: dict[str, Path]) -> set[str]:
    """Every absolute module name ``importer`` imports, at any depth of its syntax tree.

    ``from pkg import name`` depends on ``pkg`` (its ``__init__`` runs) and on ``pkg.name``
    when that is a module; the importer's own package (or an ancestor) is not counted, as it
    is initialised before any of its modules runs.
    """
    own = importer if _is_package(importer, modules) else importer.rpartition(".")[0]

    def containing(name: str) -> bool:  # name is own package or one of its ancestors
        return own == name or own.startswith(name + ".")

    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, modules, node.level, node.module)
            if not containing(base):
                found.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            target = _literal(node.args[0]) if node.args else None
            if name != "import_module" or target is None:
                continue
            level = len(target) - len(target.lstrip("."))
            if level:
                package = _literal(node.args[1]) if len(node.args) > 1 else None
                package = package or next((_literal(k.value) for k in node.keywords if k.arg == "package"), None)
                # import_module(".x", __package__) / (..., __name__) / no literal: the importer's package
                base = _resolve(package or importer, modules, level, target[level:] or None)
                found.add(base)
            else:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, top-level names of outside packages), by module.

    Names are relative to the package (``inference.anova``; the root module is ``__init__``).
    An import of ``a.b.c`` that is not a module (an attribute) counts as an import of the
    longest prefix that is one.
    """
    modules = package_modules(root)
    edges: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for name, path in modules.items():
        rel = relative(name)
        edges[rel], outside[rel] = set(), set()
        for target in imported_names(name, path.read_text(encoding="utf-8"), modules):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in modules:
                    target = target.rpartition(".")[0]
                if target != name:
                    edges[rel].add(relative(target))
            else:
                outside[rel].add(target.partition(".")[0])
    return edges, outside


def relative(name: str) -> str:
    return "__init__" if name == PACKAGE else name[len(PACKAGE) + 1:]


# ---- the rules -----------------------------------------------------------------------------


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_prefix(module: str) -> str:
    candidates = [p for p in LAYERS if _matches(module, p)]
    if not candidates:
        raise KeyError(f"module {module!r} has no layer: add its prefix to LAYERS in {__file__}")
    return max(candidates, key=len)


def layer(module: str) -> int:
    return LAYERS[layer_prefix(module)]


def package_of(module: str, packages: set[str]) -> str:
    return module if module in packages else (module.rpartition(".")[0] or "__init__")


def is_engine(module: str) -> bool:
    top = module.split(".")[0]
    return top.startswith("_") and top not in ("__init__", "_base")


def is_estimator(module: str) -> bool:
    return any(_matches(module, e) for e in ESTIMATORS)


def broken_rules(a: str, b: str, packages: set[str]) -> list[str]:
    """The rules the edge ``a -> b`` (package modules, relative names) breaks."""
    why = []
    same_place = layer(a) == layer(b) and package_of(a, packages) == package_of(b, packages)
    if not (layer(b) < layer(a) or same_place):
        why.append(f"layer {layer(a)} ({layer_prefix(a)}) imports layer {layer(b)} ({layer_prefix(b)})")
    if is_engine(a) and (is_estimator(b) or _matches(b, "formula") or _matches(b, "inference")):
        why.append("the engine imports an estimator, the formula parser or inference")
    if _matches(a, "formula") and not _matches(b, "formula"):
        if is_estimator(b) or _matches(b, "inference"):
            why.append("the formula parser imports an estimator or inference")
        if not any(_matches(b, p) for p in FORMULA_MAY_IMPORT):
            why.append(f"the formula parser imports {b} (only {', '.join(FORMULA_MAY_IMPORT)})")
    if _matches(a, "inference") and is_estimator(b):
        why.append("inference imports an estimator module")
    return why


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return found


def a_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module (breadth-first, shortest)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError("not a cycle")


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """A printable cycle for every strongly connected component of more than one module."""
    return [" -> ".join(a_cycle(c, edges)) + f"   (component: {', '.join(c)})"
            for c in strongly_connected(edges) if len(c) > 1]


# ---- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def _packages() -> set[str]:
    return {relative(n) for n, p in package_modules().items() if p.name == "__init__.py"}


def test_every_module_has_a_layer(graph):
    edges, _ = graph
    missing = [m for m in edges if not any(_matches(m, p) for p in LAYERS)]
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"
    unused = [p for p in LAYERS if not any(_matches(m, p) for m in edges)]
    # Prefixes of the planned layout may wait for their modules; a prefix of today's flat layout
    # whose module moved must go.
    planned = {"_util", "_engine", "_input", "_base", "linear", "generalized", "families", "api", "_table"}
    assert not [p for p in unused if p not in planned], f"LAYERS names no module: {unused}"


def test_no_cycles(graph):
    edges, _ = graph
    kept = {a: {b for b in bs if (a, b) not in ALLOWED} for a, bs in edges.items()}
    found = cycles(kept)
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_layers_and_rules(graph):
    edges, _ = graph
    packages = _packages()
    new = [f"{a} -> {b}: {'; '.join(why)}"
           for a in sorted(edges) for b in sorted(edges[a])
           if (why := broken_rules(a, b, packages)) and (a, b) not in ALLOWED]
    assert not new, "imports that break the layers (fix them; do not add them to ALLOWED):\n  " + "\n  ".join(new)


def test_allowed_list_is_exact(graph):
    edges, _ = graph
    packages = _packages()
    in_cycle = {(a, b) for c in strongly_connected(edges) if len(c) > 1 for a in c for b in edges[a] if b in c}
    stale = [f"{a} -> {b}" for (a, b) in sorted(ALLOWED)
             if b not in edges.get(a, set()) or not (broken_rules(a, b, packages) or (a, b) in in_cycle)]
    assert not stale, "entries of ALLOWED that no longer violate anything (delete them):\n  " + "\n  ".join(stale)


def test_engine_and_parser_import_no_sklearn(graph):
    _, outside = graph
    bad = sorted(m for m, names in outside.items()
                 if "sklearn" in names and (layer(m) < NO_SKLEARN_FROM or is_engine(m) or _matches(m, "formula")))
    assert not bad, f"modules that must not import scikit-learn do: {bad}"


# ---- the reader itself ---------------------------------------------------------------------


def _fake_package(tmp_path: Path) -> Path:
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "import numpy as np\nfrom . import b\n",
        "b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .sub.c import C\n"
            "def g():\n    from .sub import d\n    return d\n"
            "class K:\n    def m(self):\n        import importlib\n"
            "        return importlib.import_module('mixedlm_sklearn.sub.e.thing')\n"
        ),
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import f\nfrom .. import b as _b\n",
        "sub/d.py": "import sklearn.base\nfrom importlib import import_module\nx = import_module('.e', __package__)\n",
        "sub/e.py": "from mixedlm_sklearn.sub import c\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_reader_finds_imports_at_any_depth(tmp_path):
    edges, outside = import_graph(_fake_package(tmp_path))
    assert edges == {
        "__init__": {"a"},
        "a": {"b"},
        "b": {"sub", "sub.c", "sub.d", "sub.e"},  # TYPE_CHECKING, in a function, import_module
        "sub": set(),
        "sub.c": {"a", "b"},
        "sub.d": {"sub.e"},
        "sub.e": {"sub.c"},  # the own package `sub` is not an edge
    }
    assert outside["sub.d"] == {"sklearn", "importlib"}
    assert outside["a"] == {"numpy"}


def test_cycles_are_found_and_printed():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert [c for c in strongly_connected(edges) if len(c) > 1] == [["a", "b", "c"]]
    assert cycles(edges) == ["a -> b -> c -> a   (component: a, b, c)"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == ["a -> b -> a   (component: a, b)"]


def test_rules_flag_upward_edges():
    packages = {"inference", "__init__"}
    assert broken_rules("inference.anova", "_deviance", packages) == []
    assert broken_rules("_deviance", "_factor", packages) == []
    assert broken_rules("inference.anova", "inference.lrt", packages) == []
    assert broken_rules("_deviance", "inference.lrt", packages)
    assert broken_rules("inference.lrt", "estimator", packages)
    assert broken_rules("formula", "_validation", packages)  # same layer, but the parser's rule
    assert broken_rules("plotting", "inference.r2", packages)  # same layer, another package
