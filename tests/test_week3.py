"""Week 3 end to end against the reference release on the process runtime."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline import config, gates, receipts
from pipeline.errors import PipelineError
from pipeline.phases.week3 import run_week3

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def quick_env(tmp_path: Path, **start: object) -> config.Env:
    """envs/local.toml with a few start settings changed (short timeouts for failure tests)."""
    lines = [f'extends = "{REPO / "envs" / "local.toml"}"', "[start]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in start.items()]
    path = tmp_path / "quick.toml"
    path.write_text("\n".join(lines) + "\n")
    return config.load_env(path)


def failing(result) -> set[str]:
    return {f"{r.metric} {r.expression}" for r in result.verdict.failures}


def kinds(path: Path) -> list[str]:
    return [r["kind"] for r in receipts.iter_records(path)]


@pytest.mark.parametrize("layout", ["rebar3", "wrapped"], ids=["rebar3-layout", "wrapped-layout"])
def test_good_release_passes_gate2(reference_tarball, layout, tmp_path):
    result = run_week3(
        reference_tarball("none", layout), config.load_env("local"), duration=2, rate=20
    )
    assert result.verdict.passed, result.verdict.summary()
    verification = receipts.verify(result.receipts)
    assert verification.ok and verification.sealed
    seen = kinds(result.receipts)
    assert seen[0] == "run" and seen[-1] == "seal" and seen[-2] == "gate"
    assert seen.count("receipt") == 5
    assert seen.count("request") >= 38  # 20 req/s for 2 s
    assert seen.count("metrics") >= 4  # every 250 ms during smoke + load
    assert {"startup", "shutdown", "capture"} <= set(seen)
    records = list(receipts.iter_records(result.receipts))
    run = records[0]
    assert run["release"]["layout"] == layout and len(run["release"]["sha256"]) == 64
    shutdown = next(r for r in records if r["kind"] == "shutdown")
    assert shutdown["exit_status"] == 0 and shutdown["clean"] is True
    capture = next(r for r in records if r["kind"] == "capture")
    assert capture["kinds"]["startup"] == 1 and capture["kinds"]["shutdown"] == 1
    # the verdict is in the ledger and re-judging the sealed file later agrees
    ledger = list(receipts.iter_records(receipts.ledger_path()))
    assert ledger[-1]["passed"] is True and ledger[-1]["release_sha256"] == run["release"]["sha256"]
    again = subprocess.run(
        [INVOKE, "gate.check", "--gate", "week3", "--receipts", str(result.receipts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("fault", "expected", "duration"),
    [
        ("slow", "http.latency_ms p(95) < 250", 2),
        ("errors", "http.success rate == 1", 3),
        ("leak", "memory.mb max < 250", 12),
    ],
    ids=["slow-fails-p95", "errors-fail-success-rate", "leak-fails-memory"],
)
def test_fault_fails_the_right_expression(reference_tarball, fault, expected, duration):
    result = run_week3(
        reference_tarball(fault), config.load_env("local"), duration=duration, rate=20
    )
    assert not result.verdict.passed
    assert expected in failing(result)
    assert receipts.verify(result.receipts).ok


def test_crash_fails_smoke_or_stop_with_the_log_tail(reference_tarball):
    result = run_week3(reference_tarball("crash"), config.load_env("local"), duration=2, rate=20)
    assert not result.verdict.passed
    assert failing(result) & {
        "stages.failed count == 0",
        "http.success rate == 1",
        "smoke.passed count == 5",
    }
    errors = [r for r in receipts.iter_records(result.receipts) if r["kind"] == "error"]
    assert errors and any(e.get("log_tail") for e in errors)
    shutdown = next(r for r in receipts.iter_records(result.receipts) if r["kind"] == "shutdown")
    assert shutdown["exit_status"] != 0


def test_noready_times_out_with_the_log_tail(reference_tarball, tmp_path):
    env = quick_env(tmp_path, ready_timeout_s=1.5)
    started = time.monotonic()
    result = run_week3(reference_tarball("noready"), env, duration=2)
    assert time.monotonic() - started < 10
    assert not result.verdict.passed
    error = next(r for r in receipts.iter_records(result.receipts) if r["kind"] == "error")
    assert error["stage"] == "start" and "not ready after 1.5 s" in error["reason"]
    assert error["log_tail"], "the release's last output lines are in the error receipt"
    assert "startup.seconds value < 5" in failing(result)  # no startup receipt: no data
    skipped = [r for r in receipts.iter_records(result.receipts) if r.get("event") == "skip"]
    assert {r["stage"] for r in skipped} == {"smoke", "load"}


def test_slowstart_fails_startup_under_5s(reference_tarball):
    result = run_week3(reference_tarball("slowstart"), config.load_env("local"), duration=2)
    assert failing(result) == {"startup.seconds value < 5"}
    startup = next(r for r in receipts.iter_records(result.receipts) if r["kind"] == "startup")
    assert startup["seconds"] >= 5.5


def run_cli(
    *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [INVOKE, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_json_streams_receipts_and_exits_0(reference_tarball, tmp_path):
    out = tmp_path / "r.jsonl"
    done = run_cli(
        "phase2.week3",
        "--tarball",
        str(reference_tarball()),
        "--duration",
        "2",
        "--receipts",
        str(out),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["kind"] == "run" and lines[-1]["kind"] == "seal"
    assert [r["hash"] for r in lines] == [r["hash"] for r in receipts.iter_records(out)]
    assert "gate week3: PASS" in done.stderr


def test_cli_gate_failure_exits_99(reference_tarball):
    done = run_cli(
        "phase2.live",
        "--tarball",
        str(reference_tarball("slow")),
        "--duration",
        "2",
        "--rate",
        "20",
    )
    assert done.returncode == 99, done.stderr
    assert "p(95) < 250" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "bad",
    ["missing", "not-a-tarball", "not-otp", "escape"],
    ids=["missing-file", "garbage", "not-an-otp-release", "path-escape"],
)
def test_cli_bad_tarball_exits_2_and_writes_nothing(bad, tmp_path, fake_otp_tarball):
    from fixtures_tarballs import Entry

    path = tmp_path / "bad.tar.gz"
    if bad == "not-a-tarball":
        path.write_bytes(b"\x00garbage" * 100)
    elif bad == "not-otp":
        path = fake_otp_tarball(omit=["erts-"])
    elif bad == "escape":
        path = fake_otp_tarball(extra_members=[Entry("../../escaped.txt", data=b"pwned")])
    done = run_cli("phase2.week3", "--tarball", str(path), "--duration", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    message = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and message[0].startswith("error:") and "Traceback" not in done.stderr
    assert not (tmp_path.parent / "escaped.txt").exists()
    runs = Path(os.environ["PIPELINE_RUNS_DIR"])
    assert not runs.exists() or not any(runs.glob("*/receipts.jsonl"))


def test_existing_receipts_file_is_refused_and_kept(reference_tarball, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    with pytest.raises(PipelineError, match="already exists"):
        run_week3(reference_tarball(), config.load_env("local"), duration=2, receipts=out)
    assert out.read_text() == "precious\n"


def test_a_crash_mid_phase_fails_the_stage_and_the_gate_and_seals_the_run(
    reference_tarball, tmp_path, monkeypatch
):
    """A bug half-way (here the smoke probe raising) is still a judged, sealed, failing run, and
    the release is stopped (conftest checks that nothing is left running)."""
    from pipeline.probes import smoke

    def broken(*_args, **_kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(smoke, "run_smoke", broken)
    out = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError, match="probe exploded"):
        run_week3(reference_tarball(), config.load_env("local"), duration=2, receipts=out)
    records = list(receipts.iter_records(out))
    ends = {r["stage"]: r for r in records if r["kind"] == "stage" and r.get("event") == "end"}
    why = "crashed: RuntimeError: probe exploded"
    assert ends["smoke"]["passed"] is False and ends["smoke"]["reason"] == why
    [startup] = [r for r in records if r["kind"] == "startup"]
    assert not psutil.pid_exists(startup["pid"]), "the release was stopped"
    assert [r["reason"] for r in records if r["kind"] == "error"] == [why]
    assert records[-2]["kind"] == "gate" and records[-2]["passed"] is False
    assert records[-2]["reason"] == why
    assert records[-1]["kind"] == "seal" and receipts.verify(out).ok


def loading_release(out: Path) -> psutil.Process:
    """Once the run writing `out` is under load: its release's process."""
    from pipeline.waiting import poll

    poll(
        lambda: True if out.exists() and b'"kind":"request"' in out.read_bytes() else None,
        timeout=30,
        what="load to start",
    )
    [startup] = [r for r in receipts.iter_records(out) if r["kind"] == "startup"]
    return psutil.Process(startup["pid"])


ENDINGS = [
    ("SIGINT", True, "SIGINT (Ctrl-C)"),  # Ctrl-C in a terminal: the whole process group
    ("SIGTERM", False, "SIGTERM"),  # CI cancelling the job, `timeout`, systemd, Kubernetes
    ("SIGHUP", False, "SIGHUP"),  # the terminal or SSH session going away
]


@pytest.mark.parametrize(
    ("signame", "group", "named"), ENDINGS, ids=["ctrl-c", "sigterm-to-invoke", "sighup-to-invoke"]
)
def test_a_signal_stops_the_release_and_writes_a_failing_gate(
    reference_tarball, tmp_path, signame, group, named
):
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [
            INVOKE,
            "phase2.week3",
            "--tarball",
            str(reference_tarball()),
            "--duration",
            "30",
            "--receipts",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    release = loading_release(out)
    found = re.search(r"(/\S*/taiea-week3-[^/]+)/", " ".join(release.cmdline()))
    assert found, release.cmdline()
    workdir = Path(found.group(1))
    sig = getattr(signal, signame)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 99, stdout + stderr
    records = list(receipts.iter_records(out))
    assert records[-1]["kind"] == "seal" and records[-2]["kind"] == "gate"
    assert records[-2]["passed"] is False
    assert records[-2]["reason"] == f"interrupted by {named}"
    errors = [r for r in records if r["kind"] == "error"]
    assert errors and all(e["signal"] == named for e in errors), errors
    assert f"interrupted by {named}" in stderr
    assert receipts.verify(out).ok
    assert not release.is_running() or release.status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists(), "the run's temp dir is removed"
    # judged as far as it got: the same numbers gate.check shows later, failed all the same
    measured = {r["metric"]: r["measured"] for r in records[-2]["results"]}
    assert measured["smoke.passed"] == 5 and measured["startup.seconds"] > 0
    again = gates.check(out, config.load_env("local").gate_spec("week3"))
    assert {r.metric: r.measured for r in again.results} == measured


def test_sigkill_of_the_pipeline_takes_the_release_with_it(reference_tarball, tmp_path):
    """Nothing can be handled on SIGKILL: the kernel tells the release (PR_SET_PDEATHSIG) and
    it stops on its own; the receipts verify up to their last line, unsealed."""
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [INVOKE, "phase2.week3", "--tarball", str(reference_tarball()), "--duration", "30",
         "--receipts", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    release = loading_release(out)
    proc.kill()
    proc.wait(30)
    from pipeline.waiting import poll

    poll(
        lambda: (
            True if not release.is_running() or release.status() == psutil.STATUS_ZOMBIE else None
        ),
        timeout=20,
        what="the release to stop after its pipeline was killed",
    )
    verified = receipts.verify(out)
    assert not verified.ok and "runs.recover" in verified.describe(), "cut off, not tampered with"
    lines_before = out.read_bytes().splitlines()
    workdir = Path(next(receipts.iter_records(out))["workdir"])
    assert workdir.exists(), "a SIGKILL leaves the temp dir"

    done = subprocess.run(
        [INVOKE, "runs.recover", "--receipts", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == [str(workdir)] and not workdir.exists()
    lines_after = out.read_bytes().splitlines()
    assert lines_after[: len(lines_before)] == lines_before, "no line rewritten"
    crashed, seal = (json.loads(line) for line in lines_after[len(lines_before) :])
    assert crashed["kind"] == "crashed" and seal["kind"] == "seal"
    assert receipts.verify(out).ok, "the chain verifies, sealed"
    verdict = gates.check(out, config.load_env("local").gate_spec("week3"))
    assert not verdict.passed and "killed" in (verdict.reason or "")
    again = subprocess.run(
        [INVOKE, "runs.recover", "--receipts", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 2 and "nothing to recover" in again.stderr


def test_a_release_killed_mid_load_ends_the_load_at_once_naming_its_exit(reference_tarball):
    """The liveness watch: beam.smp killed (-9) 1 s into a 30 s load. The load stops when the
    death is seen, not when its window ends: the whole rest of the run (stop, judge, seal)
    takes under 15 s of the 29 s the window still had."""
    env = config.load_env("local")
    pid: list[int] = []
    killed: list[float] = []

    def on_record(record: dict) -> None:
        if record["kind"] == "startup":
            pid.append(record["pid"])
        if record["kind"] == "request" and record.get("sent_s", 0) >= 1.0 and not killed:
            killed.append(time.monotonic())
            os.kill(pid[0], signal.SIGKILL)

    result = run_week3(reference_tarball(), env, duration=30, on_record=on_record)
    assert killed, "the load never reached 1 s"
    assert time.monotonic() - killed[0] < 15
    assert not result.verdict.passed
    found = list(receipts.iter_records(result.receipts))
    (error,) = [r for r in found if r["kind"] == "error" and r.get("stage") == "load"]
    assert error["reason"].startswith(
        "the release exited (status 137) during the load; the load stopped after"
    )
    sent = [r["sent_s"] for r in found if r["kind"] == "request"]
    assert max(sent) < 10  # no request scheduled long after the death
