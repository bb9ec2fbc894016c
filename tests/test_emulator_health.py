"""Health checks of emulator instances: parsing probes, deciding on results, the check loop
(in zero time, with injected sleep and probe), and the real checks against a real release."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import pytest

from pipeline.emulator.health import (
    LIVENESS,
    READINESS,
    HealthCheck,
    Tally,
    http_check,
    tcp_check,
    watch,
)
from pipeline.emulator.wire import ApiError
from pipeline.waiting import poll


def check(kind: str = LIVENESS, **kw: Any) -> HealthCheck:
    base = dict(
        kind=kind,
        path="/health",
        initial_delay_s=0.0,
        period_s=1.0,
        timeout_s=1.0,
        failure_threshold=3,
        success_threshold=1,
    )
    return HealthCheck(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (None, None),
        (
            {"httpGet": {"path": "/health"}},
            check(period_s=10.0, timeout_s=1.0, failure_threshold=3),
        ),
        ({"httpGet": {}}, check(path="/", period_s=10.0)),
        (
            {
                "tcpSocket": {"port": 8080},
                "initialDelaySeconds": "4",
                "periodSeconds": 2,
                "timeoutSeconds": 2,
                "failureThreshold": 1,
            },
            check(path=None, initial_delay_s=4.0, period_s=2.0, timeout_s=2.0, failure_threshold=1),
        ),
        (
            {"httpGet": {"path": "/ready"}, "periodSeconds": 0, "failureThreshold": 0},
            check(path="/ready", period_s=10.0),
        ),
    ],
    ids=["none", "http defaults", "http root", "tcp all set", "zeros mean defaults"],
)
def test_probes_parse_with_cloud_run_defaults(probe, expected):
    assert HealthCheck.parse(LIVENESS, probe) == expected


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("/health", "livenessProbe must be an object"),
        ({"grpc": {"port": 1}}, "gRPC probes are not supported"),
        ({"httpGet": {"path": "/"}, "tcpSocket": {}}, "exactly one of httpGet and tcpSocket"),
        ({}, "exactly one of httpGet and tcpSocket"),
        ({"httpGet": {"path": "health"}}, "httpGet.path must start with /"),
        ({"httpGet": {}, "periodSeconds": -1}, "livenessProbe.periodSeconds"),
        ({"httpGet": {}, "failureThreshold": "x"}, "livenessProbe.failureThreshold"),
        ({"httpGet": {}, "periodSeconds": 1, "timeoutSeconds": 2}, "must not exceed"),
    ],
    ids=[
        "not an object",
        "grpc",
        "two checks",
        "no check",
        "relative path",
        "negative",
        "not a number",
        "timeout over period",
    ],
)
def test_bad_probes_are_refused_naming_the_field(probe, message):
    with pytest.raises(ApiError) as info:
        HealthCheck.parse(LIVENESS, probe)
    assert message in str(info.value)


# results in a row → the changes of health Tally reports (None: no change)
@pytest.mark.parametrize(
    ("thresholds", "results", "changes"),
    [
        ((3, 1), ["ok", "x", "x", "ok", "x", "x"], [None] * 6),
        ((3, 1), ["x", "x", "x", "x"], [None, None, False, None]),
        ((1, 1), ["x", "ok", "ok"], [False, True, None]),
        ((2, 2), ["x", "x", "ok", "x", "ok", "ok"], [None, False, None, None, None, True]),
    ],
    ids=["failures not in a row", "third in a row", "back after one", "back after two in a row"],
)
def test_the_tally_changes_health_only_on_enough_results_in_a_row(thresholds, results, changes):
    failures, successes = thresholds
    tally = Tally(check(failure_threshold=failures, success_threshold=successes))
    seen = [tally.observe(None if r == "ok" else f"error {i}") for i, r in enumerate(results)]
    assert seen == changes
    assert tally.probes == len(results) and tally.failed == results.count("x")


class Script:
    """A probe answering from a script, and a sleep that only records (zero time)."""

    def __init__(self, answers: list[str | None]):
        self.answers = list(answers)
        self.calls: list[tuple[str, int, str | None, float]] = []
        self.slept: list[float] = []

    async def probe(self, host: str, port: int, path: str | None, timeout: float) -> str | None:
        self.calls.append((host, port, path, timeout))
        return self.answers.pop(0)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self.answers:
            raise asyncio.CancelledError  # the script is over: stop the loop like a cancel


def test_liveness_watch_stops_at_the_failure_that_kills():
    script = Script([None, "HTTP 500 on /health", "no answer within 1 s", None])
    changes: list[bool] = []

    def on_change(healthy: bool, tally: Tally) -> bool:
        changes.append(healthy)
        return False  # the instance is killed

    c = check(initial_delay_s=5.0, failure_threshold=2, timeout_s=0.5)
    tally = Tally(c)
    asyncio.run(watch(tally, ("127.0.0.1", 9), on_change, probe=script.probe, sleep=script.sleep))
    assert changes == [False] and tally.last_error == "no answer within 1 s"
    assert script.calls == [("127.0.0.1", 9, "/health", 0.5)] * 3
    assert script.slept == [5.0, 1.0, 1.0], "the initial delay, then one period between probes"
    assert script.answers == [None], "no probe after the kill"


def test_readiness_watch_goes_on_through_changes():
    script = Script(["HTTP 503 on /ready", None, None])
    changes: list[bool] = []

    def on_change(healthy: bool, tally: Tally) -> bool:
        changes.append(healthy)
        return True

    c = check(READINESS, path="/ready", failure_threshold=1)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(watch(Tally(c), ("h", 1), on_change, probe=script.probe, sleep=script.sleep))
    assert changes == [False, True]


# ---- the real checks, against a real release


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` in state T (stopped), read from /proc/PID/task/*/stat."""
    from pathlib import Path

    states = [
        (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        for task in Path(f"/proc/{pid}/task").iterdir()
    ]
    return all(state in ("T", "t") for state in states)


def test_http_and_tcp_checks_against_a_real_release(start_reference):
    rel = start_reference()
    port = rel.port
    run = asyncio.run
    assert run(http_check("127.0.0.1", port, "/health", 2.0)) is None
    assert run(http_check("127.0.0.1", port, "/no-such-page", 2.0)) == "HTTP 404 on /no-such-page"
    assert run(tcp_check("127.0.0.1", port, None, 2.0)) is None
    gone = closed_port()
    assert run(http_check("127.0.0.1", gone, "/health", 1.0)).startswith("cannot connect")
    assert run(tcp_check("127.0.0.1", gone, None, 1.0)).startswith("cannot connect")
    os.kill(rel.pid, signal.SIGSTOP)  # hung: the kernel still accepts, nobody answers
    try:
        poll(  # every thread of the VM stopped, not only signalled (a busy machine is slower)
            lambda: True if all_threads_stopped(rel.pid) else None,
            timeout=10,
            what="the release to be stopped",
        )
        assert run(http_check("127.0.0.1", port, "/health", 0.3)) == "no answer within 0.3 s"
    finally:
        os.kill(rel.pid, signal.SIGCONT)
    assert run(http_check("127.0.0.1", port, "/health", 2.0)) is None
