"""The `gvisor` runtime: the release inside a gVisor sandbox (runsc) with the CCW limits.

Recipe (../shared/notes/gvisor.md, seen on these machines): an OCI bundle in a temp dir whose
config gives a read-only root, the extracted release bind-mounted read-only at /opt/taiea, a
tmpfs /tmp, uid/gid 65534, a cgroup memory limit and a CFS CPU quota; then
``runsc --network=host run --bundle DIR ID`` as a child process (foreground). Host networking
keeps the release reachable on 127.0.0.1 (there is no iptables here for runsc's own netstack).

The memory cgroup is created here, before runsc starts, with the limit written into it: runsc
joins a pre-created cgroup and leaves it in place when the sandbox dies, so an OOM kill can still
be read afterwards (memory.failcnt, memory.oom_control's oom_kill, memory.max_usage_in_bytes);
runsc itself deletes the cgroups it created (cpu, …) when the sandbox ends. `stop()` removes
everything a start created, whatever happened: the container (`runsc delete -force`), every
``/sys/fs/cgroup/*/taiea-<id>`` directory and the bundle dir.

Stats: memory from the cgroup (memory.usage_in_bytes: the whole sandbox, sentry included), CPU
from `runsc events --stats` (cumulative nanoseconds; the percent is the delta between samples).

Why ~870 lines: the OCI bundle, the cgroup, runsc's commands and the sandbox instance are one
runtime; runtime/remote.py still calls some of its parts over SSH (issue #18 item 3 gives them a
host executor).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.runtime.base import (
    CgroupReading,
    ExecResult,
    LaunchSpec,
    OomKill,
    StartupFailed,
    Stats,
)
from pipeline.runtime.process import LogPump, dies_with_us, exit_status, free_port
from pipeline.runtime.readiness import NotReady, not_ready_reason
from pipeline.waiting import WaitTimeout, poll

INSTALL = "apt-get install -y runsc"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
MIB = 1 << 20
SANDBOX_TMP = "/tmp"
OOM_STATUS = 137  # 128 + SIGKILL: how runsc reports a sandbox the kernel OOM-killed
COMMAND_TIMEOUT_S = 20.0
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def find_runsc(name: str) -> str | None:
    """The runsc binary: a path, or a name on PATH (also /usr/sbin, /sbin)."""
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def check_host(runsc: str, where: str) -> str:
    """What gvisor needs here, or a PipelineError naming what is missing; returns runsc's path."""
    path = find_runsc(runsc)
    if path is None:
        raise PipelineError(f"{where}: runtime gvisor needs runsc ({runsc!r} not found): {INSTALL}")
    if os.geteuid() != 0:
        raise PipelineError(f"{where}: runtime gvisor needs root (cgroups, runsc); run as root")
    if not (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").is_file():
        raise PipelineError(
            f"{where}: runtime gvisor needs the cgroup v1 memory controller at "
            f"{CGROUP_ROOT / 'memory'} (not mounted here)"
        )
    return path


def container_id(run_id: str, role: str = "r") -> str:
    """A runsc container id (and cgroup name): taiea-<run id>-<role><6 hex>."""
    return f"taiea-{_ID_UNSAFE.sub('-', run_id)}-{role}{uuid.uuid4().hex[:6]}"


def _of_run(run_id: str) -> re.Pattern[str]:
    """Names a run's sandboxes carry: the container id (also its cgroups' name), and the id
    with a dash and mkdtemp's suffix (its bundle dir)."""
    return re.compile(rf"taiea-{re.escape(_ID_UNSAFE.sub('-', run_id))}-[a-z]+[0-9a-f]{{6}}(-.*)?")


def remove_leftovers(run_id: str, runsc_name: str = "runsc") -> list[str]:
    """What a run killed outright left of its sandboxes, found by the run id each name
    carries, removed: containers still in `runsc list` (killed, deleted), their cgroups, their
    bundle dirs. Returns what was removed (`runs.recover` records it)."""
    named = _of_run(run_id)
    removed: list[str] = []
    path = find_runsc(runsc_name)
    if path is not None and os.geteuid() == 0:
        runsc = Runsc(path)
        for cid in runsc.list_ids():
            if named.fullmatch(cid):
                runsc.kill(cid, "KILL")
                runsc.delete(cid)
                removed.append(f"runsc container {cid}")
    for cgroup in sorted({p.name for p in CGROUP_ROOT.glob("*/taiea-*") if p.is_dir()}):
        if named.fullmatch(cgroup) and not Cgroup(cgroup).remove():
            removed.append(f"cgroup {cgroup}")
    for bundle in Path(tempfile.gettempdir()).glob("taiea-*"):
        if bundle.is_dir() and not bundle.is_symlink() and named.fullmatch(bundle.name):
            shutil.rmtree(bundle, ignore_errors=True)
            removed.append(str(bundle))
    return removed


@dataclass(frozen=True)
class Limits:
    """The sandbox's constraints as the OCI config and the cgroup express them."""

    memory_bytes: int
    cpu_quota_us: int
    cpu_period_us: int
    tmpfs_mb: int
    uid: int
    gid: int
    mount_point: str

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(
            memory_bytes=int(settings.memory_mb) * MIB,
            cpu_quota_us=max(1, round(float(settings.cpus) * CPU_PERIOD_US)),
            cpu_period_us=CPU_PERIOD_US,
            tmpfs_mb=int(settings.tmpfs_mb),
            uid=int(settings.uid),
            gid=int(settings.gid),
            mount_point=str(settings.mount_point),
        )

    @property
    def cpus(self) -> float:
        return self.cpu_quota_us / self.cpu_period_us

    def as_receipt(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_bytes / MIB,
            "cpus": self.cpus,
            "cpu_quota_us": self.cpu_quota_us,
            "cpu_period_us": self.cpu_period_us,
            "tmpfs_mb": self.tmpfs_mb,
            "uid": self.uid,
            "gid": self.gid,
            "mount_point": self.mount_point,
        }


def oci_config(
    limits: Limits,
    cid: str,
    args: list[str],
    env: dict[str, str],
    release_root: Path | None,
    rootfs: Path | None = None,
    cwd: str = SANDBOX_TMP,
) -> dict[str, Any]:
    """The bundle's config.json (OCI runtime spec 1.0.2), as in notes/gvisor.md. With `rootfs`
    (an unpacked image) that is the sandbox's root and nothing of the host is mounted; without,
    the host's root, read-only, with the release bind-mounted."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": SANDBOX_TMP,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", f"size={limits.tmpfs_mb}m"],
        },
    ]
    if release_root is not None:
        mounts.append(
            {
                "destination": limits.mount_point,
                "type": "bind",
                "source": str(release_root),
                "options": ["rbind", "ro"],
            }
        )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": limits.uid, "gid": limits.gid},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs) if rootfs is not None else "/", "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": f"/{cid}",
            "resources": {
                "memory": {"limit": limits.memory_bytes},
                "cpu": {"quota": limits.cpu_quota_us, "period": limits.cpu_period_us},
            },
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
        },
    }


# ---------------------------------------------------------------- cgroups


def log_message(line: str) -> str:
    """runsc writes its log lines as JSON here (whatever --log-format says): keep the message."""
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(text)
            if isinstance(record, dict) and isinstance(record.get("msg"), str):
                return str(record["msg"])
    return text


CGROUP_FILES = (  # what a CgroupReading is made of: (controller, file)
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.oom_control"),
    ("memory", "cgroup.procs"),
    ("cpu", "cpu.cfs_quota_us"),
    ("cpu", "cpu.cfs_period_us"),
    ("cpu", "cpu.stat"),
    ("cpu", "cgroup.procs"),
)


def reading_of(files: Mapping[str, str]) -> CgroupReading:
    """A cgroup reading from its files' text, keyed "controller/file" (a file that could not be
    read is missing): here read from /sys/fs/cgroup, over SSH read in one command on the host."""

    def number(key: str) -> int | None:
        try:
            return int(files[key].split()[0])
        except (KeyError, IndexError, ValueError):
            return None

    def keyed(key: str, name: str) -> int | None:
        for line in files.get(key, "").splitlines():
            word, _, value = line.partition(" ")
            if word == name:
                with contextlib.suppress(ValueError):
                    return int(value)
        return None

    def pids(key: str) -> tuple[int, ...]:
        return tuple(int(p) for p in files.get(key, "").split() if p.isdigit())

    return CgroupReading(
        memory_limit_bytes=number("memory/memory.limit_in_bytes"),
        memory_usage_bytes=number("memory/memory.usage_in_bytes"),
        memory_max_usage_bytes=number("memory/memory.max_usage_in_bytes"),
        memory_failcnt=number("memory/memory.failcnt"),
        oom_kills=keyed("memory/memory.oom_control", "oom_kill"),
        cpu_quota_us=number("cpu/cpu.cfs_quota_us"),
        cpu_period_us=number("cpu/cpu.cfs_period_us"),
        cpu_throttled=keyed("cpu/cpu.stat", "nr_throttled"),
        memory_procs=pids("memory/cgroup.procs"),
        cpu_procs=pids("cpu/cgroup.procs"),
    )


def judge_oom(status: int, reading: CgroupReading, limit_bytes: int) -> OomKill | None:
    """An OOM kill, when a sandbox that died on its own shows one: exit 137 and the cgroup's
    failcnt or oom_kill (here and on a host over SSH alike)."""
    failcnt, kills = reading.memory_failcnt or 0, reading.oom_kills or 0
    if status != OOM_STATUS or not (failcnt or kills):
        return None
    return OomKill(
        exit_status=status,
        failcnt=failcnt,
        oom_kills=kills,
        max_usage_mb=round((reading.memory_max_usage_bytes or 0) / MIB, 3),
        limit_mb=round((reading.memory_limit_bytes or limit_bytes) / MIB, 3),
    )


class Cgroup:
    """`/sys/fs/cgroup/<controller>/<name>` for every controller (cgroup v1)."""

    def __init__(self, name: str, root: Path = CGROUP_ROOT):
        self.name = name
        self.root = root

    def path(self, controller: str) -> Path:
        return self.root / controller / self.name

    def create_memory(self, limit_bytes: int) -> None:
        memory = self.path("memory")
        memory.mkdir()
        (memory / "memory.limit_in_bytes").write_text(str(limit_bytes))

    def read(self) -> CgroupReading:
        files = {}
        for controller, name in CGROUP_FILES:
            with contextlib.suppress(OSError):
                files[f"{controller}/{name}"] = (self.path(controller) / name).read_text()
        return reading_of(files)

    def usage_bytes(self) -> int | None:
        """memory.usage_in_bytes alone: the monitor's sample, read every interval."""
        try:
            return int((self.path("memory") / "memory.usage_in_bytes").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def existing(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"*/{self.name}") if p.is_dir())

    def remove(self, timeout: float = 5.0) -> list[str]:
        """rmdir the cgroup in every controller (a cgroup empties when its tasks are gone).
        Returns what could not be removed."""

        def gone() -> bool | None:
            for path in self.existing():
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            return True if not self.existing() else None

        try:
            poll(gone, timeout=timeout, interval=0.05, what=f"cgroup {self.name} to empty")
        except (WaitTimeout, OSError):
            return [str(p) for p in self.existing()]
        return []


# ---------------------------------------------------------------- runsc


class Runsc:
    """runsc's subcommands as this runtime uses them (each a short child process)."""

    def __init__(self, path: str):
        self.path = path

    def _run(
        self, *args: str, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """One runsc command; a hung one is killed after `timeout` s and reported as status
        -1 (cleanup must go on whatever runsc does)."""
        try:
            return subprocess.run(
                [self.path, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            message = f"runsc {' '.join(args)}: no answer after {timeout:g} s"
            return subprocess.CompletedProcess([self.path, *args], -1, "", message)

    def info(self) -> dict[str, Any]:
        """Version and spec (`runsc --version`) and the platform runsc uses by default."""
        version = self._run("--version").stdout
        found = re.search(r"runsc version (\S+)", version)
        spec = re.search(r"spec: (\S+)", version)
        listed = self._run("flags")
        flags = listed.stdout + listed.stderr
        platform = re.search(r"-platform string\s*\n.*?\(default \"(\w+)\"\)", flags)
        return {
            "runsc": self.path,
            "version": found.group(1) if found else version.strip(),
            "oci_spec": spec.group(1) if spec else None,
            "platform": platform.group(1) if platform else "unknown",
        }

    def list_ids(self) -> list[str]:
        out = self._run("list", "-quiet").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def state(self, cid: str) -> dict[str, Any] | None:
        done = self._run("state", cid)
        if done.returncode != 0:
            return None
        try:
            state = json.loads(done.stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def stats(self, cid: str) -> dict[str, Any] | None:
        """`runsc events --stats ID`: one JSON line (cpu ns, memory, pids), or None."""
        done = self._run("events", "--stats", cid, timeout=5.0)
        if done.returncode != 0:
            return None
        try:
            event = json.loads(done.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None
        data = event.get("data") if isinstance(event, dict) else None
        return data if isinstance(data, dict) else None

    def kill(self, cid: str, sig: str) -> bool:
        return self._run("kill", cid, sig).returncode == 0

    def delete(self, cid: str) -> bool:
        return self._run("delete", "-force", cid, timeout=30.0).returncode == 0

    def exec(
        self, cid: str, argv: list[str], user: str | None = None, timeout: float = 15.0
    ) -> ExecResult:
        args = ["exec", *(["--user", user] if user else []), cid, *argv]
        done = self._run(*args, timeout=timeout)
        return ExecResult(tuple(argv), done.returncode, done.stdout, done.stderr)

    def ps(self, cid: str) -> list[dict[str, Any]]:
        """The sandbox's processes as runsc sees them: uid, pid, ppid, cmd (`runsc ps` table)."""
        done = self._run("ps", cid)
        if done.returncode != 0:
            return []
        lines = done.stdout.splitlines()
        if not lines or not lines[0].startswith("UID"):
            return []
        procs = []
        for line in lines[1:]:
            cols = line.split()
            if len(cols) >= 8 and cols[0].isdigit():
                procs.append(
                    {
                        "uid": int(cols[0]),
                        "pid": int(cols[1]),
                        "ppid": int(cols[2]),
                        "cmd": cols[-1],
                    }
                )
        return procs


# ---------------------------------------------------------------- instances


_LIVE: weakref.WeakSet[GvisorInstance] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # a bug or an unhandled signal must not leave a sandbox behind
    for instance in list(_LIVE):
        with contextlib.suppress(Exception):
            instance.stop(0)


class Sandbox:
    """One container's bundle dir, cgroup and runsc handle; `remove()` undoes all of it."""

    def __init__(self, runsc: Runsc, limits: Limits, cid: str):
        self.runsc = runsc
        self.limits = limits
        self.id = cid
        self.cgroup = Cgroup(cid)
        self.bundle = Path(tempfile.mkdtemp(prefix=f"{cid}-"))  # found by run id if we die
        self.log_path = self.bundle / "runsc.log"
        self.leftovers: list[str] = []
        try:
            self.cgroup.create_memory(limits.memory_bytes)
        except OSError as exc:
            shutil.rmtree(self.bundle, ignore_errors=True)
            raise PipelineError(
                f"cannot create the memory cgroup {self.cgroup.path('memory')}: {exc}"
            ) from None

    def write_config(self, config: dict[str, Any]) -> None:
        path = self.bundle / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # env may hold secrets
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=1)

    def runsc_args(self, *command: str) -> list[str]:
        return [
            self.runsc.path,
            "--network=host",
            "--log",
            str(self.log_path),
            "--log-format",
            "text",
            *command,
        ]

    def runsc_log(self, n: int = 50) -> list[str]:
        """runsc's own log (errors and warnings only; its messages unwrapped from JSON)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [f"runsc: {log_message(line)}" for line in lines[-n:] if line.strip()]

    def runsc_error(self) -> str | None:
        """runsc's last error message, when it wrote one."""
        lines = self.runsc_log(20)
        return lines[-1].removeprefix("runsc: ") if lines else None

    def remove(self) -> list[str]:
        """Delete the container, its cgroups and the bundle dir; returns what is left."""
        if self.id in self.runsc.list_ids():
            self.runsc.delete(self.id)
        left = self.cgroup.remove()
        if self.id in self.runsc.list_ids():
            left.append(f"runsc container {self.id}")
        shutil.rmtree(self.bundle, ignore_errors=True)
        self.leftovers = left
        return left


class GvisorInstance:
    def __init__(
        self,
        spec: LaunchSpec,
        port: int,
        sandbox: Sandbox,
        proc: subprocess.Popen[bytes],
        started_at: float,
    ):
        self.spec = spec
        self.port = port
        self.url = f"http://{spec.reach_host}:{port}"
        self.sandbox = sandbox
        self.id = sandbox.id
        self.proc = proc
        self.pid = proc.pid
        self.started_at = started_at
        assert proc.stdout is not None
        self._pump = LogPump(proc.stdout)
        self.capture = self._pump.capture
        self._cpu_last: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._status: int | None = None
        self._killed = False  # we sent KILL: a 137 is then ours, not the kernel's
        self._runsc_log: list[str] = []
        self.final: CgroupReading | None = None  # the cgroup as it was when the sandbox ended
        self.oom: OomKill | None = None
        _LIVE.add(self)

    @property
    def runsc(self) -> Runsc:
        return self.sandbox.runsc

    @property
    def limits(self) -> Limits:
        return self.sandbox.limits

    # --- the Instance interface

    def alive(self) -> bool:
        return self.proc.poll() is None

    def gone(self) -> str | None:
        status = self.proc.poll()
        if status is None:
            return None
        oom = self.oom_kill()
        return oom.reason if oom else f"the sandbox exited (status {exit_status(status)})"

    def wait_ready(self, timeout: float) -> float:
        reason = not_ready_reason(self.url, self.spec, self.alive, timeout)
        if reason is not None:
            if not self.alive():
                self._pump.join(1.0)
                oom = self.oom_kill()
                status = exit_status(self.proc.returncode)
                reason = (
                    oom.reason
                    if oom
                    else f"the sandbox exited with status {status} before it was ready"
                )
                runsc_error = self.sandbox.runsc_error()
                if runsc_error and not oom:
                    reason += f": {runsc_error}"
            raise StartupFailed(reason, self.logs(50))
        return time.monotonic() - self.started_at

    def stats(self) -> Stats:
        """Memory from the cgroup; CPU % of one core from `runsc events --stats` deltas."""
        usage = self.sandbox.cgroup.usage_bytes() or 0
        percent = 0.0
        data = self.runsc.stats(self.id) if self.alive() else None
        total = None
        if data is not None:
            cpu = data.get("cpu", {}).get("usage", {}).get("total")
            total = int(cpu) if isinstance(cpu, int) else None
        now = time.monotonic()
        with self._lock:
            if total is not None:
                last = self._cpu_last
                if last is not None and now > last[0] and total >= last[1]:
                    percent = (total - last[1]) / 1e9 / (now - last[0]) * 100
                self._cpu_last = (now, total)
        return Stats(rss_bytes=usage, cpu_percent=percent)

    def logs(self, n: int = 50) -> list[str]:
        release = list(self._pump.tail)[-n:]
        runsc = self._runsc_log or self.sandbox.runsc_log(n)
        return release + runsc[-n:]

    def stop(self, grace: float = 10.0) -> int:
        """`runsc kill ID TERM`, KILL after `grace` s, `runsc delete -force`; then remove the
        cgroups and the bundle. Returns the exit status (137 for a kill)."""
        with self._lock:
            if self._status is not None:
                return self._status
            self._status = -1  # stopping; a second caller returns at once
        try:
            if self.alive():
                self.runsc.kill(self.id, "TERM")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            if self.alive():
                self._killed = True
                self.runsc.kill(self.id, "KILL")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            if self.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            self._pump.join(2.0)
            self.oom = self.oom_kill()
            self.final = self.sandbox.cgroup.read()
            self._runsc_log = self.sandbox.runsc_log(50)
        finally:
            self.sandbox.remove()
            _LIVE.discard(self)
        status = exit_status(self.proc.returncode) if self.proc.returncode is not None else -1
        self._status = status
        return status

    # --- gvisor only

    def oom_kill(self) -> OomKill | None:
        """An OOM kill, once the sandbox has died of one (exit 137 and the cgroup's evidence)."""
        if self.oom is not None:
            return self.oom
        if self.proc.returncode is None or self._killed:
            return None
        limit = self.limits.memory_bytes
        return judge_oom(exit_status(self.proc.returncode), self.sandbox.cgroup.read(), limit)

    def cgroup(self) -> CgroupReading:
        return self.final if self.final is not None else self.sandbox.cgroup.read()

    def exec(
        self, argv: list[str], *, as_release: bool = True, timeout: float = 15.0
    ) -> ExecResult:
        """Run a command inside the running sandbox (as the release's uid:gid by default)."""
        user = f"{self.limits.uid}:{self.limits.gid}" if as_release else None
        return self.runsc.exec(self.id, argv, user=user, timeout=timeout)

    def sandbox_pid(self) -> int | None:
        state = self.runsc.state(self.id)
        pid = state.get("pid") if state else None
        return pid if isinstance(pid, int) and pid > 0 else None

    def ps(self) -> list[dict[str, Any]]:
        return self.runsc.ps(self.id)

    def __enter__(self) -> GvisorInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0 if exc and exc[0] is KeyboardInterrupt else 10.0)


PROBE_SCRIPT = "head -n 1 /proc/meminfo; uname -r; id -u; echo probe-ready; exec sleep 60"


@dataclass(frozen=True)
class ProbeReport:
    """A short-lived sandbox with the limits and no release: what runsc really applied."""

    id: str
    started: bool
    sandbox_pid: int | None
    cgroup: CgroupReading | None
    total_memory_bytes: int | None  # what runsc told the sentry (its boot --total-memory)
    inside: dict[str, Any]  # seen from inside: MemTotal, kernel release, uid
    error: str | None
    log_tail: list[str]
    leftovers: list[str]


class GvisorRuntime:
    name = "gvisor"

    def __init__(self, settings: Any, runsc_path: str):
        self.settings = settings
        self.limits = Limits.of(settings)
        self.runsc = Runsc(runsc_path)

    def host_info(self) -> dict[str, Any]:
        """The host the sandboxes run on: its kernel release and CPU count."""
        return {"kernel": platform.release(), "cpus": os.cpu_count()}

    def native(self) -> Any:
        """The runtime for the native comparison run: the release as a process on this host."""
        from pipeline.runtime.process import ProcessRuntime

        return ProcessRuntime()

    @staticmethod
    def sandbox_env(spec_env: dict[str, str], port: int, host: str) -> dict[str, str]:
        """The release's environment inside the sandbox: the env file's values, with the
        paths that only exist there (TMPDIR, HOME, the crash dump on the tmpfs)."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env.update(spec_env)
        env.update(
            PORT=str(port),
            TMPDIR=SANDBOX_TMP,
            HOME=SANDBOX_TMP,
            ERL_CRASH_DUMP=f"{SANDBOX_TMP}/erl_crash.dump",
        )
        env.setdefault("HTTP_HOST", host)
        return env

    def start(self, spec: LaunchSpec) -> GvisorInstance:
        port = spec.port or free_port(spec.host)
        sandbox = Sandbox(self.runsc, self.limits, container_id(spec.run_id))
        try:
            sandbox.write_config(self._config(spec, sandbox.id, port))
            started_at = time.monotonic()
            proc = subprocess.Popen(
                # runsc passes the SIGTERM on to the release when we die
                dies_with_us(
                    sandbox.runsc_args("run", "--bundle", str(sandbox.bundle), sandbox.id)
                ),
                cwd=sandbox.bundle,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            sandbox.remove()
            raise
        return GvisorInstance(spec, port, sandbox, proc, started_at)

    def _config(self, spec: LaunchSpec, cid: str, port: int) -> dict[str, Any]:
        env = self.sandbox_env(spec.env, port, spec.host)
        image = spec.image
        if image is None:
            args = [f"{self.limits.mount_point.rstrip('/')}/bin/{spec.name}", "foreground"]
            return oci_config(self.limits, cid, args, env, spec.root)
        limits = replace(self.limits, uid=image.uid, gid=image.gid)  # the image's user
        env = {**image.env, **env}
        return oci_config(limits, cid, list(image.argv), env, None, image.rootfs, image.cwd)

    def probe(self, run_id: str, timeout: float = 15.0) -> ProbeReport:
        """Run a sandbox with the limits and a shell instead of the release: it reports what it
        sees inside (MemTotal, kernel release, uid) while its cgroup is read back here; then
        it is killed and removed. Shows what is enforced before the release ever starts."""
        sandbox = Sandbox(self.runsc, self.limits, container_id(run_id, "probe"))
        reading, total, error, pid, inside = None, None, None, None, {}
        proc: subprocess.Popen[bytes] | None = None
        pump: LogPump | None = None
        try:
            argv = ["/bin/sh", "-c", PROBE_SCRIPT]
            sandbox.write_config(oci_config(self.limits, sandbox.id, argv, {}, None))
            proc = subprocess.Popen(
                # runsc passes the SIGTERM on to the release when we die
                dies_with_us(
                    sandbox.runsc_args("run", "--bundle", str(sandbox.bundle), sandbox.id)
                ),
                cwd=sandbox.bundle,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert proc.stdout is not None
            pump = LogPump(proc.stdout)
            running = proc

            def ready() -> bool | None:
                if "probe-ready" in pump.tail:
                    return True
                if running.poll() is not None:
                    raise NotReady(f"runsc exited with status {exit_status(running.returncode)}")
                return None

            try:
                poll(ready, timeout=timeout, interval=0.02, what="the probe sandbox")
            except (WaitTimeout, NotReady) as exc:
                error = str(exc)
                if proc.poll() is not None:
                    pump.join(2.0)
                    error += f": {sandbox.runsc_error() or ' / '.join(list(pump.tail)[-3:])}"
            else:
                reading = sandbox.cgroup.read()
                state = self.runsc.state(sandbox.id)
                pid = state.get("pid") if state else None
                total = _boot_total_memory(pid)
                inside = probe_output(list(pump.tail))
        finally:
            if proc is not None:
                if proc.poll() is None:
                    self.runsc.kill(sandbox.id, "KILL")
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if pump is not None:
                pump.join(2.0)
            tail = [*(list(pump.tail)[-20:] if pump else []), *sandbox.runsc_log(50)]
            left = sandbox.remove()
        return ProbeReport(
            sandbox.id, error is None, pid, reading, total, inside, error, tail, left
        )


def probe_output(lines: list[str]) -> dict[str, Any]:
    """MemTotal (bytes), kernel release and uid as the probe printed them."""
    out: dict[str, Any] = {}
    rest = [line.strip() for line in lines if line.strip() and line.strip() != "probe-ready"]
    for line in rest:
        if line.startswith("MemTotal:"):
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError):
                out["mem_total_bytes"] = int(parts[1]) * 1024
        elif line.isdigit():
            out["uid"] = int(line)
        elif re.match(r"^\d+\.\d+", line):
            out["kernel_release"] = line
    return out


def _boot_total_memory(pid: Any) -> int | None:
    """The `--total-memory` runsc gave the sandbox's sentry (from its command line)."""
    if not isinstance(pid, int):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == b"--total-memory":
            with contextlib.suppress(ValueError):
                return int(value)
    return None
