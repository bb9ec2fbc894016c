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

from pathlib import Path

import pytest
from fixtures_chaos import (
    INVOKE,
    assert_ended_by,
    complete_records,
    kill_at,
    processes_under,
    recover,
    seeded_trials,
    trial_ids,
)

from pipeline import config, gates, receipts
from pipeline.waiting import poll

# kill points: every stage but the last (`stop` can end, and the run seal itself, before a
# signal sent when it starts arrives; a signal after the verdict rightly changes nothing)
STAGES = {
    "week3": ("validate", "extract", "start", "smoke", "load"),
    "week4": ("validate", "extract", "start", "pilot"),
}
TRIALS = seeded_trials(STAGES, per_signal=5)  # 2 phases × 4 signals × 5 = 40 trials
GRACE_S = config.load_env("local").start.stop_grace_s


@pytest.mark.chaos
@pytest.mark.parametrize(("trial", "phase", "signame", "stage"), TRIALS, ids=trial_ids(TRIALS))
def test_a_run_killed_anywhere_leaves_nothing_and_its_receipts_tell(
    reference_tarball, tmp_path, trial, phase, signame, stage
):
    out = tmp_path / "r.jsonl"
    command = [INVOKE, f"phase2.{phase}", "--tarball", str(reference_tarball()),
               "--receipts", str(out)]  # fmt: skip
    if phase == "week3":
        command += ["--duration", "2"]
    killed = kill_at(command, lambda: out, stage, signame, wait_s=60, grace_s=GRACE_S + 60)
    workdir = Path(complete_records(out)[0]["workdir"])
    poll(
        lambda: True if not processes_under(workdir) else None,
        timeout=GRACE_S + 10,
        what="the run's release to stop",
    )
    assert_ended_by(killed, signame)
    why = ""  # INT/TERM/HUP: the verdict in the file names the signal
    if signame == "SIGKILL":
        assert recover(out)[-2]["kind"] == "crashed"
        why = "killed"  # gate.check says so from the crashed record
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
    import subprocess

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


def test_a_ctrl_c_lost_in_a_finalizer_is_raised_again_at_the_next_stage_boundary():
    """Python prints and drops a KeyboardInterrupt raised inside `__del__` ("Exception ignored
    in …"); the run must still stop at its next stage boundary, naming Ctrl-C."""
    import gc

    from pipeline import interrupts

    class Finalized:
        def __del__(self) -> None:
            raise KeyboardInterrupt  # as a Ctrl-C landing while the GC runs a finalizer

    try:
        with interrupts.handled():
            assert not interrupts.pending()
            Finalized()
            gc.collect()
            assert interrupts.pending()
            with pytest.raises(KeyboardInterrupt, match="interrupted by SIGINT"):
                interrupts.raise_pending()
    finally:
        with interrupts.handled():  # entering clears the noted signal: later runs here start clean
            pass
    assert not interrupts.pending()
