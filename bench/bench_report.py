"""Bench: the run report (HTML + JUnit) of a million receipts against gate.check of the same file.

    .venv/bin/python bench/bench_report.py [--requests 1000000] [--rounds 3] [--long-hours 24]

The file is the realistic sealed week-3 run of bench/make_receipts.py (the real ReceiptWriter: run,
stages, startup, five smoke receipts, a request receipt per request, a metrics sample every
0.25 s, summary, shutdown, seal), cached under bench/out/ and shared with bench_gate_check.py.

Timed in this process, in alternating rounds after one untimed warm-up of each (page cache,
imports), best of `--rounds` each:
  * the anchor: `pipeline.gates.check(FILE, week3 of envs/local.toml)` — verify the chain and
    judge the gate in one streaming pass (parallel on every core for big files);
  * `pipeline.reporting.write_reports(FILE, local)` — verify and aggregate in one streaming pass
    (the same scan with the report's collector), render report.html and junit.xml, write both.
Target: report ≤ 2× gate.check, and report.html < 2 MB.

The HTML must stay under 2 MB whatever the run's size, so a second file spans `--long-hours` of
run time (2 requests and a metrics sample per second, the writer's clock injected so it is written
in seconds): its time bins coarsen (2 s, 4 s, … wide) to at most 900 points a chart.

`invoke report` is also run once as a command (interpreter start, imports, env file) with its peak
RSS (getrusage RUSAGE_CHILDREN: the command and its forked scan workers): constant memory means
tens of MB for a file of hundreds of MB. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from make_receipts import GENERATOR_VERSION, cached  # noqa: E402

from pipeline import config, gates, receipts  # noqa: E402
from pipeline.reporting import model, write_reports  # noqa: E402

TARGET_RATIO = 2.0
MAX_HTML = 2 * 1024 * 1024
INVOKE = ROOT / ".venv" / "bin" / "invoke"


def alternate(rounds: int, runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best time of each callable over `rounds` alternating rounds, after one warm-up each."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def long_run(path: Path, hours: float) -> int:
    """A sealed week-3-shaped run spanning `hours` of ts (the writer's clock injected)."""
    clock = [datetime(2026, 1, 26, 0, 0, 0, tzinfo=UTC)]

    def now_ts() -> str:
        return clock[0].isoformat(timespec="milliseconds").replace("+00:00", "Z")

    real, receipts.now_ts = receipts.now_ts, now_ts
    try:
        with receipts.ReceiptWriter(path, run_id="bench-long", phase="week3") as writer:
            writer.write("run", tool="taiea-pipeline", env="local", host="bench", release={})
            writer.write("stage", "load", event="start")
            seconds = int(hours * 3600)
            for s in range(seconds):
                for i in range(2):
                    writer.write(
                        "request", "load", latency_ms=4.0 + (s + i) % 13, passed=True, status=200
                    )
                    clock[0] += timedelta(seconds=0.5)
                writer.write("metrics", "monitor", rss_mb=90.0 + s % 17, cpu_percent=4.0)
            writer.write("stage", "load", event="end", passed=True, seconds=float(seconds))
            spec = gates.parse_gate("week3", {"http.latency_ms": ["p(95) < 250"]}, "bench")
            verdict = gates.check(path, spec, require_seal=False)
            writer.write("gate", "gate", **verdict.as_fields())
            writer.seal()
        return seconds * 3 + 5
    finally:
        receipts.now_ts = real


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-hours", type=float, default=24.0)
    args = parser.parse_args()

    path = cached(args.requests)
    size = path.stat().st_size
    env = config.load_env("local")
    spec = env.gate_spec("week3")
    out = Path(tempfile.mkdtemp(prefix="bench-report-"))
    ok = True
    try:
        print(f"file: {path.name} (generator v{GENERATOR_VERSION}), {size / 1e6:.0f} MB")
        print(
            f"cores: {os.cpu_count()}, rounds: best of {args.rounds}, alternating, after a warm-up"
        )

        html, junit = out / "report.html", out / "junit.xml"
        command = [str(INVOKE), "report", "--receipts", str(path), "--html", str(html)]
        command += ["--junit", str(junit), "--env", "local"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        t_cli = time.perf_counter() - started
        cli_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, workers included
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return 1

        verdicts: list[gates.Verdict] = []
        written: list[tuple[Path, Path]] = []
        best = alternate(
            args.rounds,
            {
                "gate.check": lambda: verdicts.append(gates.check(path, spec)),
                "report": lambda: written.append(
                    write_reports(path, env, html_path=html, junit_path=junit)
                ),
            },
        )
        t_check, t_report = best["gate.check"], best["report"]
        ratio = t_report / t_check
        html_size = html.stat().st_size
        mb = size / 1e6
        print(
            f"gates.check (anchor)      : {t_check:7.3f} s  ({mb / t_check:5.0f} MB/s)  "
            f"verdict {'PASS' if verdicts[-1].passed else 'FAIL'}"
        )
        print(
            f"write_reports (HTML+JUnit): {t_report:7.3f} s  ({mb / t_report:5.0f} MB/s)  "
            f"ratio {ratio:.2f}x  (target <= {TARGET_RATIO}x gate.check)"
        )
        print(
            f"report.html {html_size / 1024:.0f} KiB (target < {MAX_HTML // 1024} KiB), "
            f"junit.xml {junit.stat().st_size / 1024:.1f} KiB"
        )
        print(
            f"invoke report (command)   : {t_cli:7.3f} s once, cold; peak RSS "
            f"{cli_rss / 1024:.0f} MiB (children ru_maxrss) for a {mb:.0f} MB file"
        )
        if ratio > TARGET_RATIO:
            print(f"FAIL: the report took {ratio:.2f}x gate.check (target {TARGET_RATIO}x)")
            ok = False
        if html_size >= MAX_HTML:
            print(f"FAIL: report.html is {html_size} bytes (target < {MAX_HTML})")
            ok = False

        if args.long_hours > 0:
            long_path = out / "long" / "receipts.jsonl"
            started = time.perf_counter()
            count = long_run(long_path, args.long_hours)
            written_s = time.perf_counter() - started
            started = time.perf_counter()
            long_html, _ = write_reports(long_path, env)
            t_long = time.perf_counter() - started
            report = model.build(long_path)
            long_size = long_html.stat().st_size
            print(
                f"long run: {args.long_hours:g} h, {count:,} receipts (written in {written_s:.1f} s)"
                f" → report in {t_long:.2f} s, {len(report.points)} points of {report.bin_s} s, "
                f"report.html {long_size / 1024:.0f} KiB"
            )
            if long_size >= MAX_HTML or len(report.points) > model.MAX_BINS:
                print(f"FAIL: long run report.html {long_size} bytes, {len(report.points)} points")
                ok = False
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
