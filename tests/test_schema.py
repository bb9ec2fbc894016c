"""The receipt schema (pipeline/schema.py): what each kind carries, checked as it is written.

The suite runs with PIPELINE_SCHEMA_CHECK=1 (tests/conftest.py), so every receipt a phase writes
anywhere in it is checked; these tests pin the checker itself."""

from __future__ import annotations

import pytest

from pipeline import config, receipts, schema
from pipeline.phases.base import PhaseRun

GOOD_REQUEST = {"latency_ms": 3.2, "passed": True, "status": 200, "endpoint": "/health"}


@pytest.mark.parametrize(
    ("kind", "fields", "problem"),
    [
        ("request", GOOD_REQUEST, None),
        ("request", {**GOOD_REQUEST, "error": None}, None),
        ("request", {"passed": True, "status": 200}, "request: missing field 'latency_ms'"),
        ("request", {**GOOD_REQUEST, "status": "200"}, "field 'status' should be int, not str"),
        ("request", {**GOOD_REQUEST, "status": True}, "field 'status' should be int, not bool"),
        ("request", {**GOOD_REQUEST, "latncy": 1}, "request: undeclared field 'latncy'"),
        ("stage", {"event": "end", "reason": None}, None),
        ("stage", {"event": None}, "field 'event' should be str, not NoneType"),
        ("telemetry", {}, "unknown kind 'telemetry'"),
    ],
    ids=[
        "good",
        "nullable-null",
        "missing",
        "wrong-type",
        "bool-is-no-int",
        "undeclared",
        "optional-null",
        "required-null",
        "unknown-kind",
    ],
)
def test_the_schema_names_what_is_wrong(kind, fields, problem):
    found = schema.problems(kind, fields)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_every_kind_of_the_architecture_is_declared():
    named = {"run", "stage", "startup", "receipt", "request", "metrics", "error", "shutdown",
             "operation", "revenue", "deploy", "traffic", "drain", "rollback", "gate", "seal"}  # fmt: skip
    assert named <= set(schema.KINDS)


def test_a_checked_run_refuses_an_undeclared_receipt_and_keeps_the_file_intact(tmp_path):
    assert schema.checker() is schema.problems  # the suite runs checked
    run = PhaseRun("week3", config.load_env("local"), receipts_path=tmp_path / "r.jsonl")
    run.begin({"sha256": "ab" * 32})
    with pytest.raises(ValueError, match=r"request: missing field 'latency_ms'"):
        run.write("request", "load", passed=True, status=200)
    run.write("request", "load", **GOOD_REQUEST)
    run.writer.seal()
    run.writer.close()
    verified = receipts.verify(tmp_path / "r.jsonl")
    assert verified.ok and verified.sealed
    assert [r["kind"] for r in receipts.iter_records(tmp_path / "r.jsonl")] == [
        "run",
        "request",
        "seal",
    ]


def test_unchecked_by_default(monkeypatch):
    monkeypatch.delenv(schema.CHECK_ENV)
    assert schema.checker() is None
