"""Judging a run and recording the verdict: the in-run gate receipt and the ledger entry.

The ledger (runs/gates.jsonl) lets week 5 find a passing Gate 2 and Gate 3 for the same release
sha256 and re-verify the runs they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import receipts
from pipeline.catalogue import ORDER
from pipeline.errors import PipelineError
from pipeline.gates import GateSpec, Verdict, check


def ledger_entry(
    verdict: Verdict, path: Path, *, source: str, sealed: bool = True
) -> dict[str, Any]:
    verification = verdict.verification
    run = (verification.run if verification else None) or {}
    release = run.get("release") or {}
    return {
        "gate": verdict.gate,
        "passed": verdict.passed,
        "reason": verdict.reason,
        "failed": [f"{r.metric} {r.expression}" for r in verdict.failures],
        "receipts": str(Path(path).resolve()),
        "receipts_head": verification.head if verification else None,
        "judged_run": run.get("run_id"),
        "release_sha256": release.get("sha256"),
        "release_version": release.get("version"),
        "source": source,
        "sealed": sealed,  # False: judged with --unsealed (week 5 judges it again, sealed)
    }


def judge_file(path: str | Path, spec: GateSpec, *, require_seal: bool = True) -> Verdict:
    """gate.check: verify, judge, append the verdict to the ledger. A week's gate over another
    week's run is bad input (exit 2), not a verdict for the ledger."""
    verdict = check(path, spec, require_seal=require_seal)
    phase = ((verdict.verification.run if verdict.verification else None) or {}).get("phase")
    if spec.name in ORDER and phase in ORDER and phase != spec.name:
        raise PipelineError(
            f"{path}: a {phase} run, not a {spec.name} one (--gate {phase} judges it)"
        )
    receipts.append_ledger(
        ledger_entry(verdict, Path(path), source="gate.check", sealed=require_seal)
    )
    return verdict


def find_passing(phase: str, release_sha256: str, spec: GateSpec) -> dict[str, Any] | None:
    """The ledger entry of the newest run of `phase` for this release, when that run passes
    `spec` judged again from its receipts; None otherwise (`newest_verdict` says why)."""
    entry, verdict = newest_verdict(phase, release_sha256, spec)
    return entry if verdict is not None and verdict.passed else None


def newest_verdict(
    phase: str, release_sha256: str, spec: GateSpec
) -> tuple[dict[str, Any] | None, Verdict | None]:
    """The newest run of `phase` (week3, …) for this release that the ledger names, judged again
    with `spec` — the thresholds of whoever relies on it: (its newest ledger entry, the verdict).
    The newest run decides: an older pass does not outweigh a newer failure, and a pass recorded
    under a laxer env file does not count. Only evidence counts: an entry whose run file no
    longer verifies, or whose own `run` record is not of that phase and release (the ledger is
    a plain hash chain, so it is not trusted for that), is passed over. (None, None): no run."""
    ledger = receipts.ledger_path()
    if not ledger.exists() or not receipts.verify(ledger, require_seal=False).ok:
        return None, None
    entries = [
        entry
        for entry in receipts.iter_records(ledger)
        if entry.get("gate") in (phase, spec.name) and entry.get("release_sha256") == release_sha256
    ]
    for entry in reversed(entries):
        again = check(entry["receipts"], spec)
        found = again.verification
        if (
            found is not None
            and found.ok
            and found.head == entry.get("receipts_head")
            and _run_of(found.run, phase, release_sha256)
        ):
            return entry, again
    return None, None


def _run_of(run: dict[str, Any] | None, phase: str, release_sha256: str) -> bool:
    release = (run or {}).get("release")
    return (
        run is not None
        and run.get("phase") == phase
        and isinstance(release, dict)
        and release.get("sha256") == release_sha256
    )
