"""`invoke demo` (`make demo`): the mission end to end — 1.0.0, 1.0.1 and 1.0.2 (prod_errors)
each through weeks 2 → 5 (gVisor, the release, the pilot, the local Cloud Run emulator) on the
demo's own runs dir and emulator; 1.0.2 caught at the first canary step and rolled back; the
service answered by 1.0.1 afterwards; nothing left running, also after Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from invoke import Program

from pipeline import config, receipts, reference
from pipeline.cloudrun.rollout import RolloutState
from pipeline.gates import Verdict
from pipeline.phases import demo
from pipeline.phases.all import WeekOutcome
from pipeline.phases.base import PhaseResult
from pipeline.tasks import namespace
from pipeline.waiting import poll

pytestmark = pytest.mark.usefixtures("gvisor_clean")  # week 2 runs in gVisor: no sandbox left

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def invoke(*argv: str) -> int:
    """The task as `invoke` runs it, in this process; its exit code."""
    try:
        Program(namespace=namespace, binary="invoke").run(["invoke", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def prebuilt(reference_tarball, monkeypatch):
    """The demo's releases are the session's reference tarballs (built once per session)."""
    built = {
        (act.version, act.fault): reference_tarball(act.fault, version=act.version)
        for act in demo.ACTS
    }
    monkeypatch.setattr(
        reference,
        "build",
        lambda out_dir, version="1.0.0", fault="none", layout="rebar3": built[(version, fault)],
    )
    return built


def week5_runs(runs: Path) -> dict[str, Path]:
    """release version → its week 5 receipts."""
    found = {}
    for path in sorted(runs.glob("*-week5-*/receipts.jsonl")):
        first = next(receipts.iter_records(path))
        found[first["release"]["version"]] = path
    return found


def kinds(path: Path, kind: str) -> list[dict]:
    return [r for r in receipts.iter_records(path) if r["kind"] == kind]


def leftovers(runs: Path) -> list[str]:
    """Processes whose command line names the demo's runs dir (the emulator, its instances,
    a release) or the emulator that registered there."""
    left = []
    marker = str(runs.resolve())
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if marker in " ".join(proc.info["cmdline"] or ()):
            left.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])[:120]}")
    registry = runs / "emulator" / "emulator.json"
    if registry.exists():
        pid = json.loads(registry.read_text()).get("pid", 0)
        if psutil.pid_exists(pid):
            left.append(f"the emulator (pid {pid}) is still registered and alive")
    return left


@pytest.mark.timeout(400)
def test_make_demo_shows_the_mission_and_exits_0(prebuilt, tmp_path, capsys):
    root = tmp_path / "demo"
    code = invoke("demo", "--runs", str(root), "--out", str(tmp_path / "build"))
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    (runs,) = root.iterdir()
    screen = re.sub(r"\s+", " ", out)

    # what the demo env changes is said, and the gates are the product's own
    bake_s = config.load_env(demo.DEMO_ENV).cloudrun.bake_s
    assert f"demo env: week 5: canary bake windows shortened to {bake_s:g} s" in out
    assert (
        "gates: cloudrun-local's thresholds except week5 instances.shortfall count <= 5 "
        "(cloudrun-local: count == 0)" in screen
    )

    # the table of the four gates per release
    assert re.search(r"1\.0\.0 ✓ ✓ ✓ ✓ ✓ first deployment", screen), out[-3000:]
    assert re.search(r"1\.0\.1 ✓ ✓ ✓ ✓ ✓ canary over 1\.0\.0", screen), out[-3000:]
    assert re.search(r"1\.0\.2 prod_errors ✓ ✓ ✓ ✗ ✓ caught, rolled back", screen), out[-3000:]
    assert "demo: as meant" in out

    # week 5 of each release, from its receipts
    runs_by_version = week5_runs(runs)
    assert sorted(runs_by_version) == ["1.0.0", "1.0.1", "1.0.2"]
    (first,) = kinds(runs_by_version["1.0.0"], "deploy")
    (second,) = kinds(runs_by_version["1.0.1"], "deploy")
    (third,) = kinds(runs_by_version["1.0.2"], "deploy")
    assert first["first"] is True
    assert second["stable"] == first["revision"] and third["stable"] == second["revision"]
    # each release went through the demo's registry: built, pushed, deployed by digest
    for deploy in (first, second, third):
        assert re.fullmatch(
            r"127\.0\.0\.1:\d+/taiea/tai_autonomics@sha256:[0-9a-f]{64}", deploy["image"]
        )
    assert len({first["image"], second["image"], third["image"]}) == 3
    assert (
        "started a local OCI registry at 127.0.0.1:" in out and "stopped the demo's registry" in out
    )

    # 1.0.1: the canary steps under load, scale-out, 1.0.0's revision drained
    upgrade = runs_by_version["1.0.1"]
    assert [r["percent"] for r in kinds(upgrade, "traffic")] == [0, 10, 50, 100]
    (drain,) = kinds(upgrade, "drain")
    assert drain["revision"] == first["revision"]
    assert drain["how"] in ("in-flight reached 0", "instance count reached 0")
    assert max(r.get("instances", 0) for r in kinds(upgrade, "metrics")) > 1
    assert RolloutState.load(upgrade.parent / "rollout.json").phase == "done"

    # 1.0.2: caught at the first canary step, rolled back to 1.0.1
    caught = runs_by_version["1.0.2"]
    (rollback,) = kinds(caught, "rollback")
    assert rollback["to"] == second["revision"] and rollback["away_from"] == third["revision"]
    assert "errors" in rollback["reason"]
    assert [r["percent"] for r in kinds(caught, "traffic")] == [0, 10, 0]
    failed = [r["stage"] for r in kinds(caught, "stage") if r.get("passed") is False]
    assert failed == ["canary-10"]
    assert RolloutState.load(caught.parent / "rollout.json").phase == "rolled_back"
    assert f"rollback: 1.0.2 at canary-10, 100 % back on {second['revision']}" in screen

    # afterwards 1.0.1 serves 100 %, and answers the service URL cleanly
    assert re.search(rf"{second['revision']} 1\.0\.1 100 %", screen), out[-3000:]
    assert re.search(
        rf"10/10 GET \S+/metrics answered 200 by 1\.0\.1 \(revision {second['revision']}, "
        r"fault none\)",
        screen,
    ), out[-3000:]

    # the report paths, and every run sealed and verifying
    for path in runs_by_version.values():
        assert (path.parent / "report.html").is_file()
        assert f"report: {path.parent / 'report.html'}" in screen
    runs_seen = sorted(runs.glob("*-week*-*/receipts.jsonl"))
    assert len(runs_seen) == 12
    assert all(receipts.verify(p).ok for p in runs_seen)

    # its own runs dir: the user's (PIPELINE_RUNS_DIR) is untouched and named again afterwards
    assert os.environ["PIPELINE_RUNS_DIR"] == str(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    assert (runs / "gates.jsonl").is_file() and (runs / "emulator").is_dir()

    # nothing left running: the emulator and its instances are gone
    assert leftovers(runs) == []


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    """Ctrl-C in the middle of 1.0.0's weeks: exit 130, the emulator and every release gone.
    (A subprocess, so that SIGINT reaches it as a terminal sends it: it builds its releases.)"""
    root = tmp_path / "demo"
    proc = subprocess.Popen(
        [INVOKE, "demo", "--runs", str(root), "--out", str(tmp_path / "build")],
        cwd=REPO,
        env=os.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def weeks_started() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(f"the demo ended early: {proc.communicate()}")
            emulator_up = any(root.glob("*/emulator/emulator.json"))
            return True if emulator_up and any(root.glob("*/*-week2-*/receipts.jsonl")) else None

        poll(weeks_started, timeout=120, interval=0.1, what="the demo's first week")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted" in err
    assert "stopped the demo's emulator" in out
    (runs,) = root.iterdir()
    poll(lambda: True if not leftovers(runs) else None, timeout=15, what="nothing left")


def outcome(week: str, passed: bool | None) -> WeekOutcome:
    if passed is None:
        return WeekOutcome(week, "", None, "not run")
    verdict = Verdict(week, passed, ())
    result = PhaseResult(week, "r", Path("x"), verdict, {}, 0.0)
    return WeekOutcome(week, "", result, "PASS" if passed else "FAIL")


def test_the_demo_fails_when_1_0_2_is_not_caught(monkeypatch, capsys):
    """1.0.2 passing Gate 4 is not what the demo is for: it says so and exits 99."""
    env = config.load_env(demo.DEMO_ENV)
    stable = demo.ReleaseRun(
        demo.ACTS[1],
        Path("b.tar.gz"),
        [outcome(w, True) for w in ("week2", "week3", "week4", "week5")],
        demo.RolloutFacts(revision="svc-00002-aaa", percents=(0, 10, 50, 100), phase="done"),
    )
    uncaught = demo.ReleaseRun(
        demo.ACTS[2],
        Path("c.tar.gz"),
        [outcome(w, True) for w in ("week2", "week3", "week4", "week5")],
        demo.RolloutFacts(
            revision="svc-00003-bbb",
            stable="svc-00002-aaa",
            percents=(0, 10, 50, 100),
            phase="done",
        ),
    )
    problems = demo.judge_act(uncaught, stable, env)
    assert "Gate 4 should fail: 1.0.2 was not caught" in problems
    assert "no rollback receipt" in problems

    failed_upgrade = demo.ReleaseRun(
        demo.ACTS[1],
        Path("b.tar.gz"),
        [outcome("week2", True), outcome("week3", False), outcome("week4", None)]
        + [outcome("week5", None)],
    )
    assert demo.judge_act(failed_upgrade, None, env)[:2] == [
        "week3 should pass: FAIL",
        "week4 should pass: not run",
    ]

    def not_caught(**kwargs):
        result = demo.DemoResult(Path("runs/demo/x"), env, releases=[stable, uncaught])
        result.problems = [f"1.0.2: {p}" for p in problems]
        return result

    monkeypatch.setattr(demo, "run_demo", not_caught)
    assert invoke("demo") == 99
    captured = capsys.readouterr()
    assert "NOT as meant" in captured.out and "1.0.2 was not caught" in captured.out
    assert captured.err.startswith("gate failed: demo: 1.0.2: Gate 4 should fail")
