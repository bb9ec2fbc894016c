"""Running the emulator in the background and finding it again: start, stop, status.

A running emulator registers itself in `<state dir>/emulator.json` (pid, url, instance pids) and
holds `<state dir>/emulator.lock`. `stop` sends SIGTERM (the emulator then stops every instance)
and, if the emulator does not exit in time, SIGKILL; then any instance it left behind is killed
(found by its command line, which names the release root under the state dir).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

REGISTRY_FILE = "emulator.json"
LOG_FILE = "emulator.log"


def read_registry(state_dir: Path) -> dict[str, Any] | None:
    if state_dir.exists() and not state_dir.is_dir():
        raise PipelineError(f"{state_dir}: the emulator's state dir is not a directory")
    try:
        data = json.loads((state_dir / REGISTRY_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(state_dir: Path) -> str:
    reg = read_registry(state_dir)
    if reg is None:
        return ""
    return f" (pid {reg.get('pid')} at {reg.get('url')})"


def probe(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET <url>/emulator/v1/status, or None when nothing answers."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", "/emulator/v1/status")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def status(state_dir: Path) -> dict[str, Any]:
    """Whether an emulator runs with this state dir, and where."""
    reg = read_registry(state_dir)
    out: dict[str, Any] = {"running": False, "state_dir": str(state_dir)}
    if reg is None or not pid_alive(int(reg.get("pid", 0))):
        return out
    live = probe(str(reg.get("url", "")))
    if live is None:
        out.update({"pid": reg.get("pid"), "url": reg.get("url"), "answering": False})
        out["running"] = True
        return out
    out.update(live)
    out["running"] = True
    out["answering"] = True
    return out


def kill_orphans(state_dir: Path) -> list[int]:
    """Kill release processes a dead emulator left behind (their command line names the state
    dir). Only call this while holding the state dir's lock."""
    import psutil

    marker = str(state_dir.resolve()) + os.sep
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or ())
        if marker + "releases" + os.sep in cmdline and proc.pid != os.getpid():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
    if killed:
        psutil.wait_procs([psutil.Process(p) for p in killed if psutil.pid_exists(p)], timeout=5)
    return killed


def serve_command(env: str, port: int, state_dir: Path, host: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.emulator", "serve", "--env", env, "--port", str(port)]
    cmd += ["--state-dir", str(state_dir)]
    if host:
        cmd += ["--host", host]
    return cmd


def start_background(
    env: str, port: int, state_dir: Path, host: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Start `python -m pipeline.emulator serve` detached; return its registry once it answers."""
    from pipeline.waiting import WaitTimeout, poll

    state_dir = state_dir.resolve()
    current = status(state_dir)
    if current["running"]:
        raise PipelineError(
            f"emulator: already running at {current.get('url')} (pid {current.get('pid')}); "
            "stop it with: invoke emulator.stop"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            serve_command(env, port, state_dir, host),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal does not reach it
            close_fds=True,
        )

    def up() -> dict[str, Any] | None:
        code = proc.poll()
        if code is not None:
            raise PipelineError(f"emulator: exited with status {code}: {_last_line(log_path)}")
        reg = read_registry(state_dir)
        if reg is None or int(reg.get("pid", 0)) != proc.pid:
            return None
        return reg if probe(str(reg["url"]), timeout=1.0) is not None else None

    try:
        reg = poll(up, timeout=timeout, interval=0.05, what="the emulator to answer")
    except WaitTimeout:
        proc.kill()
        raise PipelineError(
            f"emulator: not answering after {timeout:g} s; see {log_path}"
        ) from None
    reg["log"] = str(log_path)
    return reg


def stop(state_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """SIGTERM the emulator (it stops every instance), SIGKILL after `timeout`; kill orphans."""
    import fcntl

    from pipeline.waiting import WaitTimeout, poll

    state_dir = state_dir.resolve()
    reg = read_registry(state_dir)
    out: dict[str, Any] = {"state_dir": str(state_dir), "was_running": False, "killed": []}
    if reg is not None and pid_alive(int(reg.get("pid", 0))):
        pid = int(reg["pid"])
        out.update({"was_running": True, "pid": pid, "url": reg.get("url")})
        began = time.monotonic()
        try:
            os.kill(pid, signal.SIGTERM)
            poll(lambda: True if not pid_alive(pid) else None, timeout=timeout, interval=0.05)
            out["forced"] = False
        except ProcessLookupError:
            out["forced"] = False
        except WaitTimeout:
            os.kill(pid, signal.SIGKILL)
            out["forced"] = True
            poll(lambda: True if not pid_alive(pid) else None, timeout=10, interval=0.05)
        out["seconds"] = round(time.monotonic() - began, 3)
    # whatever is left (a killed emulator's instances): only when no emulator holds the lock
    lock = state_dir / "emulator.lock"
    if lock.exists():
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return out
            try:
                out["killed"] = kill_orphans(state_dir)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        try:
            (state_dir / REGISTRY_FILE).unlink()
        except FileNotFoundError:
            pass
    return out


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"
