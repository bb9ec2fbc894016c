"""Chaos: weeks 3 and 4 killed at seeded random points with SIGINT, SIGTERM, SIGHUP and SIGKILL.

Each trial starts the real command (`invoke phase2.week3|week4`), waits until a stage chosen at
random (seeded: a failure names its trial and replays) has started, sends the signal to invoke
alone (SIGINT to the whole group, as a terminal does), and checks what an operator would:
- nothing of the run is left: its release is gone within the stop grace, its temp dir removed;
- its receipts verify as far as they go; for INT/TERM/HUP the file is sealed with a failing
  verdict naming the signal; for KILL, `invoke runs.recover` closes it (sealed, `crashed`,
  failing) and removes what the run left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline import config, gates, receipts
from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(REPO / ".venv" / "bin" / "invoke")
SEED = 20261203
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL")
# kill points: every stage but the last (`stop` can end, and the run seal itself, before a
# signal sent when it starts arrives; a signal after the verdict rightly changes nothing)
STAGES = {
    "week3": ("validate", "extract", "start", "smoke", "load"),
    "week4": ("validate", "extract", "start", "pilot"),
}
NAMED = {"SIGINT": "SIGINT (Ctrl-C)", "SIGTERM": "SIGTERM", "SIGHUP": "SIGHUP"}
TRIALS_PER_PHASE_AND_SIGNAL = 5  # 2 phases × 4 signals × 5 = 40 trials
GRACE_S = config.load_env("local").start.stop_grace_s


def trials() -> list[tuple[int, str, str, str]]:
    rng = random.Random(SEED)
    out = []
    for phase, stages in STAGES.items():
        for sig in SIGNALS:
            for _ in range(TRIALS_PER_PHASE_AND_SIGNAL):
                out.append((len(out), phase, sig, rng.choice(stages)))
    return out


def stage_started(path: Path, stage: str) -> bool:
    return path.exists() and any(
        r.get("kind") == "stage" and r.get("stage") == stage and r.get("event") == "start"
        for r in complete_records(path)
    )


def complete_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def processes_under(workdir: Path) -> list[int]:
    """Live processes running from the run's temp dir (its release, whether or not the run
    lived to record it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and f"{workdir}/" in " ".join(
            proc.info["cmdline"] or ()
        ):
            found.append(proc.pid)
    return found


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("trial", "phase", "signame", "stage"),
    trials(),
    ids=[f"{n}-{phase}-{sig}-at-{stage}" for n, phase, sig, stage in trials()],
)
def test_a_run_killed_anywhere_leaves_nothing_and_its_receipts_tell(
    reference_tarball, tmp_path, trial, phase, signame, stage
):
    out = tmp_path / "r.jsonl"
    command = [INVOKE, f"phase2.{phase}", "--tarball", str(reference_tarball()),
               "--receipts", str(out)]  # fmt: skip
    if phase == "week3":
        command += ["--duration", "2"]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        poll(
            lambda: True if stage_started(out, stage) or proc.poll() is not None else None,
            timeout=60,
            what=f"stage {stage}",
        )
        assert proc.poll() is None, f"the run ended before {stage}: {proc.stderr.read()[-500:]}"
        sig = getattr(signal, signame)
        if signame == "SIGINT":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=GRACE_S + 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    records = complete_records(out)
    run_record = records[0]
    workdir = Path(run_record["workdir"])
    poll(
        lambda: True if not processes_under(workdir) else None,
        timeout=GRACE_S + 10,
        what="the run's release to stop",
    )
    if signame == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        recovered = subprocess.run(
            [INVOKE, "runs.recover", "--receipts", str(out)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert recovered.returncode == 0, recovered.stderr
        assert complete_records(out)[-2]["kind"] == "crashed"
        why = "killed"  # gate.check says so from the crashed record
    else:
        assert proc.returncode == 99, stderr[-2000:]
        gate = complete_records(out)[-2]
        assert gate["kind"] == "gate" and gate["reason"] == f"interrupted by {NAMED[signame]}"
        errors = [r for r in complete_records(out) if r["kind"] == "error" and "signal" in r]
        assert errors and {e["signal"] for e in errors} == {NAMED[signame]}
        why = ""  # gate.check fails it on its receipts (the verdict in the file names the signal)
    assert not workdir.exists(), f"trial {trial}: temp dir {workdir} left"
    verified = receipts.verify(out)
    assert verified.ok and verified.sealed, verified.describe()
    verdict = gates.check(out, config.load_env("local").gate_spec(phase))
    assert not verdict.passed and why in (verdict.reason or ""), verdict.reason


def test_a_child_whose_parent_died_before_its_death_notice_was_armed_never_starts(tmp_path):
    """`dies_with_us`: the kernel's death notice is armed in the child, after the fork; a parent
    killed in between would leave the release running for good. The child checks, notice armed,
    that its parent is still the one that started it: here another process starts it (as init
    would inherit it), so it exits 1 without running the command."""
    from pipeline.runtime.process import dies_with_us

    marker = tmp_path / "ran"
    argv = dies_with_us(["/bin/sh", "-c", f"touch {marker}"], "KILL")
    other = subprocess.run(
        ["/bin/sh", "-c", '"$@"; echo "status $?"', "sh", *argv],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.stdout.strip() == "status 1" and not marker.exists()
    mine = subprocess.run(argv, timeout=30)  # started by us: it runs
    assert mine.returncode == 0 and marker.exists()
