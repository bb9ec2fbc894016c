"""A release brought to life for a phase: validate, extract, start, monitor, stop, clean up.

`LiveRelease` owns the release's temp dir and instance; weeks 2–4 and the standalone tasks use
it, so the startup, shutdown and capture receipts are written in one place."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import interrupts
from pipeline import release as releases
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.phases.base import PhaseRun, StageFailed
from pipeline.probes.monitor import Monitor, Sample
from pipeline.runtime.base import Instance, LaunchSpec, StartupFailed


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
            if self.runtime.name == "remote":
                stage.note += " (checked here; the host extracts its own copy when it starts)"
        return self.release is not None

    def start(self) -> bool:
        assert self.release is not None
        (self.workdir / "tmp").mkdir(exist_ok=True)
        with self.run.stage("start") as stage:
            spec = self.launch_spec(self.launch, self.port)
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

    def launch_spec(self, launch: dict[str, str], port: int) -> LaunchSpec:
        """How to start the extracted release with `launch` as its environment."""
        assert self.release is not None
        start = self.env.start
        return LaunchSpec(
            root=self.release.root,
            name=self.release.info.name,
            env=launch,
            port=port,
            host=start.host,
            ready_path=start.ready_path,
            fallback_ready_path=start.fallback_ready_path,
            poll_interval_s=start.poll_interval_s,
            run_id=self.run.writer.run_id,
        )

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
            was_alive, status = self.shutdown("stop")
            if not instance.pid:  # it never started (a host never reached): nothing exited
                stage.note = "the release never started: nothing to stop"
                return
            if not was_alive:
                stage.fail(f"the release had already exited (status {status})")
                self.run.error(
                    "stop",
                    f"release exited on its own with status {status}",
                    log_tail=instance.logs(50),
                )
            elif status != 0:
                stage.fail(f"exit status {status} after SIGTERM")
            stage.note = f"exit {status}, {instance.capture.total} release receipts captured"

    def shutdown(
        self, stage: str, extra: Callable[[Any], dict[str, Any]] | None = None
    ) -> tuple[bool, int]:
        """Stop the monitor and the instance; write the `shutdown` receipt (with `extra(instance)`
        fields, read after the stop) and the `capture` receipt. Returns (was alive, exit status)."""
        assert self.instance is not None
        instance = self.instance
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
        was_alive = instance.alive()
        began = time.monotonic()
        status = instance.stop(self.env.start.stop_grace_s)
        capture = instance.capture
        self.run.write(
            "shutdown",
            stage,
            exit_status=status,
            clean=status == 0 and was_alive,
            stop_seconds=round(time.monotonic() - began, 4),
            uptime_s=round(time.monotonic() - instance.started_at, 3),
            requests=capture.counts.get("request", 0),
            peak_rss_mb=self.monitor.peak_rss_mb if self.monitor else None,
            release_shutdown=capture.last.get("shutdown"),
            **(extra(instance) if extra else {}),
        )
        self.run.write("capture", stage, **capture.as_receipt())
        self.run.facts["exit_status"] = status
        return was_alive, status

    def cleanup(self) -> None:
        if self.monitor is not None:
            self.monitor.__exit__(None, None, None)
        if self.instance is not None:
            self.instance.stop(0)
        shutil.rmtree(self.workdir, ignore_errors=True)
