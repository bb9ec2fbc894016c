"""The emulator's control plane and wire format, without sockets or processes (zero time)."""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

import pytest

from pipeline.emulator import wire
from pipeline.emulator.control import ControlPlane
from pipeline.emulator.images import Image, tarball_of
from pipeline.emulator.records import Limits
from pipeline.emulator.server import Faults, metrics_receipts
from pipeline.emulator.wire import ApiError

PARENT = "projects/p/locations/us-central1"
SVC = f"{PARENT}/services/svc"
IMG1 = "file:///releases/v1.tar.gz"
IMG2 = "file:///releases/v2.tar.gz"
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"


def resolve(ref: str, where: str) -> Image:
    path = tarball_of(ref, {"taiea:1": "/releases/v1.tar.gz"}, where)
    return Image(ref, str(path), "ab" * 32, "tai_autonomics", path.stem)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def plane(**kw: Any) -> ControlPlane:
    ids = itertools.count(1)
    return ControlPlane(
        resolve_image=resolve,
        clock=Clock(),
        new_uid=lambda: f"uid-{next(ids)}",
        rng=random.Random(7),
        **kw,
    )


def template(image: str = IMG1, **extra: Any) -> dict[str, Any]:
    return {"containers": [{"image": image}], **extra}


def settle_data_plane(cp: ControlPlane) -> None:
    """What the data plane reports: every pending revision ready, routes applied."""
    for rev in list(cp.revisions.values()):
        if rev.state == "pending":
            cp.revision_ready(rev.name)
    apply_routes(cp)


def apply_routes(cp: ControlPlane) -> None:
    for plan in cp.plan():
        tags = {tag: f"http://127.0.0.1:{9000 + i}" for i, (tag, _r) in enumerate(plan.tags)}
        cp.set_urls(plan.name, "http://127.0.0.1:8999", tags, plan.route_version)


def created(cp: ControlPlane, **body: Any) -> dict[str, Any]:
    cp.create_service(PARENT, "svc", {"template": template(), **body})
    settle_data_plane(cp)
    return cp.get_service(SVC)


def refused(call: Any, status: str) -> str:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == status, info.value.message
    return info.value.message


# ------------------------------------------------------------------------------------------


def test_create_is_a_long_running_operation_that_finishes_when_the_revision_is_ready():
    cp = plane()
    op = cp.create_service(PARENT, "svc", {"template": template()})
    assert not op.done
    svc = cp.get_service(SVC)
    rev = svc["latestCreatedRevision"]
    assert re.fullmatch(rf"{SVC}/revisions/svc-00001-[a-z]{{3}}", rev)
    assert "latestReadyRevision" not in svc and "trafficStatuses" not in svc
    assert svc["reconciling"] is True
    assert svc["terminalCondition"]["state"] == "CONDITION_RECONCILING"
    assert (svc["generation"], svc["observedGeneration"]) == ("1", "0")
    [plan] = cp.plan()
    assert [r.state for r in plan.revisions] == ["pending"]

    cp.revision_ready(rev)
    assert not op.done, "done only once the data plane routes the new traffic"
    apply_routes(cp)
    assert op.done and op.error is None
    assert op.response is not None
    assert op.response["@type"] == "type.googleapis.com/google.cloud.run.v2.Service"
    svc = cp.get_service(SVC)
    assert svc["latestReadyRevision"] == rev
    assert svc["trafficStatuses"] == [
        {"type": LATEST, "revision": rev.rsplit("/", 1)[1], "percent": 100}
    ]
    assert svc["observedGeneration"] == "1" and svc["reconciling"] is False
    assert svc["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert svc["uri"] == "http://127.0.0.1:8999" and svc["urls"] == [svc["uri"]]


def test_latest_follows_the_latest_ready_revision_not_the_latest_created():
    cp = plane()
    svc = created(cp)
    first = svc["latestReadyRevision"]
    op = cp.update_service(SVC, {**svc, "template": template(IMG2)}, None)
    svc = cp.get_service(SVC)
    second = svc["latestCreatedRevision"]
    assert second.endswith("-00002-" + second[-3:]) and second != first
    assert svc["trafficStatuses"][0]["revision"] == first.rsplit("/", 1)[1]
    assert svc["generation"] == "2" and svc["observedGeneration"] == "1"
    assert not op.done
    cp.revision_ready(second)
    apply_routes(cp)
    assert op.done and op.error is None
    assert cp.get_service(SVC)["trafficStatuses"][0]["revision"] == second.rsplit("/", 1)[1]


def test_a_revision_that_never_gets_ready_fails_its_operation_and_traffic_stays():
    cp = plane()
    svc = created(cp)
    first = svc["latestReadyRevision"].rsplit("/", 1)[1]
    op = cp.update_service(SVC, {**svc, "template": template(IMG2)}, None)
    second = cp.get_service(SVC)["latestCreatedRevision"]
    cp.revision_failed(second, "not ready after 2 s on /ready (last status 503)")
    apply_routes(cp)
    assert op.done and op.error is not None
    assert op.error["code"] == 9  # FAILED_PRECONDITION
    assert "not ready after 2 s" in op.error["message"]
    svc = cp.get_service(SVC)
    assert [t["revision"] for t in svc["trafficStatuses"]] == [first]
    assert svc["terminalCondition"]["state"] == "CONDITION_FAILED"
    assert svc["observedGeneration"] == svc["generation"] == "2"
    ready = cp.get_revision(second)["conditions"][0]
    assert (ready["type"], ready["state"], ready["reason"]) == (
        "Ready",
        "CONDITION_FAILED",
        "REVISION_FAILED",
    )
    assert "last status 503" in ready["message"]


def test_a_tagged_revision_with_no_traffic_gets_a_tag_url_and_the_service_url_stays():
    cp = plane()
    svc = created(cp)
    first = svc["latestReadyRevision"].rsplit("/", 1)[1]
    body = {
        "template": template(IMG2, revision="svc-candidate-1"),
        "traffic": [
            {"type": 2, "revision": first, "percent": 100},
            {"type": 2, "revision": "svc-candidate-1", "tag": "candidate"},
        ],
    }
    op = cp.update_service(SVC, body, ["template", "traffic"])
    assert cp.get_service(SVC)["trafficStatuses"] == svc["trafficStatuses"], "waits for ready"
    settle_data_plane(cp)
    assert op.done and op.error is None
    statuses = cp.get_service(SVC)["trafficStatuses"]
    assert statuses[0] == {"type": REVISION, "revision": first, "percent": 100}
    assert statuses[1]["revision"] == "svc-candidate-1" and statuses[1]["tag"] == "candidate"
    assert statuses[1]["uri"].startswith("http://127.0.0.1:")
    [plan] = cp.plan()
    assert dict(plan.routes) == {f"{SVC}/revisions/{first}": 100}
    assert dict(plan.tags) == {"candidate": f"{SVC}/revisions/svc-candidate-1"}
    active = {r.name.rsplit("/", 1)[1]: r.active for r in plan.revisions}
    assert active == {first: True, "svc-candidate-1": True}


def test_etag_and_generation_change_with_the_spec_and_a_stale_etag_is_aborted():
    cp = plane()
    svc = created(cp)
    rev = svc["latestReadyRevision"].rsplit("/", 1)[1]
    same = cp.update_service(SVC, dict(svc), None)  # sending back what was read: no change
    settle_data_plane(cp)
    assert same.done and cp.get_service(SVC)["etag"] == svc["etag"]
    assert cp.get_service(SVC)["generation"] == "1"
    cp.update_service(SVC, {**svc, "description": "canary"}, None)
    now = cp.get_service(SVC)
    assert now["etag"] != svc["etag"] and now["generation"] == "2"
    assert len(cp.revisions) == 1, "a description is not a template change"
    message = refused(
        lambda: cp.update_service(
            SVC, {**svc, "traffic": [{"revision": rev, "percent": 100}]}, None
        ),
        "ABORTED",
    )
    assert "stale" in message
    refused(lambda: cp.delete_service(SVC, etag=svc["etag"]), "ABORTED")


BAD_TRAFFIC = [
    ("sum below 100", [{"type": 1, "percent": 60}], "add up to 100"),
    ("sum above 100", [{"type": 1, "percent": 60}, {"revision": "R1", "percent": 50}], "= 110"),
    ("percent over 100", [{"type": 1, "percent": 101}], "must be 0 to 100"),
    (
        "negative percent",
        [{"type": 1, "percent": -5}, {"revision": "R1", "percent": 105}],
        "0 to 100",
    ),
    (
        "tag on two targets",
        [{"type": 1, "percent": 100, "tag": "blue"}, {"revision": "R1", "tag": "blue"}],
        "already on traffic[0]",
    ),
    ("unknown revision", [{"revision": "svc-00099-zzz", "percent": 100}], "does not exist"),
    (
        "another service's revision",
        [{"revision": "OTHER", "percent": 100}],
        "belongs to service 'other'",
    ),
    (
        "latest with a revision",
        [{"type": 1, "revision": "R1", "percent": 100}],
        "takes no revision",
    ),
    ("revision without a name", [{"type": 2, "percent": 100}], "needs a revision"),
    ("bad tag", [{"type": 1, "percent": 100, "tag": "Blue_1"}], "lowercase letters"),
    ("bad type", [{"type": 7, "percent": 100}], "not a value of enum"),
    ("unknown field", [{"type": 1, "percent": 100, "weight": 3}], "unknown field 'weight'"),
]


@pytest.mark.parametrize(
    "targets, expect", [(t, e) for _, t, e in BAD_TRAFFIC], ids=[i for i, _, _ in BAD_TRAFFIC]
)
def test_bad_traffic_is_refused_with_what_is_wrong(targets, expect):
    cp = plane()
    svc = created(cp)
    cp.create_service(PARENT, "other", {"template": template()})
    other = cp.get_service(f"{PARENT}/services/other")["latestCreatedRevision"].rsplit("/", 1)[1]
    rev = svc["latestReadyRevision"].rsplit("/", 1)[1]
    fixed = [
        {**t, "revision": {"R1": rev, "OTHER": other}.get(t.get("revision"), t.get("revision"))}
        for t in targets
    ]
    fixed = [{k: v for k, v in t.items() if v is not None} for t in fixed]
    before = cp.get_service(SVC)
    message = refused(
        lambda: cp.update_service(SVC, {**svc, "traffic": fixed}, ["traffic"]), "INVALID_ARGUMENT"
    )
    assert expect in message
    assert cp.get_service(SVC) == before, "a refused call changes nothing"


BAD_TEMPLATES = [
    ("no containers", {"containers": []}, "exactly one container, got 0"),
    ("two containers", {"containers": [{"image": IMG1}, {"image": IMG2}]}, "got 2"),
    ("no image", {"containers": [{"name": "app"}]}, "image is required"),
    ("image names no release", template("gcr.io/p/app:1"), "names no release"),
    ("relative file image", template("file://releases/v1.tar.gz"), "local path"),
    (
        "PORT is reserved",
        template(IMG1) | {"containers": [{"image": IMG1, "env": [{"name": "PORT", "value": "1"}]}]},
        "reserved",
    ),
    (
        "secret env",
        {"containers": [{"image": IMG1, "env": [{"name": "K", "valueSource": {}}]}]},
        "secrets",
    ),
    (
        "env twice",
        {"containers": [{"image": IMG1, "env": [{"name": "A"}, {"name": "A"}]}]},
        "set twice",
    ),
    ("min over max", template(scaling={"minInstanceCount": 3, "maxInstanceCount": 2}), "more than"),
    ("timeout too long", template(timeout="7200s"), "1s to 3600s"),
    ("bad timeout", template(timeout="5 minutes"), "not a duration"),
    ("concurrency too high", template(maxInstanceRequestConcurrency=5000), "0 to 1000"),
    ("revision not prefixed", template(revision="blue-1"), "must start with the service name"),
    ("unknown template field", template(gpu=True), "unknown field 'gpu'"),
    ("command", {"containers": [{"image": IMG1, "command": ["sh"]}]}, "not supported"),
    (
        "grpc probe",
        {"containers": [{"image": IMG1, "startupProbe": {"grpc": {"port": 1}}}]},
        "gRPC",
    ),
    (
        "grpc liveness probe",
        {"containers": [{"image": IMG1, "livenessProbe": {"grpc": {"port": 1}}}]},
        "livenessProbe.grpc: gRPC probes are not supported",
    ),
    (
        "cpu limit",
        {"containers": [{"image": IMG1, "resources": {"limits": {"cpu": "two"}}}]},
        'resources.limits.cpu: expected cores like "2" or "500m", got \'two\'',
    ),
    (
        "memory limit",
        {"containers": [{"image": IMG1, "resources": {"limits": {"memory": "512 MB"}}}]},
        "resources.limits.memory: expected a size like \"512Mi\", got '512 MB'",
    ),
    (
        "liveness probe without a check",
        {"containers": [{"image": IMG1, "livenessProbe": {"periodSeconds": 5}}]},
        "livenessProbe: set exactly one of httpGet and tcpSocket",
    ),
    (
        "readiness probe path",
        {"containers": [{"image": IMG1, "readinessProbe": {"httpGet": {"path": "ready"}}}]},
        "readinessProbe.httpGet.path must start with /",
    ),
    (
        "probe timeout over its period",
        {
            "containers": [
                {
                    "image": IMG1,
                    "livenessProbe": {
                        "httpGet": {"path": "/health"},
                        "periodSeconds": 2,
                        "timeoutSeconds": 5,
                    },
                }
            ]
        },
        "livenessProbe.timeoutSeconds (5) must not exceed periodSeconds (2)",
    ),
]


@pytest.mark.parametrize(
    "tpl, expect", [(t, e) for _, t, e in BAD_TEMPLATES], ids=[i for i, _, _ in BAD_TEMPLATES]
)
def test_bad_templates_are_refused_on_create(tpl, expect):
    cp = plane()
    message = refused(
        lambda: cp.create_service(PARENT, "svc", {"template": tpl}), "INVALID_ARGUMENT"
    )
    assert expect in message
    assert not cp.services and not cp.revisions


@pytest.mark.parametrize(
    "service_id",
    ["", "Svc", "1svc", "svc-", "svc_1", "s" * 50],
    ids=["empty", "upper", "digit first", "hyphen last", "underscore", "too long"],
)
def test_bad_service_ids_are_refused(service_id):
    cp = plane()
    refused(
        lambda: cp.create_service(PARENT, service_id, {"template": template()}), "INVALID_ARGUMENT"
    )


def test_a_service_name_taken_is_already_exists():
    cp = plane()
    created(cp)
    refused(lambda: cp.create_service(PARENT, "svc", {"template": template()}), "ALREADY_EXISTS")


def test_update_mask_changes_only_the_named_fields():
    cp = plane()
    svc = created(cp, template=template(scaling={"minInstanceCount": 2, "maxInstanceCount": 4}))
    rev = svc["latestReadyRevision"].rsplit("/", 1)[1]
    # the body has a new image, but only traffic is in the mask: no new revision
    body = {
        "template": template(IMG2),
        "traffic": [{"revision": rev, "percent": 100, "tag": "stable"}],
    }
    cp.update_service(SVC, body, ["traffic"])
    settle_data_plane(cp)
    now = cp.get_service(SVC)
    assert len(cp.revisions) == 1
    assert now["template"]["containers"][0]["image"] == IMG1
    assert now["trafficStatuses"][0]["tag"] == "stable"
    # a masked field the body leaves out is cleared
    cp.update_service(
        SVC,
        {"template": {"scaling": {"maxInstanceCount": 4}}},
        ["template.scaling.minInstanceCount"],
    )
    assert "minInstanceCount" not in cp.get_service(SVC)["template"]["scaling"]
    assert len(cp.revisions) == 2, "a scaling change is a template change: a new revision"
    refused(lambda: cp.update_service(SVC, body, ["colour"]), "INVALID_ARGUMENT")


def test_allow_missing_creates_and_validate_only_changes_nothing():
    cp = plane()
    refused(lambda: cp.update_service(SVC, {"template": template()}, None), "NOT_FOUND")
    preview = cp.update_service(
        SVC, {"template": template()}, None, allow_missing=True, validate_only=True
    )
    assert preview.done and preview.response is not None and not cp.services
    op = cp.update_service(SVC, {"template": template()}, None, allow_missing=True)
    assert SVC in cp.services and not op.done
    settle_data_plane(cp)
    assert op.done and op.error is None


def test_a_revision_with_traffic_or_a_tag_cannot_be_deleted():
    cp = plane()
    svc = created(cp)
    first = svc["latestReadyRevision"]
    refused(lambda: cp.delete_revision(first), "FAILED_PRECONDITION")
    body = {
        "template": template(IMG2),
        "traffic": [
            {"type": 1, "percent": 100},
            {"revision": first.rsplit("/", 1)[1], "tag": "old"},
        ],
    }
    cp.update_service(SVC, body, None)
    settle_data_plane(cp)
    message = refused(lambda: cp.delete_revision(first), "FAILED_PRECONDITION")
    assert "tag 'old'" in message
    cp.update_service(SVC, {"template": template(IMG2)}, None)  # LATEST 100 only
    settle_data_plane(cp)
    op = cp.delete_revision(first)
    assert not op.done and first not in cp.revisions
    refused(lambda: cp.get_revision(first), "NOT_FOUND")
    cp.stopped(first)  # the data plane stopped its instances
    assert op.done and op.response is not None
    assert op.response["@type"] == "type.googleapis.com/google.cloud.run.v2.Revision"


def test_delete_service_finishes_when_its_instances_stopped():
    cp = plane()
    created(cp)
    op = cp.delete_service(SVC)
    assert not op.done and not cp.plan() and not cp.revisions
    refused(lambda: cp.get_service(SVC), "NOT_FOUND")
    cp.stopped(SVC)
    assert op.done and op.response is not None and "deleteTime" in op.response


def test_list_services_pages():
    cp = plane()
    for name in ("c", "a", "b"):
        cp.create_service(PARENT, name, {"template": template()})
    page = cp.list_services(PARENT, page_size=2)
    assert [s["name"].rsplit("/", 1)[1] for s in page["services"]] == ["a", "b"]
    rest = cp.list_services(PARENT, page_size=2, page_token=page["nextPageToken"])
    assert [s["name"].rsplit("/", 1)[1] for s in rest["services"]] == ["c"]
    assert "nextPageToken" not in rest
    assert cp.list_services("projects/p/locations/europe-west1") == {"services": []}
    refused(lambda: cp.list_services(PARENT, page_token="xyz"), "INVALID_ARGUMENT")


def test_service_level_scaling_is_shared_by_traffic_and_capped_by_the_machine():
    cp = plane(limits=Limits(max_instances_per_revision=5))
    svc = created(cp, scaling={"minInstanceCount": 4})
    first = svc["latestReadyRevision"].rsplit("/", 1)[1]
    cp.update_service(SVC, {**cp.get_service(SVC), "template": template(IMG2)}, None)
    settle_data_plane(cp)
    second = cp.get_service(SVC)["latestReadyRevision"].rsplit("/", 1)[1]
    traffic = [{"revision": first, "percent": 25}, {"revision": second, "percent": 75}]
    cp.update_service(SVC, {"traffic": traffic}, ["traffic"])
    apply_routes(cp)
    bounds = {
        r.name.rsplit("/", 1)[1]: (r.min_instances, r.max_instances) for r in cp.plan()[0].revisions
    }
    assert bounds == {first: (1, 5), second: (3, 5)}
    status = cp.get_revision(f"{SVC}/revisions/{second}")
    assert status["scalingStatus"] == {"desiredMinInstanceCount": 3}


def test_state_survives_a_snapshot_and_restore():
    cp = plane()
    created(cp)
    again = plane()
    again.restore(cp.snapshot())
    assert again.get_service(SVC) == cp.get_service(SVC)
    assert again.list_revisions(SVC) == cp.list_revisions(SVC)


# ------------------------------------------------------------------------------------------ wire


@pytest.mark.parametrize(
    "given, names, ints",
    [
        (
            {"traffic": [{"type": 2, "revision": "r"}]},
            {"traffic": [{"type": REVISION, "revision": "r"}]},
            {"traffic": [{"type": 2, "revision": "r"}]},
        ),
        (
            {"terminalCondition": {"state": "CONDITION_FAILED", "severity": 1}},
            {"terminalCondition": {"state": "CONDITION_FAILED", "severity": "ERROR"}},
            {"terminalCondition": {"state": 3, "severity": 1}},
        ),
        (
            {"template": {"executionEnvironment": 2, "containers": []}, "launchStage": "GA"},
            {
                "template": {
                    "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN2",
                    "containers": [],
                },
                "launchStage": "GA",
            },
            {"template": {"executionEnvironment": 2, "containers": []}, "launchStage": 4},
        ),
    ],
    ids=["traffic type", "condition", "nested template"],
)
def test_enums_arrive_as_numbers_or_names_and_go_back_as_asked(given, names, ints):
    assert wire.enums_to_names(given) == names
    assert wire.render(names, int_enums=True) == ints
    assert wire.render(names, int_enums=False) == names


@pytest.mark.parametrize(
    "text, seconds",
    [("300s", 300.0), ("1.5s", 1.5), ("0.000000001s", 1e-9), ({"seconds": 2, "nanos": 5e8}, 2.5)],
    ids=["whole", "fraction", "nanos", "object"],
)
def test_durations(text, seconds):
    assert wire.duration_s(text, "timeout") == pytest.approx(seconds)


def test_field_masks_accept_snake_and_camel_case():
    assert wire.field_mask("template.scaling.min_instance_count,traffic") == [
        "template.scaling.minInstanceCount",
        "traffic",
    ]
    assert wire.field_mask(None) is None


def test_error_shape_is_googles():
    error = ApiError("FAILED_PRECONDITION", "no")
    assert error.body() == {
        "error": {"code": 400, "message": "no", "status": "FAILED_PRECONDITION"}
    }
    assert error.rpc_status() == {"code": 9, "message": "no"}
    assert ApiError("ABORTED", "x").http == 409


@pytest.mark.parametrize(
    "rate, count, calls, failing",
    [(0.25, 0, 8, [4, 8]), (1.0, 2, 4, [1, 2]), (0.5, 0, 4, [2, 4]), (0.0, 0, 3, [])],
    ids=["quarter", "all, twice", "half", "off"],
)
def test_admin_fault_injection_is_deterministic(rate, count, calls, failing):
    faults = Faults(rate, 429, count)
    hits = [n for n in range(1, calls + 1) if faults.check() is not None]
    assert hits == failing
    assert faults.as_json()["injected"] == len(failing)


def test_metrics_become_receipts_one_per_revision_and_per_instance():
    metrics = {
        "service": SVC,
        "window_s": 10.0,
        "revisions": [
            {
                "revision": "svc-00001-abc",
                "percent": 100,
                "tags": [],
                "instances": 1,
                "in_flight": 2,
                "queued": 0,
                "requests": 10,
                "failed": 0,
                "rejected": 0,
                "latency_ms": {
                    "count": 10,
                    "avg": 1.0,
                    "p50": 1.0,
                    "p95": 2.0,
                    "p99": 3.0,
                    "max": 4.0,
                },
                "instance_list": [
                    {
                        "id": "i1",
                        "pid": 5,
                        "state": "ready",
                        "in_flight": 2,
                        "requests": 10,
                        "rss_mb": 60.0,
                        "cpu_percent": 3.0,
                    }
                ],
            }
        ],
    }
    revision, instance = metrics_receipts(metrics)
    assert revision["kind"] == instance["kind"] == "metrics"
    assert (revision["scope"], revision["instances"], revision["p95_ms"]) == ("revision", 1, 2.0)
    assert (instance["scope"], instance["rss_mb"], instance["instance"]) == ("instance", 60.0, "i1")
    assert "instances" not in instance, "the gate's `instances` metric counts revisions only"


@pytest.mark.parametrize(
    ("limits", "cores", "memory"),
    [
        (None, 1.0, 512 * 2**20),
        ({"cpu": "500m", "memory": "1Gi"}, 0.5, 2**30),
        ({"cpu": "2", "memory": "256M"}, 2.0, 256 * 10**6),
        ({"cpu": "0.25"}, 0.25, 512 * 2**20),
    ],
    ids=["cloud-run-defaults", "millicores-gibibytes", "cores-megabytes", "fractional-cores"],
)
def test_the_limits_monitorings_utilizations_are_fractions_of(limits, cores, memory):
    from pipeline.emulator.validation import limits_of

    container = {"image": IMG1} | ({"resources": {"limits": limits}} if limits else {})
    assert limits_of(container) == (cores, memory)
