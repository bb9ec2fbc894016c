"""Metric providers: per-revision facts beyond the Admin API, behind one small protocol
(`Backend.revisions`). Providers: Cloud Monitoring (`monitoring.py`: week 5's, on Google and on
the emulator), the local emulator's own metrics endpoint (`GET /emulator/v1/<service>/metrics`,
with each instance's pid and state: `cloudrun.status` only), and `NoBackend` (nothing known:
the rollout judges from its own receipts alone)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol

from pipeline.config import CloudRunSettings


class Backend(Protocol):
    """What the platform tells about its revisions beyond the Admin API (the emulator's metrics
    endpoint; on Google, Cloud Monitoring). None means: not available here."""

    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None: ...


class NoBackend:
    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None:
        return None


def default_backend(settings: CloudRunSettings, endpoint: str | None) -> Backend:
    """`cloudrun.status`'s provider: the emulator's metrics endpoint when the API is local."""
    if endpoint and endpoint.startswith("http://127.0.0.1"):
        return EmulatorMetrics(endpoint, settings)
    return NoBackend()


class EmulatorMetrics:
    def __init__(self, endpoint: str, settings: CloudRunSettings, timeout: float = 5.0):
        name = (
            f"projects/{settings.project}/locations/{settings.region}/services/{settings.service}"
        )
        self.url = f"{endpoint.rstrip('/')}/emulator/v1/{name}/metrics"
        self.timeout = timeout

    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None:
        """revision → requests, errors (5xx and failed), inflight, instances, the instances
        themselves, and latency percentiles (over the last `window_s` seconds when given).
        None when the emulator does not answer."""
        url = self.url + (f"?window_s={window_s:g}" if window_s else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 - http to the local emulator
                data = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        out: dict[str, dict[str, Any]] = {}
        for rev in data.get("revisions", []):
            responses = rev.get("responses") or {}
            out[rev["revision"]] = {
                "requests": rev.get("requests", 0),
                "errors": responses.get("5xx", 0) + rev.get("failed", 0),
                "inflight": rev.get("in_flight", 0) + rev.get("queued", 0),
                "instances": rev.get("instances", 0),
                "percent": rev.get("percent", 0),
                "latency_ms": rev.get("latency_ms") or {},
                "instance_list": [
                    {
                        k: i.get(k)
                        for k in (
                            "id",
                            "state",
                            "pid",
                            "in_flight",
                            "requests",
                            "rss_mb",
                            "cpu_percent",
                        )
                    }
                    for i in rev.get("instance_list", [])
                ],
                "concurrency": rev.get("concurrency"),
            }
        return out
