"""Single stages as runs of their own, for runbooks and incident work: start or stop a release in
the background, smoke a URL, load it, monitor a pid. Each writes a sealed receipts file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from pipeline import receipts as receipt_log
from pipeline import release as releases
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.phases.base import PhaseRun, View
from pipeline.phases.live import launch_env
from pipeline.phases.stages import LoadPlan, load_targets, run_load_stage, run_smoke_stage
from pipeline.probes.monitor import Monitor, Sample
from pipeline.runtime.base import LaunchSpec, Stats
from pipeline.runtime.process import free_port, launch
from pipeline.runtime.readiness import NotReady, wait_until_ready
from pipeline.waiting import WaitTimeout, poll

Listener = Callable[[dict[str, Any]], None] | None


def _run(
    phase: str,
    env: Env,
    receipts: str | Path | None,
    view: View | None,
    on_record: Listener,
    **begin: Any,
) -> PhaseRun:
    run = PhaseRun(phase, env, receipts_path=receipts, view=view)
    if on_record is not None:
        run.writer.subscribe(on_record)
    run.begin({}, **begin)
    return run


def _close(run: PhaseRun) -> Path:
    run.writer.seal()
    run.writer.close()
    return run.path


def release_url(url: str, paths_from: str = "each smoke test's path comes from the env") -> str:
    """A running release's base URL (`http://HOST:PORT`), or one line saying what is wrong. A
    path, query or fragment is refused, not joined with each request's path (`/health/health`):
    `paths_from` says where the paths come from instead."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1:
        raise PipelineError(f"--url: expected http://HOST:PORT of a running release, got {url!r}")
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        raise PipelineError(
            f"--url: expected the release's base URL (http://HOST:PORT), got {url!r}: {paths_from}"
        )
    return url.rstrip("/")


def smoke(
    url: str,
    env: Env,
    *,
    receipts: str | Path | None = None,
    view: View | None = None,
    on_record: Listener = None,
) -> tuple[int, int, Path]:
    """(passed, total, receipts file)."""
    url = release_url(url)
    run = _run("smoke", env, receipts, view, on_record, target=url)
    passed = run_smoke_stage(run, url)
    return passed, len(env.smoke), _close(run)


def load(
    url: str,
    env: Env,
    *,
    rate: float,
    duration: float,
    closed: bool = False,
    connections: int = 16,
    receipts: str | Path | None = None,
    view: View | None = None,
    on_record: Listener = None,
) -> tuple[Any, Path]:
    """An open-loop (or, with `closed`, closed-loop) load run; (summary, receipts file)."""
    url = release_url(url)
    run = _run(
        "load",
        env,
        receipts,
        view,
        on_record,
        target=url,
        rate=rate,
        duration_s=duration,
        closed=closed,
    )
    if not closed:
        summary = run_load_stage(run, url.rstrip("/"), LoadPlan(rate, duration))
        return summary, _close(run)
    from pipeline.probes.load import run_closed_loop

    with run.stage("load") as stage:
        run.view.load_started(
            f"closed loop, {connections} connections for {duration:g} s", duration
        )
        try:
            summary = run_closed_loop(
                url.rstrip("/"),
                load_targets(env.smoke),
                connections,
                duration,
                on_result=lambda r: (
                    None if run.write("request", "load", **r.as_receipt()) else None
                ),
                on_tick=lambda t: run.view.load_tick(t.elapsed_s, t.rps, t.p95_ms, t.sent),
            )
        finally:
            run.view.load_finished()
        run.write("summary", "load", **summary.as_receipt())
        stage.note = f"{summary.completed} requests, {summary.achieved_rps:.0f} req/s, p50 {summary.p50_ms:.2f} ms"
    return summary, _close(run)


def tree_stats(pid: int) -> Callable[[], Stats]:
    """A stats reader for any process tree on this machine (the monitor task's target)."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        raise PipelineError(f"no process with pid {pid}") from None
    last: list[tuple[float, float]] = []

    def read() -> Stats:
        rss, cpu = 0, 0.0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            except psutil.Error:
                continue
        now = time.monotonic()
        percent = (
            (cpu - last[-1][1]) / (now - last[-1][0]) * 100 if last and now > last[-1][0] else 0.0
        )
        last.append((now, cpu))
        return Stats(rss, max(0.0, percent))

    return read


def monitor(
    pid: int,
    env: Env,
    *,
    seconds: float,
    receipts: str | Path | None = None,
    view: View | None = None,
    on_record: Listener = None,
) -> tuple[float, int, Path]:
    """Sample a process tree for `seconds`; (peak rss MB, samples, receipts file)."""
    read = tree_stats(pid)
    run = _run("monitor", env, receipts, view, on_record, pid=pid, seconds=seconds)
    limit = env.monitor.memory_limit_mb

    def on_sample(sample: Sample) -> None:
        run.write(
            "metrics",
            "monitor",
            t_s=sample.t_s,
            rss_mb=sample.rss_mb,
            cpu_percent=sample.cpu_percent,
            band=env.band("memory_percent", sample.rss_mb / limit * 100),
            cpu_band=env.band("cpu_percent", sample.cpu_percent),
        )

    with run.stage("monitor") as stage:
        with Monitor(read, on_sample, interval=env.monitor.interval_s) as watching:
            try:
                poll(
                    lambda: None if psutil.pid_exists(pid) else True,
                    timeout=seconds,
                    interval=0.05,
                    what="sampling window",
                )
                stage.fail(f"process {pid} exited during the window")
            except WaitTimeout:
                pass  # the window ran its course with the process alive
        if watching.failure:
            stage.fail(watching.failure)
        stage.note = f"{watching.samples} samples, peak {watching.peak_rss_mb:.1f} MB"
    return watching.peak_rss_mb, watching.samples, _close(run)


# ---------------------------------------------------------------- a release in the background


def _state_file() -> Path:
    return receipt_log.runs_dir() / "releases" / "current.json"


def _read_state() -> dict[str, Any] | None:
    """The background release's state, None when there is none; a damaged file is one line."""
    path = _state_file()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"{path}: not a release state ({exc}); remove it if no release runs"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        raise PipelineError(f"{path}: not a release state (no pid); remove it if no release runs")
    return state


def _still_running(state: dict[str, Any]) -> bool:
    """The process the state names is alive and is the one that was started (not a recycled pid)."""
    try:
        proc = psutil.Process(state["pid"])
        started = state.get("create_time")
        return proc.status() != psutil.STATUS_ZOMBIE and (
            started is None or abs(proc.create_time() - started) < 0.01
        )
    except psutil.Error:
        return False


def start_background(tarball: Path, env: Env, *, port: int | None = None) -> dict[str, Any]:
    """Extract and start a release detached from this process; `stop_background` ends it."""
    state_file = _state_file()
    known = _read_state()
    if known is not None:
        if _still_running(known):
            raise PipelineError(
                f"a release is already running (pid {known['pid']}, {known['url']}); run release.stop first"
            )
    info = releases.inspect(tarball)
    workdir = Path(tempfile.mkdtemp(prefix="taiea-release-"))
    proc: subprocess.Popen[bytes] | None = None
    recorded = False  # once the state file names it, the release is release.stop's to end
    try:
        release = releases.extract(
            tarball,
            workdir / "release",
            max_files=env.release.max_files,
            max_bytes=env.release.max_bytes,
        )
        (workdir / "tmp").mkdir()
        chosen = port if port is not None else env.start.port
        spec = LaunchSpec(
            release.root,
            info.name,
            launch_env(env, workdir / "tmp"),
            chosen or free_port(env.start.host),
            env.start.host,
        )
        log = workdir / "release.log"
        with open(log, "wb") as out:
            proc = launch(spec, spec.port, out, detached=True)
        url = f"http://{spec.host}:{spec.port}"
        started = time.monotonic()
        try:
            wait_until_ready(
                url,
                timeout=env.start.ready_timeout_s,
                alive=lambda: proc.poll() is None,
                ready_path=env.start.ready_path,
                fallback_path=env.start.fallback_ready_path,
            )
        except BaseException as exc:  # not ready, or Ctrl-C while waiting: nothing stays behind
            _kill(proc.pid)
            proc.wait()
            if not isinstance(exc, NotReady):
                raise
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise PipelineError(
                f"{tarball}: release not ready: {exc}; last output: {' | '.join(tail)}"
            ) from None
        state = {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "url": url,
            "workdir": str(workdir),
            "log": str(log),
            "release": info.as_receipt(),
            "ready_s": round(time.monotonic() - started, 3),
        }
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))
        recorded = True
        return state
    except BaseException:
        if not recorded:
            if proc is not None and proc.poll() is None:
                _kill(proc.pid)
                proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_background(grace: float = 10.0) -> dict[str, Any]:
    state_file = _state_file()
    state = _read_state()
    if state is None:
        raise PipelineError(f"no background release to stop ({state_file} does not exist)")
    pid = state["pid"]
    status = "not running"
    if _still_running(state):
        os.kill(pid, signal.SIGTERM)
        try:
            poll(
                lambda: (
                    True
                    if not psutil.pid_exists(pid)
                    or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
                    else None
                ),
                timeout=grace,
                interval=0.05,
                what="release to exit",
            )
            status = "stopped (SIGTERM)"
        except WaitTimeout:
            _kill(pid)
            status = "killed (SIGKILL after the grace period)"
    shutil.rmtree(state["workdir"], ignore_errors=True)
    state_file.unlink()
    return {**state, "stopped": status}


def recorded(
    kind: str,
    stage: str,
    fields: dict[str, Any],
    env: Env,
    *,
    receipts: str | Path | None = None,
    on_record: Listener = None,
    release: dict[str, Any] | None = None,
) -> Path:
    """One stage's result as a sealed run of its own (release.inspect/extract/start/stop)."""
    run = _run(
        stage, env, receipts, None, on_record, **({"release_facts": release} if release else {})
    )
    run.write(kind, stage, **fields)
    return _close(run)
