"""The metric provider (pipeline/cloudrun/metrics.py) read over HTTP from the real emulator,
exactly as week 5 reads it: per-revision requests, errors, instances and latency."""

from __future__ import annotations

import dataclasses
import urllib.request

import pytest

from pipeline import config
from pipeline.cloudrun.client import RunV2, Template
from pipeline.cloudrun.metrics import EmulatorMetrics, NoBackend, default_backend
from pipeline.runtime.process import free_port
from pipeline.waiting import poll


def test_the_emulator_provider_counts_each_revisions_requests(emulator, reference_tarball):
    settings = config.load_env(emulator.env).cloudrun
    api = RunV2(settings, endpoint=emulator.url)
    service = api.deploy(Template.of(settings, f"file://{reference_tarball()}"), None)
    revision = service.latest_ready
    for _ in range(12):
        with urllib.request.urlopen(f"{service.uri}/health", timeout=10) as answer:  # noqa: S310 - the local emulator
            assert answer.status == 200
    provider = default_backend(settings, emulator.url)
    assert isinstance(provider, EmulatorMetrics)

    def counted() -> dict | None:
        seen = (provider.revisions() or {}).get(revision)
        return seen if seen and seen["requests"] >= 12 else None

    seen = poll(counted, timeout=10, what="the emulator to count the requests")
    assert seen["errors"] == 0 and seen["instances"] >= 1 and seen["percent"] == 100
    assert seen["latency_ms"]["count"] >= 12 and seen["latency_ms"]["p95"] > 0
    assert all(i["state"] for i in seen["instance_list"])
    windowed = provider.revisions(window_s=60) or {}
    assert windowed[revision]["latency_ms"]["count"] >= 12


def test_nothing_answering_is_no_data_not_an_error():
    settings = config.load_env("cloudrun-local").cloudrun
    assert EmulatorMetrics(f"http://127.0.0.1:{free_port()}", settings).revisions() is None


def test_google_has_no_emulator_endpoint_to_read():
    settings = config.load_env("cloudrun-local").cloudrun
    assert isinstance(default_backend(settings, None), NoBackend)
    assert isinstance(default_backend(settings, "https://run.googleapis.com"), NoBackend)
    assert NoBackend().revisions() is None


@pytest.mark.parametrize(
    ("monitoring", "endpoint", "address", "point_s"),
    [
        ({}, "http://127.0.0.1:8089", "emulator", 1),
        ({}, None, "monitoring.googleapis.com", 60),
        ({"endpoint": "emulator", "point_s": 5}, "http://127.0.0.1:8089", "emulator", 5),
        ({"endpoint": "10.0.0.7:9090"}, "http://127.0.0.1:8089", "10.0.0.7:9090", 60),
        ({"endpoint": "none"}, "http://127.0.0.1:8089", None, None),
    ],
    ids=["local-follows-the-emulator", "google", "explicit-emulator", "host-port", "none"],
)
def test_week5_reads_cloud_monitoring_where_the_env_points(monitoring, endpoint, address, point_s):
    """Week 5's provider is always Cloud Monitoring (or nothing, when asked): the emulator's own
    metrics endpoint is never its choice."""
    from pipeline.cloudrun.monitoring import MonitoringBackend, monitoring_backend

    env = config.load_env("cloudrun-local")
    chosen = monitoring_backend(
        env.cloudrun, endpoint, config.MonitoringSettings.model_validate(monitoring)
    )
    if address is None:
        assert isinstance(chosen, NoBackend)
        return
    assert isinstance(chosen, MonitoringBackend) and chosen.point_s == point_s
    where = chosen._address
    assert (where if isinstance(where, str) else "emulator") == address


def test_a_drain_on_cloud_monitoring_waits_for_the_request_still_in_flight(
    emulator, reference_tarball
):
    """The old revision keeps its tag (so it keeps an instance: its instance count never says
    "drained") and one request answered 2.5 s late is in flight when the drain starts: the
    drain returns only once Monitoring's max_request_concurrencies shows none in flight, after
    that request was answered, and removes the tag."""
    import threading
    import time

    from pipeline.cloudrun import ops
    from pipeline.cloudrun.client import Route

    env = config.load_env(emulator.env)
    env = env.model_copy(update={"cloudrun": env.cloudrun.model_copy(update={"min_instances": 0})})
    settings = env.cloudrun
    api = RunV2(settings, endpoint=emulator.url)
    image = f"file://{reference_tarball()}"
    slow = dataclasses.replace(
        Template.of(settings, image), env={"TAIEA_FAULT": "delay", "TAIEA_DELAY_MS": "2500"}
    )
    old = api.deploy(slow, None).latest_ready
    new = api.deploy(Template.of(settings, image), None).latest_ready
    service = api.set_traffic([Route(new, 100), Route(old, 0, "old")])
    answered: list[float] = []

    def slow_request() -> None:
        with urllib.request.urlopen(f"{service.tag_uris['old']}/health", timeout=30) as answer:  # noqa: S310 - the local emulator
            assert answer.status == 200
        answered.append(time.monotonic())

    worker = threading.Thread(target=slow_request, daemon=True)
    worker.start()
    poll(
        lambda: True if emulator.revision_metrics(service.name, old)["in_flight"] else None,
        timeout=10,
        what="the slow request to reach the old revision",
    )
    began = time.monotonic()
    said = ops.drain(env, emulator.url, old, timeout=20)
    ended = time.monotonic()
    worker.join(5)
    assert said == f"{old} drained (in-flight reached 0), tag removed"
    assert answered and began < answered[0] < ended  # it waited for the answer
    assert "old" not in (api.get_service() or service).tag_uris
