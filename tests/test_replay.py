"""Pilot replay (pipeline/probes/replay.py): one ordering key's operations in file order, keys
side by side; every answer judged against its expectation, against the real reference release."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline import pilots
from pipeline.probes.replay import Outcome, ordered_groups, replay

REPO = Path(__file__).resolve().parent.parent


def op(step: str, key: str) -> pilots.Operation:
    return pilots.Operation(step, "marketplace", "POST", "/marketplace", b"{}", key, None, 202)


@pytest.mark.parametrize(
    ("keys", "groups"),
    [
        ("aab", [["1", "2"], ["3"]]),
        ("abab", [["1", "3"], ["2", "4"]]),
        ("abc", [["1"], ["2"], ["3"]]),
        ("", []),
    ],
    ids=["one-key-in-order", "interleaved", "all-apart", "none"],
)
def test_operations_group_by_key_in_file_order(keys, groups):
    ops = [op(str(n), key) for n, key in enumerate(keys, start=1)]
    assert [[o.id for o in g] for g in ordered_groups(ops)] == groups


def test_the_first_customers_pilot_replays_against_the_release_with_every_answer_matched(
    start_reference,
):
    release = start_reference()
    scenario = pilots.load_scenario(REPO / "pilots" / "first-customer.toml")
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def keep(outcome: Outcome) -> None:
        with lock:
            outcomes.append(outcome)

    replay(release.url, scenario.operations, concurrency=4, on_outcome=keep)
    assert len(outcomes) == len(scenario.operations)
    assert [o.operation.id for o in outcomes if not o.matched] == []
    for group in ordered_groups(scenario.operations):  # each key's answers arrived in file order
        mine = [o.operation.id for o in outcomes if o.operation.order_key == group[0].order_key]
        assert mine == [g.id for g in group]
    billable = sum(o.as_receipt()["billable"] for o in outcomes)
    assert 0 < billable < len(outcomes)


def test_no_answer_is_a_mismatch_with_status_0_not_a_crash():
    outcomes: list[Outcome] = []
    from pipeline.runtime.process import free_port

    replay(f"http://127.0.0.1:{free_port()}", [op("1", "a")], on_outcome=outcomes.append, timeout=2)
    (only,) = outcomes
    assert only.actual["status"] == 0 and "no answer" in only.actual["error"]
    assert not only.matched and only.differ == ["status"]
