"""The rollout's steps, acted: one function per step kind of cloudrun/rollout.py's machine.

`drive` asks the machine for the next step, acts it inside a `run.stage`, and feeds the outcome
back (`advance`), saving the state after every step. Traffic routing is cloudrun/client.py's;
the judgement of a canary window is analysis.py's."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import interrupts
from pipeline import release as releases
from pipeline.analysis import (
    has_comparisons,
    revision_latency_problems,
    revision_window,
    side_urls_of,
    step_score,
    window_gate,
)
from pipeline.cloudrun.client import CloudRun, DeployFailed, Route, Template
from pipeline.cloudrun.metrics import Backend, NoBackend
from pipeline.cloudrun.ops import wait_drained
from pipeline.cloudrun.rollout import (
    RolloutState,
    Step,
    advance,
    canary_routes,
    next_step,
    rollback_routes,
    weight_is,
)
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.gates import check
from pipeline.phases.base import PhaseRun, StageFailed
from pipeline.phases.stages import LoadPlan, run_load_stage, side_loads, smoke


@dataclass
class Rollout:
    """Everything one invocation acts with."""

    run: PhaseRun
    api: CloudRun
    env: Env
    backend: Backend
    state_path: Path
    state: RolloutState
    template: Template | None = None
    sleep: Callable[[float], None] = time.sleep
    started_emulator: bool = False  # this run started it: it stops it (unless kept)

    @property
    def settings(self) -> Any:
        return self.env.cloudrun

    def save(self) -> None:
        self.state.save(self.state_path)


def image_for(env: Env, info: releases.ReleaseInfo) -> str:
    try:
        return env.cloudrun.image.format(
            tarball=info.path.resolve(), version=info.version, name=info.name
        )
    except (KeyError, IndexError) as exc:
        raise PipelineError(f"{env.path}: key cloudrun.image: unknown placeholder {exc}") from None


def do_deploy(r: Rollout) -> dict[str, Any]:
    assert r.template is not None
    current = r.api.get_service()
    serving = current.serving() if current else {}
    stable = max(serving, key=lambda name: serving[name]) if serving else None
    began = time.monotonic()
    try:
        # the new revision gets no traffic: everything stays pinned on the stable revision
        service = r.api.deploy(r.template, [Route(stable, 100)] if stable else None)
    except DeployFailed as exc:
        raise StageFailed(
            f"the new revision never got ready: {exc}; the service keeps its traffic"
        ) from None
    candidate = service.latest_created
    if candidate == stable:  # the same template: Cloud Run made no new revision
        service = r.api.set_traffic(canary_routes(candidate, candidate, 100, r.state.tag))
        r.run.write(
            "deploy",
            "deploy",
            revision=candidate,
            stable=stable,
            image=r.template.image,
            first=False,
            unchanged=True,
            service_uri=service.uri,
        )
        return {
            "candidate": candidate,
            "stable": None,
            "unchanged": True,
            "note": f"{candidate} already serves this release: no canary",
        }
    if stable:
        service = r.api.set_traffic(canary_routes(stable, candidate, 0, r.state.tag))
    else:
        service = r.api.set_traffic(canary_routes(candidate, candidate, 100, r.state.tag))
    r.run.write(
        "deploy",
        "deploy",
        revision=candidate,
        stable=stable,
        image=r.template.image,
        first=stable is None,
        seconds=round(time.monotonic() - began, 3),
        service_uri=service.uri,
        tag_uri=service.tag_uris.get(r.state.tag),
    )
    write_traffic(r, service, "deploy", candidate)
    first = "first deployment: 100 %" if not stable else f"0 % beside {stable}"
    return {
        "candidate": candidate,
        "stable": stable,
        "note": f"{candidate} tagged {r.state.tag}, {first}",
    }


def write_traffic(r: Rollout, service: Any, step: str, candidate: str | None = None) -> None:
    """A `traffic` receipt: the split as the service reports it, and the candidate's share."""
    candidate = candidate or r.state.candidate
    r.run.write(
        "traffic",
        step,
        split=service.serving(),
        step=step,
        revision=candidate,
        percent=service.percent_of(candidate) if candidate else None,
    )


def do_smoke(r: Rollout) -> dict[str, Any]:
    service = r.api.get_service()
    assert service is not None
    url = service.tag_uris.get(r.state.tag)
    if not url:
        raise StageFailed(f"the candidate has no URL for tag {r.state.tag!r}")
    passed, failed = smoke(r.run, url, url=url)
    if failed:
        raise StageFailed("smoke on the tagged URL failed: " + "; ".join(failed))
    return {"note": f"{passed}/{passed} on {url}"}


def compares(r: Rollout) -> bool:
    """Whether this rollout's bakes compare the candidate with a baseline: `[gates.canary]` has
    comparison rules and there is a stable revision to compare with."""
    return bool(r.state.stable) and r.state.stable != r.state.candidate and has_comparisons(r.env)


def shift(r: Rollout, percent: int, baseline: bool = False) -> Any:
    """Set weight, then verify weight from what the service reports. With `baseline`, the
    stable revision keeps the baseline tag (its own URL) beside its share."""
    assert r.state.candidate is not None
    stable = r.state.stable or r.state.candidate
    tag = r.env.analysis.baseline_tag if baseline else None
    service = r.api.set_traffic(canary_routes(stable, r.state.candidate, percent, r.state.tag, tag))
    if not weight_is(service, r.state.candidate, percent):
        raise StageFailed(
            f"asked for {percent} % on {r.state.candidate}, the service reports {service.serving()}"
        )
    return service


def do_canary(r: Rollout, percent: int) -> dict[str, Any]:
    stage = f"canary-{percent}"
    compare = compares(r)
    service = shift(r, percent, baseline=compare)
    write_traffic(r, service, stage)
    before = r.backend.revisions()
    plan = LoadPlan(r.settings.bake_rate, r.settings.bake_s)
    if plan.duration_s == 0:  # no bake window configured: a set-weight step, as in Argo
        r.run.write(
            "analysis",
            stage,
            passed=True,
            percent=percent,
            revision=r.state.candidate,
            skipped="bake_s = 0: weight set and verified, no window to judge",
        )
        return {"percent": percent, "note": f"{percent} %, weight verified (no bake window)"}
    if compare:
        with side_loads(
            r.run,
            side_urls(r, service),
            LoadPlan(r.env.analysis.compare_rate, plan.duration_s),
            f"{stage}-compare",
        ):
            run_load_stage(r.run, service.uri, plan, stage_name=f"{stage}-bake")
        if percent == 100:  # remove routes: the baseline's tag goes, so the old revision drains
            shift(r, percent)
    else:
        run_load_stage(r.run, service.uri, plan, stage_name=f"{stage}-bake")
    spec = window_gate(r.env, f"{stage}-bake", f"{stage}-compare" if compare else None)
    verdict = check(r.run.path, spec, require_seal=False)
    scored = step_score(r.env, verdict)
    backend = revision_window(
        before, r.backend.revisions(window_s=max(plan.duration_s, 1.0)), r.state.candidate
    )
    r.run.write(
        "analysis",
        stage,
        passed=verdict.passed,
        percent=percent,
        revision=r.state.candidate,
        results=[x.as_dict() for x in verdict.results],
        backend=backend,
        comparison=scored,
        **({"baseline": r.state.stable} if compare else {}),
    )
    problems = [failure_text(x) for x in verdict.failures]
    if scored and scored["verdict"] != "pass":
        problems.insert(
            0, f"comparison with {r.state.stable}: score {scored['score']:g} ({scored['verdict']})"
        )
    if backend and backend.get("errors"):
        problems.append(f"{r.state.candidate} answered {backend['errors']} errors in the window")
    if backend:
        problems += revision_latency_problems(
            spec, backend.get("latency_ms") or {}, r.state.candidate
        )
    if problems:
        raise StageFailed(f"canary {percent} % failed: " + "; ".join(problems))
    own = f", {r.state.candidate}: {backend['requests']} requests, 0 errors" if backend else ""
    return {"percent": percent, "note": f"{percent} % held for {plan.duration_s:g} s{own}"}


def side_urls(r: Rollout, service: Any) -> dict[str, str]:
    try:
        return side_urls_of(service, r.state.tag, r.env.analysis.baseline_tag)
    except PipelineError as exc:  # the service, not the input: the step fails
        raise StageFailed(str(exc)) from None


def failure_text(result: Any) -> str:
    measured = "no data" if result.measured is None else f"{result.measured:.4g}"
    why = f", {result.reason}" if result.reason and result.reason != "no data" else ""
    return f"{result.metric} {result.expression} (measured {measured}{why})"


def do_rollback(r: Rollout) -> dict[str, Any]:
    stable = r.state.stable
    assert stable is not None
    service = r.api.set_traffic(rollback_routes(stable, r.state.candidate, r.state.tag))
    if not weight_is(service, stable, 100):
        raise StageFailed(
            f"rollback asked 100 % on {stable}, the service reports {service.serving()}"
        )
    r.run.write(
        "rollback", "rollback", reason=r.state.reason, to=stable, away_from=r.state.candidate
    )
    write_traffic(r, service, "rollback")
    return {"note": f"100 % back on {stable}: {r.state.reason}"}


def do_scale(r: Rollout) -> dict[str, Any]:
    assert r.state.candidate is not None
    want = (r.settings.min_instances, r.settings.max_instances, r.settings.concurrency)
    revision = r.api.get_revision(r.state.candidate)
    if (revision.min_instances, revision.max_instances, revision.concurrency) != want:
        r.api.set_scaling(*want)
        revision = r.api.get_revision(r.api.get_service().latest_ready)  # type: ignore[union-attr]
    seen = (revision.min_instances, revision.max_instances, revision.concurrency)
    r.run.write(
        "scale",
        "scale",
        revision=revision.name,
        min_instances=seen[0],
        max_instances=seen[1],
        concurrency=seen[2],
        desired_min_instances=revision.desired_min_instances,
        applied=seen == want,
    )
    if seen != want:
        raise StageFailed(f"scaling not applied: the revision reports {seen}, wanted {want}")
    return {"note": f"min {seen[0]}, max {seen[1]}, concurrency {seen[2]} on {revision.name}"}


def do_drain(r: Rollout) -> dict[str, Any]:
    old = r.state.stable
    if not old or old == r.state.candidate:
        unchanged = any(event.get("unchanged") for event in r.state.history)
        note = (
            f"nothing to drain: {r.state.candidate} already served this release"
            if unchanged
            else "first deployment: nothing to drain"
        )
        r.run.write("drain", "drain", revision=None, note=note)
        return {"note": note}
    began = time.monotonic()

    how = wait_drained(r.backend, old, r.settings.drain_timeout_s, sleep=r.sleep)
    if how is None:
        raise StageFailed(
            f"{old} still had requests in flight after {r.settings.drain_timeout_s:g} s"
        )
    deleted = []
    if r.settings.delete_old_revisions:
        service = r.api.get_service()
        assert service is not None
        keep = r.settings.keep_revisions
        names = sorted((rev.name for rev in r.api.list_revisions()), reverse=True)
        for name in names[keep:]:
            if not service.percent_of(name):
                r.api.delete_revision(name)
                deleted.append(name)
    r.run.write(
        "drain",
        "drain",
        revision=old,
        how=how,
        seconds=round(time.monotonic() - began, 3),
        deleted=deleted,
    )
    return {"note": f"{old}: {how}" + (f", deleted {', '.join(deleted)}" if deleted else "")}


def do_production(r: Rollout) -> dict[str, Any]:
    """Gate 4's load through the service URL, with the serving revision's instances sampled."""
    from pipeline.probes.monitor import Monitor

    service = r.api.get_service()
    assert service is not None
    plan = LoadPlan(r.settings.production_rate, r.settings.production_s)
    revision = r.state.candidate
    concurrency = r.settings.concurrency or 80
    peak = {"instances": 0}

    def sample() -> None:
        seen = r.backend.revisions() or {}
        facts = seen.get(revision or "", {})
        if facts.get("instances") is None:  # no fresh figure (Google's points come late)
            return
        r.run.write(
            "metrics", "production", revision=revision, **production_sample(facts, concurrency)
        )
        peak["instances"] = max(peak["instances"], facts["instances"])
        for instance in facts.get("instance_list", []):
            if instance.get("rss_mb") is not None:
                r.run.write(
                    "metrics",
                    "production",
                    revision=revision,
                    instance=instance.get("id"),
                    rss_mb=instance["rss_mb"],
                    cpu_percent=instance.get("cpu_percent") or 0.0,
                    instance_requests=instance.get("requests"),
                )

    def read() -> Any:
        sample()
        from pipeline.runtime.base import Stats

        return Stats(0, 0.0)

    if isinstance(r.backend, NoBackend):
        run_load_stage(r.run, service.uri, plan, stage_name="production-load")
    else:
        with Monitor(read, lambda s: None, interval=0.5) as sampler:
            run_load_stage(r.run, service.uri, plan, stage_name="production-load")
        if sampler.failure:
            r.run.error("production", f"instance metrics: {sampler.failure}")
    return {
        "instances": peak["instances"],
        "note": f"peak {peak['instances']} instance(s) of {revision}",
    }


def production_sample(facts: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """One `metrics` receipt's figures from a revision's facts: instances, and the instances
    its load needed — in flight, or Little's-law demand where higher (requests waiting for an
    instance are in the demand, not in flight) — when either is known; the highest CPU and
    memory utilization of its instances when Monitoring gives them."""
    out: dict[str, Any] = {"instances": facts["instances"]}
    load = [v for v in (facts.get("inflight"), facts.get("demand")) if v is not None]
    if load:
        if facts.get("inflight") is not None:
            out["inflight"] = facts["inflight"]
        if facts.get("demand") is not None:
            out["demand"] = facts["demand"]
        out["instances_needed"] = max(1, math.ceil(max(load) / concurrency))
    for key in ("cpu_utilization", "memory_utilization"):
        if facts.get(key) is not None:
            out[key] = facts[key]
    return out


ACTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "deploy": do_deploy,
    "smoke": do_smoke,
    "canary": do_canary,
    "rollback": do_rollback,
    "scale": do_scale,
    "drain": do_drain,
    "production": do_production,
}


def drive(r: Rollout, kinds: frozenset[str] | None = None) -> None:
    """Run steps until the machine says it is over (or the next step is not one of `kinds`);
    save the state after every one."""
    while (step := next_step(r.state)) is not None and (kinds is None or step.kind in kinds):
        outcome: dict[str, Any] = {}
        with r.run.stage(step.label) as stage:
            try:
                act = ACTIONS[step.kind]
                outcome = act(r, step.percent) if step.kind == "canary" else act(r)
                stage.note = str(outcome.pop("note", ""))
            except BaseException as exc:
                settle_after_stop(
                    r,
                    step,
                    interrupts.reason()
                    if isinstance(exc, KeyboardInterrupt)
                    else f"stopped by an error ({exc})",
                )
                raise
        r.state = advance(r.state, step, stage.passed, reason=stage.reason, **outcome)
        r.save()


def settle_after_stop(r: Rollout, step: Step, why: str) -> None:
    """Ctrl-C or an error mid-step: a canary step's traffic goes back to the last completed
    step, and we say so (or say that it could not be put back)."""
    if step.kind == "canary" and r.state.candidate and r.state.stable:
        percent = r.state.current_percent
        routes = canary_routes(r.state.stable, r.state.candidate, percent, r.state.tag)
        try:
            r.api.set_traffic(routes)
        except Exception as exc:  # the API may be what failed: say where traffic may be
            r.run.error(
                step.label,
                f"{why}; could not put traffic back to {percent} % on the candidate: {exc} — "
                f"up to {step.percent} % may still reach {r.state.candidate}",
            )
        else:
            r.run.view.note(
                f"{why}: traffic left at the last completed step, {percent} % on {r.state.candidate}"
            )
            r.run.error(step.label, f"{why}; traffic back to {percent} % on the candidate")
    r.save()
