"""Bench: what the gVisor sandbox costs the release — native vs sandboxed, in one run.

    .venv/bin/python bench/bench_sandbox_overhead.py [--duration 5] [--rate 200] [--rounds 2]

The anchor is the same release run natively (the `process` runtime, a child process here) in the
same run, under the same load: the stress profile of envs/base.toml (200 req/s for 30 s),
shortened to ``--duration`` seconds. The sandbox is the `gvisor` runtime of envs/ccw-sandbox.toml
(512 MiB, 1 CPU quota, read-only /opt/taiea, uid 65534, --network=host).

Each round starts the release natively, then in the sandbox (alternating which goes first), waits
for /ready (startup), runs the five smoke tests once (warm-up, as the phases do), then the open-loop
load over the smoke endpoints, then stops it. Printed per round and as medians: startup, p50 and
p95 (latency from the scheduled send time, so stalls are not hidden), achieved req/s, CPU % of one
core over the load window (psutil natively, `runsc events --stats` in the sandbox), failures,
and sandboxed minus native and sandboxed / native.

The release is the reference release (pipeline/reference.py), built into a temp dir, unless
``--tarball`` names one. Target (the env's network_overhead_ms budget, 20 ms): the median p50
and p95 differences within it. Exit status 0 when they are, 1 otherwise, 2 when runsc is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config, reference  # noqa: E402
from pipeline import release as releases  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.phases.stages import load_targets  # noqa: E402
from pipeline.probes.load import run_open_loop  # noqa: E402
from pipeline.probes.smoke import run_smoke  # noqa: E402
from pipeline.runtime import runtime_for  # noqa: E402
from pipeline.runtime.base import LaunchSpec  # noqa: E402
from pipeline.runtime.process import ProcessRuntime  # noqa: E402


@dataclass(frozen=True)
class Side:
    startup_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float
    cpu_percent: float  # average over the load window, % of one core
    failed: int


def measure(
    runtime: Any, root: Path, name: str, env: config.Env, rate: float, duration: float, tmp: Path
) -> Side:
    spec = LaunchSpec(
        root=root,
        name=name,
        env={"TMPDIR": str(tmp), "TAIEA_ENV": "dev"},
        port=0,
        run_id="bench",
    )
    instance = runtime.start(spec)
    try:
        startup = instance.wait_ready(env.start.ready_timeout_s)
        smoke = run_smoke(instance.url, env.smoke)
        if not all(r.passed for r in smoke):
            raise SystemExit(f"smoke failed on {runtime.name}: {[r.test for r in smoke]}")
        instance.stats()  # the CPU baseline: the next sample is the load window's average
        summary = run_open_loop(
            instance.url,
            load_targets(env.smoke),
            rate,
            duration,
            max_inflight=env.load.max_inflight,
            timeout_s=env.load.timeout_s,
            late_ms=env.load.late_ms,
        )
        cpu = instance.stats().cpu_percent
    finally:
        instance.stop(env.start.stop_grace_s)
    return Side(
        startup_s=startup,
        p50_ms=summary.p50_ms,
        p95_ms=summary.p95_ms,
        p99_ms=summary.p99_ms,
        rps=summary.achieved_rps,
        cpu_percent=cpu,
        failed=summary.completed - summary.passed + summary.dropped,
    )


def row(label: str, native: Side, sandboxed: Side) -> list[str]:
    lines = [f"{label}"]
    for key, unit in (("startup_s", "s"), ("p50_ms", "ms"), ("p95_ms", "ms"), ("p99_ms", "ms")):
        n, s = getattr(native, key), getattr(sandboxed, key)
        ratio = f"x{s / n:.2f}" if n > 0 else "n/a"
        lines.append(
            f"  {key:<10} native {n:9.2f} {unit:<2}  sandboxed {s:9.2f} {unit:<2}"
            f"  difference {s - n:+9.2f} {unit:<2}  {ratio}"
        )
    lines.append(
        f"  cpu %      native {native.cpu_percent:9.1f}     sandboxed {sandboxed.cpu_percent:9.1f}"
        "     (of one core; the sandbox's quota is 100)"
    )
    lines.append(
        f"  req/s      native {native.rps:9.1f}     sandboxed {sandboxed.rps:9.1f}"
        f"     failed native {native.failed:g}, sandboxed {sandboxed.failed:g}"
    )
    return lines


def median_side(sides: list[Side]) -> Side:
    return Side(
        *(statistics.median(getattr(s, f) for s in sides) for f in Side.__dataclass_fields__)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path, help="release tarball (default: reference build)")
    parser.add_argument("--rate", type=float, help="req/s (default: the stress profile's)")
    parser.add_argument("--duration", type=float, default=5.0, help="load seconds per side")
    parser.add_argument("--rounds", type=int, default=2, help="native+sandboxed pairs")
    args = parser.parse_args()

    sandbox_env = config.load_env("ccw-sandbox")
    stress = sandbox_env.profile("stress")
    rate = args.rate or stress.rate
    try:
        gvisor = runtime_for(sandbox_env)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    native_runtime = ProcessRuntime()
    budget = sandbox_env.sandbox.network_overhead_ms

    with tempfile.TemporaryDirectory(prefix="taiea-bench-sandbox-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        tarball = args.tarball or reference.build(work / "build")
        extracted = releases.extract(tarball, work / "release")
        extracted.root.chmod(0o755)
        (work / "tmp").mkdir()
        print(
            f"release {extracted.info.name} {extracted.info.version}; stress profile "
            f"{stress.rate:g} req/s for {stress.duration_s:g} s, shortened to {rate:g} req/s "
            f"for {args.duration:g} s; sandbox: {sandbox_env.sandbox.memory_mb} MiB, "
            f"{sandbox_env.sandbox.cpus:g} CPU, runsc --network=host"
        )
        natives: list[Side] = []
        sandboxes: list[Side] = []
        for n in range(args.rounds):
            order = [("native", native_runtime), ("sandboxed", gvisor)]
            if n % 2:
                order.reverse()
            got: dict[str, Side] = {}
            for label, runtime in order:
                got[label] = measure(
                    runtime,
                    extracted.root,
                    extracted.info.name,
                    sandbox_env,
                    rate,
                    args.duration,
                    work / "tmp",
                )
            natives.append(got["native"])
            sandboxes.append(got["sandboxed"])
            print(
                "\n".join(
                    row(f"round {n + 1} ({order[0][0]} first)", got["native"], got["sandboxed"])
                )
            )
        native, sandboxed = median_side(natives), median_side(sandboxes)
        print("\n".join(row(f"median of {args.rounds} rounds", native, sandboxed)))
    p50, p95 = sandboxed.p50_ms - native.p50_ms, sandboxed.p95_ms - native.p95_ms
    ok = p50 <= budget and p95 <= budget
    print(
        f"target: p50 and p95 difference <= {budget:g} ms (network_overhead_ms): "
        f"p50 {p50:+.2f} ms, p95 {p95:+.2f} ms -> {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
