"""Bench: judging a million receipts (gate.check) against hashing the same file (sha256sum).

    .venv/bin/python bench/bench_gate_check.py [--requests 1000000] [--rounds 3]

The file is a realistic sealed week-3 run written by the real ReceiptWriter (bench/make_receipts.py:
a run record, stages, startup, five smoke receipts, one request receipt per request with the fields
the week-3 load writes, a metrics sample every 0.25 s, the seal), cached under bench/out/.

Timed, best of `--rounds` each, after one untimed warm-up round (page cache, imports); the three
run interleaved in every round, so a burst of load from a shared machine hits all of them alike:
  * `sha256sum FILE` — the anchor: reading and hashing every byte once;
  * `pipeline.gates.check(FILE, week3)` in this process — verify the whole chain and judge the
    week3 gate of envs/local.toml in one streaming pass;
  * `.venv/bin/invoke gate.check --gate week3 --receipts FILE` — the full command a release
    engineer runs (interpreter start, imports, env file, verdict table, ledger append).
Target: the full `invoke gate.check` within 1.5x sha256sum. Exit status 1 when the ratio is over
(or when the verdict is not PASS: the generated run is a passing one).

Also printed: each round's ratios, the CPU seconds of each (user + sys, scan workers included: less
sensitive to other load than wall time), the peak RSS of the `invoke gate.check` process tree
(getrusage RUSAGE_CHILDREN ru_maxrss, taken before this process forks any scan worker of its own),
and this process's ru_maxrss around the in-process check.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from make_receipts import GENERATOR_VERSION, cached  # noqa: E402

from pipeline import config, gates  # noqa: E402

TARGET_RATIO = 1.5
INVOKE = ROOT / ".venv" / "bin" / "invoke"


def cpu_seconds() -> float:
    """User + system CPU of this process and of every child reaped so far."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(run: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    cpu, start = cpu_seconds(), time.perf_counter()
    result = run()
    return time.perf_counter() - start, cpu_seconds() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    path = cached(args.requests)
    size = path.stat().st_size
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        print("sha256sum is not installed (apt-get install -y coreutils)", file=sys.stderr)
        return 1
    print(f"file: {path.name} (generator v{GENERATOR_VERSION}), {size / 1e6:.0f} MB")
    print(f"cores: {os.cpu_count()}, rounds: best of {args.rounds} after one warm-up")

    def hash_file() -> str:
        out = subprocess.run([sha256sum, str(path)], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]

    runs = tempfile.mkdtemp(prefix="bench-gate-runs-")  # the CLI appends to runs/gates.jsonl here
    env = dict(os.environ, PIPELINE_RUNS_DIR=runs)
    env.pop("PIPELINE_RECEIPT_KEY", None)
    command = [str(INVOKE), "gate.check", "--gate", "week3", "--receipts", str(path)]

    def cli() -> int:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode not in (0, 99):
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"invoke gate.check exited {done.returncode}")
        return done.returncode

    spec = config.load_env("local").gate_spec("week3")

    def in_process() -> gates.Verdict:
        return gates.check(path, spec)

    # The machine may be shared: the three are interleaved in every round (after one warm-up
    # round), so a burst of load hits all of them alike; each figure is the best of the rounds.
    walls: dict[str, list[float]] = {"sha": [], "cli": [], "check": []}
    cpus: dict[str, list[float]] = {"sha": [], "cli": [], "check": []}
    cli_rss = self_before = self_after = 0
    cli_rc, verdict = -1, None
    try:
        for round_no in range(args.rounds + 1):
            wall_sha, cpu_sha, _ = timed(hash_file)
            wall_cli, cpu_cli, cli_rc = timed(cli)
            if round_no == 0:  # before any in-process check forks workers that inherit our RSS
                cli_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
                self_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            wall_check, cpu_check, verdict = timed(in_process)
            self_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if round_no == 0:
                continue  # warm-up: page cache, imports
            for name, wall, cpu in (
                ("sha", wall_sha, cpu_sha),
                ("cli", wall_cli, cpu_cli),
                ("check", wall_check, cpu_check),
            ):
                walls[name].append(wall)
                cpus[name].append(cpu)
            print(
                f"  round {round_no}: sha256sum {wall_sha:.2f} s, invoke gate.check "
                f"{wall_cli:.2f} s ({wall_cli / wall_sha:.2f}x), gates.check {wall_check:.2f} s "
                f"({wall_check / wall_sha:.2f}x)",
                flush=True,
            )
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    assert isinstance(verdict, gates.Verdict)
    t_sha, t_cli, t_check = min(walls["sha"]), min(walls["cli"]), min(walls["check"])
    c_sha, c_cli, c_check = min(cpus["sha"]), min(cpus["cli"]), min(cpus["check"])

    ratio_cli, ratio_check = t_cli / t_sha, t_check / t_sha
    mb_s = size / 1e6
    print(f"sha256sum                : {t_sha:7.3f} s  ({mb_s / t_sha:6.0f} MB/s)")
    print(
        f"gates.check (in process) : {t_check:7.3f} s  ({mb_s / t_check:6.0f} MB/s)  "
        f"ratio {ratio_check:.2f}x  verdict {'PASS' if verdict.passed else 'FAIL'}"
    )
    print(
        f"invoke gate.check (CLI)  : {t_cli:7.3f} s  ({mb_s / t_cli:6.0f} MB/s)  "
        f"ratio {ratio_cli:.2f}x  exit {cli_rc}   (target <= {TARGET_RATIO}x sha256sum)"
    )
    print(
        f"CPU seconds (user+sys, all processes): sha256sum {c_sha:.2f}, invoke gate.check "
        f"{c_cli:.2f} ({c_cli / c_sha:.2f}x), gates.check {c_check:.2f} ({c_check / c_sha:.2f}x)"
    )
    print(f"peak RSS invoke gate.check (children ru_maxrss): {cli_rss / 1024:.0f} MiB")
    print(
        f"peak RSS this process (ru_maxrss): {self_before / 1024:.0f} MiB before the in-process "
        f"check, {self_after / 1024:.0f} MiB after"
    )
    ok = True
    if not verdict.passed or cli_rc != 0:
        print(f"FAIL: the generated run should pass the gate: {verdict.summary()}")
        ok = False
    if ratio_cli > TARGET_RATIO:
        print(f"FAIL: invoke gate.check took {ratio_cli:.2f}x sha256sum (target {TARGET_RATIO}x)")
        ok = False
    if ok:
        print("OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
