"""Week 4: the first customer's pilot against the reference release, Gate 3."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline import config, gates, pilots, receipts
from pipeline.errors import PipelineError
from pipeline.phases.week4 import DEFAULT_SCENARIO, run_week4

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


def records(path: Path, kind: str) -> list[dict]:
    return [r for r in receipts.iter_records(path) if r["kind"] == kind]


@pytest.fixture(scope="module")
def pilot_run(reference_tarball, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
        return run_week4(reference_tarball(), config.load_env("local"))


def test_first_customer_passes_gate3(pilot_run):
    assert pilot_run.verdict.passed, pilot_run.verdict.summary()
    assert receipts.verify(pilot_run.receipts).ok
    operations = records(pilot_run.receipts, "operation")
    assert len(operations) == len(pilots.load_scenario(DEFAULT_SCENARIO).operations) >= 50
    assert all(op["matched"] for op in operations)


def test_revenue_record_agrees_with_the_operations(pilot_run):
    operations = records(pilot_run.receipts, "operation")
    billable = sum(
        1
        for op in operations
        if op["actual"]["status"] == 202
        and op["actual"].get("decision") == "accept"
        and op["actual"].get("duplicate") is not True
    )
    (revenue,) = records(pilot_run.receipts, "revenue")
    assert revenue["billable_operations"] == billable
    assert Decimal(str(revenue["amount"])) == Decimal("0.25") * billable
    assert revenue["currency"] == "USD" and revenue["tenant"] == "acme-001"
    assert revenue["scenario_sha256"] == pilots.load_scenario(DEFAULT_SCENARIO).sha256


def test_each_tenants_operations_stay_in_order(pilot_run):
    steps: dict[str, list[str]] = {}
    for op in records(pilot_run.receipts, "operation"):
        if op["op_kind"] == "marketplace":
            steps.setdefault(op["tenant"], []).append(op["step"])
    assert len(steps) == 3
    for tenant, ids in steps.items():
        assert ids == sorted(ids), f"{tenant}'s operations were answered out of order"


def test_first_customer_exercises_every_transition_refusal_and_malformed_input():
    scenario = pilots.load_scenario(DEFAULT_SCENARIO)
    state: dict[str, str] = {}
    seen = set()
    for op in scenario.operations:
        if op.kind == "marketplace":
            before = state.get(op.tenant or "", "none")
            seen.add((before, op.event))
            state[op.tenant or ""] = pilots.TRANSITIONS[(before, op.event or "")][1]
    assert seen == set(pilots.TRANSITIONS)
    assert any(op.kind == "raw" and op.expect_status == 400 for op in scenario.operations)
    assert any(op.expect_duplicate for op in scenario.operations)


def test_generated_scenario_matches_the_reference_release(reference_tarball, tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(pilots.generate("globex-7", 150, seed=7))
    assert path.read_text() == pilots.generate("globex-7", 150, seed=7)  # deterministic per seed
    result = run_week4(reference_tarball(), config.load_env("local"), scenario=path, concurrency=8)
    assert result.verdict.passed, result.verdict.summary()
    assert len(records(result.receipts, "operation")) == 150


def test_divergent_release_fails_gate3_listing_mismatches(reference_tarball, tmp_path):
    text = DEFAULT_SCENARIO.read_text()
    wrong = text.replace('expect_decision = "refuse"', 'expect_decision = "accept"', 1)
    path = tmp_path / "wrong.toml"
    path.write_text(wrong)
    result = run_week4(reference_tarball(), config.load_env("local"), scenario=path)
    failing = {f"{r.metric} {r.expression}" for r in result.verdict.failures}
    assert "pilot.accuracy rate == 1" in failing
    (mismatch,) = [op for op in records(result.receipts, "operation") if not op["matched"]]
    assert mismatch["differ"] == ["decision", "state"] or "decision" in mismatch["differ"]
    assert receipts.verify(result.receipts).ok


def test_release_with_errors_fault_fails_gate3(reference_tarball, tmp_path):
    result = run_week4(reference_tarball("errors"), config.load_env("local"))
    assert not result.verdict.passed
    bad = [op for op in records(result.receipts, "operation") if not op["matched"]]
    faults = [op for op in bad if op["actual"]["status"] == 500]
    assert faults and all(op["actual"]["error"] == "injected fault: errors" for op in faults)
    # Any other mismatch is a consequence: a transition lost to a 500 changes later answers.
    assert bad[0] is faults[0]


def test_tampered_revenue_fails_the_cross_check(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = receipts.ReceiptWriter(path, run_id="t", phase="week4")
    writer.write("run", release={"sha256": "x"})
    for i in range(50):
        writer.write("operation", "pilot", step=f"op-{i}", matched=True, billable=i % 2 == 0)
    writer.write("revenue", "pilot", billable_operations=26, amount=6.5, price=0.25)  # 25 billable
    writer.seal()
    writer.close()
    verdict = gates.check(path, config.load_env("local").gate_spec("week4"))
    assert [f"{r.metric} {r.expression}" for r in verdict.failures] == [
        "revenue.consistent rate == 1"
    ]


BAD_SCENARIOS = [
    ("unknown-kind", 'kind = "marketplace"', 'kind = "fax"', "step op-001: field 'kind'"),
    (
        "missing-expectation",
        'expect_decision = "refuse"\n',
        "",
        "step op-001: missing field 'expect_decision'",
    ),
    (
        "duplicate-id",
        'id = "op-002"',
        'id = "op-001"',
        "step op-001: field 'id': duplicate step id",
    ),
    (
        "negative-price",
        "price_per_operation = 0.25",
        "price_per_operation = -1",
        "pricing.price_per_operation",
    ),
    ("unknown-event", 'event = "suspend"', 'event = "pause"', "step op-001: field 'event'"),
]


@pytest.mark.parametrize(
    ("name", "old", "new", "message"), BAD_SCENARIOS, ids=[b[0] for b in BAD_SCENARIOS]
)
def test_bad_scenario_is_refused_naming_file_step_and_field(name, old, new, message, tmp_path):
    path = tmp_path / f"{name}.toml"
    path.write_text(DEFAULT_SCENARIO.read_text().replace(old, new, 1))
    with pytest.raises(PipelineError) as caught:
        pilots.load_scenario(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_cli_bad_scenario_exits_2_before_starting_anything(reference_tarball, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(DEFAULT_SCENARIO.read_text().replace('kind = "marketplace"', 'kind = "fax"', 1))
    done = subprocess.run(
        [INVOKE, "phase2.pilot", "--tarball", str(reference_tarball()), "--scenario", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "fax" in done.stderr
    assert not list(Path(os.environ["PIPELINE_RUNS_DIR"]).glob("*/receipts.jsonl"))


def test_cli_pilot_generate_writes_a_loadable_scenario(tmp_path):
    out = tmp_path / "gen.toml"
    done = subprocess.run(
        [
            INVOKE,
            "pilot.generate",
            "--tenant",
            "initech",
            "--operations",
            "80",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)
    assert len(pilots.load_scenario(out).operations) == 80


def test_a_release_killed_mid_pilot_stops_the_replay_and_says_so(reference_tarball, tmp_path):
    """beam.smp killed (-9) at the first answer: the replay stops when the death is seen and
    the stage names it, instead of listing every later operation as a mismatch."""
    import signal

    pid: list[int] = []

    def on_record(record: dict) -> None:
        if record["kind"] == "startup":
            pid.append(record["pid"])
        if record["kind"] == "operation" and len(pid) == 1:
            pid.append(0)
            os.kill(pid[0], signal.SIGKILL)

    result = run_week4(
        reference_tarball(), config.load_env("local"), receipts=tmp_path / "r.jsonl",
        on_record=on_record,
    )  # fmt: skip
    assert not result.verdict.passed
    found = list(receipts.iter_records(result.receipts))
    (error,) = [r for r in found if r["kind"] == "error" and r.get("stage") == "pilot"]
    assert error["reason"].startswith("the release exited (status 137) during the pilot")
    assert not [r for r in found if r["kind"] == "revenue"]  # no revenue for a cut pilot
    assert receipts.verify(result.receipts).sealed
