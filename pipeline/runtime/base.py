"""The runtime interface (ARCHITECTURE.md "Runtimes"): where a release runs.

Phases, probes and the emulator use only this. Implementations: process.py (a child process
here), gvisor.py (runsc with an OCI bundle), remote.py (a host over SSH with fabric).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Stats:
    """One resource sample of the release's whole process tree (or sandbox)."""

    rss_bytes: int
    cpu_percent: float


_WILDCARDS = frozenset({"0.0.0.0", "::"})  # the bind-all addresses (named here, bound nowhere)


@dataclass(frozen=True)
class ImageRoot:
    """A container image unpacked for a run: its root filesystem and how its config starts it."""

    rootfs: Path
    argv: tuple[str, ...]
    env: dict[str, str]
    uid: int
    gid: int
    cwd: str = "/"


@dataclass(frozen=True)
class LaunchSpec:
    """What to start: the extracted release root, its name, and the start environment."""

    root: Path
    name: str
    env: dict[str, str]
    port: int  # 0 = pick a free port
    host: str = "127.0.0.1"
    ready_path: str = "/ready"
    fallback_ready_path: str = "/health"
    poll_interval_s: float = 0.05
    run_id: str = "adhoc"
    tarball: Path | None = None  # the release's tarball (the remote runtime uploads it)
    image: ImageRoot | None = None  # run this image's root filesystem instead (gvisor only)

    @property
    def reach_host(self) -> str:
        """Where a client connects to reach the release: `host`, or loopback when the release
        listens on every interface (``host`` the wildcard address)."""
        return "127.0.0.1" if self.host in _WILDCARDS else self.host


class Instance(Protocol):
    url: str
    pid: int
    started_at: float  # time.monotonic() when the release was launched
    capture: Capture  # the JSON receipts the release printed on stdout

    def wait_ready(self, timeout: float) -> float:
        """Poll until ready; return seconds from start to ready. Raises StartupFailed."""
        ...

    def stats(self) -> Stats: ...

    def logs(self, n: int = 50) -> list[str]: ...

    def alive(self) -> bool: ...

    def gone(self) -> str | None:
        """Why the release is no longer there ("the release exited (status 137)", "lost the
        SSH connection to …"); None while it runs. Cheap: a liveness watch calls it often."""
        ...

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, SIGKILL after `grace` seconds; return the exit status."""
        ...


class Capture:
    """Counts the release's own stdout receipts (JSON lines with a `kind`) as they arrive."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: dict[str, dict[str, Any]] = {}
        self.lines = 0
        self.invalid = 0

    def feed_line(self, line: str) -> None:
        self.lines += 1
        text = line.strip()
        if not text.startswith("{"):
            return
        try:
            record = json.loads(text)
        except ValueError:
            self.invalid += 1
            return
        kind = record.get("kind") if isinstance(record, dict) else None
        if isinstance(kind, str):
            self.counts[kind] += 1
            self.last[kind] = record

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_receipt(self) -> dict[str, Any]:
        return {"count": self.total, "kinds": dict(self.counts), "invalid_lines": self.invalid}


# ---------------------------------------------------------------- sandboxes (gvisor, remote gvisor)


@dataclass(frozen=True)
class CgroupReading:
    """The sandbox's cgroup, read back from the kernel (None: not readable)."""

    memory_limit_bytes: int | None
    memory_usage_bytes: int | None
    memory_max_usage_bytes: int | None
    memory_failcnt: int | None
    oom_kills: int | None
    cpu_quota_us: int | None
    cpu_period_us: int | None
    cpu_throttled: int | None
    memory_procs: tuple[int, ...]
    cpu_procs: tuple[int, ...]

    def as_receipt(self) -> dict[str, Any]:
        out = asdict(self)
        out["memory_procs"] = list(self.memory_procs)
        out["cpu_procs"] = list(self.cpu_procs)
        return out


@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


@dataclass(frozen=True)
class OomKill:
    """The kernel killed the sandbox at its memory limit."""

    exit_status: int
    failcnt: int
    oom_kills: int
    max_usage_mb: float
    limit_mb: float

    @property
    def reason(self) -> str:
        return (
            f"OOM killed: the sandbox reached its {self.limit_mb:g} MiB memory limit "
            f"(cgroup memory.failcnt {self.failcnt}, oom_kill {self.oom_kills}, "
            f"peak {self.max_usage_mb:.0f} MiB), exit status {self.exit_status}"
        )

    def as_receipt(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


class SandboxInstance(Instance, Protocol):
    """An instance inside a gVisor sandbox, here or on a host over SSH: what week 2 proves its
    constraints with."""

    id: str  # the sandbox (container) id
    sandbox: Any  # its bundle and cgroup; `leftovers` lists what could not be removed
    final: CgroupReading | None  # the cgroup as it was when the sandbox ended
    oom: OomKill | None  # set at the stop when the kernel OOM-killed it

    def cgroup(self) -> CgroupReading: ...

    def oom_kill(self) -> OomKill | None: ...

    def exec(
        self, argv: list[str], *, as_release: bool = True, timeout: float = 15.0
    ) -> ExecResult: ...

    def sandbox_pid(self) -> int | None: ...

    def ps(self) -> list[dict[str, Any]]: ...


class Runtime(Protocol):
    name: str

    def start(self, spec: LaunchSpec) -> Instance: ...


class StartupFailed(Exception):
    """The release exited early or never got ready; carries its last output lines."""

    def __init__(self, reason: str, log_tail: list[str]):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail
