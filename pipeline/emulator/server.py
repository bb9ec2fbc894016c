"""The emulator: the Admin API v2 (aiohttp) and the data plane on one asyncio loop.

`Emulator(env, port=..., state_dir=...)` runs either in a thread of this process (`start()` /
`stop()`, or as a context manager) or in the foreground until SIGINT/SIGTERM
(`serve_forever()`). While it runs, `<state dir>/emulator.json` says where (pid, url, instance
pids) and `<state dir>/emulator.lock` is held, so two emulators never share a state dir.

Admin API: `/v2/...` as google.cloud.run_v2's REST transport calls it. Cloud Monitoring's
ListTimeSeries on a gRPC port of its own (monitoring.py; `status` says where). Emulator extensions under
`/emulator/v1/`: `status`, `faults` (GET/PUT/DELETE), `reset` (POST), `<service>/metrics`,
`<revision>/logs`.

Why ~750 lines: one handler per Admin API route (and the extensions), each a few lines over
control.py; split by route they would repeat the request plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pipeline.emulator import store
from pipeline.emulator.control import ControlPlane
from pipeline.emulator.dataplane import DataPlane
from pipeline.emulator.images import ImageResolver
from pipeline.emulator.monitoring import MonitoringServer, snapshot_of
from pipeline.emulator.records import Limits, OperationRecord, check_parent, check_service_id
from pipeline.emulator.wire import (
    ApiError,
    as_bool,
    as_int,
    duration_s,
    field_mask,
    invalid,
    not_found,
    render,
    wants_int_enums,
)
from pipeline.errors import PipelineError
from pipeline.waiting import apoll

log = logging.getLogger("pipeline.emulator")

REGISTRY_FILE = "emulator.json"
LOCK_FILE = "emulator.lock"
_WAIT_DEFAULT_S = 60.0

_P = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_ROUTES = [
    ("services", re.compile(rf"^{_P}/services$")),
    ("service", re.compile(rf"^{_P}/services/(?P<service>[^/:]+)$")),
    ("revisions", re.compile(rf"^{_P}/services/(?P<service>[^/:]+)/revisions$")),
    (
        "revision",
        re.compile(rf"^{_P}/services/(?P<service>[^/:]+)/revisions/(?P<revision>[^/:]+)$"),
    ),
    ("operations", re.compile(rf"^{_P}/operations$")),
    ("operation", re.compile(rf"^{_P}/operations/(?P<operation>[^/:]+)$")),
    ("wait", re.compile(rf"^{_P}/operations/(?P<operation>[^/:]+):wait$")),
    ("iam", re.compile(rf"^{_P}/services/[^/:]+:(getIamPolicy|setIamPolicy|testIamPermissions)$")),
]
_REVISION_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def default_state_dir() -> Path:
    from pipeline.receipts import runs_dir

    return runs_dir() / "emulator"


class Faults:
    """Fault injection on admin calls: a share `rate` of /v2 calls answer `code` (503 or 429).

    Deterministic: call n fails when floor(n·rate) > floor((n-1)·rate), so a rate of 0.25 fails
    every 4th call. `count` > 0 stops after that many injected faults.
    """

    def __init__(self, rate: float = 0.0, code: int = 503, count: int = 0):
        self.set(rate, code, count)

    def set(self, rate: float, code: int, count: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise invalid(f"faults: rate must be from 0 to 1, got {rate}")
        if code not in (429, 503):
            raise invalid(f"faults: code must be 429 or 503, got {code}")
        if count < 0:
            raise invalid(f"faults: count must be 0 (no limit) or more, got {count}")
        self.rate, self.code, self.count = float(rate), int(code), int(count)
        self.calls = 0
        self.injected = 0

    def check(self) -> ApiError | None:
        if self.rate <= 0:
            return None
        self.calls += 1
        if self.count and self.injected >= self.count:
            return None
        n = self.calls
        if math.floor(n * self.rate + 1e-9) <= math.floor((n - 1) * self.rate + 1e-9):
            return None
        self.injected += 1
        if self.code == 429:
            return ApiError(
                "RESOURCE_EXHAUSTED", "injected fault: quota exceeded for admin calls; retry later"
            )
        return ApiError("UNAVAILABLE", "injected fault: the service is currently unavailable")

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "code": self.code,
            "count": self.count,
            "calls": self.calls,
            "injected": self.injected,
        }


class Emulator:
    """A local Cloud Run: Admin API v2 on host:port, services on their own ports."""

    def __init__(
        self,
        env: Any = "cloudrun-local",
        *,
        port: int | None = None,
        host: str | None = None,
        state_dir: Path | str | None = None,
    ):
        from pipeline.config import Env, load_env

        self.env = env if isinstance(env, Env) else load_env(env)
        self.settings = self.env.emulator
        self.host = host or self.settings.host
        self.port = self.settings.port if port is None else int(port)
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.resolve()
        self.url = ""
        self.control: ControlPlane | None = None
        self.data: DataPlane | None = None
        self.faults = Faults(self.settings.admin_error_rate, self.settings.admin_error_code)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.monitoring: MonitoringServer | None = None
        self._stop_event: asyncio.Event | None = None
        self._kill = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._lock_fh: Any = None
        self._flush_scheduled = False
        self._change: asyncio.Event | None = None
        self._saver: store.Saver | None = None
        self._registry: store.Saver | None = None
        self._started_at = time.time()
        self.host_client: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> str:
        """Run on a thread of this process; return the admin URL once it listens."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._thread_main, name="emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise PipelineError(f"emulator: not listening after {timeout:g} s")
        if self._error is not None:
            self._thread.join(10)
            raise self._error
        return self.url

    def stop(self, kill: bool = False, timeout: float = 120.0) -> None:
        """Stop every instance (SIGTERM, grace, SIGKILL; `kill`: SIGKILL at once), then the API."""
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            self._kill = kill
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            _run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()

    def serve_forever(self, announce: Any = print) -> None:
        """Run in the foreground until SIGINT, SIGTERM or SIGHUP; then stop every instance."""

        async def main() -> None:
            import signal

            loop = asyncio.get_running_loop()
            task = loop.create_task(self._main())
            await apoll(
                lambda: True if self._stop_event is not None or task.done() else None,
                timeout=float("inf"),
                interval=0.01,
                what="the emulator's loop",
            )
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self._signalled)
            # polled, not waited for in a thread: a start that fails early (the state dir's
            # lock held by another emulator) must end this loop, not leave a thread waiting
            await apoll(
                lambda: True if self._started.is_set() or task.done() else None,
                timeout=float("inf"),
                interval=0.01,
                what="the emulator to start",
            )
            if self._started.is_set() and self._error is None and not task.done():
                announce(self.url)
            await task

        _run(main())

    def _signalled(self) -> None:
        if self._stop_event is not None:
            if self._stop_event.is_set():
                self._kill = True  # a second Ctrl-C: no grace
            self._stop_event.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._change = asyncio.Event()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        runner: web.AppRunner | None = None
        try:
            from pipeline.emulator import daemon

            daemon.kill_orphans(self.state_dir)
            await self._setup()
            runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, backlog=256, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise PipelineError(
                    f"emulator: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                ) from None
            server = getattr(site, "_server", None)
            port = server.sockets[0].getsockname()[1] if server is not None else self.port
            self.port = int(port)
            self.url = f"http://{self.host}:{self.port}"
            assert self.control is not None and self.data is not None
            self.control.base_url = self.url
            self.data.start()
            self.data.request_apply()
            self._write_registry()
            log.info("Cloud Run Admin API v2 emulator on %s (state %s)", self.url, self.state_dir)
            self._started.set()
            await self._stop_event.wait()
        except BaseException as exc:
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            raise
        finally:
            await self._teardown(runner)

    def _binauthz_policy(self) -> Any:
        """`[emulator] binauthz_policy`, loaded (a bad file: exit 2 before anything listens)."""
        if not self.settings.binauthz_policy:
            return None
        from pipeline.attest import policy

        path = self.env.file_path("emulator.binauthz_policy", self.settings.binauthz_policy)
        return policy.load(path)

    async def _setup(self) -> None:
        from pipeline.emulator.host import HostClient

        resolver = ImageResolver(
            {
                name: str(self.env.file_path(f"emulator.images.{name}", tarball))
                for name, tarball in self.settings.images.items()
            },
            cache_dir=self.state_dir / "images",
            policy=self._binauthz_policy(),
        )
        self.resolver = resolver
        self.control = ControlPlane(
            resolve_image=resolver.resolve,
            limits=Limits(max_instances_per_revision=self.settings.max_instances_per_revision),
            on_change=self._changed,
        )
        saved = store.load(self.state_dir)
        if saved is not None:
            self.control.restore(saved)
        self.host_client = HostClient(str(self.env.path))
        await self.host_client.start()
        self.data = DataPlane(
            control=self.control,
            env=self.env,
            host=self.host_client,
            state_dir=self.state_dir,
            on_instances=self._changed,
        )
        self.host_client.on_exit = self.data.instance_exited
        self.control.instance_counts = self.data.instance_counts
        self._saver = store.Saver(self.state_dir / store.STATE_FILE)
        self._registry = store.Saver(self.state_dir / REGISTRY_FILE)
        self.monitoring = MonitoringServer(
            self._monitoring_snapshot, self.host, self.settings.monitoring_port
        )
        self.monitoring.start()

    async def _teardown(self, runner: web.AppRunner | None) -> None:
        try:
            if self.monitoring is not None:
                self.monitoring.stop()
            if self.data is not None:
                await self.data.shutdown(kill=self._kill)
            if self.host_client is not None:
                await self.host_client.close(0.0 if self._kill else self.settings.shutdown_grace_s)
            if runner is not None:
                await runner.cleanup()
            if self.control is not None and self._saver is not None:
                self._saver.save(self.control.snapshot())
        finally:
            for saver in (self._saver, self._registry):
                if saver is not None:
                    saver.close()
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / REGISTRY_FILE).unlink()
            self._release_lock()

    def _take_lock(self) -> None:
        path = self.state_dir / LOCK_FILE
        fh = open(path, "a+")  # noqa: SIM115 - held for the emulator's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            from pipeline.emulator import daemon

            where = daemon.describe(self.state_dir)
            raise PipelineError(
                f"emulator: another emulator already uses {self.state_dir}{where}; "
                "stop it first (invoke emulator.stop)"
            ) from None
        self._lock_fh = fh

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------ change propagation

    def _changed(self) -> None:
        if self._flush_scheduled or self._loop is None:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.control is None or self.data is None:
            return
        if self._saver is not None:
            self._saver.save(self.control.snapshot())
        if not self.data.closing:
            self.data.request_apply()
            self._write_registry()
        if self._change is not None:
            self._change.set()
            self._change = asyncio.Event()

    def _write_registry(self) -> None:
        if self._registry is None or not self.url:
            return
        self._registry.save(
            {
                "pid": os.getpid(),
                "url": self.url,
                "host": self.host,
                "port": self.port,
                "monitoring": self.monitoring_address,
                "env": str(self.env.path),
                "state_dir": str(self.state_dir),
                "started_at": self._started_at,
                "instances": self.data.pids() if self.data is not None else [],
            }
        )

    async def _until(self, done: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = self._change
            assert event is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.25))
        return True

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        app.router.add_route("GET", "/emulator/v1/status", self._status)
        app.router.add_route("*", "/emulator/v1/faults", self._faults)
        app.router.add_route("POST", "/emulator/v1/reset", self._reset)
        app.router.add_route("GET", "/emulator/v1/{name:.+}/metrics", self._metrics)
        app.router.add_route("GET", "/emulator/v1/{name:.+}/logs", self._logs)
        app.router.add_route("GET", "/", self._root)
        return app

    async def _root(self, request: web.Request) -> web.Response:
        return _json({"name": "Cloud Run Admin API v2 emulator", "api": f"{self.url}/v2"})

    async def _v2(self, request: web.Request) -> web.Response:
        fault = self.faults.check()
        if fault is not None:
            return _json(fault.body(), fault.http)
        int_enums = wants_int_enums(request.query.get("$alt"))
        try:
            result = await self._call(request, request.match_info["tail"])
        except ApiError as exc:
            return _json(exc.body(), exc.http)
        return _json(_rendered(result, int_enums))

    async def _call(self, request: web.Request, tail: str) -> Any:
        control = self.control
        assert control is not None
        method = request.method
        kind, parts = _route(tail)
        if not kind:
            raise not_found(f"no such resource: {method} /v2/{tail}")
        parent = check_parent(parts["project"], parts["location"])
        q = request.query
        if "service" in parts:
            check_service_id(parts["service"], "service name")
        name = f"{parent}/services/{parts.get('service')}"
        if kind == "services" and method == "GET":
            return control.list_services(
                parent, as_int(q.get("pageSize", "0"), "pageSize"), q.get("pageToken", "")
            )
        if kind == "services" and method == "POST":
            body = await self._body(request)
            await self._resolve_images(body, None)
            op = control.create_service(
                parent,
                q.get("serviceId", ""),
                body,
                as_bool(q.get("validateOnly"), "validateOnly"),
            )
            return op
        if kind == "service" and method == "GET":
            return ("Service", control.get_service(name))
        if kind == "service" and method == "PATCH":
            body = await self._body(request)
            await self._resolve_images(body, name)
            return control.update_service(
                name,
                body,
                field_mask(q.get("updateMask")),
                as_bool(q.get("allowMissing"), "allowMissing"),
                as_bool(q.get("validateOnly"), "validateOnly"),
            )
        if kind == "service" and method == "DELETE":
            return control.delete_service(
                name, q.get("etag") or None, as_bool(q.get("validateOnly"), "validateOnly")
            )
        if kind == "revisions" and method == "GET":
            return control.list_revisions(
                name, as_int(q.get("pageSize", "0"), "pageSize"), q.get("pageToken", "")
            )
        if kind == "revision":
            rev_id = parts["revision"]
            if not _REVISION_ID.match(rev_id):
                raise invalid(f"bad revision name {rev_id!r}")
            rev_name = f"{name}/revisions/{rev_id}"
            if method == "GET":
                return ("Revision", control.get_revision(rev_name))
            if method == "DELETE":
                return control.delete_revision(
                    rev_name, q.get("etag") or None, as_bool(q.get("validateOnly"), "validateOnly")
                )
        op_name = f"{parent}/operations/{parts.get('operation')}"
        if kind == "operations" and method == "GET":
            ops = control.list_operations(parent)
            return {"operations": [control.render_operation(o) for o in ops]}
        if kind == "operation" and method == "GET":
            return control.get_operation(op_name)
        if kind == "operation" and method == "DELETE":
            control.delete_operation(op_name)
            return {}
        if kind == "wait" and method == "POST":
            body = await self._body(request, allow_empty=True)
            timeout = _WAIT_DEFAULT_S
            if body.get("timeout") is not None:
                timeout = max(0.0, duration_s(body["timeout"], "timeout"))
            op = control.get_operation(op_name)
            await self._until(lambda: op.done, timeout)
            return op
        if kind == "iam":
            raise ApiError("UNIMPLEMENTED", "IAM policies are not emulated")
        raise not_found(f"no such method: {method} /v2/{tail}")

    async def _body(self, request: web.Request, allow_empty: bool = False) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            if allow_empty:
                return {}
            raise invalid("the request needs a JSON body")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"the request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        return body

    async def _resolve_images(self, body: dict[str, Any], service: str | None) -> None:
        """Inspect the tarballs the request names off the loop (the control plane's lookups then
        hit the resolver's cache)."""
        refs = []
        template = body.get("template")
        if isinstance(template, dict) and isinstance(template.get("containers"), list):
            for i, c in enumerate(template["containers"]):
                if isinstance(c, dict) and isinstance(c.get("image"), str) and c["image"]:
                    refs.append((c["image"], f"template.containers[{i}].image"))
        control = self.control
        assert control is not None
        if service is not None and service in control.services:
            for c in control.services[service].spec["template"].get("containers", []):
                if isinstance(c, dict) and c.get("image"):
                    refs.append((c["image"], "template.containers[0].image"))
        loop = asyncio.get_running_loop()
        for ref, where in refs:
            await loop.run_in_executor(None, self.resolver.prepare, ref, where)

    # ------------------------------------------------------------------ Cloud Monitoring

    @property
    def monitoring_address(self) -> str | None:
        """host:port of the Cloud Monitoring API (gRPC), for `[monitoring] endpoint`."""
        return f"{self.host}:{self.monitoring.port}" if self.monitoring is not None else None

    def _monitoring_snapshot(self, project: str, metric: str, since: float) -> list[Any]:
        """Called from a gRPC thread: the revisions as the loop sees them, copied on the loop."""
        loop = self._loop
        if loop is None or self.data is None:
            return []

        async def take() -> list[Any]:
            assert self.data is not None
            return snapshot_of(list(self.data.revisions.values()), project, metric, since)

        return asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=10)

    # ------------------------------------------------------------------ extensions

    async def _status(self, request: web.Request) -> web.Response:
        control, data = self.control, self.data
        assert control is not None and data is not None
        return _json(
            {
                "url": self.url,
                "pid": os.getpid(),
                "env": str(self.env.path),
                "state_dir": str(self.state_dir),
                "services": sorted(control.services),
                "instances": len(data.pids()),
                "monitoring": self.monitoring_address,
                "faults": self.faults.as_json(),
                "uptime_s": round(time.time() - self._started_at, 3),
            }
        )

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            if request.method in ("PUT", "POST"):
                body = await self._body(request)
                self.faults.set(
                    float(body.get("rate", 0.0)),
                    int(body.get("code", 503)),
                    int(body.get("count", 0)),
                )
            elif request.method == "DELETE":
                self.faults.set(0.0, 503)
            elif request.method != "GET":
                raise ApiError("UNIMPLEMENTED", f"{request.method} /emulator/v1/faults")
        except (TypeError, ValueError) as exc:
            return _json(invalid(f"faults: {exc}").body(), 400)
        except ApiError as exc:
            return _json(exc.body(), exc.http)
        return _json(self.faults.as_json())

    async def _reset(self, request: web.Request) -> web.Response:
        """Delete every service and wait until every instance has stopped."""
        control, data = self.control, self.data
        assert control is not None and data is not None
        names = sorted(control.services)
        for name in names:
            control.delete_service(name)
        self.faults.set(0.0, 503)
        ok = await self._until(
            lambda: not control.deleting and not data.revisions and not data.services, 120.0
        )
        if not ok:
            return _json(ApiError("DEADLINE_EXCEEDED", "instances still stopping").body(), 504)
        control.operations.clear()
        self._changed()
        return _json({"deleted": names})

    async def _metrics(self, request: web.Request) -> web.Response:
        control, data = self.control, self.data
        assert control is not None and data is not None
        name = request.match_info["name"]
        if name not in control.services:
            return _json(not_found(f"service {name!r} not found").body(), 404)
        try:
            window = request.query.get("window_s")
            window_s = float(window) if window else None
            if window_s is not None and not window_s > 0:
                raise ValueError
        except ValueError:
            return _json(invalid("window_s must be a number of seconds > 0").body(), 400)
        metrics = await data.metrics(name, window_s)
        if request.query.get("format") == "receipts":
            return _json({"receipts": metrics_receipts(metrics)})
        return _json(metrics)

    async def _logs(self, request: web.Request) -> web.Response:
        control, data = self.control, self.data
        assert control is not None and data is not None
        name = request.match_info["name"]
        if name not in control.revisions:
            return _json(not_found(f"revision {name!r} not found").body(), 404)
        try:
            lines = int(request.query.get("lines", "50"))
        except ValueError:
            return _json(invalid("lines must be an integer").body(), 400)
        return _json(await data.logs(name, max(1, min(lines, 500))))


def _route(tail: str) -> tuple[str, dict[str, str]]:
    for kind, pattern in _ROUTES:
        m = pattern.match(tail)
        if m is not None:
            return kind, m.groupdict()
    return "", {}


def metrics_receipts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics as receipt records (kind "metrics"): one per revision, one per instance."""
    service = metrics["service"].rsplit("/", 1)[-1]
    out: list[dict[str, Any]] = []
    for rev in metrics["revisions"]:
        lat = rev["latency_ms"]
        out.append(
            {
                "kind": "metrics",
                "scope": "revision",
                "service": service,
                "revision": rev["revision"],
                "percent": rev["percent"],
                "tags": rev["tags"],
                "instances": rev["instances"],
                "in_flight": rev["in_flight"],
                "queued": rev["queued"],
                "requests": rev["requests"],
                "failed": rev["failed"],
                "rejected": rev["rejected"],
                "window_s": metrics["window_s"],
                "latency_count": lat["count"],
                "avg_ms": lat["avg"],
                "p50_ms": lat["p50"],
                "p95_ms": lat["p95"],
                "p99_ms": lat["p99"],
                "max_ms": lat["max"],
            }
        )
        for inst in rev["instance_list"]:
            record = {
                "kind": "metrics",
                "scope": "instance",
                "service": service,
                "revision": rev["revision"],
                "instance": inst["id"],
                "pid": inst["pid"],
                "state": inst["state"],
                "in_flight": inst["in_flight"],
                "requests": inst["requests"],
            }
            for key in ("rss_mb", "cpu_percent"):
                if key in inst:
                    record[key] = inst[key]
            out.append(record)
    return out


def _rendered(result: Any, int_enums: bool) -> Any:
    if isinstance(result, OperationRecord):
        out: dict[str, Any] = {"name": result.name, "done": result.done}
        if result.done:
            if result.error is not None:
                out["error"] = result.error
            elif result.response is not None:
                out["response"] = render(result.response, int_enums)
        return out
    if isinstance(result, tuple):
        return render(result[1], int_enums)
    if isinstance(result, dict):
        if "services" in result:
            return {**result, "services": [render(s, int_enums) for s in result["services"]]}
        if "revisions" in result:
            return {**result, "revisions": [render(r, int_enums) for r in result["revisions"]]}
    return result


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", charset="utf-8"
    )


def _run(coro: Any) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)
