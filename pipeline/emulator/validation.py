"""Request checks of the control plane: a service spec from a request body (with its update
mask), its template and its traffic, refused as the Admin API refuses them (INVALID_ARGUMENT,
naming the field)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.emulator.health import LIVENESS, READINESS, HealthCheck
from pipeline.emulator.images import Image
from pipeline.emulator.records import (
    _CONTAINER_FIELDS,
    _ENV_NAME,
    _REVISION_ID,
    _TAG,
    _TEMPLATE_FIELDS,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    LATEST,
    OUTPUT_ONLY,
    RESERVED_ENV,
    REVISION,
    WRITABLE,
    RevisionRecord,
    ServiceRecord,
    short,
)
from pipeline.emulator.wire import (
    as_int,
    duration,
    duration_s,
    enum_value,
    enums_to_names,
    invalid,
)


class Validation:
    """Mixed into ControlPlane: the state the checks read."""

    revisions: dict[str, RevisionRecord]
    resolve_image: Callable[[str, str], Image]

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
                copy_path(given, spec, path.split("."))
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
        limits_of(container)
        probe = container.get("startupProbe")
        if probe is not None:
            check_probe(probe, "template.containers[0].startupProbe")
        for kind in (LIVENESS, READINESS):
            HealthCheck.parse(kind, container.get(f"{kind}Probe"))
        self.resolve_image(container["image"], "template.containers[0].image")
        return template


def check_probe(probe: Any, where: str) -> None:
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


def probe_deadline(probe: Mapping[str, Any]) -> float | None:
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


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_MEMORY_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def limits_of(container: Mapping[str, Any]) -> tuple[float, int]:
    """The container's resources.limits as (CPU cores, memory bytes); Cloud Run's defaults (1 CPU,
    512 MiB) where unset. What Monitoring's utilizations are fractions of."""
    where = "template.containers[0].resources"
    resources = container.get("resources") or {}
    limits = resources.get("limits") or {} if isinstance(resources, dict) else None
    if not isinstance(limits, dict):
        raise invalid(f"{where}.limits must be an object")
    cpu, memory = str(limits.get("cpu", "1")), str(limits.get("memory", "512Mi"))
    if not (m := _CPU.match(cpu)) or float(m[1]) <= 0:
        raise invalid(f'{where}.limits.cpu: expected cores like "2" or "500m", got {cpu!r}')
    if not (n := _MEMORY.match(memory)) or int(n[1]) <= 0:
        raise invalid(f'{where}.limits.memory: expected a size like "512Mi", got {memory!r}')
    cores = float(m[1]) / (1000 if m[2] else 1)
    return cores, int(n[1]) * _MEMORY_UNITS[n[2] or ""]


def concurrency_of(template: Mapping[str, Any]) -> int:
    return int(template.get("maxInstanceRequestConcurrency", 0)) or DEFAULT_CONCURRENCY


def normalized(value: Any) -> Any:
    """A template compared by meaning: defaults and empty values dropped."""
    if isinstance(value, dict):
        out = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", 0, False, [], {})}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def copy_path(src: Mapping[str, Any], dst: dict[str, Any], path: list[str]) -> None:
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
    copy_path(inner_src, inner_dst, rest)
