"""`phase2.all`: weeks 2 → 5 in order, each refusing to start without the previous gate's pass
for the same release (found in the ledger, from a run that still verifies)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import release as releases
from pipeline import verdicts
from pipeline.catalogue import GATE_NAMES, ORDER
from pipeline.config import Env
from pipeline.errors import GateFailed
from pipeline.phases.base import PhaseResult, View


@dataclass(frozen=True)
class WeekOutcome:
    week: str
    gate: str
    result: PhaseResult | None
    note: str  # why it did not run, or the verdict's summary


def _runner(week: str) -> Callable[..., PhaseResult]:
    if week == "week2":
        from pipeline.phases.week2 import run_week2

        return run_week2
    if week == "week3":
        from pipeline.phases.week3 import run_week3

        return run_week3
    if week == "week4":
        from pipeline.phases.week4 import run_week4

        return run_week4
    from pipeline.phases.week5 import run_week5

    return run_week5


def run_all(
    tarball: str | Path,
    envs: dict[str, Env],
    *,
    view_for: Callable[[str, Env], View],
    options: dict[str, dict[str, Any]] | None = None,
) -> list[WeekOutcome]:
    """Run the weeks in order; stop at the first failure. Outcomes of all four, run or not."""
    info = releases.inspect(Path(tarball))
    outcomes: list[WeekOutcome] = []
    stopped: str | None = None
    for index, week in enumerate(ORDER):
        if stopped:
            outcomes.append(WeekOutcome(week, GATE_NAMES[week], None, f"not run: {stopped}"))
            continue
        if index:
            previous = ORDER[index - 1]
            rules = envs[previous].gate_spec(envs[previous].phase(previous).gate or previous)
            if verdicts.find_passing(previous, info.sha256, rules) is None:
                stopped = f"no passing {GATE_NAMES[previous]} for this release"
                outcomes.append(WeekOutcome(week, GATE_NAMES[week], None, f"refused: {stopped}"))
                continue
        env = envs[week]
        try:
            result = _runner(week)(
                tarball, env, view=view_for(week, env), **(options or {}).get(week, {})
            )
        except GateFailed as exc:  # week 5's preflight
            stopped = f"{week} refused"
            outcomes.append(WeekOutcome(week, GATE_NAMES[week], None, str(exc)))
            continue
        outcomes.append(WeekOutcome(week, GATE_NAMES[week], result, result.verdict.summary()))
        if not result.verdict.passed:
            stopped = f"{GATE_NAMES[week]} failed"
    return outcomes
