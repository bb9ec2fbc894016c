"""Week 5 tool overhead: a three-step canary rollout (10, 50, 100 %) with zero bake time against
the local emulator must cost ≤ 3 s beyond the candidate's cold start (and the production window).

Anchors, measured in the same run: the candidate instance's own time to ready (the emulator's
metrics) and the production load window (set to 1 s). Weeks 3 and 4 run first, untimed, because
the preflight demands their passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import config, reference  # noqa: E402
from pipeline.phases.week3 import run_week3  # noqa: E402
from pipeline.phases.week4 import run_week4  # noqa: E402
from pipeline.phases.week5 import run_week5  # noqa: E402
from pipeline.runtime.process import free_port  # noqa: E402

BUDGET_S = 3.0
PRODUCTION_S = 1.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["PIPELINE_RUNS_DIR"] = str(base / "runs")
        port = free_port()
        env_file = base / "bench.toml"
        env_file.write_text(
            f'extends = "{REPO / "envs" / "cloudrun-local.toml"}"\n[emulator]\nport = {port}\n'
            f'[cloudrun]\nendpoint = "http://127.0.0.1:{port}"\nmin_instances = 1\nbake_s = 0\n'
            f"production_s = {PRODUCTION_S}\nproduction_rate = 200\n"
        )
        env = config.load_env(env_file)
        local = config.load_env("local")
        tarballs = [reference.build(base / v, version=v) for v in ("1.0.0", "1.1.0")]
        for tarball in tarballs:
            assert run_week3(tarball, local, duration=2).verdict.passed
            assert run_week4(tarball, local).verdict.passed
        command = [sys.executable, "-m", "pipeline.emulator"]
        state = ["--state-dir", str(base / "emulator")]
        subprocess.run(
            [
                *command,
                "start",
                "--background",
                "--port",
                str(port),
                "--env",
                str(env_file),
                *state,
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            first = run_week5(tarballs[0], env)
            assert first.verdict.passed, first.verdict.summary()
            began = time.monotonic()
            result = run_week5(tarballs[1], env)
            wall = time.monotonic() - began
            if not result.verdict.passed:
                for record in _ends(result.receipts):
                    print(record["stage"], record["passed"], record.get("reason"))
                raise SystemExit(f"the rollout failed: {result.verdict.summary()}")
            candidate = result.facts["candidate"]
            url = (
                f"http://127.0.0.1:{port}/emulator/v1/projects/{env.cloudrun.project}/locations/"
                f"{env.cloudrun.region}/services/{env.cloudrun.service}/metrics"
            )
            metrics = json.loads(urllib.request.urlopen(url, timeout=10).read())
            revision = next(r for r in metrics["revisions"] if r["revision"] == candidate)
            cold = min(
                i["ready_s"] for i in revision["instance_list"] if i.get("ready_s") is not None
            )
        finally:
            subprocess.run([*command, "stop", *state], cwd=REPO, capture_output=True)
        overhead = wall - cold - PRODUCTION_S
        stages = {r["stage"]: r["seconds"] for r in _ends(result.receipts)}
        print(
            f"three-step rollout: wall {wall:.2f} s = candidate cold start {cold:.2f} s + production window "
            f"{PRODUCTION_S:.1f} s + tool overhead {overhead:.2f} s (budget {BUDGET_S:.1f} s)"
        )
        print("stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
        return 0 if overhead <= BUDGET_S else 1


def _ends(path: Path) -> list[dict]:
    from pipeline import receipts

    return [
        r for r in receipts.iter_records(path) if r["kind"] == "stage" and r.get("event") == "end"
    ]


if __name__ == "__main__":
    raise SystemExit(main())
