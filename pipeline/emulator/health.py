"""Health checks of running instances: a revision's livenessProbe and readinessProbe.

Kept apart as Argo Rollouts keeps analysis apart from acting:

- `HealthCheck.parse` turns a probe of the revision template into a value (Cloud Run's defaults:
  every 10 s, 1 s timeout, 3 failures in a row; readiness back after 1 success);
- `Tally.observe` decides, from one result at a time, when the instance's health changes;
- `http_check` / `tcp_check` measure (one call, one verdict: None or what went wrong);
- `watch` runs the three on a period, with `sleep` injected so tests run in zero time; what to
  do about a change is the caller's (`on_change`): the data plane kills and replaces an instance
  that fails liveness (SIGKILL, as Cloud Run does), and takes one that fails readiness out of
  rotation until it passes again.

Checks start once the instance is ready (its startup probe passed), after `initialDelaySeconds`.
An HTTP check is a GET on the instance's port; a status from 200 to 399 passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.emulator.wire import as_int, invalid

LIVENESS = "liveness"
READINESS = "readiness"

_DEFAULTS = {"initialDelaySeconds": 0, "timeoutSeconds": 1, "periodSeconds": 10}


@dataclass(frozen=True)
class HealthCheck:
    kind: str  # LIVENESS or READINESS
    path: str | None  # the httpGet path; None: a TCP connect
    initial_delay_s: float
    period_s: float
    timeout_s: float
    failure_threshold: int
    success_threshold: int

    @classmethod
    def parse(cls, kind: str, probe: Any) -> HealthCheck | None:
        """The check a template's probe asks for (None when there is none); a probe that is
        not one the emulator can run is a 400 naming the field."""
        if probe is None:
            return None
        where = f"template.containers[0].{kind}Probe"
        if not isinstance(probe, Mapping):
            raise invalid(f"{where} must be an object")
        if probe.get("grpc"):
            raise invalid(f"{where}.grpc: gRPC probes are not supported by the emulator")
        http, tcp = probe.get("httpGet"), probe.get("tcpSocket")
        if (http is None) == (tcp is None):
            raise invalid(f"{where}: set exactly one of httpGet and tcpSocket")
        path = None
        if http is not None:
            path = http.get("path", "/") if isinstance(http, Mapping) else None
            if not isinstance(path, str) or not path.startswith("/"):
                raise invalid(f"{where}.httpGet.path must start with /")
        number = {
            key: as_int(probe.get(key, default), f"{where}.{key}", 0, 3600)
            for key, default in _DEFAULTS.items()
        }
        failures = as_int(probe.get("failureThreshold", 3), f"{where}.failureThreshold", 0, 3600)
        successes = as_int(probe.get("successThreshold", 1), f"{where}.successThreshold", 0, 3600)
        period = number["periodSeconds"] or _DEFAULTS["periodSeconds"]
        timeout = number["timeoutSeconds"] or _DEFAULTS["timeoutSeconds"]
        if timeout > period:
            raise invalid(
                f"{where}.timeoutSeconds ({timeout}) must not exceed periodSeconds ({period})"
            )
        return cls(
            kind=kind,
            path=path,
            initial_delay_s=float(number["initialDelaySeconds"]),
            period_s=float(period),
            timeout_s=float(timeout),
            failure_threshold=failures or 3,
            success_threshold=successes or 1,
        )


class Tally:
    """Consecutive results of one check on one instance; decides, never acts."""

    __slots__ = ("check", "healthy", "failures", "successes", "probes", "failed", "last_error")

    def __init__(self, check: HealthCheck):
        self.check = check
        self.healthy = True
        self.failures = 0  # in a row
        self.successes = 0  # in a row
        self.probes = 0
        self.failed = 0
        self.last_error: str | None = None

    def observe(self, error: str | None) -> bool | None:
        """One result (None: passed). The new health when it changes, else None."""
        self.probes += 1
        if error is None:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.check.success_threshold:
                self.healthy = True
                return True
            return None
        self.failed += 1
        self.last_error = error
        self.successes = 0
        self.failures += 1
        if self.healthy and self.failures >= self.check.failure_threshold:
            self.healthy = False
            return False
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "probes": self.probes,
            "failed": self.failed,
            "failures_in_a_row": self.failures,
            "last_error": self.last_error,
        }


Check = Callable[[str, int, "str | None", float], Awaitable["str | None"]]


async def http_check(host: str, port: int, path: str | None, timeout_s: float) -> str | None:
    """GET `path` on the instance: None when it answers 200–399 within the timeout (no path:
    the TCP check)."""
    if path is None:
        return await tcp_check(host, port, None, timeout_s)
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nuser-agent: "
                "GoogleHC/1.0\r\nconnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "not an HTTP answer" if line else "the connection closed without an answer"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"HTTP {status} on {path}"


async def tcp_check(host: str, port: int, path: str | None, timeout_s: float) -> str | None:
    """None when the instance's port accepts a connection within the timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    writer.close()
    return None


async def watch(
    tally: Tally,
    target: tuple[str, int],
    on_change: Callable[[bool, Tally], bool],
    *,
    probe: Check = http_check,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Run `tally.check` on `target` every period; `on_change(healthy, tally)` on each change of
    health, and stop when it returns False (the instance is gone)."""
    check = tally.check
    await sleep(check.initial_delay_s)
    host, port = target
    while True:
        changed = tally.observe(await probe(host, port, check.path, check.timeout_s))
        if changed is not None and not on_change(changed, tally):
            return
        await sleep(check.period_s)
