"""Manual Cloud Run operations for runbooks and incidents: status, shift, scale, drain."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.cloudrun.client import Route, RunV2
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.waiting import WaitTimeout, poll


@contextlib.contextmanager
def refused_as_bad_input(what: str) -> Iterator[None]:
    """What the API refuses for the request itself (400, 404, 412: an unknown revision, a split
    it does not accept) is bad input by hand: one line, exit 2, not a traceback."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except (gexc.BadRequest, gexc.NotFound, gexc.FailedPrecondition) as exc:
        raise PipelineError(f"{what}: {exc.message}") from None


def parse_split(text: str) -> list[Route]:
    """`REV=PCT,REV=PCT` (REV may be `latest`; `REV=PCT#tag` keeps a tag) → routes summing to 100."""
    routes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, rest = part.partition("=")
        percent_text, _, tag = rest.partition("#")
        if not sep or not name or not percent_text.strip().isdigit():
            raise PipelineError(
                f"--to {text!r}: expected REV=PCT[,REV=PCT…], e.g. svc-00002-abc=10,svc-00001-xyz=90"
            )
        routes.append(Route(None if name == "latest" else name, int(percent_text), tag))
    if sum(r.percent for r in routes) != 100:
        raise PipelineError(
            f"--to {text!r}: percentages add up to {sum(r.percent for r in routes)}, not 100"
        )
    return routes


def status(env: Env, endpoint: str | None, backend: Any) -> dict[str, Any]:
    api = RunV2(env.cloudrun, endpoint=endpoint)
    service = api.get_service()
    if service is None:
        raise PipelineError(
            f"service {env.cloudrun.service} does not exist at {endpoint or 'Google'} (env {env.name})"
        )
    live = backend.revisions() or {}
    revisions = []
    for revision in sorted(api.list_revisions(), key=lambda r: r.name):
        facts = live.get(revision.name, {})
        revisions.append(
            {
                "name": revision.name,
                "ready": revision.ready,
                "percent": service.percent_of(revision.name),
                "tags": sorted(
                    r.tag
                    for r in service.traffic
                    if r.tag and (r.revision or service.latest_ready) == revision.name
                ),
                "instances": facts.get("instances"),
                "inflight": facts.get("inflight"),
                "min_instances": revision.min_instances,
                "max_instances": revision.max_instances,
                "concurrency": revision.concurrency,
                "image": revision.image,
                "failed": revision.failed_reason,
            }
        )
    return {
        "service": service.name,
        "uri": service.uri,
        "latest_ready": service.latest_ready,
        "traffic": service.serving(),
        "tags": service.tag_uris,
        "revisions": revisions,
    }


def shift(env: Env, endpoint: str | None, split: str) -> dict[str, int]:
    api = RunV2(env.cloudrun, endpoint=endpoint)
    routes = parse_split(split)
    with refused_as_bad_input(f"--to {split!r}"):
        service = api.set_traffic(routes)
    for route in routes:
        if route.revision and service.percent_of(route.revision) != route.percent:
            raise PipelineError(
                f"asked {route.percent} % on {route.revision}; the service reports {service.serving()}"
            )
    return service.serving()


def scale(
    env: Env, endpoint: str | None, min_instances: int, max_instances: int, concurrency: int
) -> dict[str, Any]:
    if min_instances > max_instances:
        raise PipelineError(
            f"--min-instances {min_instances} is above --max-instances {max_instances}"
        )
    api = RunV2(env.cloudrun, endpoint=endpoint)
    with refused_as_bad_input("scale"):
        service = api.set_scaling(min_instances, max_instances, concurrency)
    revision = api.get_revision(service.latest_ready)
    return {
        "revision": revision.name,
        "min_instances": revision.min_instances,
        "max_instances": revision.max_instances,
        "concurrency": revision.concurrency,
        "desired_min_instances": revision.desired_min_instances,
    }


def drain(
    env: Env, endpoint: str | None, revision: str, timeout: float, backend: Any = None
) -> str:
    """Wait until `revision` (at 0 %) has no request in flight, as week 5 judges it (its
    `[monitoring]` provider), then remove its tag."""
    if backend is None:
        from pipeline.cloudrun.monitoring import monitoring_backend

        backend = monitoring_backend(env.cloudrun, endpoint, env.monitoring)
    api = RunV2(env.cloudrun, endpoint=endpoint)
    service = api.get_service()
    if service is None:
        raise PipelineError(f"service {env.cloudrun.service} does not exist")
    with refused_as_bad_input(f"--revision {revision}"):
        api.get_revision(revision)
    if service.percent_of(revision):
        raise PipelineError(
            f"{revision} still gets {service.percent_of(revision)} % of the traffic: shift it away first"
        )
    how = wait_drained(backend, revision, timeout)
    if how is None:
        raise PipelineError(f"{revision} still has requests in flight after {timeout:g} s")
    kept = [
        r
        for r in service.traffic
        if not (r.tag and (r.revision or service.latest_ready) == revision)
    ]
    if len(kept) == len(service.traffic):
        return f"{revision} drained ({how}); it had no tag"
    api.set_traffic([r for r in kept if r.percent or r.tag])
    return f"{revision} drained ({how}), tag removed"


def wait_drained(
    backend: Any,
    revision: str,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> str | None:
    """How `revision` drained: its in-flight count reached 0; without an in-flight figure, its
    instance count reached 0; with no figure at all (`backend.revisions()` None, or nothing for
    the revision: Google's points arrive minutes late) the whole drain window ran out. None:
    requests were still in flight (or instances up with no in-flight figure) after `timeout`.
    Never "drained" for want of data, nor on a point that ended before the drain began (a
    request may have started since: `inflight_at`/`instances_at`, where the backend says)."""
    last: dict[str, Any] = {}
    began = wall()

    def fresh(facts: dict[str, Any], figure: str) -> bool:
        at = facts.get(f"{figure}_at")
        return at is None or at > began

    def drained() -> str | None:
        seen = backend.revisions()
        facts = (seen or {}).get(revision) or {}
        last.clear()
        last.update(facts)
        if facts.get("inflight") == 0 and fresh(facts, "inflight"):
            return "in-flight reached 0"
        if facts.get("inflight") is None and facts.get("instances") == 0:
            return "instance count reached 0" if fresh(facts, "instances") else None
        return None

    try:
        return poll(
            drained,
            timeout=timeout,
            interval=0.05,
            what=f"{revision} to drain",
            sleep=sleep,
            clock=clock,
        )
    except WaitTimeout:
        if last.get("inflight") is None and last.get("instances") is None:
            return f"drain window of {timeout:g} s elapsed"
        return None
