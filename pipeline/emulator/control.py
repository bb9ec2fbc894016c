"""The control plane: services, revisions, traffic and long-running operations. Pure state.

No sockets, no processes, no files: every call validates a request, changes this state and says
what the data plane should run (`plan()`); the data plane reports back (`revision_ready`,
`revision_failed`, `set_urls`, `service_stopped`, `revision_stopped`). Clock, uid and random
letters are injected, so everything here is unit-testable in zero time.

Semantics follow Cloud Run Admin API v2 closely enough that the official client cannot tell:
a template change creates a revision `<service>-<5 digits>-<3 letters>`; `generation` counts
spec changes and `observedGeneration` catches up when the change has settled; `etag` changes
with every spec change and a stale one is refused (ABORTED); traffic to `LATEST` follows the
latest *ready* revision; a route is switched only once every revision it names is ready, so a
revision that never gets ready fails its operation and the service keeps serving what it served.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
import string
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.health import LIVENESS, READINESS, HealthCheck
from pipeline.emulator.images import Image
from pipeline.emulator.wire import (
    ApiError,
    as_int,
    duration,
    duration_s,
    enum_value,
    enums_to_names,
    invalid,
    not_found,
    timestamp,
)

LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
DEFAULT_CONCURRENCY = 80
DEFAULT_MAX_INSTANCES = 100
DEFAULT_TIMEOUT_S = 300.0
MAX_OPERATIONS = 500
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
TYPE_SERVICE = "type.googleapis.com/google.cloud.run.v2.Service"
TYPE_REVISION = "type.googleapis.com/google.cloud.run.v2.Revision"

_PROJECT = re.compile(r"^[a-z0-9][-a-z0-9.:]{0,62}$")
_LOCATION = re.compile(r"^[a-z][-a-z0-9]{0,62}$")
_SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
_REVISION_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Service fields a client may write; everything else in a body is output only (and ignored).
WRITABLE = (
    "description",
    "labels",
    "annotations",
    "client",
    "clientVersion",
    "ingress",
    "launchStage",
    "binaryAuthorization",
    "template",
    "traffic",
    "scaling",
    "invokerIamDisabled",
    "defaultUriDisabled",
    "customAudiences",
    "iapEnabled",
    "threatDetectionEnabled",
    "multiRegionSettings",
    "buildConfig",
)
OUTPUT_ONLY = (
    "name",
    "uid",
    "generation",
    "createTime",
    "updateTime",
    "deleteTime",
    "expireTime",
    "creator",
    "lastModifier",
    "urls",
    "observedGeneration",
    "terminalCondition",
    "conditions",
    "latestReadyRevision",
    "latestCreatedRevision",
    "trafficStatuses",
    "uri",
    "satisfiesPzs",
    "reconciling",
    "etag",
)
_TEMPLATE_FIELDS = {
    "revision",
    "labels",
    "annotations",
    "scaling",
    "vpcAccess",
    "timeout",
    "serviceAccount",
    "containers",
    "volumes",
    "executionEnvironment",
    "encryptionKey",
    "maxInstanceRequestConcurrency",
    "serviceMesh",
    "encryptionKeyRevocationAction",
    "encryptionKeyShutdownDuration",
    "sessionAffinity",
    "healthCheckDisabled",
    "nodeSelector",
    "gpuZonalRedundancyDisabled",
}
_CONTAINER_FIELDS = {
    "name",
    "image",
    "sourceCode",
    "command",
    "args",
    "env",
    "resources",
    "ports",
    "volumeMounts",
    "workingDir",
    "livenessProbe",
    "startupProbe",
    "readinessProbe",
    "dependsOn",
    "baseImageUri",
    "buildInfo",
}


# --------------------------------------------------------------------------------------------
# names


def parent_of(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def check_parent(project: str, location: str) -> str:
    if not _PROJECT.match(project):
        raise invalid(f"bad project {project!r} in projects/{project}/locations/{location}")
    if not _LOCATION.match(location):
        raise invalid(f"bad location {location!r} in projects/{project}/locations/{location}")
    return parent_of(project, location)


def check_service_id(service_id: str, where: str = "serviceId") -> str:
    if not service_id:
        raise invalid(f"{where} is required")
    if not _SERVICE_ID.match(service_id):
        raise invalid(
            f"{where} {service_id!r}: use 1-49 lowercase letters, digits or hyphens, "
            "starting with a letter and not ending with a hyphen"
        )
    return service_id


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# records


@dataclass
class RevisionRecord:
    name: str  # full resource name
    service: str  # full service name
    uid: str
    number: int
    template: dict[str, Any]  # the RevisionTemplate it was made from (enum names)
    image: Image
    create_time: float
    update_time: float
    state: str = "pending"  # pending | ready | failed
    message: str = ""
    ready_time: float | None = None
    instances_at_save: int = 0  # how many ran when the state was last saved (restored on restart)

    @property
    def id(self) -> str:
        return short(self.name)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.service,
            "uid": self.uid,
            "number": self.number,
            "template": self.template,
            "image": self.image.as_json(),
            "create_time": self.create_time,
            "update_time": self.update_time,
            "state": self.state,
            "message": self.message,
            "ready_time": self.ready_time,
            "instances_at_save": self.instances_at_save,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RevisionRecord:
        fields = dict(data)
        fields["image"] = Image.from_json(fields["image"])
        return cls(**fields)


@dataclass
class ServiceRecord:
    name: str
    uid: str
    spec: dict[str, Any]  # the writable fields (enum names), defaults filled in
    create_time: float
    update_time: float
    generation: int = 1
    observed_generation: int = 0
    latest_created: str | None = None  # full revision names
    latest_ready: str | None = None
    serving: list[dict[str, Any]] = field(default_factory=list)  # resolved targets in effect
    route_state: str = "pending"  # ready | pending | failed
    route_message: str = ""
    revision_counter: int = 0
    uri: str = ""
    tag_uris: dict[str, str] = field(default_factory=dict)
    route_version: int = 0  # bumped whenever `serving` changes
    applied_version: int = -1  # the route_version the data plane last put in place

    @property
    def id(self) -> str:
        return short(self.name)

    @property
    def etag(self) -> str:
        digest = hashlib.sha256(f"{self.uid}:{self.generation}".encode()).hexdigest()
        return f"W/{digest[:24]}"

    def as_json(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceRecord:
        return cls(**dict(data))


@dataclass
class OperationRecord:
    name: str
    kind: str  # create | update | delete_service | delete_revision
    target: str  # service or revision name
    generation: int = 0
    revision: str | None = None  # the revision the call created
    done: bool = False
    error: dict[str, Any] | None = None  # google.rpc.Status
    response: dict[str, Any] | None = None  # the resource (enum names), with its @type
    create_time: float = 0.0
    end_time: float | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OperationRecord:
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------
# what the data plane runs


@dataclass(frozen=True)
class RevisionPlan:
    name: str  # full revision name
    service: str
    image: Image
    env: tuple[tuple[str, str], ...]
    concurrency: int
    min_instances: int
    max_instances: int
    timeout_s: float
    ready_path: str | None  # None: the env file's ready path (with its fallback)
    ready_timeout_s: float | None  # None: the env file's instance_ready_timeout_s
    state: str  # pending (start one to check it) | ready | failed
    active: bool  # serving traffic or a tag
    restore_instances: int = 0
    liveness: HealthCheck | None = None  # failing: the instance is killed and replaced
    readiness: HealthCheck | None = None  # failing: the instance gets no new requests


@dataclass(frozen=True)
class ServicePlan:
    name: str
    uri: str  # the URL it had (a restart binds the same port when it can)
    tag_uris: tuple[tuple[str, str], ...]
    route_version: int
    routes: tuple[tuple[str, int], ...]  # (full revision name, percent > 0)
    tags: tuple[tuple[str, str], ...]  # (tag, full revision name)
    revisions: tuple[RevisionPlan, ...]


# --------------------------------------------------------------------------------------------


@dataclass
class Limits:
    """Emulator-wide limits from the env file."""

    max_instances_per_revision: int = 20


Listener = Callable[[], None]


class ControlPlane:
    def __init__(
        self,
        *,
        resolve_image: Callable[[str, str], Image],
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        new_uid: Callable[[], str] = lambda: str(uuid.uuid4()),
        rng: random.Random | None = None,
        instance_counts: Callable[[str], Mapping[str, int]] | None = None,
        on_change: Listener | None = None,
    ):
        self.resolve_image = resolve_image
        self.limits = limits or Limits()
        self.clock = clock
        self.new_uid = new_uid
        self.rng = rng or random.Random()
        self.instance_counts = instance_counts or (lambda name: {})
        self.on_change = on_change or (lambda: None)
        self.services: dict[str, ServiceRecord] = {}
        self.revisions: dict[str, RevisionRecord] = {}
        self.operations: dict[str, OperationRecord] = {}
        self.deleting: dict[str, str] = {}  # service or revision name → operation name
        self.base_url = ""  # the admin endpoint (for logUri)

    # ---------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "services": [s.as_json() for s in self.services.values()],
            "revisions": [r.as_json() for r in self.revisions.values()],
            "operations": [o.as_json() for o in self.operations.values()],
            "deleting": dict(self.deleting),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.services = {s["name"]: ServiceRecord.from_json(s) for s in data.get("services", [])}
        self.revisions = {r["name"]: RevisionRecord.from_json(r) for r in data.get("revisions", [])}
        self.operations = {
            o["name"]: OperationRecord.from_json(o) for o in data.get("operations", [])
        }
        self.deleting = dict(data.get("deleting", {}))
        for rev in self.revisions.values():
            if rev.state == "pending":  # its check restarts with the data plane
                rev.update_time = self.clock()

    # ---------------------------------------------------------------- lookups

    def _service(self, name: str) -> ServiceRecord:
        svc = self.services.get(name)
        if svc is None:
            raise not_found(f"service {name!r} not found")
        return svc

    def _revision(self, name: str) -> RevisionRecord:
        rev = self.revisions.get(name)
        if rev is None:
            raise not_found(f"revision {name!r} not found")
        return rev

    def revisions_of(self, service: str) -> list[RevisionRecord]:
        return [r for r in self.revisions.values() if r.service == service]

    # ---------------------------------------------------------------- services: calls

    def create_service(
        self, parent: str, service_id: str, body: Mapping[str, Any], validate_only: bool = False
    ) -> OperationRecord:
        check_service_id(service_id)
        name = f"{parent}/services/{service_id}"
        if name in self.services or name in self.deleting:
            raise ApiError("ALREADY_EXISTS", f"service {name!r} already exists")
        given = body.get("name")
        if given and given not in (name, service_id):
            raise invalid(f"service.name {given!r} does not match serviceId {service_id!r}")
        spec = self._spec_from(body, None)
        now = self.clock()
        svc = ServiceRecord(
            name=name, uid=self.new_uid(), spec=spec, create_time=now, update_time=now
        )
        template = self._check_template(svc, spec["template"])
        self._check_traffic(svc, spec["traffic"], template.get("revision"))
        if validate_only:
            return self._preview(svc, "create")
        self.services[name] = svc
        op = self._new_operation("create", name, svc.generation)
        op.revision = self._new_revision(svc, template).name
        self._reconcile_service(svc)
        self._settle()
        return op

    def update_service(
        self,
        name: str,
        body: Mapping[str, Any],
        update_mask: list[str] | None,
        allow_missing: bool = False,
        validate_only: bool = False,
    ) -> OperationRecord:
        given = body.get("name")
        if given and given != name:
            raise invalid(f"service.name {given!r} does not match the URL's {name!r}")
        svc = self.services.get(name)
        if svc is None:
            if not allow_missing:
                raise not_found(f"service {name!r} not found")
            parent, _, service_id = name.rpartition("/services/")
            op = self.create_service(parent, service_id, body, validate_only)
            op.kind = "update"
            return op
        etag = body.get("etag")
        if etag and etag != svc.etag:
            raise ApiError(
                "ABORTED",
                f"etag {etag!r} is stale: service {name!r} is at {svc.etag!r}; "
                "read it again and re-apply the change",
            )
        spec = self._spec_from(body, svc.spec, update_mask)
        trial = copy.deepcopy(svc)
        trial.spec = spec
        template = self._check_template(trial, spec["template"])
        changed_template = _normal(spec["template"]) != _normal(svc.spec["template"])
        new_rev_name = None
        if changed_template:
            wanted = template.get("revision")
            if wanted:
                full = f"{name}/revisions/{wanted}"
                existing = self.revisions.get(full)
                if existing is not None:
                    if _normal(existing.template) != _normal(template):
                        raise ApiError(
                            "ALREADY_EXISTS",
                            f"revision {wanted!r} already exists with a different template: "
                            "name the new revision differently or leave template.revision out",
                        )
                    changed_template = False
            new_rev_name = wanted if changed_template else None
        self._check_traffic(trial, spec["traffic"], new_rev_name)
        if validate_only:
            trial.generation += 1 if spec != svc.spec else 0
            return self._preview(trial, "update")
        op = self._new_operation("update", name, svc.generation)
        if spec != svc.spec:
            svc.spec = spec
            svc.generation += 1
            svc.update_time = self.clock()
            op.generation = svc.generation
        if changed_template:
            op.revision = self._new_revision(svc, template).name
        self._reconcile_service(svc)
        self._settle()
        return op

    def delete_service(
        self, name: str, etag: str | None = None, validate_only: bool = False
    ) -> OperationRecord:
        svc = self._service(name)
        if etag and etag != svc.etag:
            raise ApiError(
                "ABORTED", f"etag {etag!r} is stale: service {name!r} is at {svc.etag!r}"
            )
        response = self.render_service(svc)
        response["deleteTime"] = timestamp(self.clock())
        if validate_only:
            return self._done_operation("delete_service", name, TYPE_SERVICE, response)
        op = self._new_operation("delete_service", name, svc.generation)
        op.response = {"@type": TYPE_SERVICE, **response}
        del self.services[name]
        for rev in self.revisions_of(name):
            del self.revisions[rev.name]
        self.deleting[name] = op.name
        self._changed()
        return op

    def get_service(self, name: str) -> dict[str, Any]:
        return self.render_service(self._service(name))

    def list_services(
        self, parent: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        names = sorted(n for n in self.services if n.startswith(parent + "/services/"))
        items, token = _page(names, page_size, page_token)
        out: dict[str, Any] = {"services": [self.render_service(self.services[n]) for n in items]}
        if token:
            out["nextPageToken"] = token
        return out

    # ---------------------------------------------------------------- revisions: calls

    def get_revision(self, name: str) -> dict[str, Any]:
        return self.render_revision(self._revision(name))

    def list_revisions(
        self, service: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        if service not in self.services:
            raise not_found(f"service {service!r} not found")
        revs = sorted(self.revisions_of(service), key=lambda r: -r.number)
        names = [r.name for r in revs]
        items, token = _page(names, page_size, page_token, ordered=True)
        out: dict[str, Any] = {
            "revisions": [self.render_revision(self.revisions[n]) for n in items]
        }
        if token:
            out["nextPageToken"] = token
        return out

    def delete_revision(
        self, name: str, etag: str | None = None, validate_only: bool = False
    ) -> OperationRecord:
        rev = self._revision(name)
        if etag and etag != self._revision_etag(rev):
            raise ApiError("ABORTED", f"etag {etag!r} is stale for revision {name!r}")
        svc = self._service(rev.service)
        why = self._traffic_holds(svc, rev)
        if why:
            raise ApiError(
                "FAILED_PRECONDITION",
                f"revision {rev.id!r} cannot be deleted: {why}; move its traffic and tags "
                "to another revision first",
            )
        response = self.render_revision(rev)
        response["deleteTime"] = timestamp(self.clock())
        if validate_only:
            return self._done_operation("delete_revision", name, TYPE_REVISION, response)
        op = self._new_operation("delete_revision", name, 0)
        op.response = {"@type": TYPE_REVISION, **response}
        del self.revisions[name]
        if svc.latest_ready == name:
            ready = [r for r in self.revisions_of(svc.name) if r.state == "ready"]
            svc.latest_ready = max(ready, key=lambda r: r.number).name if ready else None
        self.deleting[name] = op.name
        self._changed()
        return op

    def _traffic_holds(self, svc: ServiceRecord, rev: RevisionRecord) -> str:
        for where, targets in (("serves", svc.serving), ("is named in", svc.spec["traffic"])):
            for t in targets:
                named = t.get("revision") or (
                    short(svc.latest_ready or "") if t.get("type") == LATEST else ""
                )
                if named == rev.id and (t.get("percent", 0) > 0 or t.get("tag")):
                    share = f"{t.get('percent', 0)} %"
                    tag = f" with tag {t['tag']!r}" if t.get("tag") else ""
                    return f"it {where} the service's traffic ({share}{tag})"
        return ""

    # ---------------------------------------------------------------- operations: calls

    def get_operation(self, name: str) -> OperationRecord:
        op = self.operations.get(name)
        if op is None:
            raise not_found(f"operation {name!r} not found")
        return op

    def list_operations(self, parent: str) -> list[OperationRecord]:
        return [o for o in self.operations.values() if o.name.startswith(parent + "/")]

    def delete_operation(self, name: str) -> None:
        self.get_operation(name)
        del self.operations[name]
        self._changed()

    # ---------------------------------------------------------------- reports from the data plane

    def revision_ready(self, name: str) -> None:
        rev = self.revisions.get(name)
        if rev is None or rev.state == "ready":
            return
        rev.state, rev.message = "ready", ""
        rev.ready_time = rev.update_time = self.clock()
        svc = self.services.get(rev.service)
        if svc is not None:
            current = self.revisions.get(svc.latest_ready or "")
            if current is None or current.number < rev.number:
                svc.latest_ready = name
            self._reconcile_service(svc)
        self._settle()

    def revision_failed(self, name: str, message: str) -> None:
        rev = self.revisions.get(name)
        if rev is None or rev.state != "pending":
            return
        rev.state, rev.message = "failed", message
        rev.update_time = self.clock()
        svc = self.services.get(rev.service)
        if svc is not None:
            self._reconcile_service(svc)
        self._settle()

    def set_urls(
        self, service: str, uri: str, tag_uris: Mapping[str, str], route_version: int
    ) -> None:
        """The data plane routes `route_version` of the service's traffic on these URLs."""
        svc = self.services.get(service)
        if svc is None:
            return
        if svc.uri != uri or svc.tag_uris != dict(tag_uris) or svc.applied_version != route_version:
            svc.uri, svc.tag_uris = uri, dict(tag_uris)
            svc.applied_version = route_version
            self._settle()

    def stopped(self, name: str) -> None:
        """Every instance of a deleted service or revision has stopped."""
        op_name = self.deleting.pop(name, None)
        if op_name is None:
            return
        op = self.operations.get(op_name)
        if op is not None and not op.done:
            op.done, op.end_time = True, self.clock()
        self._changed()

    def note_instances(self, counts: Mapping[str, int]) -> None:
        """How many instances each revision runs (kept for a restart)."""
        for name, count in counts.items():
            rev = self.revisions.get(name)
            if rev is not None:
                rev.instances_at_save = count

    # ---------------------------------------------------------------- the plan

    def plan(self) -> list[ServicePlan]:
        plans = []
        for svc in self.services.values():
            shares: dict[str, int] = {}
            tags: dict[str, str] = {}
            for t in svc.serving:
                full = f"{svc.name}/revisions/{t['revision']}"
                if t.get("percent", 0) > 0:
                    shares[full] = shares.get(full, 0) + t["percent"]
                if t.get("tag"):
                    tags[t["tag"]] = full
            revisions = []
            for rev in self.revisions_of(svc.name):
                active = rev.name in shares or rev.name in tags.values()
                lo, hi = self._instance_bounds(svc, rev, shares.get(rev.name, 0))
                tpl = rev.template
                container = tpl["containers"][0]
                probe = container.get("startupProbe") or {}
                revisions.append(
                    RevisionPlan(
                        name=rev.name,
                        service=svc.name,
                        image=rev.image,
                        env=self._env(svc, rev),
                        concurrency=_concurrency(tpl),
                        min_instances=lo if active else 0,
                        max_instances=hi,
                        timeout_s=duration_s(tpl.get("timeout", "300s"), "template.timeout"),
                        ready_path=(probe.get("httpGet") or {}).get("path") or None,
                        ready_timeout_s=_probe_deadline(probe),
                        state=rev.state,
                        active=active,
                        restore_instances=rev.instances_at_save if rev.state == "ready" else 0,
                        liveness=HealthCheck.parse(LIVENESS, container.get("livenessProbe")),
                        readiness=HealthCheck.parse(READINESS, container.get("readinessProbe")),
                    )
                )
            plans.append(
                ServicePlan(
                    name=svc.name,
                    uri=svc.uri,
                    tag_uris=tuple(sorted(svc.tag_uris.items())),
                    route_version=svc.route_version,
                    routes=tuple(sorted(shares.items())),
                    tags=tuple(sorted(tags.items())),
                    revisions=tuple(revisions),
                )
            )
        return plans

    def deleting_names(self) -> list[str]:
        return list(self.deleting)

    def _instance_bounds(
        self, svc: ServiceRecord, rev: RevisionRecord, percent: int
    ) -> tuple[int, int]:
        scaling = rev.template.get("scaling") or {}
        lo = int(scaling.get("minInstanceCount", 0))
        hi = int(scaling.get("maxInstanceCount", 0)) or DEFAULT_MAX_INSTANCES
        service_scaling = svc.spec.get("scaling") or {}
        share = percent / 100.0
        if service_scaling.get("scalingMode") == "MANUAL":
            count = int(service_scaling.get("manualInstanceCount", 0))
            lo = hi = -(-count * percent // 100) if percent else 0
        else:
            s_lo = int(service_scaling.get("minInstanceCount", 0))
            s_hi = int(service_scaling.get("maxInstanceCount", 0))
            if s_lo and share:
                lo = max(lo, -(-s_lo * percent // 100))
            if s_hi:
                hi = min(hi, s_hi)
        hi = min(hi, self.limits.max_instances_per_revision)
        return min(lo, hi), hi

    def _env(self, svc: ServiceRecord, rev: RevisionRecord) -> tuple[tuple[str, str], ...]:
        values = [
            (e["name"], str(e.get("value", "")))
            for e in rev.template["containers"][0].get("env", [])
        ]
        values += [
            ("K_SERVICE", svc.id),
            ("K_REVISION", rev.id),
            ("K_CONFIGURATION", svc.id),
        ]
        return tuple(values)

    # ---------------------------------------------------------------- rendering

    def render_service(self, svc: ServiceRecord) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(svc.spec)
        template = out["template"]
        template.setdefault("maxInstanceRequestConcurrency", DEFAULT_CONCURRENCY)
        template.setdefault("timeout", duration(DEFAULT_TIMEOUT_S))
        out.update(
            {
                "name": svc.name,
                "uid": svc.uid,
                "generation": str(svc.generation),
                "createTime": timestamp(svc.create_time),
                "updateTime": timestamp(svc.update_time),
                "observedGeneration": str(svc.observed_generation),
                "reconciling": self._service_reconciling(svc),
                "etag": svc.etag,
            }
        )
        if svc.uri:
            out["uri"] = svc.uri
            out["urls"] = [svc.uri]
        if svc.latest_created:
            out["latestCreatedRevision"] = svc.latest_created
        if svc.latest_ready:
            out["latestReadyRevision"] = svc.latest_ready
        statuses = []
        for t in svc.serving:
            status: dict[str, Any] = {"type": t["type"], "revision": t["revision"]}
            if t.get("percent"):
                status["percent"] = t["percent"]
            if t.get("tag"):
                status["tag"] = t["tag"]
                uri = svc.tag_uris.get(t["tag"])
                if uri:
                    status["uri"] = uri
            statuses.append(status)
        if statuses:
            out["trafficStatuses"] = statuses
        terminal, conditions = self._service_conditions(svc)
        out["terminalCondition"] = terminal
        out["conditions"] = conditions
        return out

    def _service_reconciling(self, svc: ServiceRecord) -> bool:
        return svc.observed_generation < svc.generation or svc.route_state == "pending"

    def _service_conditions(
        self, svc: ServiceRecord
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        when = timestamp(svc.update_time)
        latest = self.revisions.get(svc.latest_created or "")
        if latest is not None and latest.state == "failed":
            config = _condition(
                "ConfigurationsReady",
                "CONDITION_FAILED",
                f"Revision '{latest.id}' is not ready and cannot serve traffic. {latest.message}",
                when,
                reason="REVISION_FAILED",
            )
        elif latest is not None and latest.state == "pending":
            config = _condition(
                "ConfigurationsReady",
                "CONDITION_RECONCILING",
                f"Revision '{latest.id}' is starting.",
                when,
            )
        else:
            config = _condition("ConfigurationsReady", "CONDITION_SUCCEEDED", "", when)
        if svc.route_state == "failed":
            route = _condition(
                "RoutesReady", "CONDITION_FAILED", svc.route_message, when, reason="REVISION_FAILED"
            )
        elif svc.route_state == "pending":
            route = _condition("RoutesReady", "CONDITION_RECONCILING", svc.route_message, when)
        else:
            route = _condition("RoutesReady", "CONDITION_SUCCEEDED", "", when)
        states = {config["state"], route["state"]}
        if "CONDITION_FAILED" in states:
            failed = config if config["state"] == "CONDITION_FAILED" else route
            terminal = _condition(
                "Ready", "CONDITION_FAILED", failed["message"], when, reason="REVISION_FAILED"
            )
        elif "CONDITION_RECONCILING" in states:
            terminal = _condition("Ready", "CONDITION_RECONCILING", "", when)
        else:
            terminal = _condition("Ready", "CONDITION_SUCCEEDED", "", when)
        return terminal, [config, route]

    def _revision_etag(self, rev: RevisionRecord) -> str:
        return "W/" + hashlib.sha256(f"{rev.uid}:1".encode()).hexdigest()[:24]

    def render_revision(self, rev: RevisionRecord) -> dict[str, Any]:
        tpl = copy.deepcopy(rev.template)
        svc = self.services.get(rev.service)
        out: dict[str, Any] = {
            "name": rev.name,
            "uid": rev.uid,
            "generation": "1",
            "createTime": timestamp(rev.create_time),
            "updateTime": timestamp(rev.update_time),
            "service": rev.service,
            "maxInstanceRequestConcurrency": _concurrency(tpl),
            "timeout": tpl.get("timeout", duration(DEFAULT_TIMEOUT_S)),
            "containers": tpl["containers"],
            "observedGeneration": "1",
            "etag": self._revision_etag(rev),
        }
        for key in ("labels", "annotations", "scaling", "serviceAccount", "volumes"):
            if key in tpl:
                out[key] = tpl[key]
        for key in ("executionEnvironment", "vpcAccess", "encryptionKey", "sessionAffinity"):
            if key in tpl:
                out[key] = tpl[key]
        if self.base_url:
            out["logUri"] = f"{self.base_url}/emulator/v1/{rev.name}/logs"
        share = 0
        tags = []
        if svc is not None:
            for t in svc.serving:
                if t["revision"] == rev.id:
                    share += t.get("percent", 0)
                    if t.get("tag"):
                        tags.append(t["tag"])
        active = bool(share or tags)
        lo, hi = self._instance_bounds(svc, rev, share) if svc else (0, 0)
        desired_min = lo if active else 0
        out["scalingStatus"] = {"desiredMinInstanceCount": desired_min} if desired_min else {}
        counts = dict(self.instance_counts(rev.name))
        out["conditions"] = self._revision_conditions(
            rev, active, share, tags, desired_min, hi, counts
        )
        out["reconciling"] = rev.state == "pending" or (
            active and counts.get("ready", 0) < desired_min
        )
        return out

    def _revision_conditions(
        self,
        rev: RevisionRecord,
        active: bool,
        share: int,
        tags: list[str],
        desired_min: int,
        max_instances: int,
        counts: Mapping[str, int],
    ) -> list[dict[str, Any]]:
        when = timestamp(rev.update_time)
        if rev.state == "ready":
            ready = _condition("Ready", "CONDITION_SUCCEEDED", "", when)
            health = _condition("ContainerHealthy", "CONDITION_SUCCEEDED", "", when)
        elif rev.state == "failed":
            ready = _condition(
                "Ready", "CONDITION_FAILED", rev.message, when, reason="REVISION_FAILED"
            )
            health = _condition(
                "ContainerHealthy",
                "CONDITION_FAILED",
                rev.message,
                when,
                revision_reason="HEALTH_CHECK_CONTAINER_ERROR",
            )
        else:
            ready = _condition(
                "Ready", "CONDITION_RECONCILING", "", when, revision_reason="PENDING"
            )
            health = _condition(
                "ContainerHealthy", "CONDITION_RECONCILING", "", when, revision_reason="PENDING"
            )
        running = counts.get("ready", 0)
        detail = (
            f"instances: {running} ready, {counts.get('starting', 0)} starting, "
            f"{counts.get('draining', 0)} draining; min {desired_min}, max {max_instances}, "
            f"concurrency {_concurrency(rev.template)}"
        )
        if active and running < desired_min:
            resources = _condition(
                "ResourcesAvailable",
                "CONDITION_RECONCILING",
                detail,
                when,
                revision_reason="MIN_INSTANCES_WARMING",
            )
        else:
            resources = _condition("ResourcesAvailable", "CONDITION_SUCCEEDED", detail, when)
        if active:
            tag_text = f", tags {', '.join(sorted(tags))}" if tags else ""
            activity = _condition(
                "Active", "CONDITION_SUCCEEDED", f"serving {share} % of traffic{tag_text}", when
            )
        else:
            activity = _condition(
                "Active",
                "CONDITION_FAILED",
                "Revision retired: it serves no traffic.",
                when,
                severity="INFO",
                revision_reason="RETIRED",
            )
        return [ready, health, resources, activity]

    # ---------------------------------------------------------------- operations

    def render_operation(self, op: OperationRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name, "done": op.done}
        if op.done:
            if op.error is not None:
                out["error"] = op.error
            else:
                out["response"] = op.response
        return out

    def _new_operation(self, kind: str, target: str, generation: int) -> OperationRecord:
        parent = target.split("/services/")[0]
        name = f"{parent}/operations/{self.new_uid()}"
        op = OperationRecord(
            name=name, kind=kind, target=target, generation=generation, create_time=self.clock()
        )
        self.operations[name] = op
        if len(self.operations) > MAX_OPERATIONS:
            for old in sorted(
                (o for o in self.operations.values() if o.done), key=lambda o: o.create_time
            )[: len(self.operations) - MAX_OPERATIONS]:
                del self.operations[old.name]
        return op

    def _done_operation(
        self, kind: str, target: str, type_url: str, response: dict[str, Any]
    ) -> OperationRecord:
        op = self._new_operation(kind, target, 0)
        op.done, op.end_time = True, self.clock()
        op.response = {"@type": type_url, **response}
        return op

    def _preview(self, svc: ServiceRecord, kind: str) -> OperationRecord:
        return self._done_operation(kind, svc.name, TYPE_SERVICE, self.render_service(svc))

    # ---------------------------------------------------------------- reconciliation

    def _new_revision(self, svc: ServiceRecord, template: dict[str, Any]) -> RevisionRecord:
        svc.revision_counter += 1
        wanted = template.get("revision")
        if wanted:
            rev_id = wanted
        else:
            while True:
                letters = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(3))
                rev_id = f"{svc.id}-{svc.revision_counter:05d}-{letters}"
                if f"{svc.name}/revisions/{rev_id}" not in self.revisions:
                    break
        container = template["containers"][0]
        image = self.resolve_image(container["image"], "template.containers[0].image")
        now = self.clock()
        rev = RevisionRecord(
            name=f"{svc.name}/revisions/{rev_id}",
            service=svc.name,
            uid=self.new_uid(),
            number=svc.revision_counter,
            template=copy.deepcopy(template),
            image=image,
            create_time=now,
            update_time=now,
        )
        self.revisions[rev.name] = rev
        svc.latest_created = rev.name
        return rev

    def _resolve_route(self, svc: ServiceRecord) -> tuple[str, list[dict[str, Any]], str]:
        """(state, resolved targets, message) for the service's traffic spec."""
        resolved = []
        waiting = []
        for t in svc.spec["traffic"]:
            if t["type"] == LATEST:
                if svc.latest_ready is None:
                    latest = self.revisions.get(svc.latest_created or "")
                    if latest is not None and latest.state == "failed":
                        return (
                            "failed",
                            [],
                            f"Revision '{latest.id}' is not ready and cannot serve traffic. "
                            f"{latest.message}",
                        )
                    waiting.append("the first revision")
                    continue
                rev_id = short(svc.latest_ready)
            else:
                rev_id = t["revision"]
            rev = self.revisions.get(f"{svc.name}/revisions/{rev_id}")
            if rev is None:
                return "failed", [], f"Revision '{rev_id}' does not exist."
            if rev.state == "failed":
                return (
                    "failed",
                    [],
                    f"Revision '{rev_id}' is not ready and cannot serve traffic. {rev.message}",
                )
            if rev.state == "pending":
                waiting.append(f"revision '{rev_id}'")
                continue
            target = {"type": t["type"], "revision": rev_id, "percent": t.get("percent", 0)}
            if t.get("tag"):
                target["tag"] = t["tag"]
            resolved.append(target)
        if waiting:
            return "pending", [], "Waiting for " + ", ".join(waiting) + " to be ready."
        return "ready", resolved, ""

    def _reconcile_service(self, svc: ServiceRecord) -> None:
        state, resolved, message = self._resolve_route(svc)
        svc.route_state, svc.route_message = state, message
        if state == "ready" and resolved != svc.serving:
            svc.serving = resolved
            svc.route_version += 1

    def _settle(self) -> None:
        """Finish the operations whose outcome is known; catch observedGeneration up."""
        now = self.clock()
        for svc in self.services.values():
            self._reconcile_service(svc)
            latest = self.revisions.get(svc.latest_created or "")
            settled_rev = latest is None or latest.state != "pending"
            if settled_rev and svc.route_state != "pending":
                svc.observed_generation = svc.generation
        for op in self.operations.values():
            if op.done or op.kind not in ("create", "update"):
                continue
            owner = self.services.get(op.target)
            if owner is None:
                if op.target not in self.deleting:
                    op.error = ApiError(
                        "ABORTED", f"service {op.target!r} was deleted"
                    ).rpc_status()
                    op.done, op.end_time = True, now
                continue
            error = None
            if op.revision is not None:
                rev = self.revisions.get(op.revision)
                if rev is None:
                    error = ApiError("ABORTED", f"revision {short(op.revision)!r} was deleted")
                elif rev.state == "pending":
                    continue
                elif rev.state == "failed":
                    error = ApiError(
                        "FAILED_PRECONDITION",
                        f"Revision '{rev.id}' is not ready and cannot serve traffic. {rev.message}",
                    )
            if error is None and op.generation >= owner.generation:
                if owner.route_state == "pending" or owner.applied_version != owner.route_version:
                    continue  # the data plane has not put the new route in place yet
                if owner.route_state == "failed":
                    error = ApiError("FAILED_PRECONDITION", owner.route_message)
            op.done, op.end_time = True, now
            if error is not None:
                op.error = error.rpc_status()
            else:
                op.response = {"@type": TYPE_SERVICE, **self.render_service(owner)}
        self._changed()

    def _changed(self) -> None:
        self.on_change()

    # ---------------------------------------------------------------- validation

    def _spec_from(
        self,
        body: Mapping[str, Any],
        current: Mapping[str, Any] | None,
        mask: list[str] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise invalid("the request body must be a JSON object (a Service)")
        unknown = sorted(set(body) - set(WRITABLE) - set(OUTPUT_ONLY))
        if unknown:
            raise invalid(f"service: unknown field {unknown[0]!r}")
        given = enums_to_names({k: copy.deepcopy(v) for k, v in body.items() if k in WRITABLE})
        if current is None or mask is None or "*" in mask:
            spec = given
        else:
            spec = copy.deepcopy(dict(current))
            for path in mask:
                top = path.split(".")[0]
                if top in OUTPUT_ONLY:
                    continue  # echoing output-only fields is harmless
                if top not in WRITABLE:
                    raise invalid(f"updateMask: {path!r} is not a field of Service")
                _copy_path(given, spec, path.split("."))
        template = spec.get("template")
        if not isinstance(template, dict):
            raise invalid("service.template is required")
        # the defaults a read shows, so that sending back what was read changes nothing
        if not template.get("maxInstanceRequestConcurrency"):
            template["maxInstanceRequestConcurrency"] = DEFAULT_CONCURRENCY
        template.setdefault("timeout", duration(DEFAULT_TIMEOUT_S))
        traffic = spec.get("traffic") or [{"type": LATEST, "percent": 100}]
        if not isinstance(traffic, list):
            raise invalid("service.traffic must be a list of traffic targets")
        spec["traffic"] = [self._traffic_target(t, i) for i, t in enumerate(traffic)]
        if "scaling" in spec:
            scaling = spec["scaling"]
            if not isinstance(scaling, dict):
                raise invalid("service.scaling must be an object")
            lo = as_int(scaling.get("minInstanceCount", 0), "scaling.minInstanceCount")
            hi = as_int(scaling.get("maxInstanceCount", 0), "scaling.maxInstanceCount")
            as_int(scaling.get("manualInstanceCount", 0), "scaling.manualInstanceCount")
            if hi and lo > hi:
                raise invalid(f"scaling: minInstanceCount {lo} is more than maxInstanceCount {hi}")
        return spec

    def _traffic_target(self, target: Any, i: int) -> dict[str, Any]:
        where = f"traffic[{i}]"
        if not isinstance(target, dict):
            raise invalid(f"{where}: expected a traffic target object")
        unknown = sorted(set(target) - {"type", "revision", "percent", "tag"})
        if unknown:
            raise invalid(f"{where}: unknown field {unknown[0]!r}")
        revision = target.get("revision", "")
        if not isinstance(revision, str):
            raise invalid(f"{where}.revision: expected a revision name")
        revision = short(revision)
        kind = target.get("type")
        if kind is None or enum_value("TrafficTargetAllocationType", kind, f"{where}.type") == (
            "TRAFFIC_TARGET_ALLOCATION_TYPE_UNSPECIFIED"
        ):
            kind = REVISION if revision else LATEST
        else:
            kind = enum_value("TrafficTargetAllocationType", kind, f"{where}.type")
        if kind == LATEST and revision:
            raise invalid(f"{where}: type LATEST takes no revision (got {revision!r})")
        if kind == REVISION and not revision:
            raise invalid(f"{where}: type REVISION needs a revision name")
        percent = as_int(target.get("percent", 0), f"{where}.percent", 0, 100)
        out: dict[str, Any] = {"type": kind}
        if revision:
            out["revision"] = revision
        if percent:
            out["percent"] = percent
        tag = target.get("tag", "")
        if tag:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise invalid(
                    f"{where}.tag {tag!r}: use lowercase letters, digits and hyphens, "
                    "starting with a letter (at most 46)"
                )
            out["tag"] = tag
        return out

    def _check_traffic(
        self, svc: ServiceRecord, targets: list[dict[str, Any]], new_revision: str | None
    ) -> None:
        total = 0
        tags: dict[str, int] = {}
        for i, t in enumerate(targets):
            total += t.get("percent", 0)
            rev_id = t.get("revision")
            if rev_id and rev_id != new_revision:
                full = f"{svc.name}/revisions/{rev_id}"
                if full not in self.revisions:
                    other = next((r for r in self.revisions.values() if r.id == rev_id), None)
                    if other is not None:
                        raise invalid(
                            f"traffic[{i}]: revision {rev_id!r} belongs to service "
                            f"{short(other.service)!r}, not {svc.id!r}"
                        )
                    raise invalid(
                        f"traffic[{i}]: revision {rev_id!r} does not exist in service {svc.id!r}"
                    )
            tag = t.get("tag")
            if tag:
                if tag in tags:
                    raise invalid(
                        f"traffic[{i}]: tag {tag!r} is already on traffic[{tags[tag]}]: "
                        "a tag names one revision"
                    )
                tags[tag] = i
        if total != 100:
            shares = " + ".join(str(t.get("percent", 0)) for t in targets)
            raise invalid(f"traffic percentages must add up to 100, got {shares} = {total}")

    def _check_template(self, svc: ServiceRecord, template: Any) -> dict[str, Any]:
        if not isinstance(template, dict):
            raise invalid("service.template must be an object")
        unknown = sorted(set(template) - _TEMPLATE_FIELDS)
        if unknown:
            raise invalid(f"template: unknown field {unknown[0]!r}")
        wanted = template.get("revision")
        if wanted:
            if not isinstance(wanted, str) or not _REVISION_ID.match(wanted):
                raise invalid(f"template.revision {wanted!r}: not a valid revision name")
            if not wanted.startswith(svc.id + "-"):
                raise invalid(
                    f"template.revision {wanted!r} must start with the service name and a "
                    f"hyphen ({svc.id}-...)"
                )
        containers = template.get("containers")
        if not isinstance(containers, list) or len(containers) != 1:
            count = len(containers) if isinstance(containers, list) else 0
            raise invalid(
                f"template.containers: the emulator runs exactly one container, got {count}"
            )
        container = containers[0]
        if not isinstance(container, dict):
            raise invalid("template.containers[0] must be an object")
        unknown = sorted(set(container) - _CONTAINER_FIELDS)
        if unknown:
            raise invalid(f"template.containers[0]: unknown field {unknown[0]!r}")
        if not container.get("image"):
            raise invalid("template.containers[0].image is required")
        for key in ("command", "args", "sourceCode", "volumeMounts", "dependsOn"):
            if container.get(key):
                raise invalid(
                    f"template.containers[0].{key}: not supported by the emulator "
                    "(the image's release starts as bin/<name> foreground)"
                )
        env = container.get("env", [])
        if not isinstance(env, list):
            raise invalid("template.containers[0].env must be a list")
        seen: set[str] = set()
        for j, item in enumerate(env):
            where = f"template.containers[0].env[{j}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise invalid(f'{where}: expected {{"name": ..., "value": ...}}')
            name = item["name"]
            if not _ENV_NAME.match(name):
                raise invalid(f"{where}.name {name!r}: not a valid environment variable name")
            if name in RESERVED_ENV:
                raise invalid(f"{where}.name {name!r} is reserved: Cloud Run sets it")
            if name in seen:
                raise invalid(f"{where}.name {name!r} is set twice")
            seen.add(name)
            if "valueSource" in item:
                raise invalid(f"{where}.valueSource: secrets are not available in the emulator")
            if not isinstance(item.get("value", ""), str):
                raise invalid(f"{where}.value must be a string")
        scaling = template.get("scaling") or {}
        if not isinstance(scaling, dict):
            raise invalid("template.scaling must be an object")
        lo = as_int(scaling.get("minInstanceCount", 0), "template.scaling.minInstanceCount")
        hi = as_int(scaling.get("maxInstanceCount", 0), "template.scaling.maxInstanceCount")
        if hi and lo > hi:
            raise invalid(
                f"template.scaling: minInstanceCount {lo} is more than maxInstanceCount {hi}"
            )
        as_int(
            template.get("maxInstanceRequestConcurrency", 0),
            "template.maxInstanceRequestConcurrency",
            0,
            1000,
        )
        if "timeout" in template:
            seconds = duration_s(template["timeout"], "template.timeout")
            if not 1 <= seconds <= 3600:
                raise invalid(f"template.timeout: must be 1s to 3600s, got {template['timeout']}")
        probe = container.get("startupProbe")
        if probe is not None:
            _check_probe(probe, "template.containers[0].startupProbe")
        for kind in (LIVENESS, READINESS):
            HealthCheck.parse(kind, container.get(f"{kind}Probe"))
        self.resolve_image(container["image"], "template.containers[0].image")
        return template


def _check_probe(probe: Any, where: str) -> None:
    if not isinstance(probe, dict):
        raise invalid(f"{where} must be an object")
    for key in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "failureThreshold"):
        if key in probe:
            as_int(probe[key], f"{where}.{key}", 0, 3600)
    http = probe.get("httpGet")
    if http is not None:
        path = http.get("path", "/") if isinstance(http, dict) else None
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid(f"{where}.httpGet.path must start with /")
    if probe.get("grpc"):
        raise invalid(f"{where}.grpc: gRPC probes are not supported by the emulator")


def _probe_deadline(probe: Mapping[str, Any]) -> float | None:
    """How long a startup probe lets an instance take to get ready, or None (the default)."""
    if not probe:
        return None
    keys = ("initialDelaySeconds", "periodSeconds", "failureThreshold")
    if not any(k in probe for k in keys):
        return None
    initial = int(probe.get("initialDelaySeconds", 0))
    period = int(probe.get("periodSeconds", 10)) or 10
    threshold = int(probe.get("failureThreshold", 3)) or 3
    return float(initial + period * threshold)


def _concurrency(template: Mapping[str, Any]) -> int:
    return int(template.get("maxInstanceRequestConcurrency", 0)) or DEFAULT_CONCURRENCY


def _condition(
    kind: str,
    state: str,
    message: str,
    when: str,
    *,
    reason: str | None = None,
    revision_reason: str | None = None,
    severity: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "state": state, "lastTransitionTime": when}
    if message:
        out["message"] = message
    if state == "CONDITION_FAILED":
        out["severity"] = severity or "ERROR"
    elif severity:
        out["severity"] = severity
    if reason:
        out["reason"] = reason
    if revision_reason:
        out["revisionReason"] = revision_reason
    return out


def _normal(value: Any) -> Any:
    """A template compared by meaning: defaults and empty values dropped."""
    if isinstance(value, dict):
        out = {k: _normal(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", 0, False, [], {})}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _copy_path(src: Mapping[str, Any], dst: dict[str, Any], path: list[str]) -> None:
    """Set dst[path] to src[path] (removing it when src has none), as a field mask does."""
    head, rest = path[0], path[1:]
    if not rest:
        if head in src:
            dst[head] = copy.deepcopy(src[head])
        else:
            dst.pop(head, None)
        return
    inner_src = src.get(head)
    if not isinstance(inner_src, Mapping):
        inner_src = {}
    inner_dst = dst.get(head)
    if not isinstance(inner_dst, dict):
        inner_dst = dst[head] = {}
    _copy_path(inner_src, inner_dst, rest)


def _page(
    names: list[str], page_size: int, page_token: str, ordered: bool = False
) -> tuple[list[str], str]:
    """One page of names; the token is the index of the next item."""
    if page_size < 0:
        raise invalid(f"pageSize must be 0 or more, got {page_size}")
    size = page_size or 100
    start = 0
    if page_token:
        if not page_token.isdigit():
            raise invalid(f"pageToken {page_token!r} was not issued by this server")
        start = int(page_token)
    items = names[start : start + size]
    more = start + size < len(names)
    return items, str(start + size) if more else ""
