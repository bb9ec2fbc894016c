"""Week 3, live integration: validate, extract, start, smoke, load + monitor, stop, Gate 2."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline import interrupts
from pipeline import release as releases
from pipeline.config import Env, LoadProfile, SmokeTest
from pipeline.errors import PipelineError
from pipeline.phases.base import PhaseResult, PhaseRun, StageFailed, View
from pipeline.probes.monitor import Monitor, Sample
from pipeline.runtime import runtime_for
from pipeline.runtime.base import Instance, LaunchSpec, StartupFailed


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


def launch_env(env: Env, tmpdir: Path) -> dict[str, str]:
    """The release's environment from the env file; TMPDIR and the crash dump under `tmpdir`."""
    values = {
        "TAIEA_ENV": env.start.taiea_env,
        "HTTP_HOST": env.start.host,
        "TMPDIR": str(tmpdir),
        "ERL_CRASH_DUMP": str(tmpdir / "erl_crash.dump"),
    }
    values.update(env.start.env)
    return values


def secret_values(env: Env, launch: dict[str, str]) -> tuple[str, ...]:
    return tuple(v for k, v in launch.items() if k in env.start.secrets and v)


def redacted(env: Env, launch: dict[str, str]) -> dict[str, str]:
    return {k: ("[redacted]" if k in env.start.secrets else v) for k, v in launch.items()}


class LiveRelease:
    """Validate → extract → start, and the cleanup of all three; shared by weeks 2–4."""

    def __init__(self, run: PhaseRun, tarball: Path, workdir: Path, port: int, runtime: Any):
        self.run = run
        self.env = run.env
        self.tarball = tarball
        self.workdir = workdir
        self.port = port
        self.runtime = runtime
        self.release: releases.Release | None = None
        self.instance: Instance | None = None
        self.monitor: Monitor | None = None
        self.ready_s: float | None = None
        self.launch = launch_env(run.env, workdir / "tmp")
        self.bad_input: PipelineError | None = None  # re-raised after the gate: exit 2

    def validate(self, info: releases.ReleaseInfo) -> None:
        with self.run.stage("validate") as stage:
            self.run.write("release", "validate", **info.as_receipt())
            stage.note = f"{info.name} {info.version}, ERTS {info.erts_version}, {info.layout} layout, {info.file_count} files"

    def extract(self, info: releases.ReleaseInfo) -> bool:
        with self.run.stage("extract") as stage:
            began = time.monotonic()
            try:
                self.release = releases.extract(
                    self.tarball,
                    self.workdir / "release",
                    max_files=self.env.release.max_files,
                    max_bytes=self.env.release.max_bytes,
                )
            except PipelineError as exc:  # refused: the run is judged and sealed, then exit 2
                self.bad_input = exc
                raise StageFailed(f"extraction refused: {exc}") from None
            seconds = round(time.monotonic() - began, 4)
            self.run.write(
                "extract",
                "extract",
                seconds=seconds,
                root=str(self.release.root),
                files=info.file_count,
            )
            stage.note = f"{info.file_count} files in {seconds:.2f} s"
        return self.release is not None

    def start(self) -> bool:
        assert self.release is not None
        (self.workdir / "tmp").mkdir(exist_ok=True)
        with self.run.stage("start") as stage:
            spec = LaunchSpec(
                root=self.release.root,
                name=self.release.info.name,
                env=self.launch,
                port=self.port,
                host=self.env.start.host,
                ready_path=self.env.start.ready_path,
                fallback_ready_path=self.env.start.fallback_ready_path,
                poll_interval_s=self.env.start.poll_interval_s,
                run_id=self.run.writer.run_id,
            )
            with interrupts.held():  # a signal now would leave a release nobody knows to stop
                self.instance = self.runtime.start(spec)
            try:
                self.ready_s = self.instance.wait_ready(self.env.start.ready_timeout_s)
            except StartupFailed as exc:
                raise StageFailed(
                    f"release not ready: {exc.reason}", log_tail=exc.log_tail
                ) from None
            stats = self.instance.stats()
            self.run.write(
                "startup",
                "start",
                seconds=round(self.ready_s, 4),
                url=self.instance.url,
                pid=self.instance.pid,
                runtime=self.runtime.name,
                rss_mb=round(stats.rss_bytes / 2**20, 3),
                where=getattr(self.instance, "facts", None),  # e.g. the remote host and upload
            )
            self.run.facts["startup_s"] = round(self.ready_s, 3)
            stage.note = f"ready in {self.ready_s:.2f} s at {self.instance.url}"
        return self.ready_s is not None

    def start_monitor(self) -> None:
        assert self.instance is not None
        limit = self.env.monitor.memory_limit_mb

        def on_sample(sample: Sample) -> None:
            self.run.write(
                "metrics",
                "monitor",
                t_s=sample.t_s,
                rss_mb=sample.rss_mb,
                cpu_percent=sample.cpu_percent,
                band=self.env.band("memory_percent", sample.rss_mb / limit * 100),
                cpu_band=self.env.band("cpu_percent", sample.cpu_percent),
            )

        self.monitor = Monitor(self.instance.stats, on_sample, interval=self.env.monitor.interval_s)
        self.monitor.__enter__()

    def stop(self) -> None:
        """Stop the monitor and the release; a `shutdown` and a `capture` receipt."""
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
            if self.monitor.failure:
                self.run.error("monitor", self.monitor.failure)
        if self.instance is None:
            return
        instance = self.instance
        with self.run.stage("stop") as stage:
            was_alive = instance.alive()
            began = time.monotonic()
            status = instance.stop(self.env.start.stop_grace_s)
            uptime = round(time.monotonic() - instance.started_at, 3)
            capture = instance.capture
            self.run.write(
                "shutdown",
                "stop",
                exit_status=status,
                clean=status == 0 and was_alive,
                stop_seconds=round(time.monotonic() - began, 4),
                uptime_s=uptime,
                requests=capture.counts.get("request", 0),
                peak_rss_mb=self.monitor.peak_rss_mb if self.monitor else None,
                release_shutdown=capture.last.get("shutdown"),
            )
            self.run.write("capture", "stop", **capture.as_receipt())
            self.run.facts["exit_status"] = status
            if not was_alive:
                stage.fail(f"the release had already exited (status {status})")
                self.run.error(
                    "stop",
                    f"release exited on its own with status {status}",
                    log_tail=instance.logs(50),
                )
            elif status != 0:
                stage.fail(f"exit status {status} after SIGTERM")
            stage.note = f"exit {status}, {capture.total} release receipts captured"

    def cleanup(self) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
        if self.instance is not None:
            self.instance.stop(0)
        shutil.rmtree(self.workdir, ignore_errors=True)


def run_smoke_stage(run: PhaseRun, url: str) -> int:
    """The five smoke tests; one `receipt` per test. Returns how many passed."""
    from pipeline.probes.smoke import run_smoke

    with run.stage("smoke") as stage:
        results = run_smoke(url, run.env.smoke)
        for result in results:
            run.write("receipt", "smoke", **result.as_receipt())
        passed = sum(r.passed for r in results)
        failed = [f"{r.test}: {r.reason}" for r in results if not r.passed]
        stage.note = f"{passed}/{len(results)} passed"
        if failed:
            stage.fail("; ".join(failed))
        return passed


def run_load_stage(
    run: PhaseRun,
    url: str,
    plan: LoadPlan,
    instance: Instance | None = None,
    stage_name: str = "load",
    stop: Any = None,
) -> Any:
    """Open-loop load over the smoke endpoints; a `request` receipt per request.

    `stop` (a probes.load.StopToken) ends the load early, e.g. when the release has died."""
    from pipeline.probes.load import RequestResult, Tick, run_open_loop

    targets = load_targets(run.env.smoke, plan.endpoints)

    def on_result(result: RequestResult) -> None:
        run.write("request", stage_name, **result.as_receipt())

    def on_tick(tick: Tick) -> None:
        run.view.load_tick(tick.elapsed_s, tick.rps, tick.p95_ms, tick.sent)

    with run.stage(stage_name) as stage:
        run.view.load_started(f"{plan.rate:g} req/s for {plan.duration_s:g} s", plan.duration_s)
        try:
            summary = run_open_loop(
                url,
                targets,
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
        run.write("summary", stage_name, **summary.as_receipt())
        run.facts.update(p50_ms=summary.p50_ms, p95_ms=summary.p95_ms, rps=summary.achieved_rps)
        stage.note = f"{summary.completed} requests, {summary.achieved_rps:.1f} req/s, p50 {summary.p50_ms:.1f} ms, p95 {summary.p95_ms:.1f} ms"
        if summary.passed < summary.completed:
            stage.note += f", {summary.completed - summary.passed} failed"
        if instance is not None and not instance.alive():
            raise StageFailed("the release exited during the load", log_tail=instance.logs(50))
        return summary


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
        run.begin(info.as_receipt(), runtime=runtime.name, workdir=str(workdir), **begin)
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
