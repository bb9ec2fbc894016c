"""The stages as tasks of their own, as a release engineer uses them in an incident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from pipeline import receipts

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def of_kind(stdout: str, kind: str) -> list[dict]:
    """The receipts of one kind among the JSON lines a task printed with --json."""
    return [r for r in map(json.loads, stdout.splitlines()) if r.get("kind") == kind]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, *args], cwd=REPO, capture_output=True, text=True, env=os.environ, timeout=120
    )


def test_start_smoke_load_monitor_stop(reference_tarball, tmp_path):
    started = invoke(
        "release.start", "--tarball", str(reference_tarball()), "--port", "0", "--json"
    )
    assert started.returncode == 0, started.stderr
    (state,) = of_kind(started.stdout, "startup")
    url, pid = state["url"], state["pid"]
    workdir = Path(state["log"]).parent
    try:
        again = invoke("release.start", "--tarball", str(reference_tarball()))
        assert again.returncode == 2 and "already running" in again.stderr

        smoke_file = tmp_path / "smoke.jsonl"
        smoke = invoke("smoke", "--url", url, "--receipts", str(smoke_file))
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert [
            r["passed"] for r in receipts.iter_records(smoke_file) if r["kind"] == "receipt"
        ] == [True] * 5
        assert receipts.verify(smoke_file).ok

        load = invoke("load", "--url", url, "--rate", "50", "--duration", "2", "--json")
        assert load.returncode == 0, load.stderr
        requests = [
            json.loads(line) for line in load.stdout.splitlines() if '"kind":"request"' in line
        ]
        assert 95 <= len(requests) <= 101 and all(r["passed"] for r in requests)

        closed = invoke("load", "--url", url, "--closed", "--connections", "4", "--duration", "1")
        assert closed.returncode == 0 and "req/s" in closed.stdout

        monitored = tmp_path / "monitor.jsonl"
        monitor = invoke(
            "monitor", "--pid", str(pid), "--seconds", "1", "--receipts", str(monitored)
        )
        assert monitor.returncode == 0, monitor.stderr
        samples = [r for r in receipts.iter_records(monitored) if r["kind"] == "metrics"]
        assert len(samples) >= 3 and all(20 < s["rss_mb"] < 500 for s in samples)
    finally:
        stopped = invoke("release.stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists()
    assert "receipts:" in stopped.stdout


def test_ctrl_c_while_release_start_waits_leaves_nothing_running(reference_tarball):
    import signal

    from pipeline.waiting import poll

    proc = subprocess.Popen(
        [INVOKE, "release.start", "--tarball", str(reference_tarball("slowstart")), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the terminal we press Ctrl-C in
    )
    try:
        # /ready answers 503 for 6 s: the task is still waiting when its release is up and
        # listening (so it runs on its own, its files loaded)
        def listening_release() -> int | None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:  # a short-lived helper (the start script's) may be gone by now
                    if child.name() == "beam.smp" and any(
                        c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")
                    ):
                        return child.pid
                except psutil.NoSuchProcess:
                    continue
            return None

        pid = poll(listening_release, timeout=30, what="the release started by release.start")
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert invoke("release.stop").returncode == 2, "nothing was left registered either"


def test_stop_without_a_release_is_bad_input():
    done = invoke("release.stop")
    assert done.returncode == 2 and done.stderr.startswith("error: no background release")


def test_smoke_against_nothing_fails_every_test_with_a_reason(tmp_path):
    out = tmp_path / "s.jsonl"
    done = invoke("smoke", "--url", "http://127.0.0.1:9", "--receipts", str(out))
    assert done.returncode == 99
    reasons = [r["reason"] for r in receipts.iter_records(out) if r["kind"] == "receipt"]
    assert len(reasons) == 5 and all(r.startswith("no answer") for r in reasons)


def test_monitor_unknown_pid_is_bad_input():
    done = invoke("monitor", "--pid", "999999", "--seconds", "1")
    assert done.returncode == 2 and "no process with pid 999999" in done.stderr


def test_inspect_and_extract(reference_tarball, tmp_path):
    inspected = invoke(
        "release.inspect", "--tarball", str(reference_tarball("none", "wrapped")), "--json"
    )
    (facts,) = of_kind(inspected.stdout, "release")
    assert (
        facts["layout"] == "wrapped"
        and facts["name"] == "tai_autonomics"
        and facts["version"] == "1.0.0"
    )
    dest = tmp_path / "x"
    out = tmp_path / "extract.jsonl"
    extracted = invoke(
        "release.extract",
        "--tarball",
        str(reference_tarball()),
        "--dest",
        str(dest),
        "--receipts",
        str(out),
    )
    assert extracted.returncode == 0, extracted.stderr
    (record,) = [r for r in receipts.iter_records(out) if r["kind"] == "extract"]
    assert (Path(record["root"]) / "bin" / "tai_autonomics").is_file() and record["files"] > 100
    assert receipts.verify(out).ok and f"root: {record['root']}" in extracted.stdout
    refused = invoke("release.extract", "--tarball", str(reference_tarball()), "--dest", str(dest))
    assert refused.returncode == 2 and refused.stderr.startswith("error:")


def test_a_failure_after_the_release_is_ready_stops_it(reference_tarball, monkeypatch):
    """Ready, then something fails before the state file names the release (here: reading its
    create time): nothing may keep running that release.stop could not find."""
    import pytest

    from pipeline import config
    from pipeline.phases import standalone

    started: list[tuple[subprocess.Popen, Path]] = []
    real_popen = subprocess.Popen

    def popen(command, *args, **kwargs):
        proc = real_popen(command, *args, **kwargs)
        if str(command[0]).endswith("bin/tai_autonomics"):  # the release, started in <workdir>/tmp
            started.append((proc, Path(kwargs["cwd"]).parent))
        return proc

    def broken(pid):
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(standalone.subprocess, "Popen", popen)
    monkeypatch.setattr(standalone.psutil, "Process", broken)
    with pytest.raises(psutil.AccessDenied):
        standalone.start_background(reference_tarball(), config.load_env("local"), port=0)
    ((proc, workdir),) = started
    assert proc.returncode is not None  # killed and reaped
    assert not workdir.exists()
    assert invoke("release.stop").returncode == 2, "nothing was registered"
