"""The frame of every phase that runs the release: open the run, play its stages, judge, seal,
and clean up whatever happens (a bug, bad input, a signal)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pipeline import interrupts
from pipeline import release as releases
from pipeline.config import Env
from pipeline.phases.base import PhaseResult, PhaseRun, View
from pipeline.phases.live import LiveRelease, launch_env, secret_values
from pipeline.runtime import runtime_for
from pipeline.runtime.base import Instance


class Play(Protocol):
    """What a phase does between its run's first line and its verdict."""

    on_interrupt: str  # how the Ctrl-C error receipt ends: what was stopped

    def stages(self) -> None: ...

    def cleanup(self) -> None: ...


def run_phase_frame(
    phase: str,
    tarball: Path,
    env: Env,
    spec: Any,
    play: Callable[[PhaseRun, LiveRelease], Play],
    *,
    info: releases.ReleaseInfo,
    runtime: Any,
    port: int | None,
    receipts: str | Path | None,
    view: View | None,
    on_record: Callable[[dict[str, Any]], None] | None,
    begin: dict[str, Any],
) -> PhaseResult:
    """The frame of every phase that runs the release: open the run (`begin`: extra fields of
    its first line), play the stages, judge and seal — and clean up whatever happens. Ctrl-C is
    an error receipt and a failing verdict; an extraction refusal is judged and sealed first,
    then re-raised (exit 2)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"taiea-{phase}-"))
    played: Play | None = None
    try:
        launch = launch_env(env, workdir / "tmp")
        run = PhaseRun(
            phase, env, receipts_path=receipts, view=view, secrets=secret_values(env, launch)
        )
        if on_record is not None:
            run.writer.subscribe(on_record)
        live = LiveRelease(run, tarball, workdir, env.start.port if port is None else port, runtime)
        played = play(run, live)
        remote = getattr(runtime, "run_facts", None)  # where it runs, the host check's time
        run.begin(
            info.as_receipt(),
            runtime=runtime.name,
            workdir=str(workdir),
            **({"remote": remote} if isinstance(remote, dict) else {}),
            **begin,
        )
        try:
            played.stages()
        except KeyboardInterrupt:
            why = run.interrupt()
            played.cleanup()
            run.error(None, f"{why}: {played.on_interrupt}", signal=interrupts.cause())
        except Exception as exc:  # judged (failing) and sealed, then raised: exit 1 (a bug) or 2
            run.crash(exc)
            played.cleanup()
            run.finish(spec)
            raise
        result = run.finish(spec)
        if live.bad_input is not None:
            raise live.bad_input
        if phase in ("week3", "week4"):
            from pipeline.phases.attesting import attest_passed

            attested = attest_passed(result, env, info, view)
            if attested is not None:
                result.facts["attestation"] = attested
        return result
    finally:
        if played is not None:
            played.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


class LivePlay:
    """Validate, extract, start, monitor, then the phase's `body(run, instance)`, then stop."""

    on_interrupt = "the release was stopped"

    def __init__(
        self,
        run: PhaseRun,
        live: LiveRelease,
        info: releases.ReleaseInfo,
        body: Callable[[PhaseRun, Instance], None],
        skipped: tuple[str, ...],
    ):
        self.run, self.live, self.info, self.body, self.skipped = run, live, info, body, skipped

    def stages(self) -> None:
        live = self.live
        live.validate(self.info)
        if live.extract(self.info) and live.start():
            assert live.instance is not None
            live.start_monitor()
            self.body(self.run, live.instance)
        else:
            for name in self.skipped:
                self.run.skip(name, "the release did not start")
        live.stop()

    def cleanup(self) -> None:
        self.live.cleanup()


def run_live_phase(
    phase: str,
    tarball: Path,
    env: Env,
    spec: Any,
    body: Callable[[PhaseRun, Instance], None],
    *,
    skipped: tuple[str, ...],
    port: int | None = None,
    receipts: str | Path | None = None,
    view: View | None = None,
    runtime_factory: Callable[[Env], Any] = runtime_for,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    begin: dict[str, Any] | None = None,
) -> PhaseResult:
    """A phase that runs the release (weeks 3 and 4): `LivePlay` in the phase frame.

    The tarball is inspected before anything is written: not an OTP release → PipelineError,
    no run.
    """
    info = releases.inspect(tarball)
    runtime = runtime_factory(env)
    return run_phase_frame(
        phase,
        tarball,
        env,
        spec,
        lambda run, live: LivePlay(run, live, info, body, skipped),
        info=info,
        runtime=runtime,
        port=port,
        receipts=receipts,
        view=view,
        on_record=on_record,
        begin=begin or {},
    )
