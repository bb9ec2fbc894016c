"""Stages every phase that drives a release shares: the smoke tests and the open-loop load.

Each is one `run.stage(...)` with its receipts; the phase decides when to run them and against
which URL (a local instance, a remote one through its tunnel, a Cloud Run revision's tag URL)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import LoadProfile, SmokeTest
from pipeline.phases.base import PhaseRun, StageFailed
from pipeline.runtime.base import Instance


@dataclass(frozen=True)
class LoadPlan:
    """The load stage's arrival rate and window; flags may shorten a profile (tests, incidents)."""

    rate: float
    duration_s: float
    endpoints: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, profile: LoadProfile, rate: float | None = None, duration: float | None = None
    ) -> LoadPlan:
        return cls(rate or profile.rate, duration or profile.duration_s, tuple(profile.endpoints))


def load_targets(tests: Sequence[SmokeTest], names: Sequence[str] = ()) -> list[Any]:
    """The load mix: the smoke endpoints (or the named ones), each with its expected status."""
    from pipeline.probes.load import Target

    chosen = [t for t in tests if not names or t.name in names]
    return [
        Target(
            name=t.name,
            method=t.method,
            path=t.path,
            body=json.dumps(t.body).encode() if t.body is not None else None,
            expect_status=t.expect_status,
        )
        for t in chosen
    ]


def run_smoke_stage(run: PhaseRun, url: str) -> int:
    """The five smoke tests as the `smoke` stage. Returns how many passed."""
    with run.stage("smoke") as stage:
        passed, failed = smoke(run, url)
        stage.note = f"{passed}/{passed + len(failed)} passed"
        if failed:
            stage.fail("; ".join(failed))
        return passed


def smoke(run: PhaseRun, url: str, /, **fields: Any) -> tuple[int, list[str]]:
    """The env's smoke tests on `url`, one `receipt` per test (with `fields`).
    Returns how many passed and "test: reason" for each that failed."""
    from pipeline.probes.smoke import run_smoke

    results = run_smoke(url, run.env.smoke)
    for result in results:
        run.write("receipt", "smoke", **result.as_receipt(), **fields)
    return sum(r.passed for r in results), [
        f"{r.test}: {r.reason}" for r in results if not r.passed
    ]


def run_load_stage(
    run: PhaseRun,
    url: str,
    plan: LoadPlan,
    instance: Instance | None = None,
    stage_name: str = "load",
    stop: Any = None,
) -> Any:
    """Open-loop load over the smoke endpoints; a `request` receipt per request.

    With the `instance`, a liveness watch: the moment the release (or the link to its host) is
    gone, the load stops and the stage fails with that cause. `stop` (a probes.load.StopToken)
    ends the load early from elsewhere too."""
    from pipeline.probes.load import RequestResult, StopToken

    def on_result(result: RequestResult) -> None:
        run.write("request", stage_name, **result.as_receipt())

    token = stop or StopToken()
    with run.stage(stage_name) as stage, liveness_watch(instance, token.stop) as death:
        summary = open_loop(run, url, plan, on_result=on_result, stop=token)
        run.write("summary", stage_name, **summary.as_receipt())
        run.facts.update(p50_ms=summary.p50_ms, p95_ms=summary.p95_ms, rps=summary.achieved_rps)
        stage.note = f"{summary.completed} requests, {summary.achieved_rps:.1f} req/s, p50 {summary.p50_ms:.1f} ms, p95 {summary.p95_ms:.1f} ms"
        if summary.passed < summary.completed:
            stage.note += f", {summary.completed - summary.passed} failed"
        if instance is not None and not instance.alive():
            why = instance.gone() or "the release exited"
            raise StageFailed(
                f"{why} during the load; the load stopped after {death.get('at_s', 0.0):.1f} s "
                f"of {plan.duration_s:g}",
                log_tail=instance.logs(50),
            )
        return summary


@contextlib.contextmanager
def liveness_watch(
    instance: Instance | None, on_gone: Callable[[], None]
) -> Iterator[dict[str, float]]:
    """While the body runs, check every 0.1 s that the instance is alive; when it is not, call
    `on_gone` (stop the load, the replay) at once. Yields {"at_s": seconds into the body when
    it was seen gone}."""
    import threading
    import time

    seen: dict[str, float] = {}
    if instance is None:
        yield seen
        return
    done = threading.Event()
    began = time.monotonic()

    def watch() -> None:
        while not done.wait(0.1):
            if not instance.alive():
                seen["at_s"] = time.monotonic() - began
                on_gone()
                return

    watcher = threading.Thread(target=watch, name="liveness", daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


@contextlib.contextmanager
def side_loads(
    run: PhaseRun, urls: dict[str, str], plan: LoadPlan, stage_name: str
) -> Iterator[None]:
    """While the body runs, the same open-loop load on each of `urls` (side → URL), each in a
    thread of its own: `request` receipts of `stage_name` with their `side`, and a `summary`
    per side. The body's own load keeps the live view; an exception ends the side loads early."""
    import threading

    from pipeline.probes.load import RequestResult, StopToken, run_open_loop

    stop = StopToken()
    targets = load_targets(run.env.smoke, plan.endpoints)

    def load(side: str, url: str) -> None:
        def on_result(result: RequestResult) -> None:
            run.write("request", stage_name, side=side, **result.as_receipt())

        summary = run_open_loop(
            url,
            targets,
            plan.rate,
            plan.duration_s,
            on_result=on_result,
            max_inflight=run.env.load.max_inflight,
            timeout_s=run.env.load.timeout_s,
            late_ms=run.env.load.late_ms,
            stop=stop,
        )
        run.write("summary", stage_name, side=side, url=url, **summary.as_receipt())

    threads = [
        threading.Thread(target=load, args=(side, url), name=f"load-{side}", daemon=True)
        for side, url in urls.items()
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    except BaseException:
        stop.stop()
        raise
    finally:
        for thread in threads:
            thread.join(plan.duration_s + run.env.load.timeout_s + 30)


def open_loop(
    run: PhaseRun,
    url: str,
    plan: LoadPlan,
    *,
    label: str = "",
    on_result: Any = None,
    stop: Any = None,
) -> Any:
    """`plan` as open-loop load on `url` with the env's load settings, shown live on the run's
    view (req/s, p95). Returns the probe's summary."""
    from pipeline.probes.load import Tick, run_open_loop

    def on_tick(tick: Tick) -> None:
        run.view.load_tick(tick.elapsed_s, tick.rps, tick.p95_ms, tick.sent)

    run.view.load_started(f"{label}{plan.rate:g} req/s for {plan.duration_s:g} s", plan.duration_s)
    try:
        return run_open_loop(
            url,
            load_targets(run.env.smoke, plan.endpoints),
            plan.rate,
            plan.duration_s,
            on_result=on_result,
            on_tick=on_tick,
            max_inflight=run.env.load.max_inflight,
            timeout_s=run.env.load.timeout_s,
            late_ms=run.env.load.late_ms,
            stop=stop,
        )
    finally:
        run.view.load_finished()
