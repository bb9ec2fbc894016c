"""The `process` runtime: the release as a child process on this machine."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
from typing import IO

import psutil

from pipeline import interrupts
from pipeline.runtime.base import Capture, LaunchSpec, StartupFailed, Stats
from pipeline.runtime.readiness import not_ready_reason
from pipeline.waiting import WaitTimeout, poll

BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "HOME")
LOG_LINES = 500


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dies_with_us(argv: list[str], signame: str = "TERM") -> list[str]:
    """`argv` run so that the kernel sends it SIG`signame` when we die, however we died (SIGKILL
    included): util-linux's `setpriv --pdeathsig`, which sets PR_SET_PDEATHSIG and execs.
    (Not a preexec_fn: that makes Python fork with its at-fork hooks, where a signal's
    KeyboardInterrupt is swallowed.) The kernel's notice comes when the *thread* that started
    the child ends, so children of worker threads (the emulator's instance host launches from
    an executor) are left as they are, to their owner's stop."""
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    # We may die between the fork and setpriv's prctl: the notice is then never sent. So, with
    # the notice armed, the child checks that its parent is still us before it execs (a chaos
    # trial killed invoke at exactly that moment and the release lived on).
    guard = f'[ "$PPID" = {os.getpid()} ] || exit 1; exec "$@"'
    return [setpriv, "--pdeathsig", signame, "--", "/bin/sh", "-c", guard, "sh", *argv]


def exit_status(returncode: int) -> int:
    """Popen's -N for a signal death as the shell says it: 128 + N (SIGKILL → 137)."""
    return 128 - returncode if returncode < 0 else returncode


def child_env(spec: LaunchSpec, port: int) -> dict[str, str]:
    """A clean environment: a few basics, then the env file's values. Ours never leaks in."""
    env = {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}
    env.update(spec.env)
    env["PORT"] = str(port)
    env.setdefault("HTTP_HOST", spec.host)
    return env


class LogPump:
    """Reads the release's merged stdout/stderr: keeps the tail, counts its receipts."""

    def __init__(self, stream: IO[bytes]):
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.capture = Capture()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.tail.append(line)
                self.capture.feed_line(line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ProcessInstance:
    def __init__(self, spec: LaunchSpec, port: int, proc: subprocess.Popen[bytes]):
        self.spec = spec
        self.port = port
        self.url = f"http://{spec.reach_host}:{port}"
        self.proc = proc
        self.pid = proc.pid
        self.started_at = time.monotonic()
        assert proc.stdout is not None
        self._pump = LogPump(proc.stdout)
        self.capture = self._pump.capture
        self._cpu_last: tuple[float, float] | None = None
        self._status: int | None = None

    # --- the Instance interface

    def alive(self) -> bool:
        return self.proc.poll() is None

    def gone(self) -> str | None:
        status = self.proc.poll()
        return None if status is None else f"the release exited (status {exit_status(status)})"

    def wait_ready(self, timeout: float) -> float:
        reason = not_ready_reason(self.url, self.spec, self.alive, timeout)
        if reason is not None:
            if not self.alive():
                self._pump.join(1.0)
                reason = (
                    f"exited with status {exit_status(self.proc.returncode)} before it was ready"
                )
            raise StartupFailed(reason, self.logs(50))
        return time.monotonic() - self.started_at

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stats(self) -> Stats:
        rss, cpu_seconds = 0, 0.0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu_seconds += times.user + times.system
            except psutil.Error:
                continue
        now = time.monotonic()
        percent = 0.0
        if self._cpu_last is not None and now > self._cpu_last[0]:
            percent = max(0.0, (cpu_seconds - self._cpu_last[1]) / (now - self._cpu_last[0]) * 100)
        self._cpu_last = (now, cpu_seconds)
        return Stats(rss_bytes=rss, cpu_percent=percent)

    def logs(self, n: int = 50) -> list[str]:
        return list(self._pump.tail)[-n:]

    def stop(self, grace: float = 10.0) -> int:
        if self._status is not None:
            return self._status
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:  # the grace ends early when a second signal asks the pipeline to hurry
                poll(
                    lambda: True if self.proc.poll() is not None or interrupts.hurry() else None,
                    timeout=grace,
                    interval=0.02,
                    what="the release to exit",
                )
            except WaitTimeout:
                pass
        self._kill_group()
        self.proc.wait()
        self._pump.join(2.0)
        self._status = exit_status(self.proc.returncode)
        return self._status

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of the release's process group (beam, erl_child_setup…)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> ProcessInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0 if exc and exc[0] is KeyboardInterrupt else 10.0)


class ProcessRuntime:
    name = "process"

    def start(self, spec: LaunchSpec) -> ProcessInstance:
        port = spec.port or free_port(spec.host)
        return ProcessInstance(spec, port, launch(spec, port, subprocess.PIPE))


def launch(
    spec: LaunchSpec, port: int, stdout: int | IO[bytes], *, detached: bool = False
) -> subprocess.Popen[bytes]:
    """The release's start script in the foreground, in its own process group (so a stop can
    reap every child), with a clean environment. Unless `detached` (`release.start
    --background`: the release outlives this process), it dies with us."""
    argv = [str(spec.root / "bin" / spec.name), "foreground"]
    return subprocess.Popen(
        # KILL: a VM still booting loses a SIGTERM (the chaos test saw it live on); a
        # pipeline that died cannot record a graceful stop anyway
        argv if detached else dies_with_us(argv, "KILL"),
        cwd=spec.env.get("TMPDIR", "/tmp"),
        env=child_env(spec, port),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
