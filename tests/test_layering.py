"""The arrows of ../shared/ARCHITECTURE.md, read off the source: who may import whom.

- The emulator is a server: nothing outside pipeline/emulator imports it (the rollout, the tasks
  and the benches reach it over HTTP or through `python -m pipeline.emulator`), and it uses only
  the runtime interface and the base modules.
- The base modules (receipts, gates, config, release, errors) import nothing above them.
- Floors: tasks → phases → {probes, runtime, cloudrun, reporting, views} → the rest (receipts,
  gates, config, release, errors, catalogue, …). A module imports its own floor or lower ones.
- No import cycle anywhere, between modules or packages (function-level imports included).
- `google.cloud.run_v2` (~0.45 s to import) is imported inside functions only, never at a
  module's top level. (That `invoke --list` loads no heavy package at all is checked by running
  it: tests/test_cli_foundation.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*REPO.glob("pipeline/**/*.py"), *REPO.glob("bench/*.py"), REPO / "tasks.py"])
ABOVE_BASE = {
    "attest",
    "tasks",
    "phases",
    "probes",
    "runtime",
    "ssh",
    "cloudrun",
    "emulator",
    "reporting",
    "views",
}
FLOORS = (
    {"tasks"},
    {"phases"},
    {"probes", "runtime", "ssh", "cloudrun", "reporting", "views", "emulator", "image", "attest"},
)
EMULATOR_MAY_USE = {
    "attest",
    "runtime",
    "image",
    "config",
    "errors",
    "receipts",
    "release",
    "stats",
    "waiting",
}
BASE = ("receipts", "gates", "config", "release", "errors")
LAZY = ("google", "grpc")


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names `path` imports (every `from X import y` also as X.y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer(module: str) -> str | None:
    """`pipeline.X...` → X; anything else → None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def owner(path: Path) -> str:
    rel = path.relative_to(REPO).parts
    return rel[1].removesuffix(".py") if rel[0] == "pipeline" and len(rel) > 1 else rel[0]


def test_the_layering_rules_see_every_source_file() -> None:
    assert len(SOURCES) > 60
    assert "runtime" in {layer(m) for m in imports(REPO / "pipeline/emulator/host.py")}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_arrows(path: Path) -> None:
    mine = owner(path)
    used = {layer(m) for m in imports(path)} - {None, mine}
    if mine != "emulator":
        assert "emulator" not in used, "only pipeline/emulator imports the emulator"
    else:
        assert used <= EMULATOR_MAY_USE | {"__version__"}, sorted(used - EMULATOR_MAY_USE)
    if mine in BASE:
        assert not used & ABOVE_BASE, f"a base module imports {sorted(used & ABOVE_BASE)}"
    lazy = {m.split(".")[0] for m in imports(path, top_level_only=True)} & set(LAZY)
    assert not lazy, f"imported at module level: {sorted(lazy)}"


def floor(layer_name: str) -> int:
    """0 for tasks, 1 for phases, 2 for the middle floor, 3 for every base module."""
    return next((n for n, names in enumerate(FLOORS) if layer_name in names), len(FLOORS))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_floor_above_its_own(path: Path) -> None:
    mine = owner(path)
    if path.parts[len(REPO.parts)] != "pipeline":
        return  # tasks.py and the benches stand above the house
    above = {u for u in {layer(m) for m in imports(path)} - {None} if floor(u) < floor(mine)}
    assert not above, f"{mine} (floor {floor(mine)}) imports {sorted(above)} from above"


def module_graph() -> dict[str, set[str]]:
    """pipeline's modules and whom each imports. `from pkg import sub` is an arrow to `pkg.sub`
    alone (Python runs pkg/__init__ first, but as a parent, not a peer)."""
    modules = {}
    for path in REPO.glob("pipeline/**/*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        direct = {m for m in imports(path) if m in modules and m != name}
        parents = {m.rsplit(".", 1)[0] for m in direct if "." in m}
        graph[name] = direct - parents
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere() -> None:
    graph = module_graph()
    assert "pipeline.phases.frame" in graph["pipeline.phases.week3"]
    assert cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        mine = layer(name) or name
        packages.setdefault(mine, set()).update(layer(t) or t for t in targets)
    for name in packages:
        packages[name].discard(name)
        packages[name] &= set(packages)
    assert cycles(packages) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
    ids=["two", "three-and-a-tail", "none"],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(graph) == expected
