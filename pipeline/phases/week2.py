"""Week 2, sandbox rehearsal: the release inside a real gVisor sandbox with the CCW limits, Gate 1.

Eleven stages, each measured and each with receipts:

  1 environment  runsc version and platform; a probe sandbox with the limits, read back from its
                 cgroup and from inside (MemTotal, kernel release, uid)
  2 validate     the tarball is an OTP release (phases/live.py's LiveRelease)
  3 extract      safe extraction; the tree is bind-mounted read-only at /opt/taiea
  4 configure    the sandbox's environment (secrets redacted) and its OCI settings
  5 start        `runsc run`, time to ready (startup receipt), what is bind-mounted (mount)
  6 smoke        the five smoke tests
  7 capture      the release's own stdout receipts parsed and counted
  8 resources    the load profile, memory from the cgroup, CPU from `runsc events --stats`
  9 constraints  each constraint proven: memory cap, /opt read-only and /tmp writable (tried
                 from inside), non-root, the CPU quota, gVisor's kernel, and the network overhead
                 (the same release and load natively minus sandboxed, p50 and p95)
 10 summary      the sandbox is stopped and removed; native vs sandboxed, what was captured
 11 gate         Gate 1 over the receipts

A release that outgrows the memory limit is OOM-killed by the kernel: the load ends at once, an
`oom` receipt (cgroup failcnt, oom_kill, exit 137) and an `error` receipt say so, and Gate 1
fails on `memory.oom_kills`. Everything the run creates (sandboxes, bundle dirs, cgroups, the
native comparison run) is removed at the end, also after a failed stage or Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from pipeline import release as releases
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.phases.base import PhaseResult, PhaseRun, StageFailed, View
from pipeline.phases.frame import run_phase_frame
from pipeline.phases.live import LiveRelease, launch_env
from pipeline.phases.stages import LoadPlan, open_loop, run_load_stage, run_smoke_stage
from pipeline.runtime import runtime_for
from pipeline.runtime.base import SandboxInstance, StartupFailed
from pipeline.waiting import WaitTimeout, poll

STAGES = (
    "environment",
    "validate",
    "extract",
    "configure",
    "start",
    "smoke",
    "capture",
    "resources",
    "constraints",
    "summary",
    "gate",
)
MIB = 1 << 20
WRITE_PROBE = ".taiea-write-probe"


@dataclass
class Constraint:
    """One sandbox constraint and the evidence that proves (or disproves) it."""

    name: str
    passed: bool
    proof: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def receipt(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "proof": self.proof, **self.evidence}


@dataclass
class Measured:
    """What the run measured, for the comparison and the summary receipt."""

    startup_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    rps: float | None = None
    completed: int | None = None

    def delta(self, other: Measured, key: str) -> float | None:
        mine, theirs = getattr(self, key), getattr(other, key)
        return None if mine is None or theirs is None else round(mine - theirs, 3)


def judge_overhead(
    sandboxed: Measured, native: Measured, budget_ms: float
) -> tuple[bool, dict[str, Any]]:
    """The user-mode network overhead: sandboxed minus native at p50 and p95, each within the
    budget. Fails closed: a side without a measurement fails."""
    p50 = sandboxed.delta(native, "p50_ms")
    p95 = sandboxed.delta(native, "p95_ms")
    passed = p50 is not None and p95 is not None and p50 <= budget_ms and p95 <= budget_ms
    return passed, {
        "native": asdict(native),
        "sandboxed": asdict(sandboxed),
        "p50_delta_ms": p50,
        "p95_delta_ms": p95,
        "startup_delta_s": sandboxed.delta(native, "startup_s"),
    }


class Rehearsal:
    """The eleven stages over one sandboxed release (a LiveRelease on the gvisor runtime): the
    phase frame's Play for week 2."""

    on_interrupt = "the sandbox was stopped and removed"

    def __init__(
        self,
        run: PhaseRun,
        live: LiveRelease,
        plan: LoadPlan,
        info: releases.ReleaseInfo,
        native_runtime: Any,
    ):
        self.run = run
        self.env = run.env
        self.live = live
        self.runtime = live.runtime
        self.plan = plan
        self.info = info
        self.native_runtime = native_runtime
        self.native_instance: Any = None
        self.sandboxed = Measured()
        self.native = Measured()
        self.constraints: list[Constraint] = []
        self.oom_reported = False
        self.host: dict[str, Any] = {}
        self.cpu_samples: list[float] = []
        self.rss_samples: list[float] = []
        run.writer.subscribe(self._collect)

    def _collect(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "summary" and record.get("stage") == "resources":
            self.sandboxed.p50_ms, self.sandboxed.p95_ms = record["p50_ms"], record["p95_ms"]
            self.sandboxed.rps, self.sandboxed.completed = (
                record["achieved_rps"],
                record["completed"],
            )
        elif record.get("kind") == "metrics":
            self.cpu_samples.append(float(record.get("cpu_percent") or 0.0))
            self.rss_samples.append(float(record.get("rss_mb") or 0.0))

    @property
    def instance(self) -> SandboxInstance | None:
        return cast("SandboxInstance | None", self.live.instance)

    @property
    def running(self) -> SandboxInstance:
        """The sandbox's instance, for what runs only once it started."""
        assert self.instance is not None
        return self.instance

    def host_info(self) -> dict[str, Any]:
        """The kernel and CPUs of the host the sandbox runs on (the runtime's, maybe remote)."""
        if not self.host:
            self.host = dict(self.runtime.host_info())
        return self.host

    # ------------------------------------------------------------ the stages

    def stages(self) -> None:
        self.environment()
        self.live.validate(self.info)
        if not self.extract():
            self.skip_from("configure", "the release was not extracted")
            return
        self.configure()
        if not self.start():
            self.skip_from("smoke", "the sandbox did not start")
            return
        run_smoke_stage(self.run, self.running.url)
        self.capture()
        self.resources()
        self.check_constraints()
        self.summary()

    def skip_from(self, first: str, because: str) -> None:
        for name in STAGES[STAGES.index(first) : STAGES.index("summary")]:
            self.run.skip(name, because)
        self.summary()

    def environment(self) -> None:
        with self.run.stage("environment") as stage:
            runsc = self.runtime.runsc.info()
            host = self.host_info()
            limits = self.runtime.limits
            probe = self.runtime.probe(self.run.writer.run_id)
            reading = probe.cgroup
            applied = {
                "memory_limit_mb": _mb(reading.memory_limit_bytes) if reading else None,
                "cpu_quota_us": reading.cpu_quota_us if reading else None,
                "cpu_period_us": reading.cpu_period_us if reading else None,
                "sentry_total_memory_mb": _mb(probe.total_memory_bytes),
                "sandbox_in_cgroup": bool(
                    reading
                    and probe.sandbox_pid in reading.memory_procs
                    and probe.sandbox_pid in reading.cpu_procs
                ),
                **{f"inside_{k}": v for k, v in probe.inside.items()},
            }
            self.run.write(
                "environment",
                "environment",
                **runsc,
                host_kernel=host.get("kernel"),
                cgroup="v1",
                host_cpus=host.get("cpus"),
                network=self.env.sandbox.network,
                limits=limits.as_receipt(),
                applied=applied,
                probe=probe.id,
                probe_removed=not probe.leftovers,
            )
            if not probe.started:
                raise StageFailed(
                    f"runsc could not start a sandbox with the limits: {probe.error}",
                    log_tail=probe.log_tail,
                )
            wrong = []
            if reading is None or reading.memory_limit_bytes != limits.memory_bytes:
                wrong.append(f"memory limit {applied['memory_limit_mb']} MiB")
            if reading is None or (reading.cpu_quota_us, reading.cpu_period_us) != (
                limits.cpu_quota_us,
                limits.cpu_period_us,
            ):
                wrong.append(f"cpu quota {applied['cpu_quota_us']}/{applied['cpu_period_us']} µs")
            if not applied["sandbox_in_cgroup"]:
                wrong.append("the sandbox is not in its cgroup")
            if wrong:
                raise StageFailed("limits not applied as configured: " + "; ".join(wrong))
            if probe.leftovers:
                raise StageFailed(f"the probe sandbox was not removed: {probe.leftovers}")
            stage.note = (
                f"runsc {runsc['version']} ({runsc['platform']}); cgroup read back: "
                f"{applied['memory_limit_mb']:g} MiB, cpu {limits.cpus:g} "
                f"({reading.cpu_quota_us}/{reading.cpu_period_us} µs); "
                f"kernel inside {probe.inside.get('kernel_release', '?')}"
            )

    def extract(self) -> bool:
        return self.live.extract(self.info)

    def configure(self) -> None:
        with self.run.stage("configure") as stage:
            limits = self.runtime.limits
            env = self.runtime.sandbox_env(self.live.launch, self.live.port, self.env.start.host)
            secrets = set(self.env.start.secrets)
            shown = {k: ("[redacted]" if k in secrets else v) for k, v in sorted(env.items())}
            if self.live.port == 0:
                shown["PORT"] = "(a free port, picked at start)"
            self.run.write(
                "config",
                "configure",
                env=shown,
                redacted=sorted(k for k in env if k in secrets),
                user={"uid": limits.uid, "gid": limits.gid},
                root={"path": "/", "readonly": True},
                mounts=[
                    {"destination": "/proc", "type": "proc"},
                    {"destination": "/tmp", "type": "tmpfs", "size_mb": limits.tmpfs_mb},
                    {"destination": limits.mount_point, "type": "bind", "options": ["rbind", "ro"]},
                ],
                limits=limits.as_receipt(),
                network=self.env.sandbox.network,
            )
            stage.note = (
                f"{len(env)} variables ({len(secrets & set(env))} redacted), uid {limits.uid}, "
                f"{limits.memory_bytes // MIB} MiB, {limits.cpus:g} CPU, /tmp {limits.tmpfs_mb} MiB"
            )
            if limits.uid == 0 or limits.gid == 0:
                raise StageFailed("the sandbox would run the release as root (sandbox.uid/gid 0)")

    def start(self) -> bool:
        started = self.live.start()
        if self.instance is not None:
            self.run.write(
                "sandbox",
                "start",
                id=self.running.id,
                runsc_pid=self.running.pid,
                sandbox_pid=self.running.sandbox_pid() if self.running.alive() else None,
                bundle=str(self.running.sandbox.bundle),
                cgroup=f"/{self.running.id}",
            )
            self.write_mount()
        if not started:
            self.report_oom("start")
            return False
        self.sandboxed.startup_s = self.live.ready_s
        self.live.start_monitor()
        return True

    def write_mount(self) -> None:
        """What the sandbox bind-mounts read-only: the extracted tree on the machine that runs
        it — here, or on the remote host (extracted there at start; nothing when the start
        failed before that)."""
        facts = getattr(self.instance, "facts", None)
        if facts is not None:
            source, host = facts.get("root"), facts.get("host")
        else:
            assert self.live.release is not None
            source, host = str(self.live.release.root), "local"
        if source is None:
            return
        self.run.write(
            "mount",
            "start",
            source=source,
            host=host,
            destination=self.runtime.limits.mount_point,
            type="bind",
            options=["rbind", "ro"],
            read_only=True,
            proven_in="constraints",
        )

    def capture(self) -> None:
        with self.run.stage("capture") as stage:
            capture = self.running.capture
            want = len(self.env.smoke)
            try:  # the release writes its receipts as it answers: wait for the smoke tests'
                poll(
                    lambda: True if capture.counts.get("request", 0) >= want else None,
                    timeout=3.0,
                    interval=0.05,
                    what="the smoke tests' receipts",
                )
            except WaitTimeout:
                pass
            self.run.write("capture", "capture", **capture.as_receipt())
            stage.note = f"{capture.total} receipts: " + ", ".join(
                f"{n} {k}" for k, n in sorted(capture.counts.items())
            )
            if capture.counts.get("startup", 0) != 1:
                stage.fail("the release's startup receipt was not captured")
            if capture.counts.get("request", 0) < want:
                stage.fail(
                    f"{capture.counts.get('request', 0)} request receipts for {want} smoke tests"
                )
            if capture.invalid:
                stage.fail(f"{capture.invalid} stdout lines looked like JSON but were not")

    def resources(self) -> None:
        instance = self.running
        first = len(self.cpu_samples)
        run_load_stage(self.run, instance.url, self.plan, instance, stage_name="resources")
        reading = instance.cgroup()
        cpu = self.cpu_samples[first:] or [0.0]
        self.run.write(
            "resources",
            "resources",
            memory_mb=_mb(reading.memory_usage_bytes),
            memory_peak_mb=_mb(reading.memory_max_usage_bytes),
            memory_limit_mb=_mb(reading.memory_limit_bytes),
            memory_failcnt=reading.memory_failcnt,
            monitor_peak_mb=self.live.monitor.peak_rss_mb if self.live.monitor else None,
            cpu_max_percent=round(max(cpu), 2),
            cpu_avg_percent=round(sum(cpu) / len(cpu), 2),
            cpu_throttled=reading.cpu_throttled,
            samples=len(cpu),
            source={"memory": "cgroup memory.usage_in_bytes", "cpu": "runsc events --stats"},
        )
        self.report_oom("resources")

    def report_oom(self, stage: str) -> None:
        """Once the kernel has OOM-killed the sandbox: an `oom` receipt and an `error` saying so."""
        instance = self.instance
        oom = instance.oom_kill() if instance is not None else None
        if instance is None or oom is None or self.oom_reported:
            return
        self.oom_reported = True
        self.run.write("oom", stage, **oom.as_receipt())
        self.run.facts["oom_kill"] = oom.reason
        self.run.error(stage, oom.reason, log_tail=instance.logs(30))
        self.run.view.note(f"[red]{oom.reason}[/red]")

    # ------------------------------------------------------------ stage 9

    def check_constraints(self) -> None:
        with self.run.stage("constraints") as stage:
            checks: list[Callable[[], Constraint]] = [
                self.memory_cap,
                self.opt_read_only,
                self.tmp_writable,
                self.non_root,
                self.cpu_quota,
                self.syscall_surface,
                self.network_overhead,
            ]
            for check in checks:
                result = check()
                self.constraints.append(result)
                self.run.write("constraint", "constraints", **result.receipt())
            failed = [c.name for c in self.constraints if not c.passed]
            stage.note = f"{len(self.constraints) - len(failed)}/{len(self.constraints)} proven"
            if failed:
                stage.fail("not proven: " + ", ".join(failed))

    def _not_running(self, name: str, what: str) -> Constraint | None:
        if self.running.alive():
            return None
        oom = self.running.oom_kill()
        why = oom.reason if oom else "the sandbox is not running"
        return Constraint(name, False, what, {"reason": f"not proven: {why}"})

    def memory_cap(self) -> Constraint:
        proof = "cgroup memory.limit_in_bytes read back, the sandbox in it, MemTotal inside"
        limit = self.runtime.limits.memory_bytes
        reading = self.running.cgroup()
        evidence: dict[str, Any] = {
            "limit_mb": _mb(limit),
            "cgroup_limit_mb": _mb(reading.memory_limit_bytes),
            "failcnt": reading.memory_failcnt,
        }
        oom = self.running.oom_kill()
        if oom is not None:  # the kernel enforced it: the strongest proof there is
            evidence.update(oom_kill=True, exit_status=oom.exit_status, peak_mb=oom.max_usage_mb)
            passed = reading.memory_limit_bytes == limit
            return Constraint("memory_cap", passed, "enforced: OOM kill at the limit", evidence)
        dead = self._not_running("memory_cap", proof)
        if dead:
            return dead
        pid = self.running.sandbox_pid()
        meminfo = self.running.exec(["head", "-n", "1", "/proc/meminfo"])
        inside = _meminfo_total(meminfo.stdout)
        evidence.update(
            sandbox_pid=pid, in_cgroup=pid in reading.memory_procs, inside_mb=_mb(inside)
        )
        passed = reading.memory_limit_bytes == limit and pid in reading.memory_procs
        passed = passed and inside == limit
        return Constraint("memory_cap", passed, proof, evidence)

    def opt_read_only(self) -> Constraint:
        mount = self.runtime.limits.mount_point.rstrip("/")
        target = f"{mount}/{WRITE_PROBE}"
        proof = (
            f"`touch {target}` inside fails as the release's user and, with 'Read-only file "
            f"system', as the sandbox's root; /proc/mounts inside lists {mount} ro"
        )
        dead = self._not_running("opt_read_only", proof)
        if dead:
            return dead
        as_release = self.running.exec(["touch", target])
        as_root = self.running.exec(["touch", target], as_release=False)
        options = _mount_options(self.running.exec(["cat", "/proc/mounts"]).stdout, mount)
        passed = (
            as_release.status != 0
            and as_root.status != 0
            and "read-only file system" in as_root.output.lower()
            and "ro" in options
        )
        return Constraint(
            "opt_read_only",
            passed,
            proof,
            {
                "release_user": {"status": as_release.status, "output": as_release.output[-200:]},
                "sandbox_root": {"status": as_root.status, "output": as_root.output[-200:]},
                "mount_options": options,
            },
        )

    def tmp_writable(self) -> Constraint:
        target = f"/tmp/{WRITE_PROBE}"
        proof = f"`touch {target}` inside, as the release's user, must succeed; tmpfs size by df"
        dead = self._not_running("tmp_writable", proof)
        if dead:
            return dead
        touched = self.running.exec(["touch", target])
        self.running.exec(["rm", "-f", target])
        df = self.running.exec(["df", "-k", "/tmp"])
        size_kb = _df_size_kb(df.stdout)
        want_kb = self.runtime.limits.tmpfs_mb * 1024
        options = _mount_options(self.running.exec(["cat", "/proc/mounts"]).stdout, "/tmp")
        passed = touched.status == 0 and size_kb == want_kb and "rw" in options
        return Constraint(
            "tmp_writable",
            passed,
            proof,
            {
                "status": touched.status,
                "output": touched.output[-300:],
                "tmpfs_kb": size_kb,
                "want_kb": want_kb,
                "mount_options": options,
            },
        )

    def non_root(self) -> Constraint:
        uid = self.runtime.limits.uid
        proof = "`id -u` inside as the release's user, and the uid of every process (runsc ps)"
        dead = self._not_running("non_root", proof)
        if dead:
            return dead
        done = self.running.exec(["id", "-u"])
        procs = self.running.ps()
        uids = sorted({p["uid"] for p in procs})
        inside = int(done.stdout.strip()) if done.stdout.strip().isdigit() else None
        passed = inside == uid != 0 and bool(procs) and uids == [uid]
        return Constraint(
            "non_root",
            passed,
            proof,
            {
                "id_u": inside,
                "want_uid": uid,
                "process_uids": uids,
                "processes": [f"{p['pid']} {p['cmd']}" for p in procs],
            },
        )

    def cpu_quota(self) -> Constraint:
        limits = self.runtime.limits
        proof = "cgroup cpu.cfs_quota_us / cpu.cfs_period_us read back, the sandbox in it"
        dead = self._not_running("cpu_quota", proof)
        if dead:
            return dead
        reading = self.running.cgroup()
        pid = self.running.sandbox_pid()
        quota, period = reading.cpu_quota_us, reading.cpu_period_us
        cpus = round(quota / period, 3) if quota and period and quota > 0 else None
        passed = (quota, period) == (limits.cpu_quota_us, limits.cpu_period_us)
        passed = passed and pid in reading.cpu_procs
        return Constraint(
            "cpu_quota",
            passed,
            proof,
            {
                "cpu_quota_us": quota,
                "cpu_period_us": period,
                "cpus": cpus,
                "want_cpus": limits.cpus,
                "sandbox_pid": pid,
                "in_cgroup": pid in reading.cpu_procs,
                "nr_throttled": reading.cpu_throttled,
            },
        )

    def syscall_surface(self) -> Constraint:
        proof = "`uname -r` and `dmesg` inside: gVisor's kernel, not the host's"
        dead = self._not_running("syscall_surface", proof)
        if dead:
            return dead
        uname = self.running.exec(["uname", "-r"]).stdout.strip()
        dmesg = self.running.exec(["dmesg"]).stdout.splitlines()
        host = self.host_info().get("kernel")
        gvisor = bool(dmesg) and "gVisor" in dmesg[0]
        passed = bool(uname) and uname != host and gvisor
        return Constraint(
            "syscall_surface",
            passed,
            proof,
            {"kernel_inside": uname, "kernel_host": host, "dmesg": dmesg[0] if dmesg else None},
        )

    def network_overhead(self) -> Constraint:
        budget = self.env.sandbox.network_overhead_ms
        proof = (
            f"the same release and load ({self.plan.rate:g} req/s for {self.plan.duration_s:g} s)"
            f" natively minus sandboxed, at p50 and p95, within {budget:g} ms"
        )
        evidence: dict[str, Any] = {"budget_ms": budget}
        if self.sandboxed.p50_ms is None or not self.running.alive():
            oom = self.running.oom_kill()
            why = oom.reason if oom else "the sandboxed load did not complete"
            return Constraint("network_overhead", False, proof, {**evidence, "reason": why})
        try:
            self.measure_native()
        except StageFailed as exc:
            evidence.update(reason=f"the native run failed: {exc.reason}", log_tail=exc.log_tail)
            return Constraint("network_overhead", False, proof, evidence)
        passed, measured = judge_overhead(self.sandboxed, self.native, budget)
        evidence.update(measured)
        return Constraint("network_overhead", passed, proof, evidence)

    def measure_native(self) -> None:
        """The same release as a plain process on the sandbox's host (the runtime's native()),
        under the same load, probed the same way."""
        from pipeline.probes.smoke import run_smoke

        assert self.live.release is not None
        tmp = self.live.workdir / "native-tmp"
        tmp.mkdir(exist_ok=True)
        instance = self.native_runtime.start(self.live.launch_spec(launch_env(self.env, tmp), 0))
        self.native_instance = instance
        try:
            try:
                self.native.startup_s = round(
                    instance.wait_ready(self.env.start.ready_timeout_s), 4
                )
            except StartupFailed as exc:
                raise StageFailed(exc.reason, log_tail=exc.log_tail) from None
            # as in the sandbox: the smoke tests first, then the load
            smoke = run_smoke(instance.url, self.env.smoke)
            if not all(r.passed for r in smoke):
                failed = ", ".join(r.test for r in smoke if not r.passed)
                raise StageFailed(
                    f"smoke tests failed natively: {failed}", log_tail=instance.logs(30)
                )
            summary = open_loop(self.run, instance.url, self.plan, label="native: ")
            self.run.write(
                "summary",
                "constraints",
                runtime="process",
                where=getattr(instance, "facts", None),  # e.g. the remote host, as for startup
                **summary.as_receipt(),
            )
            self.native.p50_ms, self.native.p95_ms = summary.p50_ms, summary.p95_ms
            self.native.rps, self.native.completed = summary.achieved_rps, summary.completed
        finally:
            instance.stop(self.env.start.stop_grace_s)
            self.native_instance = None

    # ------------------------------------------------------------ stage 10

    def summary(self) -> None:
        with self.run.stage("summary") as stage:
            problems = self.stop_sandbox()
            capture = self.running.capture if self.instance is not None else None
            proven = sum(c.passed for c in self.constraints)
            comparison = {
                "native": asdict(self.native),
                "sandboxed": asdict(self.sandboxed),
                "delta": {
                    key: self.sandboxed.delta(self.native, key)
                    for key in ("startup_s", "p50_ms", "p95_ms")
                },
            }
            oom = self.running.oom if self.instance is not None else None
            self.run.write(
                "summary",
                "summary",
                release=f"{self.info.name} {self.info.version}",
                stages_failed=list(self.run.failed_stages),
                constraints_proven=proven,
                constraints_failed=len(self.constraints) - proven,
                comparison=comparison,
                memory_peak_mb=max(self.rss_samples, default=None),
                cpu_max_percent=max(self.cpu_samples, default=None),
                captured=capture.total if capture else 0,
                oom_kill=oom.as_receipt() if oom else None,
                exit_status=self.run.facts.get("exit_status"),
            )
            self.show_comparison()
            stage.note = (
                f"{len(self.run.failed_stages)} stage(s) failed, {proven}/"
                f"{len(self.constraints)} constraints proven, "
                f"{capture.total if capture else 0} release receipts"
            )
            for problem in problems:
                stage.fail(problem)

    def stop_sandbox(self) -> list[str]:
        """Stop the monitor and the sandbox: `shutdown` and `capture` receipts; what went wrong."""
        instance = self.instance
        if instance is None:
            if self.live.monitor is not None:
                self.live.monitor.__exit__(None, None, None)
            return []
        was_alive, status = self.live.shutdown(
            "summary",
            lambda sandboxed: {
                "memory_peak_mb": _mb(sandboxed.final.memory_max_usage_bytes)
                if sandboxed.final
                else None,
                "removed": not sandboxed.sandbox.leftovers,
                "leftovers": sandboxed.sandbox.leftovers,
            },
        )
        self.report_oom("summary")
        problems = []
        if not was_alive and self.live.ready_s is None:
            pass  # it never started: the start stage said why
        elif not was_alive:
            oom = instance.oom
            problems.append(
                oom.reason if oom else f"the sandbox had already exited (status {status})"
            )
            if not oom:
                self.run.error(
                    "summary",
                    f"the sandbox exited on its own with status {status}",
                    log_tail=instance.logs(50),
                )
        elif status != 0:
            problems.append(f"exit status {status} after SIGTERM")
        if instance.sandbox.leftovers:
            problems.append(f"not removed: {', '.join(instance.sandbox.leftovers)}")
        return problems

    def show_comparison(self) -> None:
        view = self.run.view
        if self.sandboxed.startup_s is None:
            return
        view.note("native vs sandboxed (same release, same load):")
        for label, key, unit in (
            ("startup", "startup_s", "s"),
            ("p50", "p50_ms", "ms"),
            ("p95", "p95_ms", "ms"),
        ):
            native, sandboxed = getattr(self.native, key), getattr(self.sandboxed, key)
            delta = self.sandboxed.delta(self.native, key)
            ratio = f"  ×{sandboxed / native:.2f}" if native and sandboxed else ""
            view.note(
                f"  {label:<8} native {_fmt(native, unit):>10}  sandboxed {_fmt(sandboxed, unit):>10}"
                f"  difference {_fmt(delta, unit, sign=True):>10}{ratio}"
            )

    def cleanup(self) -> None:
        if self.native_instance is not None:
            self.native_instance.stop(0)
            self.native_instance = None
        self.live.cleanup()


def _fmt(value: float | None, unit: str, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f} {unit}" if sign else f"{value:.2f} {unit}"


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 3)


def _meminfo_total(text: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "MemTotal:" and len(parts) >= 2 and parts[1].isdigit():
            return int(parts[1]) * 1024
    return None


def _mount_options(mounts: str, where: str) -> list[str]:
    """The options of the mount at `where` in a /proc/mounts text ([] when not mounted)."""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == where:
            return parts[3].split(",")
    return []


def _df_size_kb(text: str) -> int | None:
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return None
    parts = lines[-1].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def run_week2(
    tarball: str | Path,
    env: Env,
    *,
    port: int | None = None,
    receipts: str | Path | None = None,
    view: View | None = None,
    rate: float | None = None,
    duration: float | None = None,
    runtime_factory: Callable[[Env], Any] = runtime_for,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> PhaseResult:
    """Week 2 end to end; bad input or a host without runsc → PipelineError (nothing written)."""
    tarball = Path(tarball)
    if env.runtime != "gvisor":
        raise PipelineError(
            f'{env.path}: week 2 runs the release in the gVisor sandbox: runtime = "gvisor" '
            f"is needed (e.g. --env ccw-sandbox), not {env.runtime!r}"
        )
    info = releases.inspect(tarball)  # not an OTP release → PipelineError (exit 2)
    settings = env.phase("week2")
    plan = LoadPlan.of(env.profile(settings.load_profile or "week3"), rate, duration)
    spec = env.gate_spec(settings.gate or "week2")
    runtime = runtime_factory(env)  # runsc missing → PipelineError with the install command

    return run_phase_frame(
        "week2",
        tarball,
        env,
        spec,
        lambda run, live: Rehearsal(run, live, plan, info, runtime.native()),
        info=info,
        runtime=runtime,
        port=port,
        receipts=receipts,
        view=view,
        on_record=on_record,
        begin={
            "load": asdict(plan),
            "sandbox": runtime.limits.as_receipt(),
            "stages": list(STAGES),
        },
    )
