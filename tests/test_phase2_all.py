"""phase2.all: the weeks in order, each refusing to start without the previous gate's pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline import config, receipts
from pipeline.phases.all import run_all
from pipeline.phases.base import QuietView

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def test_a_failed_gate_stops_the_weeks_after_it(reference_tarball, tmp_path):
    sandbox = tmp_path / "quick-sandbox.toml"
    sandbox.write_text(
        f'extends = "{REPO / "envs" / "ccw-sandbox.toml"}"\n[start]\nready_timeout_s = 1.5\n'
    )
    envs = {
        week: config.load_env(name)
        for week, name in {
            "week2": sandbox,
            "week3": "local",
            "week4": "local",
            "week5": "cloudrun-local",
        }.items()
    }
    outcomes = run_all(
        reference_tarball("noready"),
        envs,
        view_for=lambda week, env: QuietView(),
        options={"week2": {"duration": 2}},
    )
    assert [o.week for o in outcomes] == ["week2", "week3", "week4", "week5"]
    week2 = outcomes[0]
    assert week2.result is not None and not week2.result.verdict.passed
    assert receipts.verify(week2.result.receipts).ok
    assert all(
        o.result is None and o.note.startswith("not run: Gate 1 failed") for o in outcomes[1:]
    )


def test_week3_refuses_unless_the_ledger_holds_gate1_for_this_release(
    reference_tarball, monkeypatch
):
    """A pass that is not in the ledger (here: a week 2 that claims PASS but recorded nothing)
    does not let week 3 start: the ledger, re-verified, is the only evidence."""
    import pipeline.phases.all as phases_all
    from pipeline.gates import Verdict
    from pipeline.phases.base import PhaseResult

    claimed = PhaseResult("week2", "r", Path("/nonexistent"), Verdict("week2", True, ()), {}, 0.0)
    started = []

    def runner(week):
        started.append(week)
        return lambda *args, **kwargs: claimed

    monkeypatch.setattr(phases_all, "_runner", runner)
    envs = {week: config.load_env("local") for week in ("week2", "week3", "week4", "week5")}
    outcomes = run_all(reference_tarball(), envs, view_for=lambda week, env: QuietView())
    assert started == ["week2"]
    assert outcomes[1].note == "refused: no passing Gate 1 for this release"
    assert [o.result for o in outcomes[1:]] == [None, None, None]


def test_cli_prints_the_table_of_all_gates_and_exits_99(reference_tarball, tmp_path):
    sandbox = tmp_path / "quick-sandbox.toml"
    sandbox.write_text(
        f'extends = "{REPO / "envs" / "ccw-sandbox.toml"}"\n[start]\nready_timeout_s = 1.5\n'
    )
    done = subprocess.run(
        [
            INVOKE,
            "phase2.all",
            "--tarball",
            str(reference_tarball("noready")),
            "--week2-env",
            str(sandbox),
            "--duration",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert done.returncode == 99, done.stdout + done.stderr
    assert "Phase 2" in done.stdout and done.stdout.count("not run") == 3
    assert "Gate 1 (week2)" in done.stderr
