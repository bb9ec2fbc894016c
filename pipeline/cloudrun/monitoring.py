"""Cloud Monitoring as week 5's metric provider: per-revision requests, errors, latency
percentiles and instance counts read with the official `google-cloud-monitoring` client
(`MetricServiceClient`, gRPC — the only transport it has), from Google or from the emulator,
which serves the same API (`[monitoring] endpoint = "emulator"`).

Every query is handed to `record` (week 5 writes it as a `metric` receipt: the query and the
points), so what a step saw can be re-read offline. Monitoring has no in-flight figures:
`inflight` is None, and drains wait for the old revision's instance count to reach 0.
Heavy imports (grpc, monitoring_v3) happen on first use only.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from pipeline.config import CloudRunSettings

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
INSTANCE_COUNT = "run.googleapis.com/container/instance_count"
HISTORY_S = 3600  # request totals are counted over the last hour (the rollout's horizon)
LATENCY_ALIGNERS = {
    "p50": "ALIGN_PERCENTILE_50",
    "p95": "ALIGN_PERCENTILE_95",
    "p99": "ALIGN_PERCENTILE_99",
    "avg": "ALIGN_MEAN",
    "max": "ALIGN_MAX",
}
GOOGLE = "monitoring.googleapis.com"


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
    ):
        self.settings = settings
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

    def query(
        self,
        metric: str,
        window_s: float,
        aligner: str,
        *,
        extra: str = "",
        group_by: tuple[str, ...] = ("resource.labels.revision_name",),
        reduce: bool = True,
    ) -> list[Any]:
        """One ListTimeSeries over the last `window_s` seconds, aligned over the whole window."""
        now = self.clock()
        period = max(1, math.ceil(window_s))
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
                "start_time": {"seconds": int(now) - period},
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
                    "end_s": int(now),
                    "series": [_summary(s) for s in found],
                }
            )
        return found

    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None:
        """revision → requests and errors (last hour), instances (now), latency percentiles over
        the last `window_s` seconds (2xx answers), `inflight` None. None when Monitoring does not
        answer."""
        try:
            return self._revisions(window_s or 60.0)
        except Exception as exc:  # noqa: BLE001 — any failure reading metrics is "not available"
            if _is_bug(exc):
                raise
            return None

    def _revisions(self, window_s: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}

        def entry(series: Any) -> dict[str, Any]:
            name = series.resource.labels.get("revision_name", "")
            return out.setdefault(
                name,
                {"requests": 0, "errors": 0, "inflight": None, "instances": 0, "latency_ms": {}},
            )

        by_class = ("resource.labels.revision_name", "metric.labels.response_code_class")
        for series in self.query(REQUEST_COUNT, HISTORY_S, "ALIGN_DELTA", group_by=by_class):
            total = sum(int(p.value.int64_value) for p in series.points)
            facts = entry(series)
            facts["requests"] += total
            if series.metric.labels.get("response_code_class") == "5xx":
                facts["errors"] += total
        for series in self.query(INSTANCE_COUNT, 2.0, "ALIGN_MAX"):
            entry(series)["instances"] = int(series.points[0].value.int64_value)
        for series in self.query(REQUEST_COUNT, window_s, "ALIGN_DELTA"):
            entry(series)["latency_ms"]["count"] = sum(
                int(p.value.int64_value) for p in series.points
            )
        two_xx = 'metric.labels.response_code_class = "2xx"'
        for name, aligner in LATENCY_ALIGNERS.items():
            for series in self.query(
                REQUEST_LATENCIES, window_s, aligner, extra=two_xx, reduce=False
            ):
                entry(series)["latency_ms"][name] = round(series.points[0].value.double_value, 3)
        return out


def _summary(series: Any) -> dict[str, Any]:
    return {
        "metric_labels": dict(series.metric.labels),
        "resource_labels": dict(series.resource.labels),
        "points": [
            [
                int(p.interval.end_time.timestamp()),
                p.value.double_value if p.value.double_value else p.value.int64_value,
            ]
            for p in series.points
        ],
    }


def _is_bug(exc: Exception) -> bool:
    """Failures of the call itself (unreachable, refused, timed out) mean "not available";
    anything else is a bug and is raised."""
    try:
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.GoogleAPIError):
            return False
    except ImportError:  # pragma: no cover - google-api-core comes with the client
        pass
    return not isinstance(exc, ConnectionError | TimeoutError | OSError)
