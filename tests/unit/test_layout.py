"""The package's shape: no import cycle among pitstop modules, and the pure logic
(the repair state machine's steps, pool arithmetic, the instance contract, the
models) never reaches kopf, the Kubernetes client or aiohttp, not even through
another pitstop module. Read with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "operator"
PACKAGE = ROOT / "pitstop"
FORBIDDEN = ("kopf", "kubernetes", "kubernetes_asyncio", "aiohttp")
PURE = (
    "pitstop.repair.flow",
    "pitstop.repair.drain",
    "pitstop.repair.recovery",
    "pitstop.pool.arithmetic",
    "pitstop.pool.ledger",
    "pitstop.instances.contract",
    "pitstop.instances.sources",
    "pitstop.instances.sources.rules",
    "pitstop.cluster.nodes",
    "pitstop.conditions",
    "pitstop.constants",
    "pitstop.quantities",
    "pitstop.selectors",
    "pitstop.models",
    "pitstop.models.common",
    "pitstop.models.noderepair",
    "pitstop.models.repairpolicy",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports, at load time or inside a function. An import of
    a name from a package counts as an import of its submodule when one exists."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


GRAPH = {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def test_the_pure_set_names_real_modules() -> None:
    assert set(PURE) <= set(MODULES), set(PURE) - set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def forbidden_reach(name: str, imports_of: Callable[[str], set[str]]) -> str | None:
    """How `name` reaches kopf, the client or aiohttp through pitstop modules, or None."""
    via, todo = {name: name}, [name]
    while todo:
        current = todo.pop()
        for dep in sorted(imports_of(current)):
            if dep.split(".")[0] in FORBIDDEN:
                return f"{via[current]} -> {dep}"
            if dep.startswith("pitstop") and dep not in via:
                via[dep] = f"{via[current]} -> {dep}"
                todo.append(dep)
    return None


def test_no_import_cycle_among_pitstop_modules() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_never_reach_kopf_the_client_or_aiohttp(name: str) -> None:
    """Transitively: a pure module importing a pitstop module that imports kopf fails too."""

    def imports_of(module: str) -> set[str]:
        return imports(module) if module in MODULES else set()

    reach = forbidden_reach(name, imports_of)
    assert reach is None, f"pure module {name} reaches {reach}"


def test_the_checks_can_fail() -> None:
    """The checks above are only worth something if they see what they look for."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    fake = {"p.pure": {"p.helper"}, "p.helper": {"aiohttp.web"}}
    assert forbidden_reach("p.pure", lambda m: fake.get(m, set())) is None  # not pitstop.*
    fake = {"pitstop.pure": {"pitstop.helper"}, "pitstop.helper": {"aiohttp.web"}}
    reach = forbidden_reach("pitstop.pure", lambda m: fake.get(m, set()))
    assert reach == "pitstop.pure -> pitstop.helper -> aiohttp.web"
    # The real graph is read: the daemon's import of the client module is seen.
    assert "pitstop.cluster.kube" in GRAPH["pitstop.repair.daemon"]
    assert "kopf" in imports("pitstop.cluster.kube")
