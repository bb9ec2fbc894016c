"""Week 3 phase overhead: wall time ≤ time-to-ready + load duration + 1.0 s.

Runs the whole phase (in-process, as `invoke phase2.week3` does after its imports) on the
reference release and prints wall, ready, load and the overhead; also `invoke --list` time.
Anchors: the phase's own ready time and load window (both measured in the same run).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import config, reference  # noqa: E402
from pipeline.phases.week3 import run_week3  # noqa: E402

BUDGET_S = 1.0
DURATION_S = 5.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PIPELINE_RUNS_DIR"] = str(Path(tmp) / "runs")
        tarball = reference.build(Path(tmp) / "build")
        env = config.load_env("local")
        overheads = []
        for _ in range(3):
            began = time.monotonic()
            result = run_week3(tarball, env, duration=DURATION_S)
            wall = time.monotonic() - began
            ready = result.facts["startup_s"]
            overhead = wall - ready - DURATION_S
            overheads.append(overhead)
            print(
                f"phase wall {wall:.2f} s = ready {ready:.2f} s + load {DURATION_S:.1f} s + overhead {overhead:.2f} s "
                f"(gate {'PASS' if result.verdict.passed else 'FAIL'})"
            )
        best = min(overheads)
        print(
            f"overhead best {best:.2f} s, median {statistics.median(overheads):.2f} s (budget {BUDGET_S:.1f} s)"
        )
        invoke = str(Path(sys.executable).parent / "invoke")
        times = []
        for _ in range(5):
            began = time.monotonic()
            subprocess.run([invoke, "--list"], cwd=REPO, capture_output=True, check=True)
            times.append(time.monotonic() - began)
        print(f"invoke --list: median {statistics.median(times):.3f} s (budget 0.5 s)")
        return 0 if best <= BUDGET_S and statistics.median(times) < 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
