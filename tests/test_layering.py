"""The arrows of ../shared/ARCHITECTURE.md, read off the source: who may import whom.

- The emulator is a server: nothing outside pipeline/emulator imports it (the rollout, the tasks
  and the benches reach it over HTTP or through `python -m pipeline.emulator`), and it uses only
  the runtime interface and the base modules.
- The base modules (receipts, gates, config, release, errors) import nothing above them.
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
ABOVE_BASE = {"tasks", "phases", "probes", "runtime", "cloudrun", "emulator", "reporting", "report"}
EMULATOR_MAY_USE = {"runtime", "config", "errors", "receipts", "release", "waiting"}
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
