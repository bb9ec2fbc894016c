"""Week 5, production: a gated canary rollout to Cloud Run with scaling, drain and rollback, Gate 4.

The step machine (cloudrun/rollout.py) decides; this module acts — one function per step kind —
and writes a receipt for every step. The rollout state is saved after every step, so
`cloudrun.resume` and `cloudrun.rollback` work after a crash or Ctrl-C.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pipeline import interrupts, verdicts
from pipeline import receipts as receipt_log
from pipeline import release as releases
from pipeline.cloudrun.client import CloudRun, DeployFailed, Route, RunV2, Template
from pipeline.cloudrun.ops import wait_drained
from pipeline.cloudrun.rollout import (
    RolloutState,
    Step,
    advance,
    canary_routes,
    check_steps,
    fresh,
    next_step,
    rollback_routes,
    weight_is,
)
from pipeline.config import Env
from pipeline.errors import GateFailed, PipelineError
from pipeline.gates import GateSpec, check, parse_gate
from pipeline.phases.base import PhaseResult, PhaseRun, StageFailed, View
from pipeline.phases.week3 import LoadPlan, run_load_stage
from pipeline.waiting import WaitTimeout, poll

ENDPOINT_ENV = "PIPELINE_CLOUDRUN_ENDPOINT"


class Backend(Protocol):
    """What the platform tells about its revisions beyond the Admin API (the emulator's metrics
    endpoint; on Google, Cloud Monitoring). None means: not available here."""

    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None: ...


class NoBackend:
    def revisions(self, window_s: float | None = None) -> dict[str, dict[str, Any]] | None:
        return None


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


def endpoint_for(env: Env, override: str | None) -> str | None:
    return override or os.environ.get(ENDPOINT_ENV) or env.cloudrun.endpoint


def answering_endpoint(env: Env, override: str | None) -> str | None:
    """The endpoint for a call by hand: a local one where nothing answers is one line at once
    (the client would retry a refused connection until its deadline)."""
    where = endpoint_for(env, override)
    if _silent_local(env, where):
        raise PipelineError(
            f"nothing answers at {where}: start the emulator (invoke emulator.start --background)"
            " or name another endpoint with --endpoint"
        )
    return where


def _probe_path(env: Env) -> str:
    return f"/v2/projects/{env.cloudrun.project}/locations/{env.cloudrun.region}/services"


def _silent_local(env: Env, where: str | None) -> bool:
    """A local endpoint (the emulator's place) where nothing listens. A busy emulator slow to
    answer is not silent: only a refused connection is (a second emulator must never be
    started beside a slow first one)."""
    from pipeline.runtime.readiness import listening

    local = bool(where) and str(where).startswith("http://127.0.0.1")
    return local and not listening(str(where))


def image_for(env: Env, info: releases.ReleaseInfo) -> str:
    try:
        return env.cloudrun.image.format(
            tarball=info.path.resolve(), version=info.version, name=info.name
        )
    except (KeyError, IndexError) as exc:
        raise PipelineError(f"{env.path}: key cloudrun.image: unknown placeholder {exc}") from None


def preflight(sha256: str, env: Env, view: View | None = None) -> dict[str, Any]:
    """The automated gate check before a deploy: the newest Gate 2 and Gate 3 runs of this
    release must still verify and pass this env's own `[gates.week3]` and `[gates.week4]` when
    judged again from their receipts. There is no way around it."""
    found: dict[str, dict[str, Any]] = {}
    problems = []
    for week, label in (("week3", "Gate 2"), ("week4", "Gate 3")):
        entry, verdict = verdicts.newest_verdict(
            week, sha256, env.gate_spec(env.phase(week).gate or week)
        )
        if entry is None or verdict is None:
            problems.append(f"no {label} ({week}) run")
        elif not verdict.passed:
            problems.append(
                f"the newest {label} run ({entry['judged_run']}) fails under these thresholds: "
                f"{verdict.summary()}"
            )
        else:
            found[week] = {"run": entry["judged_run"], "receipts": entry["receipts"]}
    if problems:
        raise GateFailed(
            f"preflight: {'; '.join(problems)} — for release sha256 {sha256[:12]}… in the ledger "
            f"{receipt_log.ledger_path()}, judged with the thresholds of {env.path} — run "
            "phase2.week3 and phase2.week4 on this tarball first"
        )
    if view is not None:
        view.note(
            "preflight: "
            + ", ".join(f"{week} run {facts['run']} passes" for week, facts in found.items())
        )
    return found


# ---------------------------------------------------------------- acting, one function per step


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
    from pipeline.probes.smoke import run_smoke

    service = r.api.get_service()
    assert service is not None
    url = service.tag_uris.get(r.state.tag)
    if not url:
        raise StageFailed(f"the candidate has no URL for tag {r.state.tag!r}")
    results = run_smoke(url, r.env.smoke)
    for result in results:
        r.run.write("receipt", "smoke", **result.as_receipt(), url=url)
    failed = [f"{x.test}: {x.reason}" for x in results if not x.passed]
    if failed:
        raise StageFailed("smoke on the tagged URL failed: " + "; ".join(failed))
    return {"note": f"{len(results)}/{len(results)} on {url}"}


def shift(r: Rollout, percent: int) -> Any:
    """Set weight, then verify weight from what the service reports."""
    assert r.state.candidate is not None
    stable = r.state.stable or r.state.candidate
    service = r.api.set_traffic(canary_routes(stable, r.state.candidate, percent, r.state.tag))
    if not weight_is(service, r.state.candidate, percent):
        raise StageFailed(
            f"asked for {percent} % on {r.state.candidate}, the service reports {service.serving()}"
        )
    return service


def window_gate(env: Env, stage: str) -> GateSpec:
    """The `[gates.canary]` thresholds, judged on the receipts of one window only; a window
    without a single request fails, whatever the table asks (count rules alone would pass it)."""
    table = env.gates.get("canary")
    if not table:
        raise PipelineError(f"{env.path}: no [gates.canary] table for the canary steps")
    source = env.sources.get("gates.canary", str(env.path))
    scoped: dict[str, list[str]] = {}
    for key, exprs in table.items():
        scoped.setdefault(_in_window(key, stage), []).extend(
            [exprs] if isinstance(exprs, str) else exprs
        )
    scoped.setdefault(_in_window("http.latency_ms", stage), []).append("count > 0")
    return parse_gate(f"canary:{stage}", scoped, source)


def _in_window(key: str, stage: str) -> str:
    """`metric{filters}` narrowed to one stage's receipts, its own filters kept; a key that
    names a stage itself is left as written."""
    name, _, filters = key.partition("{")
    filters = filters.rstrip("}").strip()
    if any(f.split(":", 1)[0].strip() == "stage" for f in filters.split(",")):
        return key
    return f"{name}{{{filters + ',' if filters else ''}stage:{stage}}}"


def do_canary(r: Rollout, percent: int) -> dict[str, Any]:
    stage = f"canary-{percent}"
    service = shift(r, percent)
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
    run_load_stage(r.run, service.uri, plan, stage_name=f"{stage}-bake")
    spec = window_gate(r.env, f"{stage}-bake")
    verdict = check(r.run.path, spec, require_seal=False)
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
    )
    problems = [f"{x.metric} {x.expression} (measured {x.measured})" for x in verdict.failures]
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


def revision_window(
    before: dict | None, after: dict | None, revision: str | None
) -> dict[str, Any] | None:
    """The candidate's own requests and errors during the window, where the backend gives them."""
    if not after or not revision or revision not in after:
        return None
    now, then = after[revision], (before or {}).get(revision, {})
    return {
        "requests": now.get("requests", 0) - then.get("requests", 0),
        "errors": now.get("errors", 0) - then.get("errors", 0),
        "instances": now.get("instances"),
        "latency_ms": now.get("latency_ms"),
    }


_BACKEND_NAME = {"med": "p50"}  # the backend's name for an aggregation, where it differs


def revision_latency_problems(
    spec: GateSpec, latency: dict[str, Any], revision: str | None
) -> list[str]:
    """The window's latency thresholds applied to the candidate's own figures (the backend
    measures per revision what the client sees mixed). Count rules are about the window's
    requests, not the candidate's share, and stay with the window's verdict; an aggregation the
    backend does not give fails (it would otherwise never be judged per revision)."""
    if not latency.get("count"):
        return []
    problems: list[str] = []
    for key, thresholds in spec.rules:
        if key.name != "http.latency_ms":
            continue
        for threshold in thresholds:
            if threshold.agg == "count":
                continue
            name = (
                f"p{threshold.pct:g}"
                if threshold.agg == "p"
                else _BACKEND_NAME.get(threshold.agg, threshold.agg)
            )
            value = latency.get(name)
            if value is None:
                given = ", ".join(k for k in latency if k != "count")
                problems.append(
                    f"{revision} {threshold.label}: not measured per revision (given: {given})"
                )
            elif not threshold.holds(value):
                problems.append(
                    f"{revision} {threshold.label} {value:g} ms (needs {threshold.source})"
                )
    return problems


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
        if not facts:
            return
        inflight = facts.get("inflight", 0)
        r.run.write(
            "metrics",
            "production",
            revision=revision,
            instances=facts.get("instances", 0),
            inflight=inflight,
            instances_needed=max(1, math.ceil(inflight / concurrency)),
        )
        peak["instances"] = max(peak["instances"], facts.get("instances", 0))
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


def run_week5(
    tarball: str | Path,
    env: Env,
    *,
    endpoint: str | None = None,
    receipts: str | Path | None = None,
    view: View | None = None,
    api_factory: Callable[[Env, str | None], CloudRun] | None = None,
    backend_factory: Callable[[Env, str | None], Backend] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    keep_emulator: bool = False,
) -> PhaseResult:
    """Week 5. An emulator this run had to start is stopped at the end (its state is kept, so
    `invoke emulator.start --background` brings the service back), unless `keep_emulator`."""
    spec = env.gate_spec(env.phase("week5").gate or "week5")  # a bad gate: exit 2, nothing run
    rollout = open_rollout(
        tarball,
        env,
        endpoint=endpoint,
        receipts=receipts,
        view=view,
        api_factory=api_factory,
        backend_factory=backend_factory,
        on_record=on_record,
        sleep=sleep,
    )
    try:
        return finish_rollout(rollout, spec)
    finally:
        if rollout.started_emulator and not keep_emulator:
            stop_emulator(env, view)


def open_rollout(
    tarball: str | Path,
    env: Env,
    *,
    endpoint: str | None,
    receipts: str | Path | None,
    view: View | None,
    api_factory: Callable[[Env, str | None], CloudRun] | None = None,
    backend_factory: Callable[[Env, str | None], Backend] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **begin: Any,
) -> Rollout:
    """Everything a rollout needs, checked before its receipts file is opened (bad input is
    exit 2 with nothing written): the preflight, the image, the canary steps; then the run's
    first line and the rollout state."""
    info = releases.inspect(Path(tarball))
    preflight_facts = preflight(info.sha256, env, view)  # exit 99 naming what fails: no skipping it
    image = image_for(env, info)
    settings = env.cloudrun
    steps = check_steps(list(settings.canary_steps))
    # the real client against a local endpoint: start the emulator if nothing answers there, only
    # now that the input is known good
    where, started = endpoint_for(env, endpoint), False
    if api_factory is None:
        where, started = start_endpoint(env, endpoint, view)
    try:
        api = (api_factory or (lambda e, url: RunV2(e.cloudrun, endpoint=url)))(env, where)
        backend = (backend_factory or default_backend)(env, where)
        run = PhaseRun("week5", env, receipts_path=receipts, view=view)
        if on_record is not None:
            run.writer.subscribe(on_record)
        run.begin(
            info.as_receipt(),
            endpoint=where or "run.googleapis.com",
            service=settings.service,
            preflight=preflight_facts,
            **begin,
        )
        state = fresh(
            run.writer.run_id,
            settings.service,
            where,
            image,
            info.sha256,
            info.version,
            settings.tag,
            steps,
        )
        rollout = Rollout(
            run, api, env, backend, run.path.parent / "rollout.json", state, sleep=sleep
        )
        rollout.template = Template.of(settings, image)
    except BaseException:
        if started:
            stop_emulator(env, view)
        raise
    rollout.started_emulator = started
    return rollout


def finish_rollout(
    rollout: Rollout, spec: GateSpec, kinds: frozenset[str] | None = None
) -> PhaseResult:
    """Drive the rollout (only steps of `kinds`, when given), then judge and seal its run: a
    crash is judged (failing) and sealed before it goes on."""
    run = rollout.run
    try:
        rollout.save()
        drive(rollout, kinds)
    except KeyboardInterrupt:
        run.interrupt()
    except Exception as exc:  # judged (failing) and sealed, then raised: exit 1 (a bug) or 2
        run.crash(exc)
        run.finish(spec)
        raise
    state = rollout.state
    run.facts.update(
        phase=state.phase,
        candidate=state.candidate,
        stable=state.stable,
        reason=state.reason,
        state_file=str(rollout.state_path),
    )
    if state.phase == "rolled_back":
        run.error("rollback", f"rolled back: {state.reason}")
    elif state.phase == "rollback_failed":
        run.error(
            "rollback",
            f"{state.reason}: traffic may still reach {state.candidate}; retry with "
            f"`invoke cloudrun.rollback --state {rollout.state_path}`",
        )
    return run.finish(spec)


def resume(
    state_path: Path,
    env: Env,
    *,
    action: str = "resume",
    force: bool = False,
    view: View | None = None,
    api_factory: Callable[[Env, str | None], CloudRun] | None = None,
    backend_factory: Callable[[Env, str | None], Backend] | None = None,
    receipts: str | Path | None = None,
) -> PhaseResult:
    """Continue (or roll back) a rollout from its saved state, in a run of its own."""
    state = RolloutState.load(state_path)
    if state.finished and action == "resume":
        raise PipelineError(
            f"{state_path}: the rollout already ended ({state.phase}); nothing to resume"
        )
    if state.phase == "rollback_failed":
        state = replace(state, phase="rollback")  # resume and rollback both retry it
    if action == "rollback" and state.phase == "done" and not force:
        raise PipelineError(
            f"{state_path}: this rollout finished ({state.candidate} took all the traffic and "
            f"passed Gate 4); rolling it back to {state.stable} needs --force"
        )
    if action == "rollback":
        if not state.stable:
            raise PipelineError(
                f"{state_path}: first deployment of the service: there is no previous revision to roll back to"
            )
        state = replace(
            state, phase="rollback", reason=state.reason or "rollback requested by hand"
        )
    api = (api_factory or (lambda e, url: RunV2(e.cloudrun, endpoint=url)))(env, state.endpoint)
    backend = (backend_factory or default_backend)(env, state.endpoint)
    run = PhaseRun("week5", env, receipts_path=receipts, view=view)
    run.begin(
        {"sha256": state.release_sha256, "version": state.release_version},
        resumed_from=state.run_id,
        action=action,
        endpoint=state.endpoint,
    )
    rollout = Rollout(run, api, env, backend, state_path, state)
    if state.phase == "deploy":
        rollout.template = Template.of(env.cloudrun, state.image)
    spec = env.gate_spec(env.phase("week5").gate or "week5")
    return finish_rollout(rollout, spec)


def latest_state() -> Path:
    found = sorted(
        receipt_log.runs_dir().glob("*-week5-*/rollout.json"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise PipelineError(
            f"no rollout state under {receipt_log.runs_dir()} (run phase2.week5 first)"
        )
    return found[-1]


def default_backend(env: Env, endpoint: str | None) -> Backend:
    """The emulator's metrics endpoint when the API is local; nothing on Google."""
    if endpoint and endpoint.startswith("http://127.0.0.1"):
        from pipeline.cloudrun.metrics import EmulatorMetrics

        return EmulatorMetrics(endpoint, env.cloudrun)
    return NoBackend()


def ensure_endpoint(env: Env, override: str | None, view: View | None = None) -> str | None:
    """The API endpoint to use; with a local endpoint where nothing answers yet, start the
    emulator in the background (and say how to stop it)."""
    return start_endpoint(env, override, view)[0]


def start_endpoint(
    env: Env, override: str | None, view: View | None = None
) -> tuple[str | None, bool]:
    """`ensure_endpoint`, and whether it started the emulator (then the run stops it)."""
    from urllib.parse import urlsplit

    from pipeline.runtime.readiness import http_status

    where = endpoint_for(env, override)
    if where is None or not _silent_local(env, where):
        return where, False
    port = urlsplit(where).port or 8089
    started = _emulator("start", "--background", "--port", str(port), "--env", str(env.path))
    if started.returncode != 0:
        raise PipelineError(
            f"no Cloud Run API answers at {where} and the emulator did not start: {started.stderr.strip()}"
        )
    probe_path = _probe_path(env)
    try:
        poll(
            lambda: True if http_status(where, probe_path) else None,
            timeout=30,
            what="the emulator",
        )
    except WaitTimeout:
        raise PipelineError(f"started the emulator, but nothing answers at {where}") from None
    if view is not None:
        view.note(
            f"started the local Cloud Run emulator at {where} (stop it with `invoke emulator.stop`)"
        )
    return where, True


def stop_emulator(env: Env, view: View | None = None) -> None:
    """Stop the emulator `start_endpoint` started (same state dir: the runs dir's)."""
    _emulator("stop")
    if view is not None:
        view.note(
            "stopped the emulator this run started; its services are kept: "
            f"`invoke emulator.start --background --env {env.path}` brings them back "
            "(--keep-emulator leaves it running)"
        )


def _emulator(*args: str) -> Any:
    """`python -m pipeline.emulator ARGS`, as `invoke emulator.*` runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pipeline.emulator", *args],
        cwd=Path(__file__).resolve().parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy_only(
    tarball: str | Path,
    env: Env,
    *,
    endpoint: str | None = None,
    view: View | None = None,
    receipts: str | Path | None = None,
    api_factory: Callable[[Env, str | None], CloudRun] | None = None,
    backend_factory: Callable[[Env, str | None], Backend] | None = None,
) -> PhaseResult:
    """`cloudrun.deploy`: preflight, deploy tagged with no traffic, smoke the tag; the rollout
    state is saved, so `cloudrun.resume` carries on with the canary steps."""
    rollout = open_rollout(
        tarball,
        env,
        endpoint=endpoint,
        receipts=receipts,
        view=view,
        api_factory=api_factory,
        backend_factory=backend_factory,
        action="deploy",
    )
    spec = parse_gate(
        "deploy",
        {"stages.failed": ["count == 0"], "smoke.passed": ["count == 5"]},
        "cloudrun.deploy",
    )
    return finish_rollout(rollout, spec, frozenset({"deploy", "smoke"}))
