"""Week 4, the first customer's pilot: replay the scenario, check every answer, record revenue, Gate 3."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pipeline.config import Env
from pipeline.phases.base import PhaseResult, PhaseRun, StageFailed
from pipeline.phases.frame import run_live_phase
from pipeline.pilots import Scenario, load_scenario
from pipeline.runtime.base import Instance

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent.parent / "pilots" / "first-customer.toml"
MISMATCHES_SHOWN = 5


def run_pilot_stage(
    run: PhaseRun,
    url: str,
    scenario: Scenario,
    concurrency: int,
    instance: Instance | None = None,
) -> list[dict[str, Any]]:
    """Replay the scenario; one `operation` receipt per step, then the `revenue` receipt. With
    the `instance`, the replay stops the moment the release is gone, and the stage says why."""
    from pipeline.phases.stages import liveness_watch
    from pipeline.probes.replay import Outcome, replay

    lock = threading.Lock()
    billable = 0
    mismatches: list[dict[str, Any]] = []

    def on_outcome(outcome: Outcome) -> None:
        nonlocal billable
        record = run.write("operation", "pilot", **outcome.as_receipt())
        with lock:
            billable += record["billable"]
            if not outcome.matched:
                mismatches.append(record)

    gone = threading.Event()
    with run.stage("pilot") as stage:
        with liveness_watch(instance, gone.set) as death:
            replay(
                url, scenario.operations, concurrency=concurrency, on_outcome=on_outcome,
                stop=gone,
            )  # fmt: skip
        if instance is not None and not instance.alive():
            why = f"{instance.gone() or 'the release exited'} during the pilot"
            if gone.is_set():
                why += f"; the replay stopped after {death.get('at_s', 0.0):.1f} s"
            raise StageFailed(why, log_tail=instance.logs(50))
        amount = scenario.revenue(billable)
        run.write(
            "revenue",
            "pilot",
            tenant=scenario.tenant_id,
            customer=scenario.customer,
            billable_operations=billable,
            operations=len(scenario.operations),
            price=float(scenario.price),
            amount=float(amount),
            amount_text=f"{amount} {scenario.currency}",
            currency=scenario.currency,
            scenario=str(scenario.path),
            scenario_sha256=scenario.sha256,
        )
        run.facts.update(
            billable=billable, amount=f"{amount} {scenario.currency}", mismatches=len(mismatches)
        )
        stage.note = (
            f"{len(scenario.operations)} operations, {len(mismatches)} mismatches, "
            f"{billable} billable = {amount} {scenario.currency}"
        )
        if mismatches:
            stage.fail(f"{len(mismatches)} answers differ from the scenario")
            for record in mismatches[:MISMATCHES_SHOWN]:
                run.view.note(describe_mismatch(record))
    return mismatches


def describe_mismatch(record: dict[str, Any]) -> str:
    expected, actual = record["expected"], record["actual"]
    parts = [
        f"{name}: expected {expected.get(name)!r}, got {actual.get(name)!r}"
        for name in record["differ"]
    ]
    return (
        f"step {record['step']} ({record.get('event') or record['op_kind']}, {record.get('tenant')}): "
        + "; ".join(parts)
    )


def run_week4(
    tarball: str | Path,
    env: Env,
    *,
    scenario: str | Path = DEFAULT_SCENARIO,
    concurrency: int | None = None,
    **frame: Any,
) -> PhaseResult:
    """Week 4 on the env's runtime; `frame` takes run_live_phase's keyword arguments."""
    pilot = load_scenario(scenario)  # bad scenario → PipelineError naming file, step and field
    spec = env.gate_spec(env.phase("week4").gate or "week4")

    def body(run: PhaseRun, instance: Instance) -> None:
        run_pilot_stage(run, instance.url, pilot, concurrency or pilot.concurrency, instance)

    begin = {
        "scenario": {"path": str(pilot.path), "sha256": pilot.sha256, "tenant": pilot.tenant_id}
    }
    return run_live_phase(
        "week4", Path(tarball), env, spec, body, skipped=("pilot",), begin=begin, **frame
    )
