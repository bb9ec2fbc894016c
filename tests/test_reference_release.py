"""The reference TAIEA release, built with systools and started natively: nothing is mocked.

Most endpoint tests share one running release (module scope); tests that need a fresh VM (faults,
shutdown, layouts, read-only root) start their own with ``start_reference``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fixtures_release import (
    NAME,
    START_TIMEOUT,
    Response,
    RunningRelease,
    extract_release,
    free_port,
    launch,
    poll,
    request,
)

from pipeline import reference
from pipeline.errors import PipelineError

REFUSE = "refuse"


@pytest.fixture(scope="module", autouse=True)
def slowstart(
    reference_tarball: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A slowstart release started when the module starts: its 6 s overlap the other tests.

    A thread polls /ready (with tenacity) and records when it first answered 200.
    """
    work = tmp_path_factory.mktemp("reference-slowstart")
    root = extract_release(reference_tarball(), work / "root")
    rel = launch(root, work, {"TAIEA_FAULT": "slowstart"}, wait="listening")
    state: dict[str, Any] = {
        "release": rel,
        "first_ready_status": rel.get("/ready").status,
        "first_health_status": rel.get("/health").status,
    }

    def watch() -> None:
        try:
            poll(lambda: rel.get("/ready", timeout=2).status == 200, 20, interval=0.05)
            state["ready_after"] = time.monotonic() - rel.started_at
        except Exception as exc:  # recorded, asserted by the test
            state["error"] = repr(exc)

    state["thread"] = threading.Thread(target=watch, daemon=True)
    state["thread"].start()
    yield state
    state["thread"].join(25)
    assert rel.stop() == 0


@pytest.fixture(scope="module")
def server(
    reference_tarball: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRelease]:
    work = tmp_path_factory.mktemp("reference-server")
    running = launch(extract_release(reference_tarball(), work / "root"), work)
    yield running
    assert running.stop() == 0


def keep_alive_series(port: int, n: int, path: str = "/health") -> list[tuple[int, float]]:
    """n sequential GETs on one keep-alive connection: (status, latency in ms) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            out.append((resp.status, (time.perf_counter() - t0) * 1000))
    finally:
        conn.close()
    return out


def p95(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[94]


def assert_refusal(resp: Response, status: int, error_part: str) -> None:
    assert resp.status == status, resp.body
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["decision"] == REFUSE
    assert error_part in body["error"], body


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fault": "flaky"}, "unknown fault 'flaky'"),
        ({"layout": "zip"}, "unknown layout 'zip'"),
        ({"version": "../1"}, "bad release version"),
    ],
    ids=["unknown-fault", "unknown-layout", "bad-version"],
)
def test_build_rejects_bad_input(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(PipelineError, match=message) as exc:
        reference.build(tmp_path, **kwargs)
    assert "\n" not in str(exc.value)
    assert not list(tmp_path.iterdir())


def test_build_without_erlang_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match="erlang-base"):
        reference.build(tmp_path / "out")


@pytest.mark.parametrize(("layout", "version"), [("rebar3", "1.0.0"), ("wrapped", "2.3.4")])
def test_layout_contents_and_start(
    layout: str,
    version: str,
    reference_tarball: Callable[..., Path],
    start_reference: Callable[..., RunningRelease],
) -> None:
    tarball = reference_tarball(layout=layout, version=version)
    assert tarball.name == f"tai_autonomics-{version}.tar.gz"
    prefix = "tai_autonomics/" if layout == "wrapped" else ""
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        start = tar.getmember(f"{prefix}bin/{NAME}")
    if layout == "wrapped":
        assert all(n == "tai_autonomics" or n.startswith(prefix) for n in names)
    else:
        assert not any(n.startswith("tai_autonomics/") for n in names)
    for member in (
        f"releases/{version}/start.boot",
        f"releases/{version}/sys.config",
        f"releases/{version}/vm.args",
        "releases/start_erl.data",
        f"lib/tai_autonomics-{version}/ebin/tai_autonomics.app",
    ):
        assert prefix + member in names
    erts = [n for n in names if n.startswith(prefix + "erts-") and n.endswith("/bin/erlexec")]
    assert len(erts) == 1
    assert start.mode & 0o111
    assert start.uid == 0

    rel = start_reference(tarball)
    assert (rel.root / "bin" / NAME).is_file()
    assert rel.get("/health").status == 200
    assert rel.get("/ready").json()["ready"] is True
    assert psutil.Process(rel.pid).name() == "beam.smp"  # the script exec'd the VM
    assert rel.wait_receipt("startup")["version"] == version
    out = subprocess.run(
        [str(rel.root / "bin" / NAME), "version"], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == f"tai_autonomics {version}"


def test_build_is_reproducible(reference_tarball: Callable[..., Path], tmp_path: Path) -> None:
    again = reference.build(tmp_path / "again")
    assert again.read_bytes() == reference_tarball().read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]
    assert [p.name for p in (tmp_path / "again").iterdir()] == ["tai_autonomics-1.0.0.tar.gz"]
    assert not list(Path(tempfile.gettempdir()).glob("taiea-build-*"))  # temp dirs removed


# --------------------------------------------------------------------------- smoke tests


SMOKE_MARKETPLACE = {
    "tenant_id": "test-tenant-001",
    "event_type": "sku_changed",
    "event_data": {"sku": "professional", "timestamp": 1234567890},
}
SMOKE_PUBSUB = {
    "message": {"attributes": {}, "data": "eyJ0ZXN0IjoidmFsdWUifQ=="},
    "subscription": "projects/test-project/subscriptions/test-sub",
}


def test_smoke_health(server: RunningRelease) -> None:
    resp = server.get("/health")
    assert resp.status == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert isinstance(body["uptime"], int) and body["uptime"] >= 0
    assert int(resp.headers["content-length"]) == len(resp.body)


def test_smoke_marketplace(server: RunningRelease) -> None:
    resp = server.post("/marketplace", SMOKE_MARKETPLACE)
    assert resp.status == 202
    body = resp.json()
    assert body["event_id"].startswith("evt-")
    assert body["decision"] == "accept"
    assert body["state"] == "active"
    assert body["sku"] == "professional"


def test_smoke_pubsub(server: RunningRelease) -> None:
    resp = server.post("/pubsub", SMOKE_PUBSUB)
    assert resp.status == 202
    assert resp.json()["subscription"] == "acknowledged"


def test_smoke_metrics(server: RunningRelease) -> None:
    resp = server.get("/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE taiea_http_requests_total counter" in resp.text


def test_smoke_ready(server: RunningRelease) -> None:
    resp = server.get("/ready")
    assert resp.status == 200
    assert resp.json() == {"ready": True, "dependencies": ["mcp_server", "governor"]}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/marketplace", "{not json", 400, "malformed JSON"),
        ("POST", "/marketplace", "", 400, "malformed JSON"),
        ("POST", "/marketplace", '{"tenant_id":"t"} x', 400, "malformed JSON"),
        ("POST", "/marketplace", "[1,2]", 400, "must be a JSON object"),
        ("POST", "/marketplace", {}, 400, "missing field: tenant_id"),
        ("POST", "/marketplace", {"tenant_id": "t"}, 400, "missing field: event_type"),
        ("POST", "/marketplace", {"tenant_id": 42, "event_type": "grant"}, 400, "tenant_id must"),
        ("POST", "/marketplace", {"tenant_id": "t", "event_type": "x"}, 400, "unknown event_type"),
        (
            "POST",
            "/marketplace",
            {"tenant_id": "t", "event_type": "entitlement"},
            400,
            "missing field: action",
        ),
        (
            "POST",
            "/marketplace",
            {"tenant_id": "t", "event_type": "entitlement", "action": "pause"},
            400,
            "unknown action",
        ),
        (
            "POST",
            "/marketplace",
            {"tenant_id": "t", "event_type": "sku_changed", "event_data": {}},
            400,
            "missing field: event_data.sku",
        ),
        (
            "POST",
            "/marketplace",
            {"tenant_id": "t", "event_type": "grant", "event_data": "x"},
            400,
            "event_data must be an object",
        ),
        ("POST", "/pubsub", "{", 400, "malformed JSON"),
        ("POST", "/pubsub", {"subscription": "s"}, 400, "missing field: message"),
        ("POST", "/pubsub", {"message": "x", "subscription": "s"}, 400, "must be an object"),
        ("POST", "/pubsub", {"message": {"data": "e30="}}, 400, "missing field: subscription"),
        (
            "POST",
            "/pubsub",
            {"message": {"data": "not base64!"}, "subscription": "s"},
            400,
            "not valid base64",
        ),
        ("GET", "/slow?ms=abc", None, 400, "ms must be an integer"),
        ("GET", "/slow", None, 400, "missing query parameter: ms"),
        ("GET", "/nope", None, 404, "not found: /nope"),
        ("DELETE", "/health", None, 405, "method not allowed"),
        ("GET", "/marketplace", None, 405, "method not allowed"),
        ("POST", "/metrics", "{}", 405, "method not allowed"),
    ],
    ids=[
        "mp-malformed",
        "mp-empty",
        "mp-trailing",
        "mp-array",
        "mp-no-tenant",
        "mp-no-event-type",
        "mp-tenant-type",
        "mp-unknown-event",
        "mp-entitlement-no-action",
        "mp-entitlement-bad-action",
        "mp-sku-missing",
        "mp-event-data-type",
        "ps-malformed",
        "ps-no-message",
        "ps-message-type",
        "ps-no-subscription",
        "ps-bad-base64",
        "slow-bad-ms",
        "slow-no-ms",
        "404",
        "405-delete-health",
        "405-get-marketplace",
        "405-post-metrics",
    ],
)
def test_bad_requests_are_refused(
    server: RunningRelease, method: str, path: str, body: Any, status: int, error: str
) -> None:
    resp = server.request(method, path, body)
    assert_refusal(resp, status, error)
    if status == 405:
        assert resp.headers["allow"] in ("GET", "POST")
        assert resp.headers["allow"] != method


# --------------------------------------------------------------------------- entitlements

SETUP = {
    "none": [],
    "active": ["grant"],
    "suspended": ["grant", "suspend"],
    "revoked": ["grant", "revoke"],
}

# (starting state, event, decision, reason, new state): the table of examples/taiea/README.md.
TRANSITIONS = [
    ("none", "grant", "accept", "granted", "active"),
    ("active", "grant", "refuse", "already_active", "active"),
    ("suspended", "grant", "accept", "reinstated", "active"),
    ("revoked", "grant", "accept", "regranted", "active"),
    ("none", "suspend", "refuse", "no_entitlement", "none"),
    ("active", "suspend", "accept", "suspended", "suspended"),
    ("suspended", "suspend", "refuse", "already_suspended", "suspended"),
    ("revoked", "suspend", "refuse", "entitlement_revoked", "revoked"),
    ("none", "revoke", "refuse", "no_entitlement", "none"),
    ("active", "revoke", "accept", "revoked", "revoked"),
    ("suspended", "revoke", "accept", "revoked", "revoked"),
    ("revoked", "revoke", "refuse", "already_revoked", "revoked"),
    ("none", "sku_changed", "accept", "sku_assigned", "active"),
    ("active", "sku_changed", "accept", "sku_changed", "active"),
    ("suspended", "sku_changed", "refuse", "entitlement_suspended", "suspended"),
    ("revoked", "sku_changed", "refuse", "entitlement_revoked", "revoked"),
    ("none", "entitlement:grant", "accept", "granted", "active"),
    ("active", "entitlement:suspend", "accept", "suspended", "suspended"),
    ("suspended", "entitlement:revoke", "accept", "revoked", "revoked"),
    ("revoked", "entitlement:suspend", "refuse", "entitlement_revoked", "revoked"),
]


def marketplace_event(tenant: str, event: str) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant_id": tenant, "entitlement_id": f"ent-{tenant}"}
    if event.startswith("entitlement:"):
        body.update(event_type="entitlement", action=event.split(":", 1)[1], event_data={})
    elif event == "sku_changed":
        body.update(event_type="sku_changed", event_data={"sku": "enterprise"})
    else:
        body.update(event_type=event, event_data={})
    return body


@pytest.mark.parametrize(
    ("start", "event", "decision", "reason", "new_state"),
    TRANSITIONS,
    ids=[f"{t[0]}-{t[1].replace(':', '-')}-{t[2]}" for t in TRANSITIONS],
)
def test_entitlement_transitions(
    server: RunningRelease, start: str, event: str, decision: str, reason: str, new_state: str
) -> None:
    tenant = f"tenant-{start}-{event.replace(':', '-')}"
    for step in SETUP[start]:
        setup = server.post("/marketplace", marketplace_event(tenant, step)).json()
        assert setup["decision"] == "accept", setup
    resp = server.post("/marketplace", marketplace_event(tenant, event))
    assert resp.status == 202
    body = resp.json()
    assert (body["decision"], body["reason"], body["state"]) == (decision, reason, new_state)
    assert body["previous_state"] == start
    assert body["tenant_id"] == tenant
    assert body["event_id"].startswith("evt-")
    if decision == "accept":
        assert body["entitlement_id"] == f"ent-{tenant}"


def test_json_round_trip_of_unicode_and_nesting(server: RunningRelease) -> None:
    tenant = 'tenant-é-"quoted"-\\-\t-😀'
    body = {
        "tenant_id": tenant,
        "event_type": "grant",
        "event_data": {"n": -1.5e3, "i": 0, "a": [True, False, None, {"x": "y\n"}], "e": {}},
    }
    for raw in (json.dumps(body), json.dumps(body, ensure_ascii=False)):
        resp = server.post("/marketplace", raw.encode())
        assert resp.status == 202, resp.body
        assert resp.json()["tenant_id"] == tenant
    assert_refusal(
        server.post("/marketplace", b'{"tenant_id":"\\ud800","event_type":"grant"}'),
        400,
        "surrogate",
    )
    assert_refusal(
        server.post("/marketplace", b'{"tenant_id":01,"event_type":"grant"}'), 400, "JSON"
    )


def test_event_ids_are_unique(server: RunningRelease) -> None:
    ids = {
        server.post("/marketplace", marketplace_event(f"uniq-{i}", "grant")).json()["event_id"]
        for i in range(20)
    }
    assert len(ids) == 20


# --------------------------------------------------------------------------- pubsub, metrics


def test_pubsub_deduplicates_by_message_id(server: RunningRelease) -> None:
    message: dict[str, Any] = {
        "message": {"attributes": {"a": "1"}, "data": "aGVsbG8=", "messageId": "m-dedup-1"},
        "subscription": "projects/p/subscriptions/s",
    }
    first = server.post("/pubsub", message)
    second = server.post("/pubsub", message)
    assert (first.status, second.status) == (202, 202)
    assert first.json()["duplicate"] is False and first.json()["bytes"] == 5
    assert second.json() == {
        "subscription": "acknowledged",
        "duplicate": True,
        "message_id": "m-dedup-1",
        "bytes": 5,
    }
    other = dict(message, message={**message["message"], "messageId": "m-dedup-2"})
    assert server.post("/pubsub", other).json()["duplicate"] is False
    # without a messageId nothing can be deduplicated
    anonymous = {"message": {"data": "aGVsbG8="}, "subscription": "s"}
    assert server.post("/pubsub", anonymous).json()["duplicate"] is False
    assert server.post("/pubsub", anonymous).json()["duplicate"] is False


def test_metrics_content(server: RunningRelease) -> None:
    before = server.get("/metrics").text
    for _ in range(3):
        server.get("/nope")
    after = server.get("/metrics").text
    label = 'taiea_http_requests_total{endpoint="other",method="GET",status="404"}'
    count_before = metric(before, label) if label in before else 0
    assert metric(after, label) == count_before + 3
    assert metric(after, 'taiea_memory_bytes{kind="total"}') > 1_000_000
    assert metric(after, "taiea_process_count") > 10
    assert metric(after, "taiea_run_queue") >= 0
    assert metric(after, "taiea_uptime_seconds") > 0
    assert metric(after, "taiea_ready") == 1
    assert 'taiea_info{version="1.0.0",env="dev",fault="none"} 1' in after
    for line in after.splitlines():
        assert line.startswith("#") or line.startswith("taiea_"), line


# --------------------------------------------------------------------------- HTTP behaviour


def test_keep_alive_one_socket_no_stall(server: RunningRelease) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.connect()
    sock = conn.sock
    t0 = time.perf_counter()
    try:
        for i in range(100):
            if i % 2:
                conn.request("POST", "/pubsub", body=json.dumps(SMOKE_PUBSUB).encode())
            else:
                conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status in (200, 202)
            assert resp.getheader("content-length") == str(len(body))
            assert resp.getheader("connection") == "keep-alive"
            assert conn.sock is sock  # never reconnected
    finally:
        conn.close()
    # A Nagle / delayed-ACK stall costs ~40 ms per request: 100 requests would take 4 s.
    assert time.perf_counter() - t0 < 1.5


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_and_http10_close(server: RunningRelease) -> None:
    two = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw_exchange(server.port, two)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert b'"dependencies"' in out
    old = raw_exchange(server.port, b"GET /health HTTP/1.0\r\n\r\n")  # closes: recv ends
    assert old.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in old
    bad = raw_exchange(server.port, b"NONSENSE\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400")


def test_stdout_stays_json_lines_for_hostile_input(server: RunningRelease) -> None:
    assert raw_exchange(
        server.port, b"GET /x\xff\x01 HTTP/1.1\r\nConnection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 404")
    assert_refusal(
        server.post("/marketplace", b'{"tenant_id":"\xff","event_type":"grant"}'), 400, "UTF-8"
    )
    huge = raw_exchange(server.port, b"GET /health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431")
    chunked = b"POST /pubsub HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_exchange(server.port, chunked).startswith(b"HTTP/1.1 411")
    poll(
        lambda: any(r["http_status"] == 411 for r in server.receipts("request")),
        5,
        what="receipt of the 411",
    )
    data = server.stdout_path.read_bytes()
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        assert json.loads(line.decode("utf-8"))["kind"] in ("startup", "request")


def test_concurrent_connections(server: RunningRelease) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        statuses = [s for s, _ in keep_alive_series(server.port, 25)]
        with lock:
            results.extend(statuses)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 400


def test_receipts_on_stdout(server: RunningRelease) -> None:
    startup = server.wait_receipt("startup")
    assert startup["port"] == server.port
    assert startup["startup_time_ms"] > 0
    assert startup["memory_used_mb"] > 0
    assert startup["erlang_version"] == "25"
    assert startup["ts"].endswith("Z")
    event_id = server.post("/marketplace", marketplace_event("receipt-tenant", "grant")).json()[
        "event_id"
    ]
    receipt = poll(
        lambda: [r for r in server.receipts("request") if r.get("event_id") == event_id],
        5,
        what="request receipt",
    )[0]
    assert receipt["endpoint"] == "/marketplace"
    assert receipt["method"] == "POST"
    assert receipt["http_status"] == 202
    assert receipt["decision"] == "accept"
    assert receipt["latency_ms"] >= 0


def test_port_zero_picks_a_free_port(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(port=0, wait="none")
    startup = rel.wait_receipt("startup", timeout=20)
    assert startup["port"] > 0
    rel.port = startup["port"]
    assert rel.get("/health").status == 200


# --------------------------------------------------------------------------- shutdown


def test_sigterm_drains_in_flight_request(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference()
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["resp"] = rel.get("/slow?ms=1500", timeout=15)

    thread = threading.Thread(target=slow_request)
    thread.start()
    # The /metrics request being answered counts itself: 2 means /slow is in flight.
    poll(lambda: metric(rel.get("/metrics").text, "taiea_http_inflight_requests") >= 2, 5)
    rel.signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", rel.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    poll(refused, 5, what="listen socket closed")
    assert thread.is_alive()  # still waiting for /slow: new connections refused meanwhile
    thread.join(15)
    resp = result["resp"]
    assert resp.status == 200 and resp.json() == {"slept_ms": 1500}
    assert resp.headers["connection"] == "close"
    assert rel.proc.wait(timeout=15) == 0
    kinds = [r["kind"] for r in rel.receipts()]
    assert kinds.count("startup") == 1 and kinds[-1] == "shutdown"
    shutdown = rel.receipts("shutdown")[0]
    assert shutdown["reason"] == "sigterm"
    assert shutdown["requests_processed"] >= 2
    assert shutdown["uptime_seconds"] > 1.5
    assert shutdown["memory_peak_mb"] > 0
    slow_receipts = [r for r in rel.receipts("request") if r["endpoint"] == "/slow"]
    assert slow_receipts and slow_receipts[0]["http_status"] == 200


# --------------------------------------------------------------------------- faults


def test_fault_slow(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(env={"TAIEA_FAULT": "slow"})
    series = keep_alive_series(rel.port, 40)
    assert all(s == 200 for s, _ in series)
    latencies = [ms for _, ms in series]
    assert p95(latencies) > 250
    assert all(latencies[i] >= 300 for i in range(4, 40, 5))  # every 5th request sleeps
    assert sum(ms > 250 for ms in latencies) <= 12  # and only those (some slack for a busy box)


def test_fault_errors_baked_in_at_build(
    reference_tarball: Callable[..., Path], start_reference: Callable[..., RunningRelease]
) -> None:
    rel = start_reference(reference_tarball("errors"))
    statuses = [s for s, _ in keep_alive_series(rel.port, 100)]
    assert [i + 1 for i, s in enumerate(statuses) if s == 500] == [20, 40, 60, 80, 100]
    assert statuses.count(200) == 95
    assert rel.wait_receipt("startup")["fault"] == "errors"
    # TAIEA_FAULT at start overrides the fault baked in
    healthy = start_reference(reference_tarball("errors"), {"TAIEA_FAULT": "none"})
    assert [s for s, _ in keep_alive_series(healthy.port, 40)] == [200] * 40


def test_fault_errors_body(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(env={"TAIEA_FAULT": "errors"})
    keep_alive_series(rel.port, 19)
    assert_refusal(rel.get("/health"), 500, "injected fault: errors")


def test_fault_leak_grows_rss(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(env={"TAIEA_FAULT": "leak"})
    vm = psutil.Process(rel.pid)
    baseline = vm.memory_info().rss
    poll(lambda: vm.memory_info().rss > baseline + 40 * 2**20, 10, what="RSS +40 MB")
    assert rel.get("/health").status == 200


def test_fault_crash_after_n_requests(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(env={"TAIEA_FAULT": "crash", "TAIEA_CRASH_AFTER": "5"})
    assert [s for s, _ in keep_alive_series(rel.port, 5)] == [200] * 5
    status = rel.proc.wait(timeout=10)
    assert status != 0
    error = rel.wait_receipt("error")
    assert error["error_code"] == "crash"
    assert not rel.receipts("shutdown")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", rel.port), timeout=1).close()


def test_fault_noready(start_reference: Callable[..., RunningRelease]) -> None:
    rel = start_reference(env={"TAIEA_FAULT": "noready"}, wait="listening")
    for _ in range(10):
        assert rel.get("/ready").status == 503
        assert rel.get("/ready").json() == {"ready": False}
        assert rel.get("/health").status == 503
    assert rel.get("/metrics").status == 200
    assert not rel.receipts("startup")


def test_fault_slowstart(slowstart: dict[str, Any]) -> None:
    rel: RunningRelease = slowstart["release"]
    assert slowstart["first_ready_status"] == 503  # right after the port opened
    assert slowstart["first_health_status"] == 200
    slowstart["thread"].join(20)
    seconds = slowstart.get("ready_after")
    assert seconds is not None, slowstart.get("error", "never became ready")
    assert 5.5 <= seconds < 12
    assert rel.wait_receipt("startup")["startup_time_ms"] >= 6000
    assert rel.get("/ready").status == 200


@pytest.mark.parametrize(
    ("fault", "env", "acts"),
    [
        ("prod_errors", "prod", True),
        ("prod_errors", "dev", False),
        ("prod_slow", "prod", True),
        ("prod_slow", "dev", False),
    ],
    ids=["prod_errors-prod", "prod_errors-dev", "prod_slow-prod", "prod_slow-dev"],
)
def test_prod_only_faults(
    start_reference: Callable[..., RunningRelease], fault: str, env: str, acts: bool
) -> None:
    rel = start_reference(env={"TAIEA_FAULT": fault, "TAIEA_ENV": env})
    series = keep_alive_series(rel.port, 40 if fault == "prod_errors" else 20)
    statuses = [s for s, _ in series]
    effective = fault.removeprefix("prod_") if acts else "none"
    assert rel.wait_receipt("startup")["fault"] == effective
    if fault == "prod_errors":
        assert statuses.count(500) == (2 if acts else 0)
    else:
        assert statuses == [200] * 20
        assert (p95([ms for _, ms in series]) > 250) is acts


def test_unknown_fault_at_start_is_refused(
    reference_tarball: Callable[..., Path], tmp_path: Path
) -> None:
    root = extract_release(reference_tarball(), tmp_path / "root")
    env = dict(os.environ, TAIEA_FAULT="flaky", TMPDIR=str(tmp_path), PORT=str(free_port()))
    out = subprocess.run(
        [str(root / "bin" / NAME), "foreground"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "TAIEA_FAULT" in out.stderr and "flaky" in out.stderr


# --------------------------------------------------------------------------- read-only root


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_read_only_release_writes_only_under_tmpdir(
    reference_tarball: Callable[..., Path], tmp_path: Path
) -> None:
    # As root, read-only modes do not bind: run the release as nobody (65534), from a base
    # dir that nobody can traverse (pytest's own tmp dirs are 0700).
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="taiea-ro-"))
    opened: list[tuple[Path, int]] = []
    try:
        base.chmod(0o755)
        if as_root:  # let nobody traverse down to base (search permission only)
            for parent in base.parents:
                mode = parent.stat().st_mode & 0o7777
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
                    opened.append((parent, mode))
        root = extract_release(reference_tarball(), base / "release")
        tmpdir = base / "tmp"
        tmpdir.mkdir()
        tmpdir.chmod(0o1777)
        subprocess.run(["chmod", "-R", "a-w", str(base / "release")], check=True)
        before = snapshot(base / "release")
        rel = launch(root, tmp_path / "ro", user=65534 if as_root else None, tmpdir=tmpdir)
        try:
            if as_root:
                assert psutil.Process(rel.pid).uids().effective == 65534
            assert rel.get("/health").status == 200
            assert rel.post("/marketplace", SMOKE_MARKETPLACE).status == 202
            assert (tmpdir / "tai_autonomics.pid").read_text().strip() == str(rel.pid)
        finally:
            status = rel.stop()
        assert status == 0
        assert rel.receipts("shutdown")
        assert snapshot(base / "release") == before
    finally:
        for parent, mode in reversed(opened):
            parent.chmod(mode)
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- start script


def test_start_script_daemon_ping_pid_stop(
    reference_tarball: Callable[..., Path], tmp_path: Path
) -> None:
    root = extract_release(reference_tarball(), tmp_path / "root")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAIEA_", "ERL_", "PORT"))} | {
        "PORT": str(port),
        "TMPDIR": str(tmpdir),
    }

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(root / "bin" / NAME), command], env=env, capture_output=True, text=True, timeout=30
        )

    assert run("version").stdout.strip() == "tai_autonomics 1.0.0"
    assert run("ping").returncode == 1
    assert run("bogus").returncode == 1
    started = run("daemon")
    assert started.returncode == 0, started.stderr
    pidfile = tmpdir / "tai_autonomics.pid"
    pid = int(poll(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
    try:
        poll(lambda: http_status(port, "/ready") == 200, 20, what="daemon ready")
        assert psutil.Process(pid).name() == "beam.smp"
        assert run("pid").stdout.strip() == str(pid)
        assert run("ping").stdout.strip() == "pong"
        assert run("daemon").returncode == 1  # already running
        stopped = run("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not pid_running(pid)
        assert run("ping").returncode == 1
        log = (tmpdir / "tai_autonomics.log").read_text()
        assert '"kind":"shutdown"' in log and '"reason":"sigterm"' in log
    finally:
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("host", "reached_at"),
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")],
    ids=["loopback", "every interface"],
)
def test_the_process_runtime_reaches_the_release_where_it_listens(
    reference_tarball: Callable[..., Path], tmp_path: Path, host: str, reached_at: str
) -> None:
    """A release bound on every interface is reached on loopback, never at 0.0.0.0."""
    from pipeline.runtime.base import LaunchSpec
    from pipeline.runtime.process import ProcessRuntime

    root = extract_release(reference_tarball(), tmp_path / "root")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    spec = LaunchSpec(root=root, name="tai_autonomics", env={"TMPDIR": str(tmp)}, port=0, host=host)
    instance = ProcessRuntime().start(spec)
    try:
        assert instance.url == f"http://{reached_at}:{instance.port}"
        instance.wait_ready(START_TIMEOUT)
        assert request(instance.port, "GET", "/health").status == 200
    finally:
        instance.stop(5.0)
