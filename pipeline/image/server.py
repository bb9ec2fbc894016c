"""The local registry: Debian's `docker-registry` (the CNCF Distribution server) on 127.0.0.1,
its storage and config under a state dir (default `<runs>/registry`).

Foreground (`serve`): a child that dies with us, stopped on return. Background: the server's
pid, port and url in `<state>/registry.json`; `stop` sends SIGTERM, then SIGKILL after the
timeout. With `htpasswd` it asks for Basic credentials, as a private registry does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.waiting import WaitTimeout, poll

BINARY = "docker-registry"
STATE_FILE = "registry.json"
LOG_FILE = "registry.log"
DEFAULT_PORT = 5000


def find_binary() -> str:
    found = shutil.which(BINARY)
    if found is None:
        raise PipelineError(
            f"{BINARY} not found: install Debian's docker-registry (apt-get install -y docker-registry)"
        )
    return found


def config_text(storage: Path, port: int, htpasswd: Path | None) -> str:
    """The server's config.yml (YAML is a JSON superset: written as JSON)."""
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "taiea-registry", "path": str(htpasswd)}}
    return json.dumps(config, indent=1)


@dataclass
class Server:
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        return _terminate(self.proc.pid, timeout, self.proc)


def _prepare(state_dir: Path, port: int, htpasswd: Path | None) -> Path:
    if state_dir.exists() and not state_dir.is_dir():
        raise PipelineError(f"{state_dir}: the registry's state dir is not a directory")
    if htpasswd is not None and not htpasswd.is_file():
        raise PipelineError(f"{htpasswd}: no such htpasswd file")
    (state_dir / "storage").mkdir(parents=True, exist_ok=True)
    path = state_dir / "config.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the http secret
    with os.fdopen(fd, "w") as fh:
        fh.write(config_text(state_dir / "storage", port, htpasswd))
    return path


def answering(address: str) -> bool:
    """Whether a registry answers `GET /v2/` at `address` (200, or 401 with auth on)."""
    import http.client

    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


def start(
    state_dir: Path,
    port: int = DEFAULT_PORT,
    *,
    htpasswd: Path | None = None,
    background: bool = False,
    timeout: float = 30.0,
) -> Server:
    """Start the registry and wait until it answers. Port 0 picks a free one."""
    from pipeline.runtime.process import dies_with_us, free_port

    binary = find_binary()
    running = status(state_dir)
    if running["running"]:
        raise PipelineError(f"a registry already runs from {state_dir} at {running['url']}")
    port = port or free_port("127.0.0.1")
    config = _prepare(state_dir, port, htpasswd)
    argv = [binary, "serve", str(config)]
    log = open(state_dir / LOG_FILE, "ab")  # noqa: SIM115 — handed to the child
    try:
        proc = subprocess.Popen(
            argv if background else dies_with_us(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    server = Server(state_dir, port, proc)

    def up() -> bool | None:
        if proc.poll() is not None:
            raise PipelineError(
                f"the registry exited with status {proc.returncode}: {_last_line(state_dir / LOG_FILE)}"
            )
        return True if answering(server.address) else None

    try:
        poll(up, timeout=timeout, interval=0.05, what="the registry to answer")
    except (WaitTimeout, PipelineError) as exc:
        server.stop(2)
        raise PipelineError(f"registry on 127.0.0.1:{port} did not start: {exc}") from None
    if background:
        (state_dir / STATE_FILE).write_text(
            json.dumps({"pid": proc.pid, "port": port, "url": f"http://{server.address}"})
        )
    return server


def status(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"running": False, "state_dir": str(state_dir)}
    pid = data.get("pid")
    alive = isinstance(pid, int) and _alive(pid)
    address = f"127.0.0.1:{data.get('port')}"
    return {
        "running": bool(alive and answering(address)),
        "pid": pid,
        "url": data.get("url"),
        "address": address,
        "state_dir": str(state_dir),
    }


def stop(state_dir: Path, timeout: float = 10.0) -> dict[str, Any]:
    found = status(state_dir)
    pid = found.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / STATE_FILE).unlink()
        return {"stopped": False, "state_dir": str(state_dir), "reason": "no registry running"}
    _terminate(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return {"stopped": True, "pid": pid, "state_dir": str(state_dir)}


def _alive(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and BINARY in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _terminate(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> int:
    import psutil

    try:
        target = psutil.Process(pid)
        target.send_signal(signal.SIGTERM)
        try:
            code = target.wait(timeout)
        except psutil.TimeoutExpired:
            target.kill()
            code = target.wait(timeout)
    except psutil.NoSuchProcess:
        code = None
    if proc is not None:
        return proc.wait()
    return code if isinstance(code, int) else 0


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
