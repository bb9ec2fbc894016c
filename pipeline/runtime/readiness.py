"""Waiting for a release to answer: poll /ready (falling back to /health) every ≤ 50 ms."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.waiting import WaitTimeout, poll

if TYPE_CHECKING:
    from pipeline.runtime.base import LaunchSpec


class NotReady(Exception):
    pass


def http_status(url: str, path: str, timeout: float = 1.0) -> int:
    """The HTTP status of GET url+path, or 0 when nothing answers."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def listening(url: str, timeout: float = 5.0) -> bool:
    """Whether something accepts connections at url's host and port: False only when the
    connection is refused or unreachable, True when it is accepted (or slow to be)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout):
            return True
    except TimeoutError:
        return True
    except OSError:
        return False


def wait_until_ready(
    url: str,
    *,
    timeout: float,
    alive: Callable[[], bool],
    ready_path: str = "/ready",
    fallback_path: str = "/health",
    interval: float = 0.05,
    probe: Callable[[str, str], int] = http_status,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll until `ready_path` answers 200 (or, when it answers 404, `fallback_path` does).

    Returns the path that answered. Raises NotReady saying why: the process exited, or the
    timeout passed (with the last status seen).
    """
    state = {"path": ready_path, "status": 0}

    def ready() -> str | None:
        if not alive():
            raise NotReady("exited before it was ready")
        status = probe(url, state["path"])  # type: ignore[arg-type]
        if status == 404 and state["path"] == ready_path and fallback_path:
            state["path"] = fallback_path
            status = probe(url, fallback_path)
        state["status"] = status
        return str(state["path"]) if status == 200 else None

    try:
        return poll(ready, timeout=timeout, interval=interval, sleep=sleep, clock=clock)
    except WaitTimeout:
        seen = "nothing answered" if not state["status"] else f"last status {state['status']}"
        raise NotReady(f"not ready after {timeout:g} s on {state['path']} ({seen})") from None


def not_ready_reason(
    url: str, spec: LaunchSpec, alive: Callable[[], bool], timeout: float
) -> str | None:
    """None once the instance at `url` answers ready within `timeout`; else why it did not.
    (Each runtime then adds what it knows: an exit status, an OOM kill, a lost connection.)"""
    try:
        wait_until_ready(
            url,
            timeout=timeout,
            alive=alive,
            ready_path=spec.ready_path,
            fallback_path=spec.fallback_ready_path,
            interval=spec.poll_interval_s,
        )
    except NotReady as exc:
        return str(exc)
    return None
