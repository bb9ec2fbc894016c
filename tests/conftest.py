"""Shared test fixtures. Each area keeps its fixtures in a tests/fixtures_*.py plugin module."""

import os
import shutil

import pytest

pytest_plugins = [
    name[:-3]
    for name in sorted(os.listdir(os.path.dirname(__file__)))
    if name.startswith("fixtures_") and name.endswith(".py")
]


def require_tool(tool: str, package: str) -> str:
    """The path of an external tool, or a failure naming the Debian package (never a skip)."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"{tool} is not installed: apt-get install -y {package} (make test does this as root)"
        )
    return path


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    """Every test writes its runs and ledger under its own temp dir, never ./runs."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("PIPELINE_RECEIPT_KEY", raising=False)
