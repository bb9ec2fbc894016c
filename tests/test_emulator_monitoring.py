"""Cloud Monitoring on the emulator, read with the official `google-cloud-monitoring` client
(MetricServiceClient over gRPC, the only transport it has): request counts per revision and
response code, rates, latency percentiles, instance counts, each instance's most concurrent
requests, CPU/memory utilization, distributions, REDUCE_SUM, paging, bad filters."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fixtures_emulator import PARENT, get

from pipeline.emulator import monitoring as mon


def run_v2() -> Any:
    from google.cloud import run_v2 as module

    return module


@pytest.fixture(scope="module")
def served(shared_emulator, reference_tarball) -> dict[str, Any]:
    """One service with two revisions (stable 100 %, candidate tagged, 0 %, answering 400 ms
    late): 30 requests to the service URL, 12 to the candidate's tag URL: 6 one by one, then 6 at once."""
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
    svc.template.containers[0].env = [
        v2.EnvVar(name="TAIEA_FAULT", value="delay"),
        v2.EnvVar(name="TAIEA_DELAY_MS", value="400"),
    ]
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
    for _ in range(12 - CONCURRENT):
        assert get(tag_url)[0] == 200
    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert [a[0] for a in pool.map(lambda _: get(tag_url), range(CONCURRENT))] == [200] * 6
    status, body = emulator.call("GET", "/emulator/v1/status")
    assert status == 200 and body["monitoring"]
    return {
        "address": body["monitoring"],
        "stable": short(stable),
        "candidate": short(candidate),
        "began": began,
    }


CONCURRENT = 6


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


def test_each_instances_most_concurrent_requests_is_served_as_a_distribution(served):
    """Six requests held 400 ms at once on the candidate's one instance: the point covering them
    says six (the distribution's range; its 99th percentile is above 1), the stable revision's sequential ones
    one; the raw points are one value per instance and second."""
    of = f'metric.type = "{mon.MAX_CONCURRENCIES}" AND resource.labels.revision_name = '
    hour = {"alignment_period": {"seconds": 3600}}
    (candidate,) = listed(
        served, of + f'"{served["candidate"]}"', **hour, per_series_aligner="ALIGN_PERCENTILE_99"
    )
    assert dict(candidate.metric.labels) == {"state": "active"}
    assert 1 < candidate.points[0].value.double_value <= CONCURRENT  # interpolated
    (merged,) = listed(
        served,
        of + f'"{served["candidate"]}"',
        **hour,
        per_series_aligner="ALIGN_DELTA",
        cross_series_reducer="REDUCE_SUM",
        group_by_fields=["resource.labels.revision_name"],
    )
    assert (kind_name(merged.metric_kind), type_name(merged.value_type)) == (
        "DELTA",
        "DISTRIBUTION",
    )
    spread = merged.points[0].value.distribution_value
    assert spread.range.max == CONCURRENT and spread.count >= 1
    assert sum(spread.bucket_counts) == spread.count
    (stable,) = listed(
        served, of + f'"{served["stable"]}"', **hour, per_series_aligner="ALIGN_DELTA"
    )
    assert stable.points[0].value.distribution_value.range.max == 1  # one at a time
    raw = listed(served, of + f'"{served["candidate"]}"')
    assert raw and all(p.value.distribution_value.count == 1 for s in raw for p in s.points)


def test_memory_and_cpu_utilization_are_fractions_of_the_revisions_limits(served, shared_emulator):
    """No limits in the template: Cloud Run's 1 CPU and 512 MiB. Memory utilization × 512 MiB is
    the instance's resident memory as the emulator's own metrics report it."""
    from pipeline.waiting import poll

    of = f'resource.labels.revision_name = "{served["stable"]}"'

    def utilization(metric: str) -> float | None:
        found = listed(
            served,
            f'metric.type = "{metric}" AND {of}',
            alignment_period={"seconds": 3600},
            per_series_aligner="ALIGN_PERCENTILE_99",
        )
        return found[0].points[0].value.double_value if found else None

    memory = poll(lambda: utilization(mon.MEMORY_UTILIZATIONS), timeout=10, what="memory")
    stable = shared_emulator.revision_metrics(f"{PARENT}/services/watched", served["stable"])
    rss_mb = max(i["rss_mb"] for i in stable["instance_list"] if i.get("rss_mb"))
    assert memory * 512 == pytest.approx(rss_mb, rel=0.25)
    assert 0 < memory < 1
    cpu = utilization(mon.CPU_UTILIZATIONS)
    assert cpu is not None and 0 <= cpu <= 1.5  # one core's share may overshoot briefly


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
            'metric.type = "run.googleapis.com/container/billable_instance_time"',
            {},
            "not served by the emulator",
        ),
        ('resource.labels.revision_name = "x"', {}, "metric.type None"),
        (
            f'metric.type = "{mon.REQUEST_LATENCIES}"',
            {"alignment_period": {"seconds": 60}, "per_series_aligner": "ALIGN_RATE"},
            "does not apply to",
        ),
        (
            f'metric.type = "{mon.MAX_CONCURRENCIES}"',
            {"alignment_period": {"seconds": 60}, "per_series_aligner": "ALIGN_MAX"},
            "does not apply to",
        ),
    ],
    ids=[
        "or",
        "function",
        "unserved-metric",
        "no-metric-type",
        "wrong-aligner",
        "max-of-a-distribution",
    ],
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


@pytest.mark.parametrize(
    ("values", "buckets", "counts", "mean"),
    [
        ((0.0, 1.0, 3.0, 3.0, 9.0), {"exponential_buckets": {"num_finite_buckets": 3, "growth_factor": 2, "scale": 1}}, [1, 1, 2, 0, 1], 3.2),
        ((0.02, 0.07, 0.5), {"linear_buckets": {"num_finite_buckets": 2, "width": 0.05, "offset": 0}}, [0, 1, 1, 1], 0.19667),
        ((), {"linear_buckets": {"num_finite_buckets": 1, "width": 1, "offset": 0}}, [0, 0, 0], 0.0),
    ],
    ids=["exponential-with-underflow", "linear-with-overflow", "empty"],
)  # fmt: skip
def test_a_distribution_counts_each_value_in_its_bucket(values, buckets, counts, mean):
    """Bounds are [scale·growth^i] or [offset + width·i]; bucket 0 is below the first bound (underflow)
    and the last at or above the last one (overflow), as google.api.Distribution says."""
    spread = mon.distribution(values, buckets)
    assert list(spread.bucket_counts) == counts
    assert (spread.count, round(spread.mean, 5)) == (len(values), mean)
    if values:
        assert (spread.range.min, spread.range.max) == (min(values), max(values))
        squared = sum((v - spread.mean) ** 2 for v in values)
        assert spread.sum_of_squared_deviation == pytest.approx(squared)
