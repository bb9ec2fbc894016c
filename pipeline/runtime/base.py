"""The runtime interface (ARCHITECTURE.md "Runtimes"): where a release runs.

Phases, probes and the emulator use only this. Implementations: process.py (a child process
here), gvisor.py (runsc with an OCI bundle), remote.py (a host over SSH with fabric).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Stats:
    """One resource sample of the release's whole process tree (or sandbox)."""

    rss_bytes: int
    cpu_percent: float


@dataclass(frozen=True)
class LaunchSpec:
    """What to start: the extracted release root, its name, and the start environment."""

    root: Path
    name: str
    env: dict[str, str]
    port: int
    host: str = "127.0.0.1"


class Instance(Protocol):
    url: str
    pid: int

    def wait_ready(self, timeout: float) -> float:
        """Poll until ready; return seconds from start to ready. Raises StartupFailed."""
        ...

    def stats(self) -> Stats: ...

    def logs(self, n: int = 50) -> list[str]: ...

    def alive(self) -> bool: ...

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, SIGKILL after `grace` seconds; return the exit status."""
        ...


class Runtime(Protocol):
    name: str

    def start(self, spec: LaunchSpec) -> Instance: ...


class StartupFailed(Exception):
    """The release exited early or never got ready; carries its last output lines."""

    def __init__(self, reason: str, log_tail: list[str]):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail
