"""The emulator driven by the official google.cloud.run_v2 clients (REST), running real releases.

One emulator (a subprocess, as users run it) serves the whole module; each test deletes what it
created at teardown (the `emulator` fixture), so no instance outlives a test.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import Any

import psutil
import pytest
from fixtures_emulator import PARENT, get, http_json

from pipeline.waiting import poll

EVENT = (
    b'{"tenant_id":"test-tenant-001","event_type":"sku_changed",'
    b'"event_data":{"sku":"professional","timestamp":1234567890}}'
)

# The shared emulator runs the product's defaults (cloudrun-local). Tests about the queue
# timeout and scale-in delay themselves use `knobs`: those two knobs short, nothing else changed.
KNOBS = {"queue_timeout_s": 1.0, "scale_in_delay_s": 2.0}


def run_v2() -> Any:
    from google.cloud import run_v2 as module

    return module


def service_body(image: str, **template: Any) -> Any:
    v2 = run_v2()
    container = v2.Container(image=image, **template.pop("container", {}))
    return v2.Service(template=v2.RevisionTemplate(containers=[container], **template))


def target(revision: str = "", percent: int = 0, tag: str = "") -> Any:
    v2 = run_v2()
    kind = v2.TrafficTargetAllocationType
    return v2.TrafficTarget(
        type_=kind.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
        if revision
        else kind.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST,
        revision=revision,
        percent=percent,
        tag=tag,
    )


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def create(emulator: Any, service_id: str, image: str, **template: Any) -> Any:
    op = emulator.services().create_service(
        parent=PARENT, service_id=service_id, service=service_body(image, **template)
    )
    assert op.operation.done is False, "a create is a long-running operation, polled"
    return op.result(timeout=90, polling=emulator.POLL)


def revisions_answering(url: str, n: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(n):
        status, revision, _body = get(url)
        assert status == 200
        seen[revision] = seen.get(revision, 0) + 1
    return seen


@pytest.fixture(scope="module")
def images(reference_tarball: Any) -> dict[str, str]:
    return {
        "v1": f"file://{reference_tarball('none', version='1.0.0')}",
        "v2": f"file://{reference_tarball('none', version='1.0.1')}",
        "noready": f"file://{reference_tarball('noready')}",
        "slowstart": f"file://{reference_tarball('slowstart')}",
    }


@pytest.fixture(scope="module")
def knobs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fixtures_emulator import EmulatorHandle, write_env

    base = tmp_path_factory.mktemp("emulator-knobs")
    handle = EmulatorHandle(write_env(base / "env.toml", KNOBS), base / "state", in_process=False)
    handle.start()
    yield handle
    handle.cleanup()


@pytest.fixture
def knobs(knobs_emulator: Any) -> Any:
    """An emulator with a 1 s queue timeout and a 2 s scale-in delay; reset after each test."""
    yield knobs_emulator
    if knobs_emulator.proc is not None and knobs_emulator.proc.poll() is None:
        knobs_emulator.reset()


# ------------------------------------------------------------------------------------------


def test_create_get_list_and_serve(emulator, images):
    svc = create(emulator, "alpha", images["v1"])
    rev = short(svc.latest_ready_revision)
    assert re.fullmatch(r"alpha-00001-[a-z]{3}", rev)
    assert svc.latest_created_revision == svc.latest_ready_revision
    assert (svc.generation, svc.observed_generation, svc.reconciling) == (1, 1, False)
    assert svc.terminal_condition.state.name == "CONDITION_SUCCEEDED"
    assert svc.uri.startswith("http://127.0.0.1:") and list(svc.urls) == [svc.uri]
    assert [(t.revision, t.percent) for t in svc.traffic_statuses] == [(rev, 100)]
    assert svc.etag
    assert get(svc.uri)[:2] == (200, rev)

    create(emulator, "beta", images["v1"])
    sc = emulator.services()
    pages = sc.list_services(request={"parent": PARENT, "page_size": 1})
    assert [short(s.name) for s in pages] == ["alpha", "beta"]  # the pager follows the token
    again = sc.get_service(name=svc.name)
    assert (again.uid, again.etag, again.uri) == (svc.uid, svc.etag, svc.uri)

    revision = emulator.revisions().get_revision(name=svc.latest_ready_revision)
    assert revision.service == svc.name
    assert revision.max_instance_request_concurrency == 80
    assert {c.type_: c.state.name for c in revision.conditions}["Ready"] == "CONDITION_SUCCEEDED"
    assert [short(r.name) for r in emulator.revisions().list_revisions(parent=svc.name)] == [rev]


def test_candidate_tag_then_traffic_shift_and_drain(emulator, images):
    v2 = run_v2()
    svc = create(emulator, "shift", images["v1"])
    old = short(svc.latest_ready_revision)
    svc.template.containers[0].image = images["v2"]
    svc.template.revision = "shift-candidate"
    svc.traffic = [target(old, 100), target("shift-candidate", 0, "candidate")]
    svc = emulator.services().update_service(service=svc).result(timeout=90, polling=emulator.POLL)
    statuses = {t.revision: t for t in svc.traffic_statuses}
    assert statuses["shift-candidate"].tag == "candidate"
    tag_url = statuses["shift-candidate"].uri
    assert tag_url.startswith("http://127.0.0.1:") and tag_url != svc.uri
    assert revisions_answering(tag_url, 5) == {"shift-candidate": 5}
    assert revisions_answering(svc.uri, 5) == {old: 5}

    svc.traffic = [target(old, 50), target("shift-candidate", 50, "candidate")]
    mask = {"paths": ["traffic"]}
    svc = (
        emulator.services()
        .update_service(request=v2.UpdateServiceRequest(service=svc, update_mask=mask))
        .result(timeout=60, polling=emulator.POLL)
    )
    split = revisions_answering(svc.uri, 60)
    assert set(split) == {old, "shift-candidate"} and min(split.values()) >= 10

    # a long request on the old revision is in flight when it loses its traffic: it finishes
    old_instances = [i["pid"] for i in emulator.revision_metrics(svc.name, old)["instance_list"]]
    long_answer: list[tuple[int, str, bytes]] = []
    service_url = svc.uri
    long = threading.Thread(target=lambda: long_answer.append(get(service_url, "/slow?ms=1500")))
    svc.traffic = [target(old, 100), target("shift-candidate", 0, "candidate")]
    svc = emulator.services().update_service(service=svc).result(timeout=60, polling=emulator.POLL)
    long.start()
    poll(
        lambda: True if emulator.revision_metrics(svc.name, old)["in_flight"] == 1 else None,
        timeout=10,
        what="the long request in flight",
    )
    svc.traffic = [target("shift-candidate", 100, "candidate")]
    svc = emulator.services().update_service(service=svc).result(timeout=60, polling=emulator.POLL)
    assert revisions_answering(svc.uri, 5) == {"shift-candidate": 5}
    draining = emulator.revision_metrics(svc.name, old)
    assert draining["in_flight"] == 1 and draining["instance_states"]["draining"] == 1
    assert [i["pid"] for i in draining["instance_list"]] == old_instances
    long.join(30)
    assert long_answer[0][:2] == (200, old), "an in-flight request finishes on its revision"

    # the old revision drains: no request in flight, then no instance
    def drained_metrics() -> dict[str, Any] | None:
        m = emulator.revision_metrics(svc.name, old)
        return m if m["in_flight"] == 0 and m["instances"] == 0 else None

    drained = poll(drained_metrics, timeout=30, what="the old revision to drain")
    assert drained["percent"] == 0
    assert drained["requests"] == 5 + split[old] + 1, "every request it got is counted"
    retired = emulator.revisions().get_revision(name=f"{svc.name}/revisions/{old}")
    active = {c.type_: c for c in retired.conditions}["Active"]
    assert active.revision_reason.name == "RETIRED"


def test_stale_etag_is_aborted_and_revision_with_traffic_cannot_be_deleted(emulator, images):
    from google.api_core import exceptions

    v2 = run_v2()
    sc = emulator.services()
    svc = create(emulator, "guard", images["v1"])
    stale = v2.Service(svc)
    svc.description = "changed"
    sc.update_service(service=svc).result(timeout=60, polling=emulator.POLL)
    stale.description = "lost update"
    with pytest.raises(exceptions.Conflict) as info:
        sc.update_service(service=stale)
    assert info.value.response.json()["error"]["status"] == "ABORTED"
    with pytest.raises(exceptions.Conflict):
        sc.delete_service(request=v2.DeleteServiceRequest(name=svc.name, etag=stale.etag))

    rc = emulator.revisions()
    with pytest.raises(exceptions.BadRequest) as info:
        rc.delete_revision(name=svc.latest_ready_revision)
    error = info.value.response.json()["error"]
    assert error["status"] == "FAILED_PRECONDITION" and "traffic" in error["message"]

    fresh = sc.get_service(name=svc.name)
    fresh.template.containers[0].image = images["v2"]
    fresh = sc.update_service(service=fresh).result(timeout=90, polling=emulator.POLL)
    old = svc.latest_ready_revision
    assert fresh.latest_ready_revision != old
    deleted = rc.delete_revision(name=old).result(timeout=60, polling=emulator.POLL)
    assert deleted.name == old
    with pytest.raises(exceptions.NotFound):
        rc.get_revision(name=old)

    op = sc.delete_service(name=svc.name)
    assert op.result(timeout=60, polling=emulator.POLL).name == svc.name
    with pytest.raises(exceptions.NotFound):
        sc.get_service(name=svc.name)
    assert not emulator.instance_pids()


BAD_REQUESTS = [
    ("unknown service", "get", "nope", "NotFound", "not found"),
    ("bad service name", "get", "Bad_Name", "BadRequest", "service name"),
    ("percentages not 100", "traffic", [("", 60)], "BadRequest", "add up to 100"),
    (
        "tag on two revisions",
        "traffic",
        [("", 100, "t"), ("SELF", 0, "t")],
        "BadRequest",
        "tag 't'",
    ),
    ("another service's revision", "traffic", [("OTHER", 100)], "BadRequest", "belongs to service"),
    (
        "image names no release",
        "image",
        "tai_autonomics:1",
        "BadRequest",
        "names no release",
    ),
    (
        "image in a registry elsewhere",
        "image",
        "us-docker.pkg.dev/p/r/app:1",
        "BadRequest",
        "pulls only from a registry on this machine",
    ),
    ("image file missing", "image", "file:///no/such/release.tar.gz", "BadRequest", "no such file"),
    ("image not a release", "image", "file:///etc/hostname", "BadRequest", "not a release tarball"),
]


@pytest.mark.parametrize(
    "kind, value, error, message", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_say_what_is_wrong(emulator, images, kind, value, error, message):
    from google.api_core import exceptions

    sc = emulator.services()
    svc = create(emulator, "target", images["v1"])
    other = create(emulator, "other", images["v1"])
    expected = getattr(exceptions, error)
    with pytest.raises(expected) as info:
        if kind == "get":
            sc.get_service(name=f"{PARENT}/services/{value}")
        elif kind == "traffic":
            names = {
                "SELF": short(svc.latest_ready_revision),
                "OTHER": short(other.latest_ready_revision),
            }
            svc.traffic = [target(names.get(t[0], ""), *t[1:]) for t in value]
            sc.update_service(service=svc)
        else:
            svc.template.containers[0].image = value
            sc.update_service(service=svc)
    assert message in str(info.value)
    assert sc.get_service(name=svc.name).generation == 1, "a refused update changes nothing"


def test_a_release_that_never_gets_ready_fails_and_the_old_revision_keeps_serving(emulator, images):
    from google.api_core import exceptions

    v2 = run_v2()
    svc = create(emulator, "stuck", images["v1"])
    good = short(svc.latest_ready_revision)
    svc.template.containers[0].image = images["noready"]
    svc.template.containers[0].startup_probe = v2.Probe(
        http_get=v2.HTTPGetAction(path="/ready"), period_seconds=1, failure_threshold=2
    )
    op = emulator.services().update_service(service=svc)
    with pytest.raises(exceptions.FailedPrecondition) as info:
        op.result(timeout=60, polling=emulator.POLL)
    assert "never got ready" in str(info.value) and "not ready after 2 s" in str(info.value)
    assert revisions_answering(svc.uri, 5) == {good: 5}
    now = emulator.services().get_service(name=svc.name)
    assert now.terminal_condition.state.name == "CONDITION_FAILED"
    assert short(now.latest_ready_revision) == good
    assert [t.revision for t in now.traffic_statuses] == [good]
    failed = emulator.revisions().get_revision(name=now.latest_created_revision)
    ready = {c.type_: c for c in failed.conditions}["Ready"]
    assert ready.state.name == "CONDITION_FAILED" and "/ready" in ready.message


def test_zero_failed_requests_while_traffic_moves_under_constant_load(emulator, images):
    from pipeline.probes.load import RequestResult, Target, run_open_loop

    svc = create(emulator, "steady", images["v1"])
    blue = short(svc.latest_ready_revision)
    svc.template.containers[0].image = images["v2"]
    svc.template.revision = "steady-green"
    svc.traffic = [target(blue, 100), target("steady-green", 0, "green")]
    svc = emulator.services().update_service(service=svc).result(timeout=90, polling=emulator.POLL)

    failures: list[RequestResult] = []
    done = [0]
    summary: dict[str, Any] = {}
    targets = [
        Target("health", "GET", "/health"),
        Target(
            "event",
            "POST",
            "/marketplace",
            EVENT,
            expect_status=202,
        ),
    ]

    def record(result: RequestResult) -> None:
        done[0] += 1
        if not result.passed:
            failures.append(result)

    def load() -> None:
        summary["s"] = run_open_loop(svc.uri, targets, rate=200, duration_s=4.0, on_result=record)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for split in ((50, 50), (0, 100), (100, 0), (0, 100)):
            svc.traffic = [target(blue, split[0]), target("steady-green", split[1], "green")]
            svc = (
                emulator.services()
                .update_service(service=svc)
                .result(timeout=60, polling=emulator.POLL)
            )
            mark = done[0]  # let ~100 requests through on this split before the next move
            poll(lambda m=mark: True if done[0] >= m + 100 else None, timeout=10, what="requests")
    finally:
        thread.join(60)
    result = summary["s"]
    assert failures == [] and result.passed == result.scheduled >= 780
    metrics = {r["revision"]: r for r in emulator.metrics(svc.name)["revisions"]}
    assert metrics[blue]["requests"] > 50 and metrics["steady-green"]["requests"] > 50
    assert metrics[blue]["failed"] == metrics["steady-green"]["failed"] == 0


def request_in_flight(emulator: Any, svc: Any) -> tuple[threading.Thread, list[int]]:
    """A 5 s request through the service URL, in flight when this returns; its status is
    appended to the list when it ends."""
    statuses: list[int] = []
    slow = threading.Thread(target=lambda: statuses.append(get(svc.uri, "/slow?ms=5000")[0]))
    slow.start()
    rev = svc.latest_ready_revision
    poll(
        lambda: True if emulator.revision_metrics(svc.name, rev)["in_flight"] == 1 else None,
        timeout=10,
        what="a request in flight",
    )
    return slow, statuses


def replacement_of(emulator: Any, svc: Any, gone: dict[str, Any]) -> dict[str, Any]:
    """The ready instance that took the place of `gone`, the revision's only one."""

    def replaced() -> dict[str, Any] | None:
        instances = emulator.revision_metrics(svc.name, svc.latest_ready_revision)["instance_list"]
        fresh = [i for i in instances if i["pid"] != gone["pid"] and i["state"] == "ready"]
        return fresh[0] if fresh and len(instances) == 1 else None

    return poll(replaced, timeout=30, what="a replacement instance")  # type: ignore[no-any-return]


def test_a_killed_instance_is_replaced_and_only_its_in_flight_requests_fail(emulator, images):
    svc = create(
        emulator, "phoenix", images["v1"], scaling=run_v2().RevisionScaling(min_instance_count=1)
    )
    rev = svc.latest_ready_revision
    [instance] = emulator.revision_metrics(svc.name, rev)["instance_list"]
    slow, in_flight = request_in_flight(emulator, svc)
    os.kill(instance["pid"], signal.SIGKILL)
    slow.join(30)
    assert in_flight == [502]

    fresh = replacement_of(emulator, svc, instance)
    assert fresh["id"] != instance["id"]
    assert revisions_answering(svc.uri, 5) == {short(rev): 5}
    revision = emulator.revisions().get_revision(name=rev)
    assert revision.scaling_status.desired_min_instance_count == 1
    assert emulator.revision_metrics(svc.name, rev)["failed"] == 1


def test_under_load_a_killed_instance_fails_only_what_it_had_in_flight(start_emulator, images):
    from pipeline.probes.load import RequestResult, Target, run_open_loop

    emu = start_emulator()  # the default queue timeout (10 s) covers the replacement's start
    svc = create(emu, "hardy", images["v1"], scaling=run_v2().RevisionScaling(min_instance_count=1))
    rev = svc.latest_ready_revision
    [instance] = emu.revision_metrics(svc.name, rev)["instance_list"]
    slow, slow_status = request_in_flight(emu, svc)
    results: list[RequestResult] = []
    began: list[float] = []

    def load() -> None:
        began.append(time.perf_counter())
        run_open_loop(
            svc.uri, [Target("health", "GET", "/health")], 50, 4.0, on_result=results.append
        )

    thread = threading.Thread(target=load)
    thread.start()
    poll(lambda: True if len(results) >= 25 else None, timeout=10, what="half a second of load")
    os.kill(instance["pid"], signal.SIGKILL)

    def noticed() -> bool | None:  # the platform took the dead instance out of rotation
        listed = emu.revision_metrics(svc.name, rev)["instance_list"]
        still = [i for i in listed if i["id"] == instance["id"] and i["serving"]]
        return True if not alive(instance["pid"]) and not still else None

    poll(noticed, timeout=10, what="the kill to be noticed")
    # A request that reached the instance before the platform knew it was dead was in flight
    # at its death (as on Cloud Run, whose frontend also learns of a crash by failing on it);
    # every one sent after that must be served by the replacement.
    killed_at = time.perf_counter() - began[0]
    thread.join(60)
    slow.join(30)

    assert slow_status == [502]
    failed = [r for r in results if not r.passed]
    assert all(r.sent_s <= killed_at for r in failed), "a request sent after the kill failed"
    assert len(results) == 200 and len(failed) <= 2, failed
    metrics = emu.revision_metrics(svc.name, rev)
    assert metrics["failed"] == 1 + len(failed), "the emulator counts what the clients saw"
    assert metrics["requests"] == 1 + 200, "every request is answered and counted"
    sent_after = sum(1 for r in results if r.sent_s > killed_at)
    assert sent_after > 100 and replacement_of(emu, svc, instance)["requests"] >= sent_after


def http_probe(path: str = "/health", **kw: Any) -> Any:
    v2 = run_v2()
    return v2.Probe(http_get=v2.HTTPGetAction(path=path), period_seconds=1, timeout_seconds=1, **kw)


def instance_entry(emulator: Any, svc: Any, instance_id: str) -> dict[str, Any] | None:
    for entry in emulator.revision_metrics(svc.name, svc.latest_ready_revision)["instance_list"]:
        if entry["id"] == instance_id:
            return entry  # type: ignore[no-any-return]
    return None


def test_a_hung_instance_fails_its_liveness_probe_and_is_killed_and_replaced(emulator, images):
    svc = create(
        emulator,
        "hung",
        images["v1"],
        scaling=run_v2().RevisionScaling(min_instance_count=1),
        container={"liveness_probe": http_probe(failure_threshold=2)},
    )
    rev = svc.latest_ready_revision

    def probed_twice() -> dict[str, Any] | None:
        ready = [
            i
            for i in emulator.revision_metrics(svc.name, rev)["instance_list"]
            if i["state"] == "ready"
            and i.get("health", {}).get("liveness", {}).get("probes", 0) >= 2
        ]
        return ready[0] if ready else None

    first = poll(probed_twice, timeout=30, what="two liveness probes")
    assert first["health"]["liveness"]["failed"] == 0 and first["serving"]
    slow, in_flight = request_in_flight(emulator, svc)
    os.kill(first["pid"], signal.SIGSTOP)  # hung: its port still accepts, nothing answers
    slow.join(30)
    assert in_flight == [503], "a request in flight on a killed instance is answered 503"

    fresh = replacement_of(emulator, svc, first)
    assert fresh["id"] != first["id"]
    poll(
        lambda: True if not psutil.pid_exists(first["pid"]) else None,
        timeout=10,
        what="the hung instance to be gone",
    )
    failure = emulator.revision_metrics(svc.name, rev)["last_failure"]
    assert failure["instance"] == first["id"]
    assert failure["reason"] == "liveness probe failed 2 times in a row: no answer within 1 s"
    assert revisions_answering(svc.uri, 5) == {short(rev): 5}


def test_an_instance_failing_readiness_gets_no_requests_until_it_passes_again(emulator, images):
    svc = create(
        emulator,
        "wobbly",
        images["v1"],
        scaling=run_v2().RevisionScaling(min_instance_count=2, max_instance_count=2),
        container={"readiness_probe": http_probe(failure_threshold=1)},
    )
    rev = svc.latest_ready_revision

    def two_checked() -> list[dict[str, Any]] | None:
        ready = [
            i
            for i in emulator.revision_metrics(svc.name, rev)["instance_list"]
            if i["state"] == "ready" and i.get("health", {}).get("readiness", {}).get("probes")
        ]
        return ready if len(ready) == 2 else None

    hung, other = poll(two_checked, timeout=30, what="two instances checked for readiness")
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        out = poll(
            lambda: (
                e if (e := instance_entry(emulator, svc, hung["id"])) and not e["serving"] else None
            ),
            timeout=10,
            what="the hung instance out of rotation",
        )
        assert out["health"]["readiness"]["healthy"] is False
        before = instance_entry(emulator, svc, other["id"])
        assert before is not None
        assert [get(svc.uri)[0] for _ in range(8)] == [200] * 8
        after = instance_entry(emulator, svc, other["id"])
        assert after is not None and after["requests"] == before["requests"] + 8
        assert instance_entry(emulator, svc, hung["id"])["requests"] == out["requests"]  # type: ignore[index]
    finally:
        os.kill(hung["pid"], signal.SIGCONT)
    back = poll(
        lambda: e if (e := instance_entry(emulator, svc, hung["id"])) and e["serving"] else None,
        timeout=10,
        what="the instance back in rotation",
    )
    assert back["pid"] == hung["pid"], "readiness never kills"
    assert back["health"]["readiness"]["healthy"] and back["health"]["readiness"]["failed"] >= 1


def test_operations_can_be_waited_for_got_and_listed(emulator, images):
    sc = emulator.services()
    op = sc.create_service(parent=PARENT, service_id="waited", service=service_body(images["v1"]))
    name = op.operation.name
    assert re.fullmatch(rf"{PARENT}/operations/[-0-9a-f]+", name)
    waited = sc.wait_operation(request={"name": name, "timeout": {"seconds": 60}})
    assert waited.done and not waited.HasField("error")
    assert waited.response.type_url == "type.googleapis.com/google.cloud.run.v2.Service"
    assert sc.get_operation(request={"name": name}).done
    listed = sc.list_operations(request={"name": PARENT})
    assert name in [o.name for o in listed.operations]
    sc.delete_operation(request={"name": name})
    from google.api_core import exceptions

    with pytest.raises(exceptions.NotFound):
        sc.get_operation(request={"name": name})


def test_concurrency_scales_out_to_max_then_queues_then_429(knobs, images):
    emulator = knobs
    v2 = run_v2()
    svc = create(
        emulator,
        "busy",
        images["v1"],
        max_instance_request_concurrency=1,
        scaling=v2.RevisionScaling(max_instance_count=2),
    )
    rev = svc.latest_ready_revision
    results: list[tuple[int, str]] = []

    def slow(ms: int) -> None:
        status, revision, _ = get(svc.uri, f"/slow?ms={ms}", timeout=30)
        results.append((status, revision))

    # two slow requests fill both instances (one cold start, < 2.5 s); the next ones queue
    # (1 s queue timeout here) and give up well before a slow one is done
    threads = [threading.Thread(target=slow, args=(4000,)) for _ in range(2)]
    threads += [threading.Thread(target=slow, args=(10,)) for _ in range(2)]
    for t in threads[:2]:
        t.start()
    poll(
        lambda: True if emulator.revision_metrics(svc.name, rev)["in_flight"] == 2 else None,
        timeout=30,
        what="two requests in flight",
    )
    for t in threads[2:]:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 429, 429], "past max instances a request waits 1 s, then 429"
    metrics = emulator.revision_metrics(svc.name, rev)
    assert metrics["rejected"] == 2 and metrics["max_instances"] == 2
    assert max(i["requests"] for i in metrics["instance_list"]) >= 1 and metrics["instances"] == 2
    # scale in once demand is gone (scale_in_delay_s = 2 here)
    poll(
        lambda: True if emulator.revision_metrics(svc.name, rev)["instances"] == 0 else None,
        timeout=30,
        what="scale-in to zero",
    )


def test_injected_admin_faults(emulator, images):
    from google.api_core import exceptions

    sc = emulator.services()
    svc = create(emulator, "flaky", images["v1"])
    emulator.faults(1.0, 503, count=1)
    assert sc.get_service(name=svc.name).name == svc.name, "get retries a 503 by default"
    emulator.faults(1.0, 429, count=1)
    with pytest.raises(exceptions.TooManyRequests) as info:
        sc.get_service(name=svc.name)
    assert info.value.response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert sc.get_service(name=svc.name).name == svc.name
    status, faults = http_json(emulator.url, "GET", "/emulator/v1/faults")
    assert status == 200 and faults["injected"] == 1
    assert get(svc.uri)[0] == 200, "faults touch the admin API only"


def test_metrics_endpoint_shape_and_receipts(emulator, images):
    svc = create(emulator, "watched", images["v1"])
    for _ in range(5):
        assert get(svc.uri)[0] == 200
    metrics = emulator.metrics(svc.name, window_s=60)
    [rev] = metrics["revisions"]
    assert metrics["uri"] == svc.uri and metrics["window_s"] == 60
    assert rev["requests"] == 5 and rev["responses"]["2xx"] == 5 and rev["in_flight"] == 0
    assert rev["latency_ms"]["count"] == 5 and rev["latency_ms"]["p50"] > 0
    [inst] = rev["instance_list"]
    assert inst["state"] == "ready" and inst["requests"] == 5 and inst["rss_mb"] > 10
    status, body = http_json(
        emulator.url, "GET", f"/emulator/v1/{svc.name}/metrics?format=receipts"
    )
    assert status == 200
    kinds = [(r["kind"], r["scope"]) for r in body["receipts"]]
    assert kinds == [("metrics", "revision"), ("metrics", "instance")]
    status, logs = http_json(
        emulator.url, "GET", f"/emulator/v1/{svc.latest_ready_revision}/logs?lines=5"
    )
    assert status == 200 and logs["instances"][0]["lines"]
    assert http_json(emulator.url, "GET", f"/emulator/v1/{PARENT}/services/ghost/metrics")[0] == 404


def test_update_options_allow_missing_validate_only_and_update_mask(emulator, images):
    from google.api_core import exceptions

    v2 = run_v2()
    sc = emulator.services()
    name = f"{PARENT}/services/upsert"
    body = service_body(images["v1"])
    body.name = name

    def update(service: Any, **options: Any) -> Any:
        request = v2.UpdateServiceRequest(service=service, **options)
        return sc.update_service(request=request).result(timeout=90, polling=emulator.POLL)

    with pytest.raises(exceptions.NotFound):
        update(body)
    update(body, allow_missing=True, validate_only=True)
    with pytest.raises(exceptions.NotFound):
        sc.get_service(name=name)  # validated, not created
    svc = update(body, allow_missing=True)
    assert get(svc.uri)[:2] == (200, short(svc.latest_ready_revision))
    first = svc.latest_ready_revision

    svc.template.containers[0].image = images["v2"]
    preview = update(svc, validate_only=True)
    assert preview.generation == 2 and preview.latest_ready_revision == first
    svc.template.containers[0].image = "file:///no/such/release.tar.gz"
    with pytest.raises(exceptions.BadRequest, match="no such file"):
        update(svc, validate_only=True)
    svc.template.containers[0].image = images["v2"]
    svc.description = "described"
    masked = update(svc, update_mask={"paths": ["description"]})
    assert masked.description == "described"
    assert masked.latest_created_revision == first, "the mask left the template out"
    assert [short(r.name) for r in emulator.revisions().list_revisions(parent=name)] == [
        short(first)
    ]
    masked.template.containers[0].image = images["v2"]
    full = update(masked)
    assert full.latest_created_revision != first and full.generation == 3


def test_a_request_waits_for_a_cold_start_longer_than_the_queue_timeout(knobs, images):
    """Cloud Run's semantics: a request an instance is being started for waits for that start;
    the queue timeout (1 s here) is for requests no instance can be had for. The slowstart
    release is ready only after 6 s."""
    emulator = knobs
    svc = create(emulator, "sleepy", images["slowstart"])
    rev = svc.latest_ready_revision
    [deployed] = emulator.revision_metrics(svc.name, rev)["instance_list"]
    poll(
        lambda: True if emulator.revision_metrics(svc.name, rev)["instances"] == 0 else None,
        timeout=30,
        what="scale-in to zero",
    )
    assert get(svc.uri, timeout=60)[:2] == (200, short(rev)), "no 429 while the start progresses"
    metrics = emulator.revision_metrics(svc.name, rev)
    [cold] = metrics["instance_list"]
    assert cold["pid"] != deployed["pid"] and cold["requests"] == 1
    assert 0 < cold["ready_s"] * 1000 <= metrics["latency_ms"]["max"], "it waited for the start"
    assert metrics["latency_ms"]["max"] > 5000 > KNOBS["queue_timeout_s"] * 1000
    assert metrics["requests"] == 1 and metrics["failed"] == metrics["rejected"] == 0


def test_deleting_a_service_lets_its_in_flight_request_finish_first(emulator, images):
    svc = create(
        emulator, "leaving", images["v1"], scaling=run_v2().RevisionScaling(min_instance_count=1)
    )
    [instance] = emulator.revision_metrics(svc.name, svc.latest_ready_revision)["instance_list"]
    slow, statuses = request_in_flight(emulator, svc)
    op = emulator.services().delete_service(name=svc.name)
    assert not op.done(), "the delete waits for the drain"
    assert psutil.pid_exists(instance["pid"])
    assert op.result(timeout=60, polling=emulator.POLL).name == svc.name
    slow.join(30)
    assert statuses == [200], "the request in flight finished on the deleted service"
    assert not emulator.instance_pids()


def test_an_image_name_mapped_in_the_env_file_deploys_its_tarball(
    start_emulator, reference_tarball, tmp_path
):
    from google.api_core import exceptions

    from pipeline.config import resolve

    (tmp_path / "team" / "releases").mkdir(parents=True)
    (tmp_path / "team" / "releases" / "taiea.tar.gz").write_bytes(
        reference_tarball("none").read_bytes()
    )
    env = tmp_path / "team" / "mapped.toml"
    env.write_text(
        f'extends = "{resolve("cloudrun-local").resolve()}"\n'
        '[emulator.images]\n"taiea:1.0.0" = "releases/taiea.tar.gz"\n'
    )
    mapped = start_emulator(str(env))  # its working directory is not the env file's folder
    svc = create(mapped, "mapped", "taiea:1.0.0")
    assert get(svc.uri)[:2] == (200, short(svc.latest_ready_revision))
    revision = mapped.revisions().get_revision(name=svc.latest_ready_revision)
    assert revision.containers[0].image == "taiea:1.0.0"
    with pytest.raises(exceptions.BadRequest, match=r"names no release.*mapped: taiea:1\.0\.0"):
        create(mapped, "unmapped", "taiea:9")


def release_inflight(instance_url: str) -> int:
    """The release's own count of requests it is handling (its /metrics), this one included."""
    status, _revision, body = get(instance_url, "/metrics")
    assert status == 200
    found = re.search(rb"^taiea_http_inflight_requests (\d+)$", body, re.M)
    assert found, body[:200]
    return int(found.group(1))


def test_a_leaving_instance_gets_sigterm_then_sigkill_after_the_grace(start_emulator, images):
    grace = 4.0
    emu = start_emulator(settings={"shutdown_grace_s": grace})
    min_one = run_v2().RevisionScaling(min_instance_count=1)
    exits: dict[str, tuple[str, float]] = {}

    def delete_and_time(service_id: str) -> dict[str, Any]:
        svc = emu.services().get_service(name=f"{PARENT}/services/{service_id}")
        [inst] = emu.revision_metrics(svc.name, svc.latest_ready_revision)["instance_list"]
        began = time.monotonic()
        emu.services().delete_service(name=svc.name).result(timeout=60, polling=emu.POLL)
        stopped = re.search(rf"instance {inst['id']} stopped \(exit (-?\d+)\)", emu.log_tail(200))
        assert stopped, emu.log_tail()
        exits[service_id] = (stopped.group(1), time.monotonic() - began)
        assert not psutil.pid_exists(inst["pid"])
        return inst

    create(emu, "polite", images["v1"], scaling=min_one)
    delete_and_time("polite")
    status, took = exits["polite"]
    assert status == "0" and took < grace, "an idle release exits on SIGTERM, no kill needed"

    svc = create(emu, "stubborn", images["v1"], scaling=min_one)
    [inst] = emu.revision_metrics(svc.name, svc.latest_ready_revision)["instance_list"]
    # a request the router does not know of (straight to the instance) keeps the release busy
    # past SIGTERM: it finishes in-flight work before it exits, for longer than the grace
    before = release_inflight(inst["url"])
    answers: list[Any] = []

    def straight() -> None:
        try:
            answers.append(get(inst["url"], "/slow?ms=30000", timeout=60)[0])
        except OSError as exc:
            answers.append(exc)

    thread = threading.Thread(target=straight)
    thread.start()
    poll(
        lambda: True if release_inflight(inst["url"]) > before else None,
        timeout=10,
        what="the release busy with the slow request",
    )
    delete_and_time("stubborn")
    thread.join(30)
    status, took = exits["stubborn"]
    assert status == "137" and grace <= took < grace + 10, (status, took)
    assert isinstance(answers[0], OSError), "the release was killed mid-request"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
