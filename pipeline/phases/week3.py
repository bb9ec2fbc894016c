"""Week 3, live integration: validate, extract, start, smoke, load + monitor, stop, Gate 2."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config import Env
from pipeline.phases.base import PhaseResult, PhaseRun
from pipeline.phases.frame import run_live_phase
from pipeline.phases.stages import LoadPlan, run_load_stage, run_smoke_stage
from pipeline.runtime.base import Instance


def run_week3(
    tarball: str | Path,
    env: Env,
    *,
    rate: float | None = None,
    duration: float | None = None,
    **frame: Any,
) -> PhaseResult:
    """Week 3 on the env's runtime; `frame` takes run_live_phase's keyword arguments."""
    plan = LoadPlan.of(env.profile(env.phase("week3").load_profile or "week3"), rate, duration)
    spec = env.gate_spec(env.phase("week3").gate or "week3")

    def body(run: PhaseRun, instance: Instance) -> None:
        run_smoke_stage(run, instance.url)
        run_load_stage(run, instance.url, plan, instance)

    return run_live_phase(
        "week3",
        Path(tarball),
        env,
        spec,
        body,
        skipped=("smoke", "load"),
        begin={"load": asdict(plan)},
        **frame,
    )
