"""The ledger of verdicts (pipeline/verdicts.py): gate.check records, week 5 and phase2.all
find "the newest run of that week for this release, judged again from its receipts"."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import receipts, verdicts
from pipeline.errors import PipelineError
from pipeline.gates import parse_gate

SHA = "ab" * 32
SPEC = parse_gate("week3", {"http.success": ["rate == 1"]}, "t.toml")


def run_file(
    tmp_path: Path, name: str, *, passed: bool, phase: str = "week3", sha: str = SHA
) -> Path:
    path = tmp_path / f"{name}.jsonl"
    with receipts.ReceiptWriter(path, run_id=name, phase=phase) as writer:
        writer.write("run", release={"sha256": sha, "version": "1.0.0"})
        for ok in (True, passed):
            writer.write("request", "load", latency_ms=1.0, passed=ok, status=200 if ok else 500)
        writer.seal()
    return path


def test_a_pass_is_found_for_its_release_only(tmp_path):
    verdicts.judge_file(run_file(tmp_path, "a", passed=True), SPEC)
    assert verdicts.find_passing("week3", SHA, SPEC)["judged_run"] == "a"
    assert verdicts.find_passing("week3", "cd" * 32, SPEC) is None
    assert verdicts.find_passing("week4", SHA, SPEC) is None


def test_the_newest_run_decides_an_older_pass_does_not_outweigh_a_newer_failure(tmp_path):
    verdicts.judge_file(run_file(tmp_path, "old", passed=True), SPEC)
    verdicts.judge_file(run_file(tmp_path, "new", passed=False), SPEC)
    entry, verdict = verdicts.newest_verdict("week3", SHA, SPEC)
    assert entry["judged_run"] == "new" and verdict is not None and not verdict.passed
    assert verdicts.find_passing("week3", SHA, SPEC) is None


def test_a_stricter_reader_judges_a_recorded_pass_again(tmp_path):
    verdicts.judge_file(run_file(tmp_path, "a", passed=True), SPEC)
    stricter = parse_gate("week3", {"http.success": ["count >= 10"]}, "strict.toml")
    assert verdicts.find_passing("week3", SHA, stricter) is None


def test_a_run_file_edited_after_its_verdict_is_passed_over(tmp_path):
    path = run_file(tmp_path, "a", passed=True)
    verdicts.judge_file(path, SPEC)
    path.write_bytes(path.read_bytes().replace(b'"version":"1.0.0"', b'"version":"1.0.9"'))
    assert verdicts.newest_verdict("week3", SHA, SPEC) == (None, None)


def test_a_weeks_gate_over_another_weeks_run_is_bad_input_and_not_recorded(tmp_path):
    path = run_file(tmp_path, "a", passed=True, phase="week4")
    with pytest.raises(PipelineError, match=r"a week4 run, not a week3 one \(--gate week4"):
        verdicts.judge_file(path, SPEC)
    assert not receipts.ledger_path().exists()
