"""The package's layering, read from its own source: no import cycles, no upward imports,
no over-long functions. The layer map below is the rule book; change it here, on purpose.

Function-level imports count like module-level ones, so a cycle cannot hide inside a
function body.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = "XrayWorldModel"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Lowest first. A module may import its own layer (without cycles) or a lower one.
#: The key is the first name below ``XrayWorldModel`` (a module or a sub-package).
LAYERS: Dict[str, int] = {
    # 1: constants, errors, plain containers, console helpers and image metrics
    "errors": 1, "fileutil": 1, "volume": 1, "radiograph": 1, "console": 1, "metrics": 1,
    "blocks": 1,
    "conventions": 1, "version": 1, "lazy": 1,
    # 2: geometry, networks, typed configs and file formats
    "geometry": 2, "models": 2, "typed_config": 2, "io": 2,
    # 3: things made from those: phantoms, DRRs, reconstruction, datasets, the model contract
    "phantom": 3, "drr": 3, "recon": 3, "data": 3, "config": 3,
    # 4: training
    "train": 4,
    # 5: what uses a trained model
    "weights": 5, "infer": 5, "probe": 5,
    # 6: the applications on top
    "study": 6, "cli": 6, "__main__": 6, "": 6,     # "" = the package's own __init__ facade
    # the launcher of `xray2xray web`: runs the Slicer layer's web front end as a separate
    # process (python -m Xray2XrayWeb), never imports it (FORBIDDEN below)
    "web": 6,
}
#: Names the package must never import: the Slicer layer, release tooling, GUI toolkits.
FORBIDDEN = ("slicer", "Xray2XrayLib", "Xray2XrayWeb", "Xray2Xray", "tools", "qt", "ctk", "vtk",
             "trame", "trame_slicer")
MAX_FUNCTION_LINES = 80


def _module_names() -> Dict[str, Path]:
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _targets(module: str, path: Path, node) -> Iterator[str]:
    """Fully qualified names an import statement reaches."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = _package_of(module, path).split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:
        child = f"{target}.{alias.name}"
        yield child if child in MODULES else target


def _owning_module(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> Tuple[Dict[str, Set[str]], List[Tuple[str, str]]]:
    """Edges between package modules, and imports of forbidden names."""
    edges: Dict[str, Set[str]] = defaultdict(set)
    forbidden = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node):
                if target.split(".")[0] in FORBIDDEN:
                    forbidden.append((module, target))
                owner = _owning_module(target) if target.startswith(PACKAGE) else ""
                if owner and owner != module:
                    edges[module].add(owner)
    return edges, forbidden


def layer_of(module: str) -> int:
    key = module[len(PACKAGE) + 1:].split(".")[0] if module != PACKAGE else ""
    if key not in LAYERS:
        raise AssertionError(f"{module}: not in the layer map of {Path(__file__).name}; "
                             "give it a layer there")
    return LAYERS[key]


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_cycles():
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_no_import_goes_up_a_layer():
    edges, _ = import_graph()
    upward = sorted(f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})"
                    for a, targets in edges.items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_package_never_imports_slicer_or_tools():
    _, forbidden = import_graph()
    assert forbidden == []


def _is_numba_kernel(node) -> bool:
    return any("jit" in ast.unparse(d) for d in node.decorator_list)


def long_functions() -> List[str]:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_numba_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({n} lines)")
    return long


def test_no_function_is_over_80_lines():
    assert long_functions() == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The rules above are only worth something if the checker can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of(f"{PACKAGE}.errors") < layer_of(f"{PACKAGE}.train.trainer")


if __name__ == "__main__":      # a readable report while restructuring
    graph, bad = import_graph()
    for c in cycles(graph):
        print("cycle:", " <-> ".join(m[len(PACKAGE) + 1:] for m in c))
    for a, ts in sorted(graph.items()):
        for b in sorted(ts):
            if layer_of(b) > layer_of(a):
                print(f"upward: {a} ({layer_of(a)}) -> {b} ({layer_of(b)})")
    for a, b in bad:
        print(f"forbidden: {a} -> {b}")
    for line in long_functions():
        print("long:", line)


def test_every_mutation_anchor_is_in_its_file_exactly_once():
    """The mutation check can only catch what it can apply: a refactor that rewrites an
    anchored line must move the mutation with it, or the invariant goes unguarded."""
    import runpy
    catalogue = ROOT.parent / "Testing" / "mutations" / "catalogue.py"
    mutations = runpy.run_path(str(catalogue))["MUTATIONS"]
    stale = [m.id for m in mutations if (ROOT.parent / m.file).read_text().count(m.anchor) != 1]
    assert mutations and stale == []
