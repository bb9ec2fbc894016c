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
  run.googleapis.com/container/max_request_concurrencies  DELTA DISTRIBUTION, label state: one
                                            value per instance and point, the most requests it
                                            served at once
  run.googleapis.com/container/cpu/utilizations, …/memory/utilizations  DELTA DISTRIBUTION, one
                                            value per instance a second: the fraction of the
                                            revision's CPU / memory limit in use
Points are 1 s here (Cloud Run publishes 60 s points): an alignment period is any whole number
of seconds ≥ 1, aligned to the interval's end; raw points (no aligner) are per second. Aligners:
ALIGN_DELTA, ALIGN_SUM, ALIGN_RATE (counts); ALIGN_DELTA (the merged distribution),
ALIGN_PERCENTILE_50/95/99, ALIGN_MEAN (distributions: ALIGN_MAX is refused, as Google refuses
it); ALIGN_MEAN, ALIGN_MAX (instances). Reducers: REDUCE_NONE, REDUCE_SUM with
group_by_fields (distributions merge).
Filters: `A = "v"` clauses joined by AND on metric.type, resource.type, resource.labels.* and
metric.labels.*; anything else is INVALID_ARGUMENT naming the clause, never an empty answer.
Pure over snapshots taken on the emulator's loop (`snapshot`).
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.samples import after
from pipeline.stats import percentile

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
INSTANCE_COUNT = "run.googleapis.com/container/instance_count"
MAX_CONCURRENCIES = "run.googleapis.com/container/max_request_concurrencies"
CPU_UTILIZATIONS = "run.googleapis.com/container/cpu/utilizations"
MEMORY_UTILIZATIONS = "run.googleapis.com/container/memory/utilizations"
DISTRIBUTIONS = (REQUEST_LATENCIES, MAX_CONCURRENCIES, CPU_UTILIZATIONS, MEMORY_UTILIZATIONS)
METRICS = (REQUEST_COUNT, INSTANCE_COUNT, *DISTRIBUTIONS)
# bucket layouts of the distributions served (google.api.Distribution.BucketOptions)
BUCKETS: dict[str, dict[str, Any]] = {
    REQUEST_LATENCIES: {
        "exponential_buckets": {"num_finite_buckets": 40, "growth_factor": 1.4, "scale": 0.1}
    },
    MAX_CONCURRENCIES: {
        "exponential_buckets": {"num_finite_buckets": 12, "growth_factor": 2, "scale": 1}
    },
    CPU_UTILIZATIONS: {"linear_buckets": {"num_finite_buckets": 20, "width": 0.05, "offset": 0}},
    MEMORY_UTILIZATIONS: {"linear_buckets": {"num_finite_buckets": 20, "width": 0.05, "offset": 0}},
}
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
    concurrency: list[tuple[float, str, str, int]] = field(default_factory=list)  # samples.py
    usage: list[tuple[float, str, float, float]] = field(default_factory=list)  # samples.py


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
        name = rev.resource["revision_name"]
        if metric == INSTANCE_COUNT:
            for state, column in (("active", 1), ("idle", 2)):
                series = Series({"state": state}, rev.resource)
                series.samples = [(s[0], float(s[column])) for s in rev.instances]
                out[(name, state)] = series
            continue
        if metric == MAX_CONCURRENCIES:
            for when, _instance, state, peak in rev.concurrency:
                out.setdefault((name, state), Series({"state": state}, rev.resource))
                out[(name, state)].samples.append((when, float(peak)))
            continue
        if metric in (CPU_UTILIZATIONS, MEMORY_UTILIZATIONS):
            cpu = metric == CPU_UTILIZATIONS
            if rev.usage:
                samples = [(when, c if cpu else m) for when, _i, c, m in rev.usage]
                out[(name,)] = Series({}, rev.resource, samples)
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
            key = (name, code)
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
# as on Google: ALIGN_MAX/MIN take numbers only, so a distribution's highest is a percentile
DISTRIBUTION_ALIGNERS = (
    "ALIGN_DELTA",
    "ALIGN_PERCENTILE_50",
    "ALIGN_PERCENTILE_95",
    "ALIGN_PERCENTILE_99",
    "ALIGN_MEAN",
)
GAUGE_ALIGNERS = ("ALIGN_MEAN", "ALIGN_MAX")


@dataclass(frozen=True)
class Dist:
    """A distribution value: the samples it was made of (served as google.api.Distribution)."""

    values: tuple[float, ...]

    def __add__(self, other: Dist) -> Dist:
        return Dist(self.values + other.values)


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
    allowed = {REQUEST_COUNT: COUNT_ALIGNERS, INSTANCE_COUNT: GAUGE_ALIGNERS}.get(
        query.metric, DISTRIBUTION_ALIGNERS
    )
    if query.aligner != "ALIGN_NONE" and query.aligner not in allowed:
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


Points = list[tuple[float, float, Any]]  # (start, end, value: float or Dist), newest first


def align(series: Series, query: Query) -> Points:
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


def _value(query: Query, values: list[float], period: int) -> float | Dist:
    aligner = query.aligner
    if query.metric == REQUEST_COUNT:
        total = math.fsum(values)  # answers per second of the counters
        return total / period if aligner == "ALIGN_RATE" else total
    if aligner.startswith("ALIGN_PERCENTILE_"):
        return percentile(sorted(values), float(aligner.rsplit("_", 1)[1]))
    if aligner == "ALIGN_MAX":
        return max(values)
    if aligner == "ALIGN_MEAN":
        return math.fsum(values) / len(values)
    if query.metric in DISTRIBUTIONS:  # ALIGN_DELTA or raw: the distribution itself
        return Dist(tuple(values))
    return values[-1]  # a raw gauge sample


def reduce_sum(
    series: list[tuple[Series, Points]], group_by: tuple[str, ...]
) -> list[tuple[Series, Points]]:
    groups: dict[tuple[str, ...], tuple[Series, dict[tuple[float, float], Any]]] = {}
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
            before = sums.get((start, end))
            sums[(start, end)] = value if before is None else before + value
    return [
        (kept, sorted(((s, e, v) for (s, e), v in sums.items()), key=lambda p: -p[1]))
        for key, (kept, sums) in sorted(groups.items())
    ]


def list_time_series(
    query: Query, revisions: Iterable[RevisionSnapshot]
) -> list[tuple[Series, Points]]:
    """The series the query selects, each with its points (start, end, value), newest first."""
    check_query(query)
    chosen = [s for s in raw_series(query.metric, revisions) if _matches(s, query.clauses)]
    aligned = [(s, align(s, query)) for s in chosen]
    aligned = [(s, points) for s, points in aligned if points]
    if query.reducer == "REDUCE_SUM":
        aligned = reduce_sum(aligned, query.group_by)
    return aligned


def value_type(query: Query) -> str:
    if query.metric in DISTRIBUTIONS and query.aligner in ("ALIGN_NONE", "ALIGN_DELTA"):
        return "DISTRIBUTION"
    if query.metric in DISTRIBUTIONS or query.aligner in ("ALIGN_RATE", "ALIGN_MEAN"):
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

    def __init__(
        self,
        snapshot: Callable[[str, str, float], list[RevisionSnapshot]],
        host: str,
        port: int,
    ):
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
            found = list_time_series(query, self.snapshot(project, query.metric, query.start))
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


def _proto(series: Series, points: Points, query: Query) -> Any:
    from google.cloud import monitoring_v3

    kind = value_type(query)

    def typed(value: Any) -> dict[str, Any]:
        if kind == "DISTRIBUTION":
            return {"distribution_value": distribution(value.values, BUCKETS[query.metric])}
        if kind == "DOUBLE":
            return {"double_value": float(value)}
        return {"int64_value": int(round(value))}

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
                "value": typed(value),
            }
            for start, end, value in points
        ],
    )


def distribution(values: tuple[float, ...], buckets: dict[str, Any]) -> Any:
    """google.api.Distribution of `values`: count, mean, sum of squared deviations, range and
    bucket counts (underflow first, overflow last)."""
    from google.api import distribution_pb2

    count = len(values)
    mean = math.fsum(values) / count if count else 0.0
    kind, spec = next(iter(buckets.items()))
    n = spec["num_finite_buckets"]
    if kind == "exponential_buckets":
        bounds = [spec["scale"] * spec["growth_factor"] ** i for i in range(n + 1)]
    else:
        bounds = [spec["offset"] + spec["width"] * i for i in range(n + 1)]
    counts = [0] * (n + 2)
    for v in values:
        counts[bisect.bisect_right(bounds, v)] += 1
    return distribution_pb2.Distribution(
        count=count,
        mean=mean,
        sum_of_squared_deviation=math.fsum((v - mean) ** 2 for v in values),
        range={"min": min(values), "max": max(values)} if values else None,
        bucket_options={kind: spec},
        bucket_counts=counts,
    )


def snapshot_of(
    revisions: Iterable[Any], project: str, metric: str, since: float = 0.0
) -> list[RevisionSnapshot]:
    """The data plane's revisions of `project` as Monitoring sees them for `metric` after
    `since` (wall time): only what that metric is made of, and only from then on, is copied
    (this runs on the emulator's loop, between requests)."""
    now = time.time()
    offset = now - time.perf_counter()  # the router's clock is perf_counter
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
        snap = RevisionSnapshot(resource, [], [])
        if metric == REQUEST_LATENCIES:
            snap.requests.extend(
                (t + offset, lat, status) for t, lat, status in stats.since(since - offset)
            )
        elif metric == REQUEST_COUNT:
            snap.counts.extend(  # a second's middle, but never after now: in the newest point
                (min(second + 0.5 + offset, now), status, n)
                for second, by_status in list(stats.per_second.items())
                if second + 1 + offset > since
                for status, n in by_status.items()
            )
        elif metric == INSTANCE_COUNT:
            snap.instances.extend(after(rr.instance_history, since))
        elif metric == MAX_CONCURRENCIES:
            snap.concurrency.extend(
                (min(t, now), i, state, p) for t, i, state, p in rr.samples.concurrency_rows(since)
            )
        else:
            snap.usage.extend(after(rr.samples.usage, since))
        out.append(snap)
    return out
