"""The package's shape: no import cycle among pitstop modules, and the pure logic
(the repair state machine's steps, pool arithmetic, the instance contract, the
models) never reaches kopf, the Kubernetes client or aiohttp, not even through
another pitstop module. Read with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "operator"
PACKAGE = ROOT / "pitstop"
FORBIDDEN = ("kopf", "kubernetes", "kubernetes_asyncio", "aiohttp")
PURE = (
    "pitstop.repair.flow",
    "pitstop.repair.machine",
    "pitstop.repair.drain",
    "pitstop.repair.recovery",
    "pitstop.repair.ladder",
    "pitstop.repair.remediators",
    "pitstop.pool.arithmetic",
    "pitstop.pool.room",
    "pitstop.pool.ledger",
    "pitstop.pool.windows",
    "pitstop.pool.notices",
    "pitstop.kstatus",
    "pitstop.instances.contract",
    "pitstop.instances.sources",
    "pitstop.instances.sources.addressing",
    "pitstop.instances.sources.answers",
    "pitstop.instances.sources.census",
    "pitstop.instances.sources.durations",
    "pitstop.instances.sources.errors",
    "pitstop.instances.sources.matching",
    "pitstop.instances.sources.profiles",
    "pitstop.instances.sources.trust",
    "pitstop.instances.sources.watchdog",
    "pitstop.cluster.nodes",
    "pitstop.conditions",
    "pitstop.constants",
    "pitstop.quantities",
    "pitstop.resources",
    "pitstop.selectors",
    "pitstop.models",
    "pitstop.models.common",
    "pitstop.models.noderepair",
    "pitstop.models.repairpolicy",
    "pitstop.models.remediation",
    "pitstop.remediation.contract",
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


# The "may import" column of docs/architecture.md's package table, read as rules.
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", text))


def _names(ticked: list[str]) -> list[str]:
    return [f"pitstop.{t.rstrip('/').replace('/', '.')}" for t in ticked]


def read_rules(markdown: str) -> tuple[dict[str, dict[str, set[str]]], set[str]]:
    """From the table: for each row's key (a package `repair/` or top-level modules),
    the modules of that row mapped to what each may import ('*' for anything), and
    the helpers. A cell is `a`, `b`, helpers; a later `m`, `n` also `c` segment adds
    `c` for those modules only; "never" segments and (asides) are prose."""
    rows: dict[str, dict[str, set[str]]] = {}
    helpers: set[str] = set()
    lines = markdown.split("| package | holds | may import |", 1)[1].splitlines()[2:]
    for line in lines:
        if not line.startswith("|"):
            break
        key, _, allowed = (c.strip() for c in line.strip("|").split("|"))
        owners = _names(_ticked(key))
        segments = [s.strip() for s in re.sub(r"\([^)]*\)", "", allowed).split(";")]
        base: set[str] = {"*"} if segments[0] == "anything" else set(_names(_ticked(segments[0])))
        if re.search(r"\bhelpers\b", segments[0]):
            base.add("helpers")
        extra: dict[str, set[str]] = {}
        for seg in segments[1:]:
            if " also " in seg:
                who, _, what = seg.partition(" also ")
                for m in _names(_ticked(who)):
                    extra[m] = set(_names(_ticked(what)))
        rows[key] = {o: base | extra.get(o, set()) for o in owners} | {
            m: base | extra[m] for m in extra
        }
        if "helpers" in key or "shared helpers" in line:
            helpers.update(owners)
    return rows, helpers


def layout_breaks(
    graph: dict[str, set[str]], rows: dict[str, dict[str, set[str]]], helpers: set[str]
) -> list[str]:
    """Every module the table does not place, and every import it does not allow.
    Imports within a module's own package row are always allowed."""
    packages = {n for n in graph if any(m.startswith(n + ".") for m in graph)}
    home: dict[str, str] = {}  # module -> the package row it belongs to
    allowed: dict[str, tuple[str, set[str]]] = {}  # module -> (most specific owner, rules)
    for owners in rows.values():
        for owner, rules in owners.items():
            for name in graph:
                inside = owner in packages and (name == owner or name.startswith(owner + "."))
                if inside:
                    home[name] = owner
                if (inside or name == owner) and len(owner) > len(allowed.get(name, ("",))[0]):
                    allowed[name] = (owner, rules)
    breaks: list[str] = []
    for name in sorted(graph):
        if name not in allowed:
            if not (name in packages and not graph[name]):  # an empty package marker
                breaks.append(f"{name}: not placed in the table")
            continue
        rules = allowed[name][1]
        for dep in sorted(graph[name]):
            if dep in packages and not graph[dep]:
                continue  # `from pitstop.x import y` also names the empty package x
            own = home.get(name)
            if not (
                "*" in rules
                or (own is not None and (dep == own or dep.startswith(own + ".")))
                or ("helpers" in rules and dep in helpers)
                or any(dep == a or dep.startswith(a + ".") for a in rules)
            ):
                breaks.append(f"{name} imports {dep}: not in its row's 'may import'")
    return breaks


def test_imports_keep_the_architecture_table() -> None:
    rows, helpers = read_rules(ARCHITECTURE.read_text())
    assert helpers >= {"pitstop.constants", "pitstop.selectors"}, helpers
    assert layout_breaks(GRAPH, rows, helpers) == []


def test_the_table_check_can_fail() -> None:
    rows, helpers = read_rules(ARCHITECTURE.read_text())
    # cluster/ sits below instances/: an import upwards is a break, as is an unplaced module.
    graph = {n: set(d) for n, d in GRAPH.items()}
    graph["pitstop.cluster.indexes"].add("pitstop.instances.contract")
    graph["pitstop.newthing"] = set()
    assert layout_breaks(graph, rows, helpers) == [
        "pitstop.cluster.indexes imports pitstop.instances.contract: not in its row's 'may import'",
        "pitstop.newthing: not placed in the table",
    ]


def _defines(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_the_state_machine_has_one_named_entry() -> None:
    """`decide` lives in repair/machine.py, which the daemon drives; the drain is one
    of its halves, not the entry (issue 18, item 5)."""
    assert "decide" in _defines("pitstop.repair.machine")
    assert "decide" not in _defines("pitstop.repair.drain")
    assert {"pitstop.repair.drain", "pitstop.repair.recovery"} <= GRAPH["pitstop.repair.machine"]
    assert "pitstop.repair.machine" in GRAPH["pitstop.repair.daemon"]


def test_the_repair_steps_share_one_state_by_composition() -> None:
    """The daemon's steps are composed over one RepairState, not mixed into one class
    by inheritance: no step class derives from another, and each takes the state."""
    steps = {
        "pitstop.repair.report": "Report",
        "pitstop.repair.observe": "Observe",
        "pitstop.repair.act_node": "NodeSteps",
        "pitstop.repair.act_pods": "PodSteps",
        "pitstop.repair.act_hooks": "RepairSteps",
        "pitstop.repair.daemon": "Driver",
    }
    for module, cls in steps.items():
        tree = ast.parse(MODULES[module].read_text())
        (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        assert node.bases == [], f"{module}.{cls} inherits {ast.unparse(node.bases[0])}"
    assert "RepairState" in _defines("pitstop.repair.state")
