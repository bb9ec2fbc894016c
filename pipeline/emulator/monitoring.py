"""Cloud Monitoring's `projects.timeSeries.list` over the emulator's revisions, served on gRPC
(`google.monitoring.v3.MetricService/ListTimeSeries`), so the official `google-cloud-monitoring`
client reads it as it reads Google: monitoring_v3 ships no REST transport
(googleapis/google-cloud-python#16852), only gRPC.

Metrics, with Cloud Run's names, kinds and labels (resource `cloud_run_revision`: project_id,
service_name, revision_name, location, configuration_name):
  run.googleapis.com/request_count          DELTA INT64, labels response_code, response_code_class
  run.googleapis.com/request_latencies      DELTA DISTRIBUTION (ms), same labels
  run.googleapis.com/container/instance_count  GAUGE INT64, label state (active: in rotation;
                                            idle: starting or draining)
Points are 1 s here (Cloud Run publishes 60 s points): an alignment period is any whole number
of seconds ≥ 1, aligned to the interval's end; raw points (no aligner) are per second. Aligners:
ALIGN_DELTA, ALIGN_SUM, ALIGN_RATE (counts); ALIGN_PERCENTILE_50/95/99, ALIGN_MEAN, ALIGN_MAX
(latencies); ALIGN_MEAN, ALIGN_MAX (instances). Reducers: REDUCE_NONE, REDUCE_SUM with
group_by_fields. Filters: `A = "v"` clauses joined by AND on metric.type, resource.type,
resource.labels.* and metric.labels.*; anything else is INVALID_ARGUMENT naming the clause,
never an empty answer. Pure over snapshots taken on the emulator's loop (`snapshot`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.stats import percentile

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
INSTANCE_COUNT = "run.googleapis.com/container/instance_count"
METRICS = (REQUEST_COUNT, REQUEST_LATENCIES, INSTANCE_COUNT)
RESOURCE = "cloud_run_revision"
RESOURCE_LABELS = ("project_id", "service_name", "revision_name", "location", "configuration_name")
METRIC_LABELS = ("response_code", "response_code_class", "state")
PAGE_SIZE = 1000


class BadRequest(ValueError):
    """INVALID_ARGUMENT, one line naming what is wrong."""


@dataclass(frozen=True)
class RevisionSnapshot:
    resource: dict[str, str]  # the resource labels
    requests: list[tuple[float, float, int]]  # (wall time, latency ms, status): recent ones
    instances: list[tuple[float, int, int]]  # (wall time, active, idle)
    counts: list[tuple[float, int, int]] = field(default_factory=list)  # (wall, status, answers)


# ------------------------------------------------------------------------------ filters


_CLAUSE = re.compile(r'^\s*(?P<lhs>[a-z_.]+)\s*=\s*"(?P<value>[^"]*)"\s*$')


def parse_filter(text: str) -> dict[str, str]:
    """`metric.type = "…" AND resource.labels.revision_name = "…"` → {lhs: value}."""
    if not text.strip():
        raise BadRequest("filter: a filter naming metric.type is required")
    clauses: dict[str, str] = {}
    for clause in re.split(r"\s+AND\s+", text.strip()):
        match = _CLAUSE.match(clause)
        lhs = match["lhs"] if match else ""
        known = lhs in ("metric.type", "resource.type") or any(
            lhs == f"{scope}.labels.{label}"
            for scope, labels in (("resource", RESOURCE_LABELS), ("metric", METRIC_LABELS))
            for label in labels
        )
        if not match or not known:
            raise BadRequest(
                f"filter clause {clause.strip()!r} is not supported by the emulator: use "
                '`FIELD = "value"` clauses joined by AND on metric.type, resource.type, '
                "resource.labels.* or metric.labels.*"
            )
        clauses[lhs] = match["value"]
    metric = clauses.get("metric.type")
    if metric not in METRICS:
        raise BadRequest(
            f"filter: metric.type {metric!r} is not served by the emulator (served: {', '.join(METRICS)})"
        )
    if clauses.get("resource.type", RESOURCE) != RESOURCE:
        raise BadRequest(f"filter: resource.type {clauses['resource.type']!r}: only {RESOURCE}")
    return clauses


# ------------------------------------------------------------------------------ series


@dataclass
class Series:
    metric_labels: dict[str, str]
    resource: dict[str, str]
    samples: list[tuple[float, float]] = field(default_factory=list)  # (wall time, value)

    def labels(self) -> dict[str, str]:
        return {
            **{f"metric.labels.{k}": v for k, v in self.metric_labels.items()},
            **{f"resource.labels.{k}": v for k, v in self.resource.items()},
        }


def raw_series(metric: str, revisions: Iterable[RevisionSnapshot]) -> list[Series]:
    out: dict[tuple[str, ...], Series] = {}
    for rev in revisions:
        if metric == INSTANCE_COUNT:
            for state, column in (("active", 1), ("idle", 2)):
                series = Series({"state": state}, rev.resource)
                series.samples = [(s[0], float(s[column])) for s in rev.instances]
                out[(rev.resource["revision_name"], state)] = series
            continue
        # counts from the per-second counters (the last hour, whatever the rate); latencies
        # from the ring of recent answers
        rows = (
            [(when, float(n), status) for when, status, n in rev.counts]
            if metric == REQUEST_COUNT
            else rev.requests
        )
        for when, value, status in rows:
            code = str(status)
            key = (rev.resource["revision_name"], code)
            if key not in out:
                cls = f"{status // 100}xx" if 0 < status < 600 else "5xx"
                out[key] = Series({"response_code": code, "response_code_class": cls}, rev.resource)
            out[key].samples.append((when, value))
    return [out[k] for k in sorted(out)]


def _matches(series: Series, clauses: dict[str, str]) -> bool:
    labels = series.labels()
    return all(
        labels.get(lhs) == value
        for lhs, value in clauses.items()
        if lhs not in ("metric.type", "resource.type")
    )


# ------------------------------------------------------------------------------ aggregation

COUNT_ALIGNERS = ("ALIGN_DELTA", "ALIGN_SUM", "ALIGN_RATE")
LATENCY_ALIGNERS = (
    "ALIGN_PERCENTILE_50",
    "ALIGN_PERCENTILE_95",
    "ALIGN_PERCENTILE_99",
    "ALIGN_MEAN",
    "ALIGN_MAX",
)
GAUGE_ALIGNERS = ("ALIGN_MEAN", "ALIGN_MAX")


@dataclass(frozen=True)
class Query:
    metric: str
    clauses: dict[str, str]
    start: float
    end: float
    period: int  # seconds
    aligner: str  # "ALIGN_NONE" or one of the above
    reducer: str  # "REDUCE_NONE" | "REDUCE_SUM"
    group_by: tuple[str, ...]


def check_query(query: Query) -> None:
    allowed = {
        REQUEST_COUNT: COUNT_ALIGNERS,
        REQUEST_LATENCIES: LATENCY_ALIGNERS,
        INSTANCE_COUNT: GAUGE_ALIGNERS,
    }[query.metric]
    if query.aligner == "ALIGN_NONE":
        if query.metric == REQUEST_LATENCIES:
            raise BadRequest(
                "aggregation.perSeriesAligner: the emulator serves request_latencies aligned "
                f"({', '.join(LATENCY_ALIGNERS)}), not as raw distributions"
            )
    elif query.aligner not in allowed:
        raise BadRequest(
            f"aggregation.perSeriesAligner {query.aligner} does not apply to {query.metric} "
            f"(use {', '.join(allowed)})"
        )
    if query.reducer not in ("REDUCE_NONE", "REDUCE_SUM"):
        raise BadRequest(f"aggregation.crossSeriesReducer {query.reducer}: only REDUCE_SUM or none")
    if query.reducer == "REDUCE_SUM" and query.aligner == "ALIGN_NONE":
        raise BadRequest("aggregation.crossSeriesReducer needs a perSeriesAligner")
    if query.reducer == "REDUCE_SUM" and query.aligner.startswith("ALIGN_PERCENTILE"):
        raise BadRequest("aggregation: percentiles of different series do not add up: REDUCE_NONE")
    for name in query.group_by:
        if not re.fullmatch(r"(metric|resource)\.labels\.[a-z_]+", name):
            raise BadRequest(
                f"aggregation.groupByFields {name!r}: expected metric.labels.X or resource.labels.X"
            )
    if query.end <= query.start:
        raise BadRequest("interval: endTime must be after startTime")


def align(series: Series, query: Query) -> list[tuple[float, float, float]]:
    """(start, end, value) points, newest first, one per period with data."""
    period = query.period if query.aligner != "ALIGN_NONE" else 1
    buckets: dict[int, list[float]] = {}
    for when, value in series.samples:
        if query.start < when <= query.end:
            k = math.floor((query.end - when) / period)
            buckets.setdefault(k, []).append(value)
    points = []
    for k in sorted(buckets):
        values = buckets[k]
        end = query.end - k * period
        points.append((end - period, end, _value(query, values, period)))
    return points


def _value(query: Query, values: list[float], period: int) -> float:
    aligner = query.aligner
    if query.metric == REQUEST_COUNT:
        total = math.fsum(values)  # answers per second of the counters
        return total / period if aligner == "ALIGN_RATE" else total
    if aligner.startswith("ALIGN_PERCENTILE_"):
        return percentile(sorted(values), float(aligner.rsplit("_", 1)[1]))
    if aligner == "ALIGN_MAX":
        return max(values)
    if aligner == "ALIGN_MEAN" or query.metric == REQUEST_LATENCIES:
        return math.fsum(values) / len(values)
    return values[-1]  # a raw gauge sample


def reduce_sum(
    series: list[tuple[Series, list[tuple[float, float, float]]]], group_by: tuple[str, ...]
) -> list[tuple[Series, list[tuple[float, float, float]]]]:
    groups: dict[tuple[str, ...], tuple[Series, dict[tuple[float, float], float]]] = {}
    for one, points in series:
        labels = one.labels()
        key = tuple(labels.get(name, "") for name in group_by)
        if key not in groups:
            kept = Series(
                {
                    n.rsplit(".", 1)[1]: labels.get(n, "")
                    for n in group_by
                    if n.startswith("metric.")
                },
                {
                    n.rsplit(".", 1)[1]: labels.get(n, "")
                    for n in group_by
                    if n.startswith("resource.")
                },
            )
            groups[key] = (kept, {})
        sums = groups[key][1]
        for start, end, value in points:
            sums[(start, end)] = sums.get((start, end), 0.0) + value
    return [
        (kept, sorted(((s, e, v) for (s, e), v in sums.items()), key=lambda p: -p[1]))
        for key, (kept, sums) in sorted(groups.items())
    ]


def list_time_series(
    query: Query, revisions: Iterable[RevisionSnapshot]
) -> list[tuple[Series, list[tuple[float, float, float]]]]:
    """The series the query selects, each with its points (start, end, value), newest first."""
    check_query(query)
    chosen = [s for s in raw_series(query.metric, revisions) if _matches(s, query.clauses)]
    aligned = [(s, align(s, query)) for s in chosen]
    aligned = [(s, points) for s, points in aligned if points]
    if query.reducer == "REDUCE_SUM":
        aligned = reduce_sum(aligned, query.group_by)
    return aligned


def value_type(query: Query) -> str:
    if query.metric == REQUEST_LATENCIES or query.aligner in ("ALIGN_RATE", "ALIGN_MEAN"):
        return "DOUBLE"
    if query.aligner.startswith("ALIGN_PERCENTILE"):
        return "DOUBLE"
    return "INT64"


def metric_kind(query: Query) -> str:
    if query.metric == INSTANCE_COUNT:
        return "GAUGE"
    return "DELTA" if query.aligner in ("ALIGN_NONE", "ALIGN_DELTA", "ALIGN_SUM") else "GAUGE"


# ------------------------------------------------------------------------------ gRPC


class MonitoringServer:
    """The gRPC server: `snapshot()` (thread-safe: it asks the emulator's loop) gives the
    revisions; the method handler turns proto-plus requests into a `Query` and back."""

    def __init__(self, snapshot: Callable[[str], list[RevisionSnapshot]], host: str, port: int):
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self.server: Any = None

    def start(self) -> int:
        from concurrent import futures

        import grpc
        from google.cloud.monitoring_v3.types import metric_service

        server = grpc.server(futures.ThreadPoolExecutor(4, thread_name_prefix="monitoring"))
        handler = grpc.method_handlers_generic_handler(
            "google.monitoring.v3.MetricService",
            {
                "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    request_deserializer=metric_service.ListTimeSeriesRequest.deserialize,
                    response_serializer=metric_service.ListTimeSeriesResponse.serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.port:
            raise OSError(f"cannot listen on {self.host} for Cloud Monitoring")
        server.start()
        self.server = server
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)
            self.server = None

    def _list(self, request: Any, context: Any) -> Any:
        import grpc
        from google.cloud.monitoring_v3.types import metric_service

        try:
            project = _project(request.name)
            query = _query(request)
            found = list_time_series(query, self.snapshot(project))
        except BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        size = request.page_size or PAGE_SIZE
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"pageToken {request.page_token!r} is not one of ours",
            )
        page = found[offset : offset + size]
        more = offset + size < len(found)
        return metric_service.ListTimeSeriesResponse(
            time_series=[_proto(series, points, query) for series, points in page],
            next_page_token=str(offset + size) if more else "",
        )


def _project(name: str) -> str:
    match = re.fullmatch(r"projects/([^/]+)", name or "")
    if not match:
        raise BadRequest(f"name {name!r}: expected projects/PROJECT")
    return match[1]


def _query(request: Any) -> Query:
    clauses = parse_filter(request.filter)
    interval = request.interval
    end = _seconds(interval.end_time) or time.time()
    start = _seconds(interval.start_time) or end - 60
    aggregation = request.aggregation
    period = aggregation.alignment_period.total_seconds() if aggregation.alignment_period else 0
    aligner = aggregation.per_series_aligner.name
    if aligner != "ALIGN_NONE" and (period < 1 or period != int(period)):
        raise BadRequest("aggregation.alignmentPeriod: a whole number of seconds ≥ 1 here")
    return Query(
        clauses["metric.type"],
        clauses,
        start,
        end,
        int(period) or 1,
        aligner,
        aggregation.cross_series_reducer.name,
        tuple(aggregation.group_by_fields),
    )


def _seconds(stamp: Any) -> float:
    if stamp is None:
        return 0.0
    try:
        return float(stamp.timestamp())
    except (AttributeError, ValueError, OverflowError):
        return 0.0


def _proto(series: Series, points: list[tuple[float, float, float]], query: Query) -> Any:
    from google.cloud import monitoring_v3

    kind = value_type(query)
    key = "double_value" if kind == "DOUBLE" else "int64_value"

    def stamp(t: float) -> dict[str, int]:
        return {"seconds": int(t), "nanos": int(round((t - int(t)) * 1e9)) % 1_000_000_000}

    return monitoring_v3.TimeSeries(
        metric={"type": query.metric, "labels": series.metric_labels},
        resource={"type": RESOURCE, "labels": series.resource},
        metric_kind=metric_kind(query),
        value_type=kind,
        points=[
            {
                "interval": {"start_time": stamp(start), "end_time": stamp(end)},
                "value": {key: value if kind == "DOUBLE" else int(round(value))},
            }
            for start, end, value in points
        ],
    )


def snapshot_of(revisions: Iterable[Any], project: str) -> list[RevisionSnapshot]:
    """The data plane's revisions of `project` as Monitoring sees them (call on its loop)."""
    offset = time.time() - time.perf_counter()  # the router's clock is perf_counter
    out = []
    for rr in revisions:
        parts = rr.name.split("/")  # projects/P/locations/L/services/S/revisions/R
        if len(parts) != 8 or parts[1] != project:
            continue
        resource = {
            "project_id": parts[1],
            "location": parts[3],
            "service_name": parts[5],
            "configuration_name": parts[5],
            "revision_name": parts[7],
        }
        stats = rr.pool.stats
        requests = [(t + offset, lat, status) for t, lat, status in stats.since(0.0)]
        counts = [
            (second + 0.5 + offset, status, n)
            for second, by_status in list(stats.per_second.items())
            for status, n in by_status.items()
        ]
        out.append(RevisionSnapshot(resource, requests, list(rr.instance_history), counts))
    return out
