"""pytest plugin: gVisor (runsc) sandboxes, and the check that none is left behind.

Fixtures:
- ``runsc`` (session): the runsc binary (a failure naming the Debian package when it is missing).
- ``gvisor_clean`` (function): snapshots ``runsc list`` and the ``taiea-*`` cgroups of every
  controller before the test; after it, waits (polling) until every container and cgroup the
  test created is gone, else fails naming them. Test modules use it with
  ``pytestmark = pytest.mark.usefixtures("gvisor_clean")``.
- ``sandbox_env`` (function): a factory ``(**sections) -> Env``: envs/ccw-sandbox.toml with
  some keys changed, e.g. ``sandbox_env(sandbox={"cpus": 0.001})``.

Helpers: ``runsc_ids()``, ``taiea_cgroups()`` and ``leftovers(ids)`` (what of those containers
still exists: containers in ``runsc list``, cgroup dirs).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool

from pipeline import config
from pipeline.waiting import WaitTimeout, poll

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")


def runsc_ids() -> set[str]:
    done = subprocess.run(
        ["runsc", "list", "-quiet"], capture_output=True, text=True, timeout=30, check=False
    )
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def taiea_cgroups() -> set[str]:
    """Every taiea-* cgroup dir, as controller/name."""
    return {f"{p.parent.name}/{p.name}" for p in CGROUP_ROOT.glob("*/taiea-*") if p.is_dir()}


def leftovers(ids: Iterable[str]) -> list[str]:
    """What of these containers still exists: `runsc list` entries and cgroup dirs."""
    wanted = set(ids)
    left = sorted(f"runsc container {i}" for i in runsc_ids() & wanted)
    left += sorted(c for c in taiea_cgroups() if c.split("/", 1)[1] in wanted)
    return left


@pytest.fixture(scope="session")
def runsc() -> str:
    return require_tool("runsc", "runsc")


@pytest.fixture
def gvisor_clean(runsc: str) -> Iterator[None]:
    """No sandbox, cgroup or container the test created outlives it."""
    containers, cgroups = runsc_ids(), taiea_cgroups()
    yield

    def new() -> tuple[set[str], set[str]]:
        return runsc_ids() - containers, taiea_cgroups() - cgroups

    try:
        poll(
            lambda: True if new() == (set(), set()) else None,
            timeout=10,
            interval=0.1,
            what="sandboxes and cgroups to be removed",
        )
    except WaitTimeout:
        left_containers, left_cgroups = new()
        pytest.fail(
            f"left behind: runsc containers {sorted(left_containers)}, "
            f"cgroups {sorted(left_cgroups)}"
        )


def write_env(path: Path, sections: dict[str, dict[str, Any]], base: str = "ccw-sandbox") -> Path:
    lines = [f"extends = {json.dumps(str(REPO / 'envs' / f'{base}.toml'))}"]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Callable[..., config.Env]:
    counter = iter(range(1000))

    def make(**sections: dict[str, Any]) -> config.Env:
        path = write_env(tmp_path / f"sandbox-{next(counter)}.toml", sections)
        return config.load_env(path)

    return make
