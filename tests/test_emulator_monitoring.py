"""Cloud Monitoring on the emulator, read with the official `google-cloud-monitoring` client
(MetricServiceClient over gRPC, the only transport it has): request counts per revision and
response code, rates, latency percentiles, instance counts, REDUCE_SUM, paging, bad filters."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fixtures_emulator import PARENT, get

from pipeline.emulator import monitoring as mon


def run_v2() -> Any:
    from google.cloud import run_v2 as module

    return module


@pytest.fixture(scope="module")
def served(shared_emulator, reference_tarball) -> dict[str, Any]:
    """One service with two revisions (stable 100 %, candidate tagged, 0 %): 30 requests to the
    service URL, 12 to the candidate's tag URL."""
    v2 = run_v2()
    emulator = shared_emulator
    image = f"file://{reference_tarball()}"
    svc = (
        emulator.services()
        .create_service(
            parent=PARENT,
            service_id="watched",
            service=v2.Service(
                template=v2.RevisionTemplate(containers=[v2.Container(image=image)])
            ),
        )
        .result(timeout=120, polling=emulator.POLL)
    )
    stable = svc.latest_ready_revision
    svc.template.containers[0].env = [v2.EnvVar(name="ROUND", value="2")]
    kind = v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    svc = emulator.services().update_service(service=svc).result(timeout=120, polling=emulator.POLL)
    candidate = svc.latest_created_revision
    svc.traffic = [
        v2.TrafficTarget(type_=kind, revision=short(stable), percent=100),
        v2.TrafficTarget(type_=kind, revision=short(candidate), percent=0, tag="candidate"),
    ]
    svc = emulator.services().update_service(service=svc).result(timeout=120, polling=emulator.POLL)
    tag_url = next(t.uri for t in svc.traffic_statuses if t.tag == "candidate")
    began = time.time()
    for _ in range(30):
        assert get(svc.uri)[0] == 200
    for _ in range(12):
        assert get(tag_url)[0] == 200
    status, body = emulator.call("GET", "/emulator/v1/status")
    assert status == 200 and body["monitoring"]
    return {
        "address": body["monitoring"],
        "stable": short(stable),
        "candidate": short(candidate),
        "began": began,
    }


def kind_name(value: int) -> str:
    from google.api import metric_pb2

    return metric_pb2.MetricDescriptor.MetricKind.Name(value)


def type_name(value: int) -> str:
    from google.api import metric_pb2

    return metric_pb2.MetricDescriptor.ValueType.Name(value)


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def client(address: str) -> Any:
    import grpc
    from google.cloud import monitoring_v3
    from google.cloud.monitoring_v3.services.metric_service.transports import (
        MetricServiceGrpcTransport,
    )

    return monitoring_v3.MetricServiceClient(
        transport=MetricServiceGrpcTransport(channel=grpc.insecure_channel(address))
    )


def listed(served, filter_: str, **aggregation: Any) -> list[Any]:
    from google.cloud import monitoring_v3

    now = time.time() + 1
    request: dict[str, Any] = {
        "name": "projects/taiea-test",
        "filter": filter_,
        "interval": {
            "start_time": {"seconds": int(served["began"]) - 5},
            "end_time": {"seconds": int(now)},
        },
        "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
    }
    if aggregation:
        request["aggregation"] = aggregation
    return list(client(served["address"]).list_time_series(request=request))


def of_revision(revision: str) -> str:
    return f'metric.type = "{mon.REQUEST_COUNT}" AND resource.labels.revision_name = "{revision}"'


def total(series: list[Any]) -> int:
    return sum(p.value.int64_value for s in series for p in s.points)


def test_request_counts_per_revision_with_cloud_runs_labels(served):
    stable = listed(served, of_revision(served["stable"]))
    candidate = listed(served, of_revision(served["candidate"]))
    assert total(stable) == 30 and total(candidate) == 12
    (series,) = candidate
    assert series.metric.type == mon.REQUEST_COUNT
    assert dict(series.metric.labels) == {"response_code": "200", "response_code_class": "2xx"}
    labels = dict(series.resource.labels)
    assert series.resource.type == "cloud_run_revision"
    assert (labels["service_name"], labels["revision_name"], labels["location"]) == (
        "watched",
        served["candidate"],
        "us-central1",
    )
    assert (kind_name(series.metric_kind), type_name(series.value_type)) == ("DELTA", "INT64")
    ends = [p.interval.end_time.timestamp() for p in series.points]
    assert ends == sorted(ends, reverse=True), "newest point first"


def test_aligners_and_reducers(served):
    every = f'metric.type = "{mon.REQUEST_COUNT}" AND resource.labels.service_name = "watched"'
    summed = listed(
        served,
        every,
        alignment_period={"seconds": 3600},
        per_series_aligner="ALIGN_DELTA",
        cross_series_reducer="REDUCE_SUM",
        group_by_fields=["resource.labels.revision_name"],
    )
    by_revision = {s.resource.labels["revision_name"]: total([s]) for s in summed}
    assert by_revision == {served["stable"]: 30, served["candidate"]: 12}
    (rate,) = listed(
        served,
        of_revision(served["candidate"]),
        alignment_period={"seconds": 3600},
        per_series_aligner="ALIGN_RATE",
    )
    assert type_name(rate.value_type) == "DOUBLE"
    assert rate.points[0].value.double_value == pytest.approx(12 / 3600)
    latency = f'metric.type = "{mon.REQUEST_LATENCIES}" AND resource.labels.revision_name = "{served["stable"]}"'
    (p95,) = listed(
        served,
        latency,
        alignment_period={"seconds": 3600},
        per_series_aligner="ALIGN_PERCENTILE_95",
    )
    (p50,) = listed(
        served,
        latency,
        alignment_period={"seconds": 3600},
        per_series_aligner="ALIGN_PERCENTILE_50",
    )
    assert 0 < p50.points[0].value.double_value <= p95.points[0].value.double_value < 1000
    instances = f'metric.type = "{mon.INSTANCE_COUNT}" AND metric.labels.state = "active" AND resource.labels.revision_name = "{served["stable"]}"'
    (active,) = listed(
        served, instances, alignment_period={"seconds": 3600}, per_series_aligner="ALIGN_MAX"
    )
    assert active.points[0].value.int64_value >= 1


def test_paging_follows_the_token(served):
    from google.cloud import monitoring_v3

    every = f'metric.type = "{mon.INSTANCE_COUNT}" AND resource.labels.service_name = "watched"'
    request = {
        "name": "projects/taiea-test",
        "filter": every,
        "interval": {
            "start_time": {"seconds": int(served["began"]) - 5},
            "end_time": {"seconds": int(time.time()) + 1},
        },
        "page_size": 1,
        "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
    }
    pager = client(served["address"]).list_time_series(request=request)
    seen = [(s.resource.labels["revision_name"], s.metric.labels["state"]) for s in pager]
    assert len(seen) == len(set(seen)) >= 3  # two revisions × active/idle, one a page


@pytest.mark.parametrize(
    ("filter_", "aggregation", "says"),
    [
        (
            'metric.type = "run.googleapis.com/request_count" OR resource.type = "x"',
            {},
            "is not supported",
        ),
        ('metric.type = starts_with("run.googleapis.com")', {}, "is not supported"),
        (
            'metric.type = "run.googleapis.com/container/cpu/utilizations"',
            {},
            "not served by the emulator",
        ),
        ('resource.labels.revision_name = "x"', {}, "metric.type None"),
        (
            f'metric.type = "{mon.REQUEST_LATENCIES}"',
            {"alignment_period": {"seconds": 60}, "per_series_aligner": "ALIGN_RATE"},
            "does not apply to",
        ),
    ],
    ids=["or", "function", "unserved-metric", "no-metric-type", "wrong-aligner"],
)
def test_a_bad_query_is_invalid_argument_naming_the_clause(served, filter_, aggregation, says):
    from google.api_core import exceptions

    with pytest.raises(exceptions.InvalidArgument, match=says):
        listed(served, filter_, **aggregation)


def test_counts_come_from_per_second_counters_that_outlive_the_latency_ring():
    """70,000 answers in one second are counted whole (the ring of recent latencies holds far
    fewer), and the counters keep one hour of seconds, no more."""
    from pipeline.emulator.router import Stats

    resource = {"service_name": "s", "revision_name": "s-1", "location": "l"}
    snap = mon.RevisionSnapshot(resource, requests=[], instances=[], counts=[(100.5, 200, 70000)])
    query = mon.Query(
        mon.REQUEST_COUNT,
        {"metric.type": mon.REQUEST_COUNT},
        0.0,
        200.0,
        200,
        "ALIGN_DELTA",
        "REDUCE_NONE",
        (),
    )
    [(series, points)] = mon.list_time_series(query, [snap])
    assert points == [(0.0, 200.0, 70000.0)]
    stats = Stats()
    for second in range(5000):
        stats.count(second + 0.2, 200)
    assert min(stats.per_second) >= 5000 - 1 - 3600 and len(stats.per_second) <= 3602
