"""The metric provider (pipeline/cloudrun/metrics.py) read over HTTP from the real emulator,
exactly as week 5 reads it: per-revision requests, errors, instances and latency."""

from __future__ import annotations

import urllib.request

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
