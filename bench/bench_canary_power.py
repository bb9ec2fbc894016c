"""Bench: the power of the canary's comparison — how often a regression is caught at the first
step, and how often an identical release is wrongly failed — in one run.

    .venv/bin/python bench/bench_canary_power.py [--rounds 20] [--bake-s 10] [--env cloudrun-local]

One local Cloud Run emulator (as week 5 uses it), the reference release. The stable revision is
1.0.0 serving 90 % and tagged `baseline`; each scenario deploys a candidate tagged `candidate`
at 10 % (the first canary step) and runs `--rounds` bake windows of `--bake-s` seconds exactly as
week 5 does (the service URL at `bake_rate`, both tag URLs at `[analysis] compare_rate`), each
judged by the env's `[gates.canary]` and step score. Scenarios: an identical release (false
positives), `delay` at +1, +2, +5, +10 and +20 ms a request (graded slowdown), `errors` at 0.5 %,
2 %, 3 % (prod_errors) and 5 % of all requests (graded error rate). Printed: a table of caught / rounds per scenario, the rate, and
the smallest slowdown and error rate caught in ≥ 95 % of the rounds. Bars (exit 1 when missed):
identical passes ≥ 95 %; +20 ms (prod_slow-like) and 3 % errors (prod_errors) caught ≥ 95 %.
The anchor is the identical release itself: every figure is against it, in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import config, reference  # noqa: E402
from pipeline.analysis import side_urls_of, step_score, window_gate  # noqa: E402
from pipeline.cloudrun.client import Route, RunV2, Template  # noqa: E402
from pipeline.cloudrun.rollout import canary_routes  # noqa: E402
from pipeline.gates import check  # noqa: E402
from pipeline.phases.base import PhaseRun  # noqa: E402
from pipeline.phases.stages import LoadPlan, run_load_stage, side_loads  # noqa: E402
from pipeline.runtime.process import free_port  # noqa: E402

SCENARIOS = (
    ("identical", "none", {}),
    ("+1 ms", "delay", {"TAIEA_DELAY_MS": "1"}),
    ("+2 ms", "delay", {"TAIEA_DELAY_MS": "2"}),
    ("+5 ms", "delay", {"TAIEA_DELAY_MS": "5"}),
    ("+10 ms", "delay", {"TAIEA_DELAY_MS": "10"}),
    ("+20 ms", "delay", {"TAIEA_DELAY_MS": "20"}),
    # the fault counts /health, /marketplace and /pubsub only: 3 of the 5 endpoints of the mix,
    # so every Nth of them is 0.6/N of all requests
    ("0.5 % errors", "errors", {"TAIEA_ERROR_EVERY": "120"}),
    ("2 % errors", "errors", {"TAIEA_ERROR_EVERY": "30"}),
    ("3 % errors", "errors", {"TAIEA_ERROR_EVERY": "20"}),  # prod_errors
    ("5 % errors", "errors", {"TAIEA_ERROR_EVERY": "12"}),
)


def emulator(command: str, env_file: Path, state: Path, port: int) -> None:
    args = [sys.executable, "-m", "pipeline.emulator", command, "--state-dir", str(state)]
    if command == "start":
        args += ["--background", "--port", str(port), "--env", str(env_file)]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bake-s", type=float, default=None, help="default: the env's bake_s")
    parser.add_argument("--env", default="cloudrun-local")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    port = free_port()
    base = config.load_env(args.env)
    env_file = work / "env.toml"
    env_file.write_text(
        f'extends = "{base.path}"\n[emulator]\nport = {port}\nscale_in_delay_s = 300\n'
        f'[cloudrun]\nendpoint = "http://127.0.0.1:{port}"\nmin_instances = 1\n'
    )
    env = config.load_env(env_file)
    bake_s = args.bake_s or env.cloudrun.bake_s
    state = work / "state"
    emulator("start", env_file, state, port)
    rows = []
    try:
        stable = reference.build(work / "stable", version="1.0.0")
        api = RunV2(env.cloudrun)
        api.deploy(Template.of(env.cloudrun, f"file://{stable}"), None)
        stable_rev = api.get_service().latest_created  # type: ignore[union-attr]
        wanted = [s for s in args.only.split(",") if s] or [name for name, _, _ in SCENARIOS]
        for n, (name, fault, extra) in enumerate(SCENARIOS):
            if name not in wanted:
                continue
            tarball = reference.build(work / f"c{n}", version=f"1.1.{n}", fault=fault)
            settings = env.cloudrun.model_copy(update={"env": {**env.cloudrun.env, **extra}})
            api.deploy(Template.of(settings, f"file://{tarball}"), [Route(stable_rev, 100)])
            candidate = api.get_service().latest_created  # type: ignore[union-attr]
            routes = canary_routes(
                stable_rev, candidate, 10, env.cloudrun.tag, env.analysis.baseline_tag
            )
            service = api.set_traffic(routes)
            urls = side_urls_of(service, env.cloudrun.tag, env.analysis.baseline_tag)
            run = PhaseRun("week5", env, receipts_path=work / f"{n}.jsonl")
            caught = 0
            began = time.monotonic()
            for r in range(args.rounds):
                stage = f"canary-10-r{r}"
                with side_loads(
                    run, urls, LoadPlan(env.analysis.compare_rate, bake_s), f"{stage}-compare"
                ):
                    run_load_stage(
                        run,
                        service.uri,
                        LoadPlan(env.cloudrun.bake_rate, bake_s),
                        stage_name=f"{stage}-bake",
                    )
                verdict = check(
                    run.path,
                    window_gate(env, f"{stage}-bake", f"{stage}-compare"),
                    require_seal=False,
                )
                scored = step_score(env, verdict)
                failed = not verdict.passed or (scored is not None and scored["verdict"] != "pass")
                caught += failed
            run.writer.close()
            rows.append((name, caught, args.rounds))
            print(
                f"{name:<14} failed {caught:>2}/{args.rounds} rounds of {bake_s:g} s "
                f"({100 * caught / args.rounds:.0f} %) in {time.monotonic() - began:.0f} s",
                flush=True,
            )
            api.set_traffic(canary_routes(stable_rev, stable_rev, 100, env.cloudrun.tag))
    finally:
        emulator("stop", env_file, state, port)
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: caught / rounds for name, caught, rounds in rows}
    print(f"\n{'scenario':<14} {'failed the step':>16}")
    for name, caught, rounds in rows:
        print(f"{name:<14} {caught:>5}/{rounds:<3} {100 * caught / rounds:>5.0f} %")
    slowest = [n for n, _, _ in SCENARIOS if n.startswith("+") and rate.get(n, 0) >= 0.95]
    errors = [n for n, _, _ in SCENARIOS if n.endswith("errors") and rate.get(n, 0) >= 0.95]
    print(f"smallest slowdown caught in ≥ 95 % of rounds: {slowest[0] if slowest else 'none'}")
    print(f"smallest error rate caught in ≥ 95 % of rounds: {errors[0] if errors else 'none'}")
    bars = {"identical": False, "+20 ms": True, "3 % errors": True}  # caught wanted?
    checked = {name: want for name, want in bars.items() if name in rate}
    ok = all((rate[n] >= 0.95) if want else (rate[n] <= 0.05) for n, want in checked.items())
    print(
        "bars (identical passes ≥ 95 %; +20 ms and 3 % errors = prod_errors caught ≥ 95 %), "
        f"checked on {', '.join(checked) or 'nothing'}:",
        "met" if ok and checked else "MISSED",
    )
    return 0 if ok and checked else 1


if __name__ == "__main__":
    sys.exit(main())
