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
import random
import string
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.emulator.health import LIVENESS, READINESS, HealthCheck
from pipeline.emulator.images import Image
from pipeline.emulator.records import (
    LATEST,
    MAX_OPERATIONS,
    TYPE_REVISION,
    TYPE_SERVICE,
    Limits,
    OperationRecord,
    RevisionPlan,
    RevisionRecord,
    ServicePlan,
    ServiceRecord,
    check_service_id,
    short,
)
from pipeline.emulator.render import Rendering
from pipeline.emulator.validation import (
    Validation,
    concurrency_of,
    limits_of,
    normalized,
    probe_deadline,
)
from pipeline.emulator.wire import (
    ApiError,
    duration_s,
    invalid,
    not_found,
    timestamp,
)

# --------------------------------------------------------------------------------------------


Listener = Callable[[], None]


class ControlPlane(Validation, Rendering):
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
        changed_template = normalized(spec["template"]) != normalized(svc.spec["template"])
        new_rev_name = None
        if changed_template:
            wanted = template.get("revision")
            if wanted:
                full = f"{name}/revisions/{wanted}"
                existing = self.revisions.get(full)
                if existing is not None:
                    if normalized(existing.template) != normalized(template):
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
                cpu_limit, memory_limit = limits_of(container)
                revisions.append(
                    RevisionPlan(
                        name=rev.name,
                        service=svc.name,
                        image=rev.image,
                        env=self._env(svc, rev),
                        concurrency=concurrency_of(tpl),
                        min_instances=lo if active else 0,
                        max_instances=hi,
                        timeout_s=duration_s(tpl.get("timeout", "300s"), "template.timeout"),
                        ready_path=(probe.get("httpGet") or {}).get("path") or None,
                        ready_timeout_s=probe_deadline(probe),
                        state=rev.state,
                        active=active,
                        restore_instances=rev.instances_at_save if rev.state == "ready" else 0,
                        liveness=HealthCheck.parse(LIVENESS, container.get("livenessProbe")),
                        readiness=HealthCheck.parse(READINESS, container.get("readinessProbe")),
                        cpu_limit=cpu_limit,
                        memory_limit=memory_limit,
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

    # ---------------------------------------------------------------- operations

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
