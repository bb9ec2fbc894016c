"""The data plane's HTTP/1.1 reverse proxy: service and tag URLs → revision pools → instances.

A raw asyncio Protocol proxy (no aiohttp on the request path): a request is parsed just enough to
know where it ends (Content-Length or chunked), routed by the traffic split to a revision's pool,
and written verbatim on a keep-alive connection to the least busy ready instance; the response is
forwarded as it arrives, with one header added (``x-emulator-revision``), and parsed just enough to
know where it ends, so the upstream connection goes back to the pool.

A pool queues a request when every ready instance is at its concurrency and asks its autoscaler
for another instance; a request that a starting instance will take waits for it (as on Cloud
Run: bounded by the request timeout), one that no instance has room for is answered 429 after
``queue_timeout_s``. An instance
being drained gets no new requests; when its last request completes the pool says so
(``on_idle``) and it is stopped. A request that could not be sent (connection refused, or a reused
keep-alive connection closed before any answer) is sent again elsewhere; one whose instance died
while it was in flight is answered 502. Everything runs on one event loop; nothing blocks.

Why one file of ~1k lines: Slot, Pool, Route, ClientConn and UpConn call each other on the
request path (a slot opens an UpConn, which answers its ClientConn, which submits to a Pool);
apart, they would import each other in a cycle or go through indirections on every request
(bench/bench_emulator_routing.py measures that path).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from pipeline.stats import percentile

_now = time.perf_counter
_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_PAUSE_AT = 1024 * 1024
_LAT_RING = 16384  # the last requests' latency, time and status: metrics and Monitoring read it
_HISTORY_S = 3600  # per-second answer counts kept this long (Monitoring's request_count)
_LAT_MASK = _LAT_RING - 1
_MAX_RETRIES = 3

# response framing
_LEN = 0
_CHUNKED = 1
_TO_CLOSE = 2

# slot states
STARTING = "starting"
READY = "ready"
DRAINING = "draining"
STOPPED = "stopped"


def error_response(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": {"code": status, "message": message}})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def _class(status: int) -> int:
    return status // 100 if 0 < status < 600 else 5


def _chunked_end(buf: bytes | bytearray, pos: int) -> int:
    """Where a chunked body starting at `pos` ends (after its trailers), or -1 if incomplete."""
    n = len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            return -2
        if size == 0:
            # trailers: lines until an empty one
            p = eol + 2
            while True:
                e = buf.find(b"\r\n", p)
                if e < 0:
                    return -1
                if e == p:
                    return e + 2
                p = e + 2
        pos = eol + 2 + size + 2
        if pos > n:
            return -1


class Stats:
    """Counters and a ring of recent latencies of one pool (revision)."""

    __slots__ = (
        "requests",
        "codes",
        "failed",
        "rejected",
        "lat",
        "lat_t",
        "lat_s",
        "lat_i",
        "per_second",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.codes = [0, 0, 0, 0, 0, 0]  # by status // 100
        self.failed = 0  # answered by the proxy itself: 502, 503, 504
        self.rejected = 0  # 429: no instance free in time
        self.lat = [0.0] * _LAT_RING
        self.lat_t = [0.0] * _LAT_RING
        self.lat_s = [0] * _LAT_RING  # the status answered
        self.lat_i = 0
        self.per_second: dict[int, dict[int, int]] = {}  # second → status → answers

    def count(self, now: float, status: int) -> None:
        """One answer with `status` in the second of `now` (the last hour's seconds are kept)."""
        second = int(now)
        bucket = self.per_second.get(second)
        if bucket is None:
            bucket = self.per_second[second] = {}
            if len(self.per_second) > _HISTORY_S:
                for old in [s for s in self.per_second if s < second - _HISTORY_S]:
                    del self.per_second[old]
        bucket[status] = bucket.get(status, 0) + 1

    def latencies(self, window_s: float | None = None) -> list[float]:
        n = min(self.lat_i, _LAT_RING)
        if window_s is None:
            return self.lat[:n] if self.lat_i <= _LAT_RING else list(self.lat)
        since = _now() - window_s
        return [self.lat[i] for i in range(n) if self.lat_t[i] >= since]

    def since(self, t: float) -> list[tuple[float, float, int]]:
        """(time, latency ms, status) of the requests answered at `t` or later (perf_counter)."""
        n = min(self.lat_i, _LAT_RING)
        lat, when, status = self.lat, self.lat_t, self.lat_s
        return [(when[i], lat[i], status[i]) for i in range(n) if when[i] >= t]


class Slot:
    """One instance as the router sees it: where it listens and what it is doing."""

    __slots__ = (
        "pool",
        "id",
        "host",
        "port",
        "state",
        "inflight",
        "peak",
        "requests",
        "idle",
        "conns",
        "handle",
        "started_at",
        "ready_at",
        "draining_since",
        "killed",
    )

    def __init__(self, pool: Pool, slot_id: str) -> None:
        self.pool = pool
        self.id = slot_id
        self.host = "127.0.0.1"
        self.port = 0
        self.state = STARTING
        self.inflight = 0
        self.peak = 0  # the most requests at once since Monitoring last looked
        self.requests = 0
        self.idle: list[UpConn] = []
        self.conns: set[UpConn] = set()
        self.handle: Any = None  # the runtime Instance
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.draining_since: float | None = None
        self.killed: str | None = None  # why it was shut down at once: its requests get 503

    def send(self, client: ClientConn) -> None:
        self.inflight += 1
        if self.inflight > self.peak:
            self.peak = self.inflight
        self.requests += 1
        self.pool.inflight += 1
        client.slot = self
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.lost:
                conn.start(client, True)
                return
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: UpConn(self), self.host, self.port))
        task.add_done_callback(lambda t: self._connected(t, client))

    def _connected(self, task: asyncio.Task[Any], client: ClientConn) -> None:
        if task.cancelled():
            exc: BaseException | None = ConnectionError("cancelled")
        else:
            exc = task.exception()
        if exc is not None:
            self._release()
            self.pool.refused(self, client, exc)
            return
        _transport, conn = task.result()
        if client.closed or self.state == STOPPED:
            conn.transport.close()
            self._release()
            if not client.closed:
                self.pool.submit(client, retry=True)
            else:
                self.pool.kick()
            return
        conn.start(client, False)

    def _release(self) -> None:
        self.inflight -= 1
        self.pool.inflight -= 1
        if self.inflight == 0 and self.state == DRAINING:
            self.pool.idle_slot(self)

    def close_idle(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()

    def abort_all(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.idle.clear()


class Pool:
    """A revision's instances as the router sees them, its queue and its statistics."""

    def __init__(
        self,
        name: str,
        *,
        concurrency: int,
        timeout_s: float,
        queue_timeout_s: float,
        want_instance: Callable[[Pool], None],
        on_idle: Callable[[Slot], None],
        on_suspect: Callable[[Slot], None],
    ) -> None:
        self.name = name
        self.short = name.rsplit("/", 1)[-1]
        self.header = f"x-emulator-revision: {self.short}\r\n".encode()
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.want_instance = want_instance
        self.on_idle = on_idle
        self.on_suspect = on_suspect
        self.slots: list[Slot] = []
        self.ready: list[Slot] = []
        self.queue: collections.deque[ClientConn] = collections.deque()
        self.inflight = 0
        self.peak = 0  # most requests in flight or queued since the autoscaler last looked
        self.stats = Stats()
        self.max_instances = 1
        self.closed = False

    # ---- requests

    def submit(self, client: ClientConn, retry: bool = False) -> None:
        ready = self.ready
        slot: Slot | None = None
        if len(ready) == 1:
            if ready[0].inflight < self.concurrency:
                slot = ready[0]
        else:
            best = self.concurrency
            for s in ready:
                n = s.inflight
                if n < best:
                    slot, best = s, n
                    if n == 0:
                        break
        if slot is not None:
            slot.send(client)
            if self.inflight > self.peak:
                self.peak = self.inflight
            return
        if not client.queued_at:
            client.queued_at = _now()
        if retry:
            self.queue.appendleft(client)
        else:
            self.queue.append(client)
        load = self.inflight + len(self.queue)
        if load > self.peak:
            self.peak = load
        self.want_instance(self)

    def kick(self) -> None:
        """Send queued requests to instances that have room."""
        queue = self.queue
        while queue:
            slot = None
            best = self.concurrency
            for s in self.ready:
                if s.inflight < best:
                    slot, best = s, s.inflight
            if slot is None:
                return
            client = queue.popleft()
            if not client.closed:
                slot.send(client)

    def finished(self, slot: Slot, status: int, t0: float) -> None:
        """A request answered by the instance with `status`."""
        now = _now()
        st = self.stats
        st.requests += 1
        st.codes[_class(status)] += 1
        i = st.lat_i & _LAT_MASK
        st.lat[i] = (now - t0) * 1000.0
        st.lat_t[i] = now
        st.lat_s[i] = status
        st.lat_i += 1
        st.count(now, status)
        slot.inflight -= 1
        self.inflight -= 1
        if self.queue and slot.state == READY:
            self.kick()
        elif slot.inflight == 0 and slot.state == DRAINING:
            self.idle_slot(slot)

    def answer(self, client: ClientConn, status: int, reason: str, message: str) -> None:
        """A response of the proxy's own (429, 502, 503, 504)."""
        st = self.stats
        st.requests += 1
        st.codes[status // 100] += 1
        if status == 429:
            st.rejected += 1
        else:
            st.failed += 1
        now = _now()
        i = st.lat_i & _LAT_MASK
        st.lat[i] = (now - client.t0) * 1000.0
        st.lat_t[i] = now
        st.lat_s[i] = status
        st.lat_i += 1
        st.count(now, status)
        client.reply(error_response(status, reason, message, self.header))

    def refused(self, slot: Slot, client: ClientConn, exc: BaseException) -> None:
        """A connection to an instance failed before the request was sent: send it elsewhere."""
        self.on_suspect(slot)
        if client.closed:
            self.kick()
            return
        client.retries += 1
        if client.retries > _MAX_RETRIES:
            self.answer(client, 502, "Bad Gateway", f"instance unreachable: {exc}")
            return
        self.submit(client, retry=True)

    # ---- instances

    def add(self, slot: Slot) -> None:
        self.slots.append(slot)

    def slot_ready(self, slot: Slot) -> None:
        slot.state = READY
        slot.ready_at = time.monotonic()
        self.ready.append(slot)
        self.kick()

    def out_of_rotation(self, slot: Slot) -> None:
        """No new requests for `slot` for now (it fails its readiness probe)."""
        if slot in self.ready:
            self.ready.remove(slot)

    def back_in_rotation(self, slot: Slot) -> None:
        if slot.state == READY and slot not in self.ready:
            self.ready.append(slot)
            self.kick()

    def drain(self, slot: Slot) -> None:
        """No new requests for `slot`; `on_idle` once its in-flight requests are done."""
        if slot.state == DRAINING or slot.state == STOPPED:
            return
        if slot in self.ready:
            self.ready.remove(slot)
        slot.state = DRAINING
        slot.draining_since = time.monotonic()
        slot.close_idle()
        if slot.inflight == 0:
            self.idle_slot(slot)

    def idle_slot(self, slot: Slot) -> None:
        slot.close_idle()
        self.on_idle(slot)

    def remove(self, slot: Slot) -> None:
        """The instance is gone (stopped or died): forget it."""
        if slot in self.ready:
            self.ready.remove(slot)
        if slot in self.slots:
            self.slots.remove(slot)
        slot.state = STOPPED
        slot.close_idle()

    def counts(self) -> dict[str, int]:
        out = {STARTING: 0, READY: 0, DRAINING: 0}
        for s in self.slots:
            if s.state in out:
                out[s.state] += 1
        return out

    def sweep(self) -> None:
        """Answer 429 to requests queued too long and 504 to requests past the timeout.

        As on Cloud Run, a request that an instance being started will take waits for that
        start (bounded by the request timeout; a start that fails answers it): the queue
        timeout runs only for requests no starting instance has room for.
        """
        now = _now()
        queue = self.queue
        if queue:
            limit = now - self.queue_timeout_s
            deadline = now - self.timeout_s
            awaited = self.concurrency * sum(1 for s in self.slots if s.state == STARTING)
            keep: collections.deque[ClientConn] = collections.deque()
            while queue:
                client = queue.popleft()
                if client.closed:
                    continue
                if awaited > 0:
                    awaited -= 1
                    if client.t0 < deadline:
                        self.answer(
                            client,
                            504,
                            "Gateway Timeout",
                            f"no instance got ready within the request timeout ({self.timeout_s:g} s)",
                        )
                    else:
                        keep.append(client)
                elif client.queued_at < limit:
                    self.answer(
                        client,
                        429,
                        "Too Many Requests",
                        "Rate exceeded: no instance was available in "
                        f"{self.queue_timeout_s:g} s (max instances {self.max_instances})",
                    )
                else:
                    keep.append(client)
            self.queue = keep
        limit = now - self.timeout_s
        for slot in self.slots:
            for conn in list(slot.conns):
                running = conn.client
                if running is not None and running.t0 < limit:
                    conn.timed_out()

    def close(self) -> None:
        self.closed = True
        while self.queue:
            client = self.queue.popleft()
            if not client.closed:
                self.answer(client, 503, "Service Unavailable", "the revision was removed")


class Route:
    """Where a listener's requests go: one pool, or a weighted choice among pools."""

    __slots__ = ("pools", "cum", "total", "single")

    def __init__(self, weighted: list[tuple[Pool, int]]) -> None:
        self.pools = [p for p, w in weighted if w > 0]
        self.cum: list[int] = []
        total = 0
        for _p, w in weighted:
            if w > 0:
                total += w
                self.cum.append(total)
        self.total = total
        self.single = self.pools[0] if len(self.pools) == 1 else None

    def pick(self) -> Pool | None:
        if self.single is not None:
            return self.single
        if not self.pools:
            return None
        r = random.random() * self.total
        for pool, edge in zip(self.pools, self.cum, strict=True):
            if r < edge:
                return pool
        return self.pools[-1]


class Listener:
    """One URL (a service's or a tag's): a listening socket and its route."""

    def __init__(self, name: str, route: Route) -> None:
        self.name = name
        self.route = route
        self.server: asyncio.base_events.Server | None = None
        self.clients: set[ClientConn] = set()
        self.port = 0
        self.unroutable = "no revision is ready to serve this URL yet"

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: ClientConn(self), host, port, backlog=1024, reuse_address=True
            )
        except OSError:
            if port == 0:
                raise
            server = await loop.create_server(
                lambda: ClientConn(self), host, 0, backlog=1024, reuse_address=True
            )
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for client in list(self.clients):
            client.close_when_idle()


class ClientConn(asyncio.Protocol):
    """A connection from a client; one request at a time (pipelined bytes wait in `buf`)."""

    __slots__ = (
        "listener",
        "transport",
        "buf",
        "need",
        "req",
        "keep",
        "head_only",
        "t0",
        "queued_at",
        "slot",
        "closed",
        "retries",
        "paused",
        "closing",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = 0
        self.req: bytes | None = None
        self.keep = True
        self.head_only = False
        self.t0 = 0.0
        self.queued_at = 0.0
        self.slot: Slot | None = None
        self.closed = False
        self.retries = 0
        self.paused = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.req is not None:
            self.buf += data
            if len(self.buf) > _PAUSE_AT and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
            return
        if self.buf or self.need:
            buf, self.buf = self.buf + data, b""
            self._parse(buf)
            return
        # fast path: one whole keep-alive HTTP/1.1 request without a body, alone in this read
        head = data.lower()
        if (
            head.find(b"\r\n\r\n") != len(data) - 4
            or not data.startswith(b"HTTP/1.1", data.find(b"\r\n") - 8)
            or head.find(b"content-length") >= 0
            or head.find(b"transfer-encoding") >= 0
            or head.find(b"close") >= 0
        ):
            self._parse(data)
            return
        self.keep = True
        self.head_only = data.startswith(b"HEAD ")
        self.req = data
        self.t0 = _now()
        self.retries = 0
        self.queued_at = 0.0
        route = self.listener.route
        pool = route.single or route.pick()
        if pool is None:
            self.reply(error_response(503, "Service Unavailable", self.listener.unroutable), True)
            return
        ready = pool.ready
        if len(ready) == 1:
            slot = ready[0]
            idle = slot.idle
            if idle and slot.inflight < pool.concurrency:
                conn = idle.pop()
                if conn.transport is not None and not conn.lost:
                    slot.inflight += 1
                    if slot.inflight > slot.peak:
                        slot.peak = slot.inflight
                    slot.requests += 1
                    pool.inflight += 1
                    if pool.inflight > pool.peak:
                        pool.peak = pool.inflight
                    self.slot = slot
                    conn.client = self
                    conn.reused = True
                    conn.got = False
                    conn.in_head = True
                    conn.transport.write(data)
                    return
        pool.submit(self)

    def _parse(self, buf: bytes) -> None:
        need = self.need
        if need:
            if len(buf) < need:
                self.buf = buf
                return
            self.need = 0
            self._dispatch(buf[:need], buf[need:])
            return
        he = buf.find(b"\r\n\r\n")
        if he < 0:
            if len(buf) > _MAX_HEAD:
                self._fail(431, "Request Header Fields Too Large", "request head too large")
            else:
                self.buf = buf
            return
        le = buf.find(b"\r\n")
        keep = buf[le - 8 : le] == b"HTTP/1.1"
        self.head_only = buf[:5] == b"HEAD "
        end = he + 4
        if le == he:  # no header lines at all
            self.keep = keep
            self._dispatch(buf[:end], buf[end:])
            return
        head = buf[le : he + 2].lower()
        i = head.find(b"\r\nconnection:")
        if i >= 0:
            value = head[i + 13 : head.find(b"\r\n", i + 2)]
            if b"close" in value:
                keep = False
            elif b"keep-alive" in value:
                keep = True
        self.keep = keep
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            try:
                clen = int(head[i + 17 : head.find(b"\r\n", i + 2)])
            except ValueError:
                self._fail(400, "Bad Request", "bad content-length")
                return
            if clen < 0 or clen > _MAX_BODY:
                self._fail(413, "Content Too Large", "request body too large")
                return
            end = he + 4 + clen
        elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            end = _chunked_end(buf, he + 4)
            if end == -2:
                self._fail(400, "Bad Request", "bad chunked request body")
                return
            if end < 0:
                if len(buf) > _MAX_BODY:
                    self._fail(413, "Content Too Large", "request body too large")
                else:
                    self.buf = buf  # parse again when more arrives
                return
        n = len(buf)
        if n < end:
            self.need = end
            self.buf = buf
            return
        if n == end:
            self._dispatch(buf, b"")
        else:
            self._dispatch(buf[:end], buf[end:])

    def _dispatch(self, req: bytes, rest: bytes) -> None:
        self.req = req
        self.buf = rest
        self.t0 = _now()
        self.retries = 0
        self.queued_at = 0.0
        route = self.listener.route
        pool = route.single or route.pick()
        if pool is None:
            self.reply(error_response(503, "Service Unavailable", self.listener.unroutable), True)
            return
        pool.submit(self)

    # ---- answers

    def reply(self, raw: bytes, keep: bool = True) -> None:
        """A whole response of the proxy's own; then the next request."""
        if not self.closed:
            self.transport.write(raw)  # type: ignore[union-attr]
        self.done(keep)

    def done(self, keep: bool) -> None:
        self.req = None
        self.slot = None
        if self.closed:
            return
        if not (keep and self.keep) or self.closing:
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buf:
            buf, self.buf = self.buf, b""
            self._parse(buf)

    def _fail(self, status: int, reason: str, message: str) -> None:
        self.keep = False
        self.req = b""
        self.reply(error_response(status, reason, message), False)

    def close_when_idle(self) -> None:
        self.closing = True
        if self.req is None and not self.closed:
            self.transport.close()  # type: ignore[union-attr]


class UpConn(asyncio.Protocol):
    """A keep-alive connection to one instance, carrying one request at a time."""

    __slots__ = (
        "slot",
        "transport",
        "client",
        "reused",
        "got",
        "in_head",
        "hbuf",
        "status",
        "framing",
        "remaining",
        "keep",
        "cbuf",
        "lost",
    )

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.client: ClientConn | None = None
        self.reused = False
        self.got = False
        self.in_head = True
        self.hbuf = b""
        self.status = 0
        self.framing = _LEN
        self.remaining = 0
        self.keep = True
        self.cbuf: bytearray | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.slot.conns.add(self)

    def start(self, client: ClientConn, reused: bool) -> None:
        self.client = client
        self.reused = reused
        self.got = False
        self.in_head = True
        self.hbuf = b""
        self.transport.write(client.req)  # type: ignore[union-attr, arg-type]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or not self.in_head or self.hbuf:
            self._read(data)
            return
        # fast path: a whole HTTP/1.1 response framed by Content-Length in this one read, that
        # leaves the connection open
        he = data.find(b"\r\n\r\n")
        cls = data[9] - 48 if he >= 12 else 0
        if (
            cls < 2
            or cls > 5
            or not data.startswith(b"HTTP/1.1 ")
            or not (47 < data[10] < 58 and 47 < data[11] < 58)
        ):
            self._read(data)
            return
        head = data[:he].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0 or head.find(b"close") >= 0 or head.find(b"transfer-encoding") >= 0:
            self._read(data)
            return
        j = head.find(b"\r\n", i + 17)
        try:
            clen = int(head[i + 17 : j if j > 0 else he])
        except ValueError:
            clen = -1
        if clen != len(data) - he - 4:
            self._read(data)
            return
        out = data[: he + 2] + self.slot.pool.header + data[he + 2 :]
        self.got = True
        if not client.closed:
            client.transport.write(out)  # type: ignore[union-attr]
        self.status, self.keep = int(data[9:12]), True
        self._finish()

    def _read(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.got = True
        if not self.in_head:
            if not client.closed:
                client.transport.write(data)  # type: ignore[union-attr]
            framing = self.framing
            if framing == _LEN:
                self.remaining -= len(data)
                if self.remaining <= 0:
                    self._finish()
            elif framing == _CHUNKED:
                self._chunk(data)
            return
        buf = self.hbuf + data if self.hbuf else data
        while True:
            he = buf.find(b"\r\n\r\n")
            if he < 0:
                if len(buf) > _MAX_HEAD:
                    self._broken("response head too large")
                else:
                    self.hbuf = buf
                return
            try:
                status = int(buf[9:12])
            except ValueError:
                self._broken("bad response status line")
                return
            if 100 <= status < 200 and status != 101:
                if not client.closed:
                    client.transport.write(buf[: he + 4])  # type: ignore[union-attr]
                buf = buf[he + 4 :]
                continue
            break
        self.in_head = False
        if self.hbuf:
            self.hbuf = b""
        self.status = status
        le = buf.find(b"\r\n")
        clen = -1
        chunked = False
        head = buf[le : he + 2].lower()
        keep = buf[5:8] == b"1.1"
        c = head.find(b"\r\nconnection:")
        if c >= 0:
            value = head[c + 13 : head.find(b"\r\n", c + 2)]
            if b"close" in value:
                keep = False
            elif b"keep-alive" in value:
                keep = True
        if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            chunked = True
        else:
            c = head.find(b"\r\ncontent-length:")
            if c >= 0:
                try:
                    clen = int(head[c + 17 : head.find(b"\r\n", c + 2)])
                except ValueError:
                    self._broken("bad content-length in the response")
                    return
        self.keep = keep
        if not client.closed:
            client.transport.write(  # type: ignore[union-attr]
                buf[: le + 2] + self.slot.pool.header + buf[le + 2 :]
            )
        if client.head_only or status == 204 or status == 304:
            self._finish()
            return
        if clen >= 0:
            remaining = clen - (len(buf) - he - 4)
            self.framing = _LEN
            if remaining > 0:
                self.remaining = remaining
                return
            self._finish()
            return
        if chunked:
            self.framing = _CHUNKED
            self.cbuf = bytearray()
            self._chunk(buf[he + 4 :])
            return
        self.framing = _TO_CLOSE
        self.keep = False

    def _chunk(self, data: bytes) -> None:
        cbuf = self.cbuf
        assert cbuf is not None
        cbuf += data
        end = _chunked_end(cbuf, 0)
        if end == -2:
            self._broken("bad chunked response")
        elif end >= 0:
            self.cbuf = None
            self._finish()

    def _finish(self) -> None:
        client = self.client
        assert client is not None
        self.client = None
        slot = self.slot
        keep = self.keep
        if keep and slot.state == READY:
            slot.idle.append(self)
        else:
            self.transport.close()  # type: ignore[union-attr]
        slot.pool.finished(slot, self.status, client.t0)
        client.done(keep)

    def _broken(self, why: str) -> None:
        client = self.client
        self.client = None
        self.keep = False
        self.transport.abort()  # type: ignore[union-attr]
        if client is not None:
            self._fail_client(client, why)

    def _fail_client(self, client: ClientConn, why: str) -> None:
        slot = self.slot
        slot.inflight -= 1
        slot.pool.inflight -= 1
        pool = slot.pool
        if self.in_head and not self.got:
            if slot.killed is not None:
                pool.answer(client, 503, "Service Unavailable", slot.killed)
            else:
                pool.answer(client, 502, "Bad Gateway", f"the instance failed: {why}")
        else:
            # part of the response is out: the client can only see the connection end
            st = pool.stats
            st.requests += 1
            st.failed += 1
            st.codes[5] += 1
            st.count(_now(), 502)
            client.keep = False
            client.done(False)
        if slot.inflight == 0 and slot.state == DRAINING:
            pool.idle_slot(slot)

    def timed_out(self) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        self.keep = False
        self.transport.abort()  # type: ignore[union-attr]
        slot = self.slot
        slot.inflight -= 1
        slot.pool.inflight -= 1
        if self.in_head and not self.got:
            slot.pool.answer(
                client,
                504,
                "Gateway Timeout",
                f"the request took longer than the revision's timeout ({slot.pool.timeout_s:g} s)",
            )
        else:
            client.keep = False
            client.done(False)
        if slot.inflight == 0 and slot.state == DRAINING:
            slot.pool.idle_slot(slot)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        slot = self.slot
        slot.conns.discard(self)
        if self in slot.idle:
            slot.idle.remove(self)
        client = self.client
        if client is None:
            return
        self.client = None
        if self.framing == _TO_CLOSE and not self.in_head and exc is None:
            slot.pool.finished(slot, self.status, client.t0)
            client.done(False)
            return
        if (
            self.reused
            and not self.got
            and slot.killed is None
            and not client.closed
            and client.retries < _MAX_RETRIES
        ):
            # a stale keep-alive connection: nothing was answered, send it again
            client.retries += 1
            slot.inflight -= 1
            slot.pool.inflight -= 1
            if slot.inflight == 0 and slot.state == DRAINING:
                slot.pool.idle_slot(slot)
            slot.pool.submit(client, retry=True)
            return
        slot.pool.on_suspect(slot)
        self._fail_client(client, "connection lost" if exc is None else str(exc) or "reset")


def percentiles(values: list[float]) -> dict[str, float]:
    """count, avg, p50, p95, p99, max of latencies (ms), rounded."""
    if not values:
        return {"count": 0, "avg": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    return {
        "count": len(ordered),
        "avg": round(sum(ordered) / len(ordered), 3),
        "p50": round(percentile(ordered, 50), 3),
        "p95": round(percentile(ordered, 95), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3),
    }
