"""Week 5, production: a gated canary rollout to Cloud Run with scaling, drain and rollback, Gate 4.

The controller: preflight (Gate 2 and 3 judged again), then the step machine
(cloudrun/rollout.py) driven by the steps (phases/rollout_steps.py), judged by Gate 4. The
rollout state is saved after every step, so `cloudrun.resume` and `cloudrun.rollback` work after
a crash or Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import interrupts, verdicts
from pipeline import receipts as receipt_log
from pipeline import release as releases
from pipeline.catalogue import GATE_NAMES
from pipeline.cloudrun.client import CloudRun, RunV2, Template
from pipeline.cloudrun.endpoint import (
    emulator_state_dir,
    endpoint_for,
    start_endpoint,
    stop_emulator,
)
from pipeline.cloudrun.metrics import Backend
from pipeline.cloudrun.rollout import RolloutState, check_steps, fresh
from pipeline.config import Env
from pipeline.errors import GateFailed, PipelineError
from pipeline.gates import GateSpec, parse_gate
from pipeline.image.oci import names_registry
from pipeline.phases.base import PhaseResult, PhaseRun, View
from pipeline.phases.image import ship
from pipeline.phases.rollout_steps import Rollout, drive, image_for


def preflight(sha256: str, env: Env, view: View | None = None) -> dict[str, Any]:
    """The automated gate check before a deploy: the newest Gate 2 and Gate 3 runs of this
    release must still verify and pass this env's own `[gates.week3]` and `[gates.week4]` when
    judged again from their receipts. There is no way around it."""
    found: dict[str, dict[str, Any]] = {}
    problems = []
    for week, label in (("week3", GATE_NAMES["week3"]), ("week4", GATE_NAMES["week4"])):
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


def admitted(image: str, env: Env, view: View | None = None) -> list[dict[str, Any]]:
    """The first line of defence: the env's `[attest] policy` (Binary Authorization's shape)
    must admit the image's digest — what the emulator, and Google with the same policy, would
    refuse is refused here first, in the same words (exit 99). Returns the attestations that
    admitted it (week 5's report shows them)."""
    from pipeline.attest import ops

    assert env.attest.policy is not None
    if not names_registry(image):
        raise GateFailed(
            f"preflight: [attest] policy is set but {image} is no registry image: only an "
            "image's digest can be attested ([cloudrun] image)"
        )
    decision = ops.admission(image, env.file_path("attest.policy", env.attest.policy))
    if not decision.admitted:
        raise GateFailed(f"preflight: {decision.message}")
    if view is not None:
        view.note(
            f"preflight: {decision.message}"
            if decision.missing
            else f"preflight: image admitted by {len(decision.accepted)} attestation(s)"
        )
    return decision.accepted


# ---------------------------------------------------------------- acting, one function per step


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
        close_backend(rollout.backend)
        if rollout.started_emulator and not keep_emulator:
            stop_emulator(env, _note(view))


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
    shipped: dict[str, Any] = {}
    if names_registry(image):  # deployed by digest, the one holding this tarball
        image, shipped = ship(image, Path(tarball), info, env, _note(view) or (lambda _: None))
    if env.attest.policy:  # as Binary Authorization will, before anything is deployed
        preflight_facts["attestations"] = admitted(image, env, view)
    settings = env.cloudrun
    steps = check_steps(list(settings.canary_steps))
    # the real client against a local endpoint: start the emulator if nothing answers there, only
    # now that the input is known good
    where, started = endpoint_for(env, endpoint), False
    if api_factory is None:
        where, started = start_endpoint(env, endpoint, _note(view))
    try:
        api = (api_factory or (lambda e, url: RunV2(e.cloudrun, endpoint=url)))(env, where)
        backend = (backend_factory or _default_backend)(env, where)
        run = PhaseRun("week5", env, receipts_path=receipts, view=view)
        if on_record is not None:
            run.writer.subscribe(on_record)
        run.begin(
            info.as_receipt(),
            endpoint=where or "run.googleapis.com",
            service=settings.service,
            preflight=preflight_facts,
            **({"image": shipped} if shipped else {}),
            # killed outright, this run leaves the emulator serving (as Cloud Run would);
            # runs.recover stops it, cloudrun.resume starts it again
            **({"started_emulator": str(emulator_state_dir())} if started else {}),
            **begin,
        )
        record_queries(backend, run)
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
            stop_emulator(env, _note(view))
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
        why = run.interrupt()
        state = rollout.state
        run.error(
            None,
            f"{why}: the rollout stopped at {state.phase} with {state.current_percent} % on "
            f"{state.candidate or 'the candidate'}; `invoke cloudrun.resume --state "
            f"{rollout.state_path}` continues it",
            signal=interrupts.cause(),
        )
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
    spec = env.gate_spec(env.phase("week5").gate or "week5")
    started, backend = False, None
    if api_factory is None:  # the emulator it ran on may have been stopped (runs.recover)
        started = start_endpoint(env, state.endpoint, _note(view))[1]
    try:
        api = (api_factory or (lambda e, url: RunV2(e.cloudrun, endpoint=url)))(env, state.endpoint)
        backend = (backend_factory or _default_backend)(env, state.endpoint)
        run = PhaseRun("week5", env, receipts_path=receipts, view=view)
        run.begin(
            {"sha256": state.release_sha256, "version": state.release_version},
            resumed_from=state.run_id,
            action=action,
            endpoint=state.endpoint,
            **({"started_emulator": str(emulator_state_dir())} if started else {}),
        )
        record_queries(backend, run)
        rollout = Rollout(run, api, env, backend, state_path, state)
        if state.phase == "deploy":
            rollout.template = Template.of(env.cloudrun, state.image)
        return finish_rollout(rollout, spec)
    finally:
        close_backend(backend)
        if started:
            stop_emulator(env, _note(view))


def latest_state() -> Path:
    found = sorted(
        receipt_log.runs_dir().glob("*-week5-*/rollout.json"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise PipelineError(
            f"no rollout state under {receipt_log.runs_dir()} (run phase2.week5 first)"
        )
    return found[-1]


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


def _note(view: View | None) -> Callable[[str], None] | None:
    return view.note if view is not None else None


def close_backend(backend: Any) -> None:
    """Let go of the metric provider's connection before its server may stop."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def record_queries(backend: Backend, run: PhaseRun) -> None:
    """A provider that queries (Cloud Monitoring) writes each query and its points as a
    `metric` receipt of the run, so the rollout's evidence is re-readable offline."""
    if hasattr(backend, "record"):
        backend.record = lambda query: run.write("metric", "metrics", **query)


def _default_backend(env: Env, endpoint: str | None) -> Backend:
    from pipeline.cloudrun.monitoring import monitoring_backend

    return monitoring_backend(env.cloudrun, endpoint, env.monitoring)
