"""The layout keeps its layers: no import circle, and no module imports from a layer above its own.

Layers, from the top: the CLI (pacctl), the controller (pac.cluster), the daemon (pacd), the gRPC edge
(pac.net), the device worker (pac.worker), and the pure core (the rest of pac). Every import counts,
including those inside functions (they run too) and under TYPE_CHECKING.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (("pacctl", 6), ("pac.cluster", 5), ("pacd", 4), ("pac.net", 3), ("pac.worker", 2))


def modules() -> dict[str, Path]:
    found = {}
    for package in ("pac", "pacd", "pacctl"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names & known


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def layer(module: str) -> int:
    return next((rank for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")), 1)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_from_a_higher_layer():
    upward = [f"{module} -> {target}" for module, targets in sorted(graph().items()) for target in sorted(targets)
              if layer(target) > layer(module)]
    assert upward == []


def test_generated_stubs_stay_at_the_edges():
    """Protobuf stubs are imported by the gRPC edge (pac.net) and the daemon's servicers only."""
    allowed = ("pac.net", "pacd.services", "pac.v1")
    users = sorted(module for module, targets in graph().items()
                   if any(t.startswith("pac.v1") for t in targets) and not module.startswith(allowed))
    assert users == []


def test_modules_and_functions_stay_small():
    """A module reads in one sitting (<= 400 lines), a function fits on a screen (<= 60 lines)."""
    too_long = []
    for name, path in sorted(modules().items()):
        if name.startswith("pac.v1"):
            continue  # generated stubs
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
