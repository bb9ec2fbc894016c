"""gVisor on a release host over SSH: runsc's subcommands run there, the sandbox's cgroup read
there in one command, its pieces (container, cgroups, run dir) removed and checked. The OCI
config, cgroup reading and OOM judgement are runtime/gvisor.py's, shared with the local runtime."""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime import gvisor
from pipeline.ssh.connection import Connection, RemoteFailure, q
from pipeline.waiting import WaitTimeout, poll

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


# ------------------------------------------------------------------------------ gVisor on the host


def remote_base(conn: Connection, configured: str, home: str) -> str:
    """The remote dir (``[remote] dir``, ``~`` the user's home) with uploads/ and runs/ in it."""
    base = configured
    if base == "~" or base.startswith("~/"):
        base = home.rstrip("/") + base[1:]
    if not base.startswith("/"):
        base = f"{home.rstrip('/')}/{base}"
    base = base.rstrip("/") or "/"
    conn.must(
        f"umask 077 && mkdir -p -- {q(base + '/uploads')} {q(base + '/runs')}",
        f"creating {base}",
    )
    return base


def run_dir(base: str, run_id: str, role: str = "") -> str:
    """A fresh run dir's path: <base>/runs/<run id>[-role]-<random>."""
    run = _UNSAFE_ID.sub("-", run_id)[:64] or "run"
    return f"{base}/runs/{run}{'-' + role if role else ''}-{secrets.token_hex(3)}"


class RemoteRunsc(gvisor.Runsc):
    """runsc on the host: gvisor.Runsc's subcommands and parsing, each command run over SSH with
    every argument quoted, bounded on the host by `timeout`, stdout and stderr kept apart.

    With `conn` (an instance's connection) every command uses it; without (the runtime's own
    calls, before any instance), each command opens a connection with `connect` and closes it.
    A lost connection is a failed command (status -1), as a hung local runsc is."""

    def __init__(
        self,
        path: str,
        conn: Connection | None = None,
        connect: Callable[[], Connection] | None = None,
    ):
        super().__init__(path)
        self.conn = conn
        self.connect = connect

    def _run(
        self, *args: str, timeout: float = gvisor.COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.path, *args]
        try:
            if self.conn is not None:
                return self._over(self.conn, argv, timeout)
            if self.connect is None:
                raise RemoteFailure("not connected to the host")
            conn = self.connect()
            try:
                return self._over(conn, argv, timeout)
            finally:
                conn.close()
        except RemoteFailure as exc:
            return subprocess.CompletedProcess(argv, -1, "", str(exc))

    @staticmethod
    def _over(
        conn: Connection, argv: list[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        marker = f"__taiea_stderr_{secrets.token_hex(6)}__"
        script = (
            "e=$(mktemp) || exit 125; "
            f'timeout {timeout:g} {" ".join(q(a) for a in argv)} 2>"$e"; s=$?; '
            f'printf \'\\n%s\\n\' {marker}; cat -- "$e"; rm -f -- "$e"; exit "$s"'
        )
        done = conn.run(script, timeout=timeout + conn.command_timeout)
        out, sep, err = done.output.rpartition(f"\n{marker}\n")
        if not sep:
            out, err = done.output, ""
        if done.status == 124:  # timeout(1): as gvisor.Runsc reports a hung command
            message = f"runsc {' '.join(argv[1:])}: no answer after {timeout:g} s"
            return subprocess.CompletedProcess(argv, -1, out, message)
        return subprocess.CompletedProcess(argv, done.status, out, err)


NO_CGROUP = gvisor.CgroupReading(None, None, None, None, None, None, None, None, (), ())


def read_cgroup(conn: Connection, cid: str) -> gvisor.CgroupReading:
    """The sandbox's cgroup (v1) on the host, every file in one command; what cannot be read
    (a file gone, the connection lost) is None, as gvisor.Cgroup.read() has it."""
    paths = " ".join(q(f"{gvisor.CGROUP_ROOT}/{c}/{cid}/{name}") for c, name in gvisor.CGROUP_FILES)
    try:
        done = conn.run(
            f'for f in {paths}; do printf "\\n@@ %s\\n" "$f"; cat -- "$f" 2>/dev/null; done'
        )
    except RemoteFailure:
        return NO_CGROUP
    return parse_cgroup(done.output)


def parse_cgroup(text: str) -> gvisor.CgroupReading:
    """The one-command dump (`@@ <path>` then the file) as a reading, as gvisor reads it here."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@ "):
            parts = line[3:].strip().split("/")
            current = files.setdefault(f"{parts[-3]}/{parts[-1]}", []) if len(parts) > 3 else None
        elif current is not None and line.strip():
            current.append(line)
    return gvisor.reading_of({key: "\n".join(lines) for key, lines in files.items() if lines})


def runsc_log(conn: Connection | None, path: str | None, n: int = 50) -> list[str]:
    """runsc's own log on the host, its messages unwrapped, each line prefixed ``runsc: ``."""
    if conn is None or path is None or not conn.active():
        return []
    try:
        done = conn.run(f"tail -n {int(n)} -- {q(path)} 2>/dev/null")
    except RemoteFailure:
        return []
    return [
        f"runsc: {gvisor.log_message(line)}" for line in done.output.splitlines() if line.strip()
    ]


def sandbox_leftovers(conn: Connection, runsc: str, cid: str, work: str | None) -> list[str]:
    """What of a sandbox is still on the host: its container, cgroup dirs, run dir."""
    script = (
        f"{q(runsc)} list -quiet 2>/dev/null </dev/null | while IFS= read -r id; do "
        f'[ "$id" = {q(cid)} ] && printf \'runsc container %s\\n\' "$id"; done; '
        f'for d in {gvisor.CGROUP_ROOT}/*/{q(cid)}; do [ -d "$d" ] && printf "%s\\n" "$d"; done; '
    )
    if work is not None:
        script += f"[ -e {q(work)} ] && printf '%s\\n' {q(work)}; "
    done = conn.run(script + "true")
    return [line for line in done.output.splitlines() if line.strip()]


def remove_sandbox(
    conn: Connection | None, runsc: str, cid: str, work: str | None, timeout: float = 10.0
) -> list[str]:
    """Delete the container, rmdir its cgroups (they empty once its tasks are gone), remove
    the run dir; polled until nothing is left. Returns what is left ([] when all is gone)."""
    if conn is None or not conn.active():
        why = conn.lost if conn is not None and conn.lost else "not connected"
        return [f"not verified on the host: {why}"]
    remove = (
        f"{q(runsc)} list -quiet 2>/dev/null </dev/null | while IFS= read -r id; do "
        f'[ "$id" = {q(cid)} ] && {q(runsc)} delete -force {q(cid)} </dev/null; done; '
        f'for d in {gvisor.CGROUP_ROOT}/*/{q(cid)}; do [ -d "$d" ] && rmdir "$d"; done; '
        + (f"rm -rf -- {q(work)}; " if work is not None else "")
        + "true"
    )
    left: list[str] = []

    def gone() -> bool | None:
        nonlocal left
        left = sandbox_leftovers(conn, runsc, cid, work)
        if not left:
            return True
        conn.run(remove, timeout=conn.command_timeout + 30)
        return None

    try:
        poll(gone, timeout=timeout, interval=0.1, what=f"sandbox {cid} to be removed")
    except WaitTimeout:
        pass
    except RemoteFailure as exc:
        return [f"not verified on the host: {exc}"]
    return left


def boot_total_memory(conn: Connection, pid: Any) -> int | None:
    """The `--total-memory` runsc gave the sandbox's sentry, from its command line on the host."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        done = conn.run(f"tr '\\0' '\\n' < /proc/{int(pid)}/cmdline")
    except RemoteFailure:
        return None
    argv = done.output.splitlines()
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--total-memory":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


@dataclass
class RemoteSandbox:
    """A gVisor sandbox on the host: its container id, its bundle dir, and what its removal
    left there (the names week 2 writes into its receipts)."""

    id: str
    bundle: str | None = None
    leftovers: list[str] = field(default_factory=list)
