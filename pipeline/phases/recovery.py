"""Runs cut off by SIGKILL (the OOM killer, `kill -9`, a machine that lost power): found by their
missing seal, their leftovers stopped, their files closed — failing — with a sealed `crashed`
record appended. No line is ever rewritten: the chain verifies as far as the run got, and the
`crashed` record makes every later gate.check fail (gates.check).

What counts as a leftover is what the run itself recorded: the release processes named by its
`startup` receipts (still alive, started no earlier than the run, an Erlang VM or a sandbox), its
temp dir (the `run` record's `workdir`, only a `taiea-*` dir in the temp folder), the sandboxes
of a gvisor run (containers, cgroups and bundle dirs all carry its run id: the id is the proof)
and the emulator a week 5 run started (`started_emulator`: its state dir). A remote run's pids
are the host's, never stopped here: its wrapper on the host stops the release and removes its
run dir when the SSH connection drops (runtime/remote.py), as it does when we die. A week 5 run
killed mid-canary also gets its traffic put back to the last completed step, as Ctrl-C would.

Why week 5's emulator outlives a SIGKILL until then: it stands for Cloud Run, which keeps
serving when a pipeline dies; the service stays at the step the rollout reached. Stopped here, its
services are kept; `cloudrun.resume` starts it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline import receipts, schema
from pipeline.errors import PipelineError
from pipeline.waiting import WaitTimeout, poll

RELEASE_NAMES = ("beam.smp", "runsc", "runsc-sandbox", "runsc-gofer")


@dataclass
class Recovered:
    path: Path
    run_id: str
    stopped: list[int] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dropped_bytes: int = 0  # a last line cut off mid-write
    traffic: str | None = None  # week 5: where the canary's traffic was put back


def unsealed(root: Path) -> list[Path]:
    """Receipts files under `root` (runs/<run-id>/receipts.jsonl) whose run never sealed."""
    found = []
    for path in sorted(root.glob("*/receipts.jsonl")):
        if not _sealed(path):
            found.append(path)
    return found


def _sealed(path: Path) -> bool:
    last = _complete_lines(path)[-1:]
    return bool(last) and orjson.loads(last[0]).get("kind") == "seal"


def _complete_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines()


def recover(path: Path) -> Recovered:
    """Stop what the run left, remove its temp dir, and close the file with `crashed` + seal."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].splitlines()
    if not lines:
        raise PipelineError(f"{path}: no complete receipt: nothing to recover")
    records = [orjson.loads(line) for line in lines]
    if records[-1].get("kind") == "seal":
        raise PipelineError(f"{path}: sealed: the run finished, nothing to recover")
    whole = path if complete == len(data) else _prefix(path, complete)
    try:
        verification = receipts.verify(whole, require_seal=False)
    finally:
        if whole != path:
            whole.unlink()
    if not verification.ok:
        raise PipelineError(f"{verification.describe()}: not recovered (tampered?)")
    first, last = records[0], records[-1]
    done = Recovered(path, str(last.get("run_id")), dropped_bytes=len(data) - complete)
    began = _epoch(str(first.get("ts", "")))
    remote = first.get("runtime") == "remote"  # its pids are the host's; the host cleans up
    for record in records if not remote else ():
        if record.get("kind") == "startup" and isinstance(record.get("pid"), int):
            if _stop_if_ours(record["pid"], began):
                done.stopped.append(record["pid"])
    if first.get("runtime") == "gvisor":
        from pipeline.runtime import gvisor

        done.removed += gvisor.remove_leftovers(str(first.get("run_id")))
    workdir = first.get("workdir")
    if isinstance(workdir, str) and _ours_to_remove(Path(workdir)):
        shutil.rmtree(workdir, ignore_errors=True)
        done.removed.append(workdir)
    done.traffic = _traffic_back(path.parent / "rollout.json", first)
    emulator = first.get("started_emulator")
    if isinstance(emulator, str) and _stop_emulator(Path(emulator)):
        done.removed.append(f"emulator of {emulator} (services kept: cloudrun.resume restarts it)")
    if done.dropped_bytes:
        os.truncate(path, complete)  # half a line is no receipt: the chain ends before it
    with open(path, "ab") as fh:
        writer = receipts.ReceiptWriter(
            path,
            run_id=done.run_id,
            phase=str(last.get("phase")),
            _seq=int(last["seq"]) + 1,
            _prev=str(last["hash"]),
            _fh=fh,
            check=schema.checker(),
        )
        writer.write(
            "crashed",
            None,
            reason="the run was killed before it finished (no seal); closed by runs.recover",
            last_receipt=last.get("ts"),
            stopped=done.stopped,
            removed=done.removed,
            dropped_bytes=done.dropped_bytes,
            **({"traffic": done.traffic} if done.traffic else {}),
        )
        writer.seal()
    return done


def _prefix(path: Path, size: int) -> Path:
    """The file's complete lines, copied aside for verification (the tail is half a line)."""
    fd, name = tempfile.mkstemp(prefix=".recover-", suffix=".jsonl", dir=path.parent)
    with os.fdopen(fd, "wb") as fh, open(path, "rb") as src:
        fh.write(src.read(size))
    return Path(name)


def _epoch(ts: str) -> float:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")  # no start time: no process can be proved ours


def _stop_if_ours(pid: int, began: float) -> bool:
    """SIGTERM, then SIGKILL, a release the run started: alive, named as one, not older than
    the run (a recycled pid belongs to someone else)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.name() not in RELEASE_NAMES or proc.create_time() < began - 1.0:
            return False
        proc.terminate()
    except psutil.Error:
        return False
    try:
        poll(lambda: True if not proc.is_running() else None, timeout=10, what="the release")
    except WaitTimeout:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            proc.kill()
    return True


def _traffic_back(state_path: Path, first: dict[str, Any]) -> str | None:
    """A rollout killed mid-canary may have moved traffic for a step it never finished: put it
    back to the last completed step, as Ctrl-C does (rollout_steps.settle_after_stop)."""
    from pipeline import config
    from pipeline.cloudrun.client import RunV2
    from pipeline.cloudrun.rollout import RolloutState, canary_routes

    if first.get("phase") != "week5" or not state_path.is_file():
        return None
    state = RolloutState.load(state_path)
    if state.phase != "canary" or not (state.candidate and state.stable):
        return None
    percent, candidate = state.current_percent, state.candidate
    try:
        env = config.load_env(str(first.get("env_file")))
        api = RunV2(env.cloudrun, endpoint=state.endpoint)
        api.set_traffic(canary_routes(state.stable, candidate, percent, state.tag))
    except Exception as exc:  # say where traffic may be; the file is closed all the same
        return f"could not put traffic back to {percent} % on {candidate}: {exc}"
    return f"traffic back to {percent} % on {candidate} (the last completed step)"


def _stop_emulator(state_dir: Path) -> bool:
    """Stop the emulator a week 5 run started, if it still runs there."""
    from pipeline.cloudrun.endpoint import stop_emulator

    return state_dir.is_dir() and stop_emulator(None, state_dir=state_dir)


def _ours_to_remove(workdir: Path) -> bool:
    temp = Path(tempfile.gettempdir()).resolve()
    try:
        resolved = workdir.resolve()
    except OSError:
        return False
    return resolved.parent == temp and resolved.name.startswith("taiea-") and resolved.is_dir()


def describe(done: Recovered) -> dict[str, Any]:
    return {
        "receipts": str(done.path),
        "run_id": done.run_id,
        "stopped": done.stopped,
        "removed": done.removed,
        "dropped_bytes": done.dropped_bytes,
        "traffic": done.traffic,
    }
