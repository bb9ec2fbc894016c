"""The tests with load in them, on a machine that is busy: the emulator's and week 5's tests run
under `stress-ng --cpu N` (every core kept busy by another program), with the product's defaults.

A test of behaviour under load must hold on a loaded 2-core machine (a CI runner sharing its
cores, a laptop compiling beside it); a green run on an idle machine proves less. Each round runs
the chosen test files once under the hog and says passed/failed; the anchor is the same files
run once on the idle machine in the same run (`--anchor`), and the ratio is the slowdown.

    .venv/bin/python bench/bench_under_cpu_hog.py [--rounds 3] [--anchor] [--cpus 2] [FILES…]

Exit status 1 when any round failed. Needs stress-ng (Debian; `make setup` installs it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [
    "tests/test_emulator_api.py",
    "tests/test_emulator_lifecycle.py",
    "tests/test_emulator_control.py",
    "tests/test_emulator_health.py",
    "tests/test_week5.py",
    "tests/test_rollout_machine.py",
]


def pytest_round(files: list[str]) -> tuple[bool, float, str]:
    """One pytest run of `files`: (passed, seconds, its closing line)."""
    began = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - began
    lines = [line for line in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if proc.returncode != 0:
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        sys.stdout.write("\n".join(failed) + "\n")
    return proc.returncode == 0, took, lines[-1] if lines else proc.stdout[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--rounds", type=int, default=1, help="rounds under the hog (default 1)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="hog workers")
    parser.add_argument("--anchor", action="store_true", help="also run once unloaded first")
    args = parser.parse_args()
    if shutil.which("stress-ng") is None:
        print("stress-ng is not installed (apt-get install stress-ng, or `make setup`)")
        return 2
    anchor_s = None
    if args.anchor:
        ok, anchor_s, line = pytest_round(args.files)
        print(f"anchor (idle machine): {'passed' if ok else 'FAILED'} in {anchor_s:.0f} s · {line}")
    results = []
    for n in range(1, args.rounds + 1):
        hog = subprocess.Popen(
            ["stress-ng", "--cpu", str(args.cpus), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            ok, took, line = pytest_round(args.files)
        finally:
            os.killpg(hog.pid, signal.SIGTERM)
            hog.wait(30)
        results.append(ok)
        ratio = f" · {took / anchor_s:.2f}× the idle run" if anchor_s else ""
        print(
            f"round {n} under stress-ng --cpu {args.cpus}: {'passed' if ok else 'FAILED'} "
            f"in {took:.0f} s{ratio} · {line}"
        )
    print(f"{sum(results)} of {len(results)} rounds green under the CPU hog")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
