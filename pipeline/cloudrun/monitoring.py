"""Cloud Monitoring as week 5's metric provider: per-revision requests, errors, latency
percentiles, instance counts, requests in flight and CPU/memory utilization, read with the
official `google-cloud-monitoring` client (`MetricServiceClient`, gRPC — the only transport it
has), from Google or from the emulator, which serves the same API.

Figures "now" come from the newest point of the last three point periods (`point_s`: 1 s on
the emulator, 60 s on Google, whose points also arrive minutes late): a revision without such a
point has no figure (None), never a zero. In flight is the sum over instances of
`max_request_concurrencies` (each instance's most requests at once in that point); demand is
Little's law over the same point (the seconds all answers took, per second: requests waiting for
an instance count too), so Gate 4's `instances.shortfall` is measured on Monitoring as well.

Every query is handed to `record` (week 5 writes it as a `metric` receipt: the query and the
points), so what a step saw can be re-read offline. Heavy imports (grpc, monitoring_v3) happen
on first use only.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from pipeline.cloudrun.metrics import Backend, NoBackend
from pipeline.config import CloudRunSettings, MonitoringSettings

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
INSTANCE_COUNT = "run.googleapis.com/container/instance_count"
MAX_CONCURRENCIES = "run.googleapis.com/container/max_request_concurrencies"
CPU_UTILIZATIONS = "run.googleapis.com/container/cpu/utilizations"
MEMORY_UTILIZATIONS = "run.googleapis.com/container/memory/utilizations"
HISTORY_S = 3600  # request totals are counted over the last hour (the rollout's horizon)
LATENCY_ALIGNERS = {
    "p50": "ALIGN_PERCENTILE_50",
    "p95": "ALIGN_PERCENTILE_95",
    "p99": "ALIGN_PERCENTILE_99",
    "avg": "ALIGN_MEAN",
}  # no max: Google refuses ALIGN_MAX on a distribution
GOOGLE = "monitoring.googleapis.com"
REVISION = "resource.labels.revision_name"


def monitoring_backend(
    settings: CloudRunSettings, endpoint: str | None, monitoring: MonitoringSettings
) -> Backend:
    """Week 5's metric provider as `[monitoring]` says: "" follows the Cloud Run endpoint (an
    http:// one is the emulator, which serves Monitoring too; none is Google), "none" nothing."""
    where = monitoring.endpoint
    if where == "none":
        return NoBackend()
    if not where:
        where = "emulator" if endpoint and endpoint.startswith("http://") else GOOGLE
    point = monitoring.point_s or (1 if where == "emulator" else 60)
    if where == "emulator":
        api = endpoint or ""
        return MonitoringBackend(
            settings, lambda: emulator_address(api) if api else None, point_s=point
        )
    return MonitoringBackend(settings, where, point_s=point)


def emulator_address(api_endpoint: str, timeout: float = 5.0) -> str | None:
    """Where the emulator at `api_endpoint` serves Cloud Monitoring (its status says)."""
    try:
        with urllib.request.urlopen(  # noqa: S310 - http to the local emulator
            f"{api_endpoint.rstrip('/')}/emulator/v1/status", timeout=timeout
        ) as response:
            return json.loads(response.read()).get("monitoring")
    except (OSError, ValueError):
        return None


class MonitoringBackend:
    """`Backend.revisions` over Cloud Monitoring for one service."""

    def __init__(
        self,
        settings: CloudRunSettings,
        address: str | Callable[[], str | None],
        *,
        record: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        point_s: int = 60,
    ):
        self.settings = settings
        self.point_s = point_s
        self._address = address
        self.record = record
        self.clock = clock
        self.timeout = timeout
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from google.cloud import monitoring_v3

            address = self._address() if callable(self._address) else self._address
            if not address:
                raise ConnectionError("no Cloud Monitoring endpoint")
            if address == GOOGLE:
                self._client = monitoring_v3.MetricServiceClient()  # ADC, TLS
            else:
                import grpc
                from google.cloud.monitoring_v3.services.metric_service.transports import (
                    MetricServiceGrpcTransport,
                )

                channel = grpc.insecure_channel(address)  # the emulator, on loopback
                self._client = monitoring_v3.MetricServiceClient(
                    transport=MetricServiceGrpcTransport(channel=channel)
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.close()
            self._client = None

    def query(
        self,
        metric: str,
        window_s: float,
        aligner: str,
        *,
        extra: str = "",
        group_by: tuple[str, ...] = (REVISION,),
        reduce: bool = True,
        period_s: int | None = None,
    ) -> list[Any]:
        """One ListTimeSeries over the last `window_s` seconds, aligned over `period_s` (the
        whole window by default; never less than a point); points newest first."""
        now = self.clock()
        # no period shorter than the platform's points (Google refuses periods under 60 s)
        period = max(period_s or math.ceil(window_s), self.point_s, 1)
        window = max(math.ceil(window_s), period)
        flt = (
            f'metric.type = "{metric}" AND resource.labels.service_name = '
            f'"{self.settings.service}"' + (f" AND {extra}" if extra else "")
        )
        aggregation: dict[str, Any] = {
            "alignment_period": {"seconds": period},
            "per_series_aligner": aligner,
        }
        if reduce:
            aggregation.update(cross_series_reducer="REDUCE_SUM", group_by_fields=list(group_by))
        request = {
            "name": f"projects/{self.settings.project}",
            "filter": flt,
            "interval": {
                "start_time": {"seconds": int(now) - window},
                "end_time": {"seconds": int(now)},
            },
            "aggregation": aggregation,
        }
        found = list(self.client().list_time_series(request=request, timeout=self.timeout))
        if self.record is not None:
            self.record(
                {
                    "metric": metric,
                    "filter": flt,
                    "aligner": aligner,
                    "period_s": period,
                    "window_s": window,
                    "end_s": int(now),
                    "series": [_summary(s) for s in found],
                }
            )
        return found

    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None:
        """revision → requests and errors (last hour); instances, inflight, demand and the
        CPU/memory utilization of the busiest instances (p99) now, each with when its point
        ended (None where no fresh point); with `window_s`, latency
        percentiles of its 2xx answers over that window. None when Monitoring does not answer."""
        try:
            return self._revisions(window_s)
        except Exception as exc:  # noqa: BLE001 — any failure reading metrics is "not available"
            if _is_bug(exc):
                raise
            return None

    def _revisions(self, window_s: float | None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        def entry(series: Any) -> dict[str, Any]:
            name = series.resource.labels.get("revision_name", "")
            return out.setdefault(
                name,
                {
                    "requests": 0,
                    "errors": 0,
                    "inflight": None,
                    "instances": None,
                    "demand": None,
                    "latency_ms": {},
                },
            )

        by_class = (REVISION, "metric.labels.response_code_class")
        for series in self.query(REQUEST_COUNT, HISTORY_S, "ALIGN_DELTA", group_by=by_class):
            total = sum(int(p.value.int64_value) for p in series.points)
            facts = entry(series)
            facts["requests"] += total
            if series.metric.labels.get("response_code_class") == "5xx":
                facts["errors"] += total
        self._now(entry)
        if window_s:
            for series in self.query(REQUEST_COUNT, window_s, "ALIGN_DELTA"):
                entry(series)["latency_ms"]["count"] = sum(
                    int(p.value.int64_value) for p in series.points
                )
            two_xx = 'metric.labels.response_code_class = "2xx"'
            for name, aligner in LATENCY_ALIGNERS.items():
                for series in self.query(
                    REQUEST_LATENCIES, window_s, aligner, extra=two_xx, reduce=False
                ):
                    value = series.points[0].value.double_value
                    entry(series)["latency_ms"][name] = round(value, 3)
        return out

    def _now(self, entry: Callable[[Any], dict[str, Any]]) -> None:
        """The newest point of the last three periods: instances, in flight, demand, usage."""
        point, lookback = self.point_s, 3 * self.point_s
        for series in self.query(INSTANCE_COUNT, lookback, "ALIGN_MAX", period_s=point):
            facts = entry(series)
            facts["instances"] = int(series.points[0].value.int64_value)
            facts["instances_at"] = _end(series.points[0])
        for series in self.query(MAX_CONCURRENCIES, lookback, "ALIGN_DELTA", period_s=point):
            spread = series.points[0].value.distribution_value
            facts = entry(series)
            facts["inflight"] = round(spread.count * spread.mean)
            facts["inflight_at"] = _end(series.points[0])
        for series in self.query(REQUEST_LATENCIES, lookback, "ALIGN_DELTA", period_s=point):
            spread = series.points[0].value.distribution_value
            busy_s = spread.count * spread.mean / 1000.0  # the seconds all answers took
            entry(series)["demand"] = round(busy_s / point, 3)
        for key, metric in (
            ("cpu_utilization", CPU_UTILIZATIONS),
            ("memory_utilization", MEMORY_UTILIZATIONS),
        ):
            for series in self.query(
                metric, lookback, "ALIGN_PERCENTILE_99", period_s=point, reduce=False
            ):
                entry(series)[key] = round(series.points[0].value.double_value, 4)


def _summary(series: Any) -> dict[str, Any]:
    return {
        "metric_labels": dict(series.metric.labels),
        "resource_labels": dict(series.resource.labels),
        "points": [[int(p.interval.end_time.timestamp()), _plain(p.value)] for p in series.points],
    }


def _end(point: Any) -> float:
    """When a point's interval ends (wall seconds): a figure says nothing about before it."""
    return float(point.interval.end_time.timestamp())


def _plain(value: Any) -> Any:
    """A point's value as JSON: a number, or a distribution's count, mean and range."""
    kind = type(value).pb(value).WhichOneof("value")
    if kind == "distribution_value":
        spread = value.distribution_value
        return {
            "count": int(spread.count),
            "mean": round(spread.mean, 4),
            "min": spread.range.min,
            "max": spread.range.max,
        }
    return getattr(value, kind) if kind else None


def _is_bug(exc: Exception) -> bool:
    """Failures of the call itself (unreachable, refused, timed out, denied) mean "not
    available"; a query the API calls invalid is ours to fix, and is raised, as is anything
    else: silently "no figures" would only make every drain wait its whole window."""
    try:
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.InvalidArgument):
            return True
        if isinstance(exc, gexc.GoogleAPIError):
            return False
    except ImportError:  # pragma: no cover - google-api-core comes with the client
        pass
    return not isinstance(exc, ConnectionError | TimeoutError | OSError)
