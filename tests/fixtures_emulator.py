"""pytest plugin: the local Cloud Run emulator (pipeline/emulator), for its tests and week 5's.

Fixtures:
- ``start_emulator`` (function): a factory ``(env="cloudrun-local", *, settings=None,
  state_dir=None, in_process=False) -> EmulatorHandle``. ``settings`` overrides ``[emulator]``
  keys (an env file extending cloudrun-local is written for it). By default the emulator runs as
  a subprocess (``python -m pipeline.emulator serve --port 0``), as it does for users; with
  ``in_process=True`` it runs on a thread of the test process. Everything it started is stopped
  at teardown, whatever happens: the emulator, every instance (checked), its instance host.
- ``shared_emulator`` (module): one emulator for a whole test module (``emulator_settings``, a
  module-level dict a test module may define, overrides its ``[emulator]`` keys).
- ``emulator`` (function): the module's shared emulator; at teardown every service is deleted and
  every instance stopped (``POST /emulator/v1/reset``), so no instance outlives the test.
- ``cloud`` (module): an emulator started as users start it (``start --background``) with an env
  for week 5 whose windows are short (``env``, ``env_file``, ``runs``, ``port``); the module's
  runs dir is PIPELINE_RUNS_DIR meanwhile. ``gates_passed(tarball)`` runs weeks 3 and 4 on it
  (week 5's preflight looks for their passes).

The handle gives ``url``, ``services()`` / ``revisions()`` (official ``google.cloud.run_v2``
clients over REST), ``POLL`` (fast polling for ``op.result(polling=...)``), ``metrics(service)``,
``faults(rate, code, count)``, ``reset()``, ``stop(kill=False)`` and ``restart()``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from conftest import shared_processes

from pipeline import config
from pipeline.runtime.process import free_port
from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent

PARENT = "projects/taiea-test/locations/us-central1"
START_TIMEOUT = 60.0


def http_json(
    url: str, method: str = "GET", path: str = "/", body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One request to url+path; (status, parsed JSON body or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


def get(url: str, path: str = "/health", timeout: float = 10.0) -> tuple[int, str, Any]:
    """GET through a service or tag URL: (status, revision that answered, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, resp.getheader("x-emulator-revision") or "", raw
    finally:
        conn.close()


def release_pids(state_dir: Path) -> list[int]:
    """Live release processes whose command line names the emulator's state dir."""
    marker = str(state_dir.resolve()) + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in " ".join(proc.info["cmdline"] or ()) and proc.info["name"] == "beam.smp":
            found.append(proc.pid)
    return found


class EmulatorHandle:
    """A running emulator and the clients to drive it."""

    def __init__(self, env: str, state_dir: Path, in_process: bool):
        self.env = env
        self.state_dir = state_dir
        self.in_process = in_process
        self.url = ""
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.emulator: Any = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self._clients: dict[str, Any] = {}

    # ---- lifecycle

    def start(self) -> EmulatorHandle:
        self._clients.clear()
        if self.in_process:
            from pipeline.emulator.server import Emulator

            self.emulator = Emulator(self.env, port=0, state_dir=self.state_dir)
            self.url = self.emulator.start()
            self.pid = os.getpid()
            return self
        from pipeline.emulator import daemon

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                daemon.serve_command(self.env, 0, self.state_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def up() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the emulator exited with status {proc.returncode}:\n{self.log_tail()}"
                )
            reg = daemon.read_registry(self.state_dir)
            if reg is None or reg.get("pid") != proc.pid:
                return None
            return reg if daemon.probe(reg["url"], 1.0) is not None else None

        reg = poll(up, timeout=START_TIMEOUT, interval=0.05, what="the emulator to answer")
        self.url, self.pid = reg["url"], proc.pid
        return self

    def stop(self, kill: bool = False, timeout: float = 60.0) -> int | None:
        """SIGTERM (or SIGKILL) the emulator and wait; then kill whatever it left behind."""
        status = None
        if self.emulator is not None:
            self.emulator.stop(kill=kill)
            self.emulator = None
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                status = self.proc.wait(10)
        elif self.proc is not None:
            status = self.proc.returncode
        return status

    def cleanup(self) -> None:
        """Stop it if needed and kill any release process left (a failing test's leftovers)."""
        self.stop()
        for pid in release_pids(self.state_dir):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    def restart(self) -> EmulatorHandle:
        self.stop()
        return self.start()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---- clients

    def services(self) -> Any:
        if "services" not in self._clients:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import run_v2

            self._clients["services"] = run_v2.ServicesClient(
                transport="rest",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.url},
            )
        return self._clients["services"]

    def revisions(self) -> Any:
        if "revisions" not in self._clients:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import run_v2

            self._clients["revisions"] = run_v2.RevisionsClient(
                transport="rest",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.url},
            )
        return self._clients["revisions"]

    @property
    def POLL(self) -> Any:  # noqa: N802 - reads like the constant it is
        from google.api_core.future import polling

        return polling.DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.2)

    # ---- extensions

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(self.url, method, path, body)

    def metrics(self, service: str, **query: Any) -> dict[str, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        status, body = self.call(
            "GET", f"/emulator/v1/{service}/metrics" + (f"?{qs}" if qs else "")
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def revision_metrics(self, service: str, revision: str) -> dict[str, Any]:
        short = revision.rsplit("/", 1)[-1]
        for rev in self.metrics(service)["revisions"]:
            if rev["revision"] == short:
                return rev  # type: ignore[no-any-return]
        raise AssertionError(f"no metrics for {short}")

    def faults(self, rate: float, code: int = 503, count: int = 0) -> dict[str, Any]:
        status, body = self.call(
            "PUT", "/emulator/v1/faults", {"rate": rate, "code": code, "count": count}
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def reset(self) -> None:
        status, body = self.call("POST", "/emulator/v1/reset")
        assert status == 200, body

    def instance_pids(self) -> list[int]:
        return release_pids(self.state_dir)


def write_env(path: Path, settings: dict[str, Any], base: str = "cloudrun-local") -> str:
    """An env file extending `base` with `[emulator]` overrides; returns its path."""
    from pipeline.config import resolve

    lines = [f'extends = "{resolve(base).resolve()}"', "", "[emulator]"]
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., EmulatorHandle]]:
    started: list[EmulatorHandle] = []
    counter = iter(range(1000))

    def start(
        env: str = "cloudrun-local",
        *,
        settings: dict[str, Any] | None = None,
        state_dir: Path | None = None,
        in_process: bool = False,
    ) -> EmulatorHandle:
        n = next(counter)
        if settings:
            env = write_env(tmp_path / f"emulator-env-{n}.toml", settings, env)
        handle = EmulatorHandle(env, state_dir or tmp_path / f"emulator-{n}", in_process)
        started.append(handle)
        return handle.start()

    yield start
    for handle in started:
        handle.cleanup()


@pytest.fixture(scope="module")
def shared_emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorHandle]:
    base = tmp_path_factory.mktemp("emulator")
    settings = getattr(request.module, "emulator_settings", None)
    env = write_env(base / "env.toml", settings) if settings else "cloudrun-local"
    handle = EmulatorHandle(env, base / "state", in_process=False)
    handle.start()
    yield handle
    handle.cleanup()


@pytest.fixture
def emulator(shared_emulator: EmulatorHandle) -> Iterator[EmulatorHandle]:
    if shared_emulator.proc is not None and shared_emulator.proc.poll() is not None:
        shared_emulator.start()  # a previous test stopped it
    shared_emulator.faults(0.0)
    yield shared_emulator
    if shared_emulator.proc is not None and shared_emulator.proc.poll() is None:
        shared_emulator.reset()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """An emulator on a free port, run as its own process (tests talk to it over HTTP only),
    with an env whose windows are short; stopped with every instance at the end."""
    base = tmp_path_factory.mktemp("cloud")
    port = free_port()
    env_file = base / "cloudrun-test.toml"
    env_file.write_text(
        f'extends = "{REPO / "envs" / "cloudrun-local.toml"}"\n'
        f"[emulator]\nport = {port}\nscale_in_delay_s = 60\n"
        f'[cloudrun]\nendpoint = "http://127.0.0.1:{port}"\nmin_instances = 1\n'
        "bake_s = 4\nbake_rate = 200\nproduction_s = 3\nproduction_rate = 200\ndrain_timeout_s = 20\n"
    )
    runs = base / "runs"
    environ = {**os.environ, "PIPELINE_RUNS_DIR": str(runs)}
    state = base / "emulator-state"
    command = [sys.executable, "-m", "pipeline.emulator"]
    started = subprocess.run(
        [
            *command,
            "start",
            "--background",
            "--port",
            str(port),
            "--env",
            str(env_file),
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    with pytest.MonkeyPatch.context() as patch, shared_processes(base):
        patch.setenv("PIPELINE_RUNS_DIR", str(runs))
        try:
            yield {
                "env": config.load_env(env_file),
                "env_file": env_file,
                "runs": runs,
                "port": port,
            }
        finally:
            subprocess.run(
                [*command, "stop", "--state-dir", str(state)], cwd=REPO, env=environ, timeout=120
            )


def gates_passed(tarball: Path) -> Path:
    """Weeks 3 and 4 on the tarball (their passes are what the preflight looks for)."""
    from pipeline.phases.week3 import run_week3
    from pipeline.phases.week4 import run_week4

    local = config.load_env("local")
    assert run_week3(tarball, local, duration=2).verdict.passed
    assert run_week4(tarball, local).verdict.passed
    return tarball
