"""The HTTP load probe: open loop (a fixed arrival rate) and closed loop (N busy connections).

Why a client of its own: the probe must keep pace with a fast gen_tcp server and be compared with
wrk. aiohttp's ClientSession spends ~0.5 ms of Python per request; this module speaks just enough
HTTP/1.1 on asyncio Protocols: requests are encoded once per target, one response parser works on
the bytes the event loop hands over (Content-Length bodies on the fast path; chunked, read-to-close,
1xx and ``Connection: close`` handled too), and the next request of a closed-loop connection is
written from the callback that completes the previous one, before that result is recorded.

Open loop: request i is due at ``i / rate`` seconds after the start and is sent then, whatever is
still outstanding (on an idle pooled keep-alive connection, else a new one), up to ``max_inflight``
outstanding requests; beyond that it is *dropped* (counted, not reported). Its latency runs from the
scheduled time, so a stalled server or a slow client cannot hide (no coordinated omission);
``service_ms`` runs from the real send. Closed loop: ``connections`` connections each send
back-to-back with keep-alive; latency runs from the send.

After ``duration_s`` nothing new is sent (open loop: a request due inside the window may still go
out up to ``late_ms`` after its end, late; later than that it is dropped); outstanding requests
get until ``timeout_s`` after their send, then are reported as failed (status 0, "timeout").

``on_result`` and ``on_tick`` run on the event loop thread. Results are handed over after the I/O
callbacks of the loop iteration that completed them, so a costly callback (a receipt line) delays
neither the timestamps nor the next sends of the responses that arrived together.

Both entry points run their own event loop (uvloop when it is installed, unless
``PIPELINE_LOAD_UVLOOP=0``) and work from any thread; a :class:`StopToken` ends a run early from
another thread. Ctrl-C in the main thread closes every socket and raises KeyboardInterrupt; an
exception raised by a callback stops the run, closes every socket and is raised.

Why one file of ~1.1k lines: the open and closed loops share one HTTP/1.1 client on an asyncio
Protocol (framing, connection pool, schedule, tick) whose parts call each other on the hot path;
bench/bench_load_probe.py holds it to wrk.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.stats import percentile

__all__ = [
    "LoadSummary",
    "RequestResult",
    "StopToken",
    "Target",
    "Tick",
    "run_closed_loop",
    "run_open_loop",
]

TICK_S = 0.25
_WINDOW_TICKS = 4  # rps and p95 of a Tick cover the last second
_MAX_HEAD = 64 * 1024
_READ_SIZE = 16 * 1024
_MIN_SLEEP = 0.001

_now = time.perf_counter


@dataclass(frozen=True)
class Target:
    """One endpoint of the request mix."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str = "application/json"
    expect_status: int = 200


@dataclass(frozen=True)
class RequestResult:
    """One request of a load run (a ``request`` receipt)."""

    target: str
    endpoint: str
    method: str
    status: int  # 0 when no HTTP answer
    latency_ms: float  # open loop: from the scheduled time; closed loop: from the send
    service_ms: float  # from the real send
    scheduled_s: float  # since load start, when it was due (closed loop: == sent_s)
    sent_s: float  # since load start, when it was really sent
    passed: bool
    error: str | None

    def as_receipt(self) -> dict[str, Any]:
        """A ``request`` receipt's fields, times rounded (the writer adds kind, ts, seq …)."""
        return {
            "target": self.target,
            "endpoint": self.endpoint,
            "method": self.method,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "service_ms": round(self.service_ms, 3),
            "scheduled_s": round(self.scheduled_s, 6),
            "sent_s": round(self.sent_s, 6),
            "passed": self.passed,
            "error": self.error,
        }


@dataclass(frozen=True)
class LoadSummary:
    """The outcome of one run.

    ``scheduled`` = ``sent`` + ``dropped``; every sent request completes (answered or failed), so
    ``completed`` == ``sent``. ``achieved_rps`` counts the completions inside the sending window.
    Percentiles cover every completed request (failures included) and are 0 when none completed.
    ``success_rate`` is ``passed / scheduled``: a dropped request counts against it.
    """

    mode: str
    rate: float | None
    connections: int
    duration_s: float
    scheduled: int
    sent: int
    completed: int
    passed: int
    dropped: int
    late: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    success_rate: float

    def as_receipt(self) -> dict[str, Any]:
        """Plain JSON fields (no NaN) for the load stage's receipt."""
        out = asdict(self)
        for key in ("duration_s", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms"):
            out[key] = round(out[key], 3)
        out["success_rate"] = round(out["success_rate"], 6)
        return out


@dataclass(frozen=True)
class Tick:
    """Live progress, about every 250 ms; rps and p95 cover the last second."""

    elapsed_s: float
    sent: int
    completed: int
    rps: float
    p95_ms: float


class StopToken:
    """Ends a running probe early from any thread: no new sends, in-flight requests are aborted
    (reported as status 0, "cancelled"), and the run returns its summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._hook: Callable[[], None] | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            hook = self._hook
        if hook is not None:
            hook()

    def _attach(self, hook: Callable[[], None]) -> bool:
        with self._lock:
            self._hook = hook
            return self._stopped

    def _detach(self) -> None:
        with self._lock:
            self._hook = None


def _ignore(_result: RequestResult) -> None:
    return None


# --------------------------------------------------------------------------------------------
# HTTP/1.1 on an asyncio Protocol


class _Prepared:
    __slots__ = ("name", "path", "method", "raw", "expect", "no_body")

    def __init__(self, target: Target, host_header: str, prefix: str) -> None:
        self.name = target.name
        self.path = target.path
        self.method = target.method.upper()
        self.expect = target.expect_status
        self.no_body = self.method == "HEAD"
        path = prefix + (target.path if target.path.startswith("/") else "/" + target.path)
        lines = [
            f"{self.method} {path} HTTP/1.1",
            f"Host: {host_header}",
            "User-Agent: taiea-load/1",
            "Accept: */*",
        ]
        body = target.body
        if body is not None:
            lines.append(f"Content-Type: {target.content_type}")
            lines.append(f"Content-Length: {len(body)}")
        elif self.method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        self.raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# response body framing
_LEN = 0  # Content-Length (or none): count bytes
_CHUNKED = 1
_TO_CLOSE = 2


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection carrying at most one request at a time.

    A BufferedProtocol: the loop reads into one preallocated buffer per connection. (A plain
    Protocol makes the stdlib loop allocate a 256 KiB bytes object per read: three mmap-family
    system calls per response, which halved the throughput.)
    """

    __slots__ = (
        "run",
        "transport",
        "busy",
        "tgt",
        "sched",
        "sent",
        "reused",
        "got_bytes",
        "buf",
        "in_head",
        "status",
        "framing",
        "remaining",
        "keep",
        "chunk",
        "lost",
        "closed_fut",
        "rbuf",
        "rview",
    )

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.tgt: _Prepared | None = None
        self.sched = 0.0
        self.sent = 0.0
        self.reused = False
        self.got_bytes = False
        self.buf: bytes | bytearray = b""
        self.in_head = True
        self.status = 0
        self.framing = _LEN
        self.remaining = 0
        self.keep = True
        self.chunk: bytearray | None = None
        self.lost = False
        self.closed_fut: asyncio.Future[None] | None = None
        self.rbuf = bytearray(_READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.run.conns.discard(self)
        if self.busy:
            if self.framing == _TO_CLOSE and not self.in_head and exc is None:
                self.keep = False
                self.run.complete(self, self.status, None)
            else:
                self.run.lost(self, _describe(exc) if exc else "connection closed")
        fut = self.closed_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    # -- requests

    def send(self, tgt: _Prepared, sched: float | None, t: float = 0.0) -> None:
        """Write ``tgt``'s request, timestamped ``t`` (0: now); ``sched`` None: due then."""
        self.tgt = tgt
        self.busy = True
        self.got_bytes = False
        self.in_head = True
        self.buf = b""
        self.keep = True
        if not t:
            t = _now()
        self.sched = t if sched is None else sched
        self.sent = t
        self.run.inflight[self] = t
        self.transport.write(tgt.raw)  # type: ignore[union-attr]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rview

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.rbuf[:nbytes] if nbytes < _READ_SIZE else bytes(self.rbuf))

    def data_received(self, data: bytes | bytearray) -> None:
        if not self.busy:
            # bytes nobody asked for: the connection cannot be trusted any more
            self.keep = False
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.got_bytes = True
        if self.in_head:
            buf = self.buf + data if self.buf else data
            while True:
                he = buf.find(b"\r\n\r\n")
                if he < 0:
                    if len(buf) > _MAX_HEAD:
                        self._bad("response head too large")
                    else:
                        self.buf = buf
                    return
                if buf[:5] != b"HTTP/":
                    self._bad("bad response")
                    return
                try:
                    status = int(buf[9:12])
                except ValueError:
                    self._bad("bad status line")
                    return
                if 100 <= status < 200 and status != 101:
                    buf = buf[he + 4 :]  # interim response: skip it
                    continue
                break
            head = buf[:he].lower()
            self.status = status
            self.in_head = False
            self.buf = b""
            keep = head[5:8] == b"1.1"
            pos = head.find(b"\nconnection:")
            if pos >= 0:
                end = head.find(b"\r", pos)
                value = head[pos + 12 : end if end >= 0 else len(head)]
                if b"close" in value:
                    keep = False
                elif b"keep-alive" in value:
                    keep = True
            self.keep = keep
            rest = len(buf) - he - 4
            if self.tgt.no_body or status in (204, 304):  # type: ignore[union-attr]
                self.framing = _LEN
                self.remaining = 0
            else:
                pos = head.find(b"\ntransfer-encoding:")
                end = head.find(b"\r", pos) if pos >= 0 else -1
                if pos >= 0 and b"chunked" in head[pos : end if end >= 0 else len(head)]:
                    self.framing = _CHUNKED
                    self.chunk = bytearray(buf[he + 4 :])
                    self._chunked()
                    return
                pos = head.find(b"\ncontent-length:")
                if pos >= 0:
                    end = head.find(b"\r", pos)
                    try:
                        self.remaining = int(head[pos + 16 : end if end >= 0 else len(head)])
                    except ValueError:
                        self._bad("bad content-length")
                        return
                    self.framing = _LEN
                else:
                    self.framing = _TO_CLOSE
                    self.keep = False
                    return
            self.remaining -= rest
            if self.remaining <= 0:
                self.run.complete(self, status, None)
            return
        framing = self.framing
        if framing == _LEN:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.run.complete(self, self.status, None)
        elif framing == _CHUNKED:
            self.chunk += data  # type: ignore[operator]
            self._chunked()
        # _TO_CLOSE: the body ends when the server closes

    def _chunked(self) -> None:
        buf = self.chunk
        assert buf is not None
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                self._bad("bad chunk size")
                return
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0 and not buf.startswith(b"\r\n", eol + 2):
                    break  # trailers not complete yet
                self.chunk = None
                self.run.complete(self, self.status, None)
                return
            if len(buf) < eol + 2 + size + 2:
                break
            pos = eol + 2 + size + 2
        del buf[:pos]

    def _bad(self, reason: str) -> None:
        self.keep = False
        self.run.fail(self, reason)
        self.transport.abort()  # type: ignore[union-attr]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "name resolution failed"
    if isinstance(exc, ssl.SSLError):
        return "tls error"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


# --------------------------------------------------------------------------------------------
# one run


class _Run:
    def __init__(
        self,
        mode: str,
        base_url: str,
        targets: Sequence[Target],
        duration_s: float,
        on_result: Callable[[RequestResult], None],
        on_tick: Callable[[Tick], None] | None,
        timeout_s: float,
        stop: StopToken | None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is needed")
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.mode = mode
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = host if default_port else f"{host}:{self.port}"
        prefix = parts.path.rstrip("/")
        self.targets = [_Prepared(t, host_header, prefix) for t in targets]
        self.nt = len(self.targets)
        self.duration_s = float(duration_s)
        self.on_result = None if on_result is _ignore else on_result
        self.on_tick = on_tick
        self.timeout_s = float(timeout_s)
        self.stop_token = stop

        self.loop: asyncio.AbstractEventLoop | None = None
        self.addr: tuple[str, int] | None = None
        self.resolve_error: str | None = None
        self.ssl_ctx: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None
        self.conns: set[_Conn] = set()
        self.inflight: dict[_Conn, float] = {}  # insertion order == send order == deadline order
        self.pending: set[asyncio.Task[Any]] = set()
        self.t0 = 0.0
        self.t_end = math.inf
        self.stopping = False
        self.error: BaseException | None = None
        self.idle_event: asyncio.Event | None = None
        self.driver: asyncio.Task[Any] | None = None

        self.i = 0  # next request index (round robin)
        self.scheduled = 0
        self.sent = 0
        self.completed = 0
        self.in_window = 0
        self.passed = 0
        self.dropped = 0
        self.late = 0
        self.lat: list[float] = []
        self.pending_results: list[
            tuple[_Prepared, int, str | None, float, float, float, bool]
        ] = []
        self.peak_conns = 0

    # -- results

    def record(
        self, tgt: _Prepared, status: int, error: str | None, sched: float, sent: float, t: float
    ) -> None:
        lat = (t - sched) * 1000.0
        self.lat.append(lat)
        self.completed += 1
        if t <= self.t_end:
            self.in_window += 1
        ok = status == tgt.expect and error is None
        if ok:
            self.passed += 1
        elif error is None:
            error = f"status {status}"
        if self.on_result is not None:
            # Delivered after the I/O callbacks of this loop iteration: every response that
            # arrived together is timestamped and its connection's next request written before
            # the (costly) callbacks run.
            pending = self.pending_results
            if not pending:
                self.loop.call_soon(self.deliver)  # type: ignore[union-attr]
            pending.append((tgt, status, error, sched, sent, t, ok))

    def deliver(self) -> None:
        """Hand the pending results to ``on_result``, on the loop thread, in completion order."""
        pending = self.pending_results
        self.pending_results = []
        if not pending or self.error is not None:
            return
        cb = self.on_result
        assert cb is not None
        t0 = self.t0
        try:
            for tgt, status, error, sched, sent, t, ok in pending:
                cb(
                    RequestResult(
                        tgt.name,
                        tgt.path,
                        tgt.method,
                        status,
                        (t - sched) * 1000.0,
                        (t - sent) * 1000.0,
                        sched - t0,
                        sent - t0,
                        ok,
                        error,
                    )
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised by the entry point
            if self.error is None:
                self.error = exc
            self.request_stop()

    def complete(self, conn: _Conn, status: int, error: str | None) -> None:
        """A response is complete on ``conn`` (or it failed with ``error``)."""
        t = _now()
        conn.busy = False
        del self.inflight[conn]
        tgt = conn.tgt
        sched = conn.sched
        sent = conn.sent
        conn.reused = True
        assert tgt is not None
        if self.mode == "closed":
            t_send = _now()
            if conn.keep and not conn.lost and t_send < self.t_end and not self.stopping:
                # the next request goes out before this result is recorded
                nxt = self.targets[self.i % self.nt]
                self.i += 1
                self.sent += 1
                self.scheduled += 1
                conn.send(nxt, None, t_send)
            else:
                self._retire(conn)
        else:
            if conn.keep and not conn.lost and not self.stopping:
                self.idle.append(conn)
            else:
                self._retire(conn)
        self.record(tgt, status, error, sched, sent, t)
        if self.idle_event is not None and not self.inflight and not self.pending:
            self.idle_event.set()

    def fail(self, conn: _Conn, error: str) -> None:
        if conn.busy:
            conn.keep = False
            self.complete(conn, 0, error)

    def lost(self, conn: _Conn, error: str) -> None:
        """The connection went away while a request was on it."""
        if conn.reused and not conn.got_bytes and not self.stopping:
            # a keep-alive connection the server had already closed: send again on a new one
            conn.busy = False
            del self.inflight[conn]
            tgt = conn.tgt
            assert tgt is not None
            self.spawn(self._connect_and_send(tgt, conn.sched, count_late=False))
            return
        self.fail(conn, error)

    def _retire(self, conn: _Conn) -> None:
        conn.keep = False
        tr = conn.transport
        if tr is not None and not conn.lost:
            tr.close()

    # -- connections

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
            self.request_stop()
        if self.idle_event is not None and not self.inflight and not self.pending:
            self.idle_event.set()

    async def connect(self) -> _Conn:
        if self.addr is None:
            raise OSError(self.resolve_error or "name resolution failed")
        assert self.loop is not None
        async with asyncio.timeout(self.timeout_s):
            _, conn = await self.loop.create_connection(
                lambda: _Conn(self),
                self.addr[0],
                self.addr[1],
                ssl=self.ssl_ctx,
                server_hostname=self.host if self.tls else None,
            )
        if len(self.conns) > self.peak_conns:
            self.peak_conns = len(self.conns)
        return conn

    async def _connect_and_send(
        self, tgt: _Prepared, sched: float, count_late: bool = True
    ) -> None:
        """Open loop: no idle connection for a due request; open one and send on it."""
        t_try = _now()
        try:
            conn = await self.connect()
        except (OSError, TimeoutError) as exc:
            self.record(tgt, 0, _describe(exc), sched, t_try, _now())
            return
        except asyncio.CancelledError:
            self.record(tgt, 0, "cancelled", sched, t_try, _now())
            raise
        if self.stopping:
            conn.transport.close()  # type: ignore[union-attr]
            self.record(tgt, 0, "cancelled", sched, t_try, _now())
            return
        if count_late and _now() - sched > self.late_s:
            self.late += 1
        conn.send(tgt, sched)

    async def resolve(self) -> None:
        assert self.loop is not None
        try:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            self.resolve_error = _describe(exc)
            return
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        self.addr = (str(infos[0][4][0]), int(infos[0][4][1]))

    # -- housekeeping tasks

    async def watchdog(self) -> None:
        """Fails requests that have waited ``timeout_s`` since their send."""
        timeout = self.timeout_s
        while True:
            now = _now()
            expired = []
            nxt = now + timeout
            for conn, sent in self.inflight.items():
                if sent + timeout <= now:
                    expired.append(conn)
                else:
                    nxt = sent + timeout
                    break
            for conn in expired:
                if conn.busy:
                    conn.keep = False
                    self.complete(conn, 0, "timeout")
                    if conn.transport is not None:
                        conn.transport.abort()
            await asyncio.sleep(max(nxt - _now(), _MIN_SLEEP))

    async def ticker(self) -> None:
        assert self.on_tick is not None
        history: list[tuple[float, int, int]] = [(self.t0, 0, 0)]
        k = 1
        while True:
            due = self.t0 + k * TICK_S
            await asyncio.sleep(max(due - _now(), _MIN_SLEEP))
            k += 1
            self.emit_tick(history)

    def emit_tick(self, history: list[tuple[float, int, int]]) -> None:
        assert self.on_tick is not None
        now = _now()
        n = len(self.lat)
        then, n_then, _ = history[0]
        window = sorted(self.lat[n_then:])
        span = now - then
        rps = (n - n_then) / span if span > 0 else 0.0
        history.append((now, n, self.completed))
        if len(history) > _WINDOW_TICKS:
            del history[0]
        self.on_tick(
            Tick(now - self.t0, self.sent, self.completed, rps, percentile(window, 95, empty=0.0))
        )

    # -- stop

    def request_stop(self) -> None:
        """Thread-unsafe part of a stop: runs on the loop."""
        if self.stopping:
            return
        self.stopping = True
        now = _now()
        if now < self.t_end:
            self.t_end = now
        for conn in list(self.inflight):
            if conn.busy:
                conn.keep = False
                self.complete(conn, 0, "cancelled")
                if conn.transport is not None:
                    conn.transport.abort()
        for task in list(self.pending):
            task.cancel()
        if self.driver is not None:
            self.driver.cancel()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        # the drain in main() ends when the cancelled connects have recorded their requests

    def close_all(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.conns.clear()

    # -- drive

    async def main(self, driver: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loop = asyncio.get_running_loop()
        token = self.stop_token
        if token is not None:
            loop = self.loop

            def hook() -> None:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(self.request_stop)

            if token._attach(hook):
                self.stopping = True
        aux: list[asyncio.Task[Any]] = []
        try:
            await self.resolve()
            await self.prepare()
            self.t0 = _now()
            self.t_end = self.t0 + self.duration_s
            if self.stopping:
                self.t_end = self.t0
            aux.append(self.loop.create_task(self.watchdog()))
            if self.on_tick is not None:
                aux.append(self.loop.create_task(self.ticker()))
            self.driver = self.loop.create_task(driver())
            try:
                await self.driver
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                # a stop request interrupted the driver; only a cancellation of main re-raises
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            # drain: outstanding requests finish or time out
            self.idle_event = asyncio.Event()
            if not self.inflight and not self.pending:
                self.idle_event.set()
            await self.idle_event.wait()
            if self.on_result is not None:
                self.deliver()
            if self.on_tick is not None and not self.stopping:
                self.emit_tick([(self.t0, 0, 0)])
        finally:
            if token is not None:
                token._detach()
            for task in aux:
                task.cancel()
            for task in list(self.pending):
                task.cancel()
            if self.driver is not None and not self.driver.done():
                self.driver.cancel()
            self.close_all()
            # let the cancelled tasks and the transports finish closing before the loop goes
            await asyncio.gather(*aux, *self.pending, return_exceptions=True)
            self.close_all()
            await asyncio.sleep(0)  # one loop iteration: the transports' sockets get closed

    async def prepare(self) -> None:
        return None

    def summary(self, rate: float | None, connections: int) -> LoadSummary:
        lat = sorted(self.lat)
        window = self.t_end - self.t0 if self.t_end != math.inf else self.duration_s
        window = max(min(window, self.duration_s), 0.0)
        return LoadSummary(
            mode=self.mode,
            rate=rate,
            connections=connections,
            duration_s=window,
            scheduled=self.scheduled,
            sent=self.sent,
            completed=self.completed,
            passed=self.passed,
            dropped=self.dropped,
            late=self.late,
            achieved_rps=self.in_window / window if window > 0 else 0.0,
            p50_ms=percentile(lat, 50, empty=0.0),
            p95_ms=percentile(lat, 95, empty=0.0),
            p99_ms=percentile(lat, 99, empty=0.0),
            max_ms=lat[-1] if lat else 0.0,
            success_rate=self.passed / self.scheduled if self.scheduled else 0.0,
        )

    # placeholders the open loop sets
    idle: list[_Conn]
    late_s: float


class _OpenRun(_Run):
    def __init__(self, rate: float, max_inflight: int, late_ms: float, **kw: Any) -> None:
        super().__init__("open", **kw)
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.rate = float(rate)
        self.max_inflight = max_inflight
        self.late_s = late_ms / 1000.0
        self.idle = []

    async def prepare(self) -> None:
        """Open a few keep-alive connections before the clock starts, so early requests are on
        time; the pool grows on demand."""
        want = min(self.max_inflight, 2 + math.ceil(self.rate / 200.0), 64)
        if self.addr is None:
            return
        results = await asyncio.gather(
            *(self.connect() for _ in range(want)), return_exceptions=True
        )
        for res in results:
            if isinstance(res, _Conn):
                self.idle.append(res)

    def dispatch(self, tgt: _Prepared, sched: float) -> None:
        if len(self.inflight) + len(self.pending) >= self.max_inflight:
            self.dropped += 1
            return
        self.sent += 1
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.lost and conn.keep:
                if _now() - sched > self.late_s:
                    self.late += 1
                conn.send(tgt, sched)
                return
        self.spawn(self._connect_and_send(tgt, sched))

    async def drive(self) -> None:
        rate = self.rate
        t0 = self.t0
        n_total = math.ceil(self.duration_s * rate)
        while n_total > 0 and (n_total - 1) / rate >= self.duration_s:
            n_total -= 1
        targets = self.targets
        nt = self.nt
        i = 0
        try:
            # a request due inside the window is still sent up to late_s after its end (it
            # counts as late if it is); later, it is dropped: nothing goes out after that
            close_at = self.t_end + self.late_s
            while i < n_total:
                now = _now()
                if now >= close_at or self.stopping:
                    break
                while i < n_total:
                    sched = t0 + i / rate
                    if sched > now:
                        break
                    self.scheduled += 1
                    self.dispatch(targets[i % nt], sched)
                    i += 1
                if i < n_total:
                    # at least a millisecond: uvloop's timers count whole milliseconds, and a
                    # shorter sleep spins (a CPU the server on the same host needs)
                    await asyncio.sleep(max(t0 + i / rate - _now(), _MIN_SLEEP))
        finally:
            # due before the window closed (or the run was stopped) but never sent
            window = self.t_end - t0
            upto = min(n_total, max(math.ceil(window * rate), 0))
            while upto > i and (upto - 1) / rate >= window:
                upto -= 1
            unsent = max(upto - i, 0)
            self.dropped += unsent
            self.scheduled += unsent


class _ClosedRun(_Run):
    def __init__(self, connections: int, **kw: Any) -> None:
        super().__init__("closed", **kw)
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        self.n_conns = connections
        self.idle = []
        self.late_s = math.inf

    async def worker(self) -> None:
        assert self.loop is not None
        while not self.stopping and _now() < self.t_end:
            t_try = _now()
            try:
                conn = await self.connect()
            except (OSError, TimeoutError) as exc:
                tgt = self.targets[self.i % self.nt]
                self.i += 1
                self.sent += 1
                self.scheduled += 1
                self.record(tgt, 0, _describe(exc), t_try, t_try, _now())
                await asyncio.sleep(0)  # a refused connect may not yield: let the loop run
                continue
            t_send = _now()
            if self.stopping or t_send >= self.t_end:
                conn.transport.close()  # type: ignore[union-attr]
                break
            fut: asyncio.Future[None] = self.loop.create_future()
            conn.closed_fut = fut
            tgt = self.targets[self.i % self.nt]
            self.i += 1
            self.sent += 1
            self.scheduled += 1
            conn.send(tgt, None, t_send)
            await fut

    async def drive(self) -> None:
        await asyncio.gather(*(self.worker() for _ in range(self.n_conns)))

    def lost(self, conn: _Conn, error: str) -> None:
        # a stale keep-alive connection: the worker reconnects and goes on; nothing was answered
        if conn.reused and not conn.got_bytes and not self.stopping:
            conn.busy = False
            del self.inflight[conn]
            self.sent -= 1
            self.scheduled -= 1
            return
        self.fail(conn, error)


def _run(run: _Run, driver: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run.main(driver))
    if run.error is not None:
        raise run.error


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("PIPELINE_LOAD_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_open_loop(
    base_url: str,
    targets: Sequence[Target],
    rate: float,
    duration_s: float,
    *,
    on_result: Callable[[RequestResult], None] = _ignore,
    on_tick: Callable[[Tick], None] | None = None,
    max_inflight: int = 1024,
    timeout_s: float = 10.0,
    late_ms: float = 10.0,
    stop: StopToken | None = None,
) -> LoadSummary:
    """Send ``rate`` requests per second for ``duration_s`` seconds, on schedule, round robin
    over ``targets``; see the module docstring."""
    run = _OpenRun(
        rate,
        max_inflight,
        late_ms,
        base_url=base_url,
        targets=targets,
        duration_s=duration_s,
        on_result=on_result,
        on_tick=on_tick,
        timeout_s=timeout_s,
        stop=stop,
    )
    _run(run, run.drive)
    return run.summary(run.rate, run.peak_conns)


def run_closed_loop(
    base_url: str,
    targets: Sequence[Target],
    connections: int,
    duration_s: float,
    *,
    on_result: Callable[[RequestResult], None] = _ignore,
    on_tick: Callable[[Tick], None] | None = None,
    timeout_s: float = 10.0,
    stop: StopToken | None = None,
) -> LoadSummary:
    """Keep ``connections`` keep-alive connections busy back-to-back for ``duration_s`` seconds,
    round robin over ``targets``; see the module docstring."""
    run = _ClosedRun(
        connections,
        base_url=base_url,
        targets=targets,
        duration_s=duration_s,
        on_result=on_result,
        on_tick=on_tick,
        timeout_s=timeout_s,
        stop=stop,
    )
    _run(run, run.drive)
    return run.summary(None, connections)
