"""Chaos for week 5: a rollout killed at a seeded random step with SIGINT, SIGTERM, SIGHUP and
SIGKILL, against the emulator (started as users start it, so it outlives the pipeline as Cloud
Run does).

Each trial checks what an operator would: the service serves at the last completed canary step
(the candidate's share is the state file's, not the interrupted step's); INT/TERM/HUP seal a
failing verdict naming the signal, KILL leaves a file `runs.recover` closes; then
`invoke cloudrun.resume` finishes the rollout (candidate at 100 %, Gate 4 passed).

A last test kills a week 5 that started its own emulator: the emulator keeps serving (Cloud Run
does not stop because a pipeline died), `runs.recover` stops it, `cloudrun.resume` starts it
again and completes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fixtures_chaos import (
    INVOKE,
    REPO,
    assert_ended_by,
    kill_at,
    recover,
    seeded_trials,
    trial_ids,
)
from fixtures_emulator import gates_passed

from pipeline import config, gates, receipts
from pipeline.cloudrun.rollout import RolloutState
from pipeline.runtime.process import free_port

# kill points: every step but the last (`production` may judge and seal before the signal lands)
STAGES = {"week5": ("deploy", "smoke", "canary-10", "canary-50", "scale", "drain")}
TRIALS = seeded_trials(STAGES, per_signal=1)  # 4 signals × 1 = 4 trials


@pytest.fixture(scope="module")
def serving(cloud, reference_tarball):
    """A first release rolled out, so every trial is a canary rollout against a stable one."""
    from pipeline.phases.week5 import run_week5

    result = run_week5(gates_passed(reference_tarball(version="2.0.0")), cloud["env"])
    assert result.verdict.passed, result.verdict.summary()
    return cloud


@pytest.fixture(autouse=True)
def _shared_runs(cloud, monkeypatch):
    """One ledger for the module (week 5's preflight reads it)."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(cloud["runs"]))


def errors_in(path: Path) -> list[tuple[str | None, str]]:
    from fixtures_chaos import complete_records

    return [(r.get("stage"), r["reason"]) for r in complete_records(path) if r["kind"] == "error"]


def week5_receipts(runs: Path, before: set[Path]) -> Path | None:
    new = [p for p in runs.glob("*-week5-*/receipts.jsonl") if p not in before]
    return new[0] if len(new) == 1 else None


def candidate_share(env: config.Env, candidate: str) -> int:
    """The candidate revision's percent of the service's traffic, read from the API."""
    from pipeline.cloudrun.client import RunV2

    service = RunV2(env.cloudrun).get_service()
    assert service is not None
    return sum(
        int(t.percent) for t in service.traffic if t.revision and t.revision.endswith(candidate)
    )


def resume(state: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, "cloudrun.resume", "--state", str(state), "--env", str(env_file)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.chaos
@pytest.mark.parametrize(("trial", "phase", "signame", "stage"), TRIALS, ids=trial_ids(TRIALS))
def test_a_rollout_killed_at_any_step_serves_the_last_completed_one_and_resumes(
    reference_tarball, serving, trial, phase, signame, stage
):
    cloud = serving
    tarball = gates_passed(reference_tarball(version=f"2.{trial + 1}.0"))
    runs = cloud["runs"]
    before = set(runs.glob("*-week5-*/receipts.jsonl"))
    command = [INVOKE, "phase2.week5", "--tarball", str(tarball), "--env", str(cloud["env_file"])]
    killed = kill_at(command, lambda: week5_receipts(runs, before), stage, signame, wait_s=180)
    said = f"trial {trial}: {errors_in(killed.receipts)} / {killed.stderr[-1500:]}"
    assert_ended_by(killed, signame)
    state_path = killed.receipts.parent / "rollout.json"
    state = RolloutState.load(state_path)
    assert state.phase not in ("done", "rolled_back"), said
    if signame == "SIGKILL":  # traffic may sit at the cut step until runs.recover puts it back
        assert recover(killed.receipts)[-2]["kind"] == "crashed"
    if state.candidate:
        share = candidate_share(cloud["env"], state.candidate)
        assert share == state.current_percent, f"{share} % on the candidate; {said}"
    verified = receipts.verify(killed.receipts)
    assert verified.ok and verified.sealed, verified.describe()
    spec = cloud["env"].gate_spec("week5")
    assert not gates.check(killed.receipts, spec).passed
    resumed = resume(state_path, cloud["env_file"])
    assert resumed.returncode == 0, f"{resumed.stderr[-2000:]}; {said}"
    final = RolloutState.load(state_path)
    assert final.phase == "done" and final.current_percent == 100
    assert candidate_share(cloud["env"], final.candidate) == 100


@pytest.mark.chaos
def test_a_killed_week5_leaves_its_emulator_serving_until_recovered_and_resume_restarts_it(
    reference_tarball, cloud, tmp_path
):
    """The emulator week 5 starts itself (nothing listens at its endpoint) outlives a SIGKILL
    of the pipeline, serving what the rollout reached; `runs.recover` closes the run and stops
    it; `cloudrun.resume` starts it again (its services kept), completes, and stops it."""
    from pipeline.runtime.readiness import listening

    port = free_port()
    env_file = tmp_path / "own-emulator.toml"
    env_file.write_text(
        f'extends = "{cloud["env_file"]}"\n[emulator]\nport = {port}\n'
        f'[cloudrun]\nendpoint = "http://127.0.0.1:{port}"\n'
    )
    endpoint = f"http://127.0.0.1:{port}"
    runs = tmp_path / "runs"
    environ = {**os.environ, "PIPELINE_RUNS_DIR": str(runs)}
    tarball = gates_passed(reference_tarball(version="2.9.0"))
    ledger = cloud["runs"] / "gates.jsonl"  # the passes week 5's preflight looks for
    runs.mkdir()
    (runs / "gates.jsonl").write_bytes(ledger.read_bytes())
    killed = kill_at(
        [INVOKE, "phase2.week5", "--tarball", str(tarball), "--env", str(env_file)],
        lambda: next(iter(runs.glob("*-week5-*/receipts.jsonl")), None),
        "smoke",  # a first deployment: deploy (100 %), smoke, scale, production
        "SIGKILL",
        env=environ,
        wait_s=180,
    )
    assert_ended_by(killed, "SIGKILL")
    try:
        state_path = killed.receipts.parent / "rollout.json"
        assert listening(endpoint), "the emulator week 5 started died with it"
        env = config.load_env(env_file)
        assert candidate_share(env, RolloutState.load(state_path).candidate) == 100
        closed = recover(killed.receipts, env=environ)
        assert closed[-2]["kind"] == "crashed" and any(
            "emulator" in what for what in closed[-2]["removed"]
        ), closed[-2]
        assert not listening(endpoint), "runs.recover left the emulator running"
        resumed = subprocess.run(
            [INVOKE, "cloudrun.resume", "--state", str(state_path), "--env", str(env_file)],
            cwd=REPO, env=environ, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert RolloutState.load(state_path).phase == "done"
        assert not listening(endpoint), "cloudrun.resume left the emulator it started running"
    finally:
        subprocess.run(
            [INVOKE, "emulator.stop", "--env", str(env_file)],
            cwd=REPO, env=environ, capture_output=True, timeout=120,
        )  # fmt: skip
