"""The control plane's resources as the Admin API returns them: a Service, a Revision, an
Operation, with their conditions (Ready, RoutesReady, ConfigurationsReady, …) as Cloud Run sets
them."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.emulator.records import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_TIMEOUT_S,
    Limits,
    OperationRecord,
    RevisionRecord,
    ServiceRecord,
)
from pipeline.emulator.validation import concurrency_of
from pipeline.emulator.wire import duration, timestamp


class Rendering:
    """Mixed into ControlPlane: the state rendering reads."""

    services: dict[str, ServiceRecord]
    revisions: dict[str, RevisionRecord]
    base_url: str
    limits: Limits
    instance_counts: Callable[[str], Mapping[str, int]]

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
            config = condition(
                "ConfigurationsReady",
                "CONDITION_FAILED",
                f"Revision '{latest.id}' is not ready and cannot serve traffic. {latest.message}",
                when,
                reason="REVISION_FAILED",
            )
        elif latest is not None and latest.state == "pending":
            config = condition(
                "ConfigurationsReady",
                "CONDITION_RECONCILING",
                f"Revision '{latest.id}' is starting.",
                when,
            )
        else:
            config = condition("ConfigurationsReady", "CONDITION_SUCCEEDED", "", when)
        if svc.route_state == "failed":
            route = condition(
                "RoutesReady", "CONDITION_FAILED", svc.route_message, when, reason="REVISION_FAILED"
            )
        elif svc.route_state == "pending":
            route = condition("RoutesReady", "CONDITION_RECONCILING", svc.route_message, when)
        else:
            route = condition("RoutesReady", "CONDITION_SUCCEEDED", "", when)
        states = {config["state"], route["state"]}
        if "CONDITION_FAILED" in states:
            failed = config if config["state"] == "CONDITION_FAILED" else route
            terminal = condition(
                "Ready", "CONDITION_FAILED", failed["message"], when, reason="REVISION_FAILED"
            )
        elif "CONDITION_RECONCILING" in states:
            terminal = condition("Ready", "CONDITION_RECONCILING", "", when)
        else:
            terminal = condition("Ready", "CONDITION_SUCCEEDED", "", when)
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
            "maxInstanceRequestConcurrency": concurrency_of(tpl),
            "timeout": tpl.get("timeout", duration(DEFAULT_TIMEOUT_S)),
            "containers": pinned(tpl["containers"], rev.image.pinned),
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
            ready = condition("Ready", "CONDITION_SUCCEEDED", "", when)
            health = condition("ContainerHealthy", "CONDITION_SUCCEEDED", "", when)
        elif rev.state == "failed":
            ready = condition(
                "Ready", "CONDITION_FAILED", rev.message, when, reason="REVISION_FAILED"
            )
            health = condition(
                "ContainerHealthy",
                "CONDITION_FAILED",
                rev.message,
                when,
                revision_reason="HEALTH_CHECK_CONTAINER_ERROR",
            )
        else:
            ready = condition("Ready", "CONDITION_RECONCILING", "", when, revision_reason="PENDING")
            health = condition(
                "ContainerHealthy", "CONDITION_RECONCILING", "", when, revision_reason="PENDING"
            )
        running = counts.get("ready", 0)
        detail = (
            f"instances: {running} ready, {counts.get('starting', 0)} starting, "
            f"{counts.get('draining', 0)} draining; min {desired_min}, max {max_instances}, "
            f"concurrency {concurrency_of(rev.template)}"
        )
        if active and running < desired_min:
            resources = condition(
                "ResourcesAvailable",
                "CONDITION_RECONCILING",
                detail,
                when,
                revision_reason="MIN_INSTANCES_WARMING",
            )
        else:
            resources = condition("ResourcesAvailable", "CONDITION_SUCCEEDED", detail, when)
        if active:
            tag_text = f", tags {', '.join(sorted(tags))}" if tags else ""
            activity = condition(
                "Active", "CONDITION_SUCCEEDED", f"serving {share} % of traffic{tag_text}", when
            )
        else:
            activity = condition(
                "Active",
                "CONDITION_FAILED",
                "Revision retired: it serves no traffic.",
                when,
                severity="INFO",
                revision_reason="RETIRED",
            )
        return [ready, health, resources, activity]

    def render_operation(self, op: OperationRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name, "done": op.done}
        if op.done:
            if op.error is not None:
                out["error"] = op.error
            else:
                out["response"] = op.response
        return out


def condition(
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


def pinned(containers: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """A revision shows the image it runs by digest, as Cloud Run's revisions do."""
    if not reference or not containers:
        return containers
    return [{**containers[0], "image": reference}, *containers[1:]]
