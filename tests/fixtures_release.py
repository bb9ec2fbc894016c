"""pytest plugin: the reference TAIEA release (examples/taiea), built and started for real.

Fixtures:
- ``reference_build_dir`` (session): where the session's tarballs go.
- ``reference_tarball`` (session): a factory ``(fault="none", layout="rebar3", version="1.0.0") ->
  Path`` that builds each combination once per session.
- ``start_reference`` (function): a factory ``(release="none", env=None, *, wait="ready", ...) ->
  RunningRelease``; ``release`` is a tarball path or a fault name. It extracts the tarball with
  tarfile (filter="data") under tmp_path, starts ``bin/tai_autonomics foreground`` with PORT set
  to a free port and TMPDIR a temp dir, waits (polling with tenacity) and always stops what it
  started (SIGTERM, then SIGKILL) at teardown.

The helpers (``extract_release``, ``launch``, ``RunningRelease``) are plain functions and classes
so that tests can also keep one release running for a whole module.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from pipeline import reference
from pipeline.runtime.process import free_port

NAME = reference.NAME
START_TIMEOUT = 20.0


class NotYet(Exception):
    """The condition polled for does not hold yet."""


class ReleaseExited(Exception):
    """The release exited while we were waiting for it."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def poll(
    condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Call ``condition`` until it returns a truthy value (or stops raising NotYet/OSError)."""

    def attempt() -> Any:
        value = condition()
        if not value:
            raise NotYet(what)
        return value

    for tried in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_exception_type((NotYet, OSError, http.client.HTTPException)),
        reraise=True,
    ):
        with tried:
            result = attempt()
    return result


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection to 127.0.0.1:port."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def release_root(extracted: Path) -> Path:
    """The release root inside an extraction: rebar3 layout or one top folder."""
    for candidate in (extracted, extracted / NAME):
        if (candidate / "bin" / NAME).is_file():
            return candidate
    raise AssertionError(f"no bin/{NAME} under {extracted}")


def extract_release(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return release_root(dest)


@dataclass
class RunningRelease:
    """A release started natively: ``bin/tai_autonomics foreground`` is ``proc`` (the VM)."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    tmpdir: Path
    stdout_path: Path
    stderr_path: Path
    started_at: float
    descendants: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return request(self.port, method, path, body, **kw)

    def get(self, path: str, **kw: Any) -> Response:
        return request(self.port, "GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Response:
        return request(self.port, "POST", path, body, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def receipts(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        text = self.stdout()
        complete = text[: text.rfind("\n") + 1]  # a line being written is not read yet
        for line in complete.splitlines():
            if line.strip():
                record = json.loads(line)
                if kind is None or record.get("kind") == kind:
                    out.append(record)
        return out

    def wait_receipt(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        def first() -> dict[str, Any] | None:
            found = self.receipts(kind)
            return found[0] if found else None

        return dict(poll(first, timeout, what=f"{kind} receipt"))

    def log_tail(self, n: int = 20) -> str:
        lines = (self.stdout() + self.stderr()).splitlines()
        return "\n".join(lines[-n:])

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ReleaseExited(
                f"release exited with status {self.proc.returncode}:\n{self.log_tail()}"
            )

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        def listening() -> bool:
            self._check_alive()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        poll(listening, timeout, what="listening")
        self._remember_descendants()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Poll GET /ready until 200; return seconds since the start."""

        def ready() -> bool:
            self._check_alive()
            return self.get("/ready", timeout=2).status == 200

        poll(ready, timeout, what="ready")
        self._remember_descendants()
        return time.monotonic() - self.started_at

    def _remember_descendants(self) -> None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        self.descendants = sorted({*self.descendants, *(k.pid for k in kids)})

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, SIGKILL after ``grace``; reap; kill any descendant left. Exit status."""
        self._remember_descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # erl_child_setup exits with the VM; kill any descendant still running, by pid.
        for pid in self.descendants:
            if not _gone(pid):
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
                poll(functools.partial(_gone, pid), 5, what=f"pid {pid} to exit")
        return int(self.proc.returncode)


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (ours are reaped by whoever adopted them)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def launch(
    root: Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    *,
    wait: str = "ready",
    port: int | None = None,
    user: int | None = None,
    tmpdir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> RunningRelease:
    """Start ``root/bin/tai_autonomics foreground``; wait for "ready", "listening" or "none"."""
    workdir.mkdir(parents=True, exist_ok=True)
    if tmpdir is None:
        tmpdir = workdir / "tmp"
        tmpdir.mkdir(exist_ok=True)
    port = free_port() if port is None else port
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ERL_", "TAIEA_", "PORT"))
    }
    child_env.update({"PORT": str(port), "TMPDIR": str(tmpdir), "HOME": str(tmpdir)})
    child_env.update(env or {})
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(root / "bin" / NAME), "foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=child_env,
            cwd=str(tmpdir),
            start_new_session=True,
            user=user,
            group=user,
        )
    running = RunningRelease(
        root=root,
        port=port,
        proc=proc,
        tmpdir=tmpdir,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        started_at=time.monotonic(),
    )
    try:
        if wait == "ready":
            running.wait_ready(timeout)
        elif wait == "listening":
            running.wait_listening(timeout)
    except BaseException:
        running.stop(grace=5)
        raise
    return running


@pytest.fixture(scope="session")
def reference_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-builds")


@pytest.fixture(scope="session")
def reference_tarball(reference_build_dir: Path) -> Callable[..., Path]:
    built: dict[tuple[str, str, str], Path] = {}

    def factory(fault: str = "none", layout: str = "rebar3", version: str = "1.0.0") -> Path:
        key = (fault, layout, version)
        if key not in built:
            built[key] = reference.build(
                reference_build_dir / f"{fault}-{layout}-{version}", version, fault, layout
            )
        return built[key]

    return factory


@pytest.fixture
def start_reference(
    reference_tarball: Callable[..., Path], tmp_path: Path
) -> Iterator[Callable[..., RunningRelease]]:
    started: list[RunningRelease] = []
    counter = iter(range(1_000_000))

    def start(
        release: Path | str = "none",
        env: dict[str, str] | None = None,
        *,
        layout: str = "rebar3",
        wait: str = "ready",
        port: int | None = None,
        timeout: float = START_TIMEOUT,
    ) -> RunningRelease:
        tarball = release if isinstance(release, Path) else reference_tarball(release, layout)
        workdir = tmp_path / f"release-{next(counter)}"
        root = extract_release(tarball, workdir / "root")
        running = launch(root, workdir, env, wait=wait, port=port, timeout=timeout)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
