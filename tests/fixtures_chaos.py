"""Chaos helpers: start a real `invoke` command, signal it once a chosen stage has started, and
read what it left. Used by test_chaos.py (weeks 3, 4, 5) and test_chaos_sandbox.py (week 2,
phase2.all).

The signal goes to invoke alone, as a supervisor, `timeout` or `kill` sends it; SIGINT goes to
the whole process group, as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(REPO / ".venv" / "bin" / "invoke")
SEED = 20261203
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL")
NAMED = {"SIGINT": "SIGINT (Ctrl-C)", "SIGTERM": "SIGTERM", "SIGHUP": "SIGHUP"}


def seeded_trials(
    stages: Mapping[str, Sequence[str]], per_signal: int, seed: int = SEED
) -> list[tuple[int, str, str, str]]:
    """(number, phase, signal, stage) for every phase × signal, `per_signal` times each, the
    stage drawn at random (seeded: a failing trial's id replays it)."""
    rng = random.Random(seed)
    out: list[tuple[int, str, str, str]] = []
    for phase, names in stages.items():
        for sig in SIGNALS:
            for _ in range(per_signal):
                out.append((len(out), phase, sig, rng.choice(list(names))))
    return out


def trial_ids(trials: list[tuple[int, str, str, str]]) -> list[str]:
    return [f"{n}-{phase}-{sig}-at-{stage}" for n, phase, sig, stage in trials]


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The file's complete lines (a kill may cut the last one)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def stage_started(path: Path | None, stage: str) -> bool:
    return (
        path is not None
        and path.exists()
        and any(
            r.get("kind") == "stage" and r.get("stage") == stage and r.get("event") == "start"
            for r in complete_records(path)
        )
    )


def processes_under(workdir: Path) -> list[int]:
    """Live processes running from a run's temp dir (its release, whether or not the run lived
    to record it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and f"{workdir}/" in " ".join(
            proc.info["cmdline"] or ()
        ):
            found.append(proc.pid)
    return found


@dataclass
class Killed:
    returncode: int
    stderr: str
    receipts: Path  # the file of the run the signal cut


def kill_at(
    command: list[str],
    receipts: Callable[[], Path | None],
    stage: str,
    signame: str,
    *,
    env: Mapping[str, str] | None = None,
    wait_s: float = 120,
    grace_s: float = 60,
) -> Killed:
    """Run `command`; once the file `receipts()` finds has started `stage`, send `signame`;
    wait for the command to end."""
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=dict(env) if env is not None else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        path = poll(
            lambda: (
                found
                if stage_started(found := receipts(), stage)
                else (Path() if proc.poll() is not None else None)
            ),
            timeout=wait_s,
            what=f"stage {stage}",
        )
        assert proc.poll() is None, f"the run ended before {stage}: {proc.stderr.read()[-800:]}"  # type: ignore[union-attr]
        sig = getattr(signal, signame)
        if signame == "SIGINT":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=grace_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Killed(proc.returncode, stderr, path)


def recover(receipts: Path, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """`invoke runs.recover --receipts FILE`: the records it leaves (ends `crashed`, `seal`)."""
    done = subprocess.run(
        [INVOKE, "runs.recover", "--receipts", str(receipts)],
        cwd=REPO, env=dict(env) if env is not None else None,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return complete_records(receipts)


def assert_ended_by(killed: Killed, signame: str) -> None:
    """What an operator must find after INT/TERM/HUP: exit 99, a sealed file whose verdict and
    error receipts name the signal; after KILL: the kill's status (runs.recover closes it)."""
    if signame == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        return
    assert killed.returncode == 99, killed.stderr[-2000:]
    records = complete_records(killed.receipts)
    assert records[-1]["kind"] == "seal", records[-1]
    gate = records[-2]
    assert gate["kind"] == "gate" and gate["reason"] == f"interrupted by {NAMED[signame]}", gate
    errors = [r for r in records if r["kind"] == "error" and "signal" in r]
    assert errors and {e["signal"] for e in errors} == {NAMED[signame]}
