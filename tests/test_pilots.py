"""Pilot scenarios (pipeline/pilots.py): what a file must say, refused in one line naming the
file, the step and the field; and what a valid step sends. The replay against the real release
is tests/test_week4.py's."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pipeline import pilots
from pipeline.errors import PipelineError

HEAD = """
[customer]
tenant_id = "acme-001"
name = "Acme"

[pricing]
price_per_operation = 0.25
currency = "USD"
"""
GRANT = """
[[operations]]
id = "op-1"
kind = "marketplace"
event = "grant"
sku = "starter"
expect_status = 202
expect_decision = "accept"
expect_state = "active"
"""


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD, "key operations: missing"),
        (HEAD.replace('currency = "USD"', 'currency = "usd"') + GRANT, "key pricing.currency"),
        (HEAD.replace("0.25", "true") + GRANT, "key pricing.price_per_operation: expected a number"),
        (HEAD + "\n[replay]\nconcurrency = 0\n" + GRANT, "key replay.concurrency"),
        (HEAD + "colour = 1\n" + GRANT, "key pricing.colour: unknown key"),
        (HEAD + GRANT.replace("expect_status = 202", 'expect_status = "202"'),
         "step op-1: field 'expect_status': Input should be a valid integer (got '202')"),
        (HEAD + GRANT.replace('sku = "starter"', "colour = 1"), "step op-1: field 'colour': unknown field"),
        (HEAD + GRANT.replace('expect_decision = "accept"', 'expect_decision = "maybe"'),
         "step op-1: field 'expect_decision'"),
        (HEAD + GRANT.replace('event = "grant"\n', ""), "step op-1: missing field 'event'"),
        (HEAD + '[[operations]]\nid = "p"\nkind = "pubsub"\nexpect_status = 202\n',
         "step p: missing field 'expect_duplicate'"),
        (HEAD + '[[operations]]\nkind = "raw"\nexpect_status = 400\n', "step #1: missing field 'id'"),
    ],
    ids=["no-operations", "currency", "price-bool", "concurrency-0", "unknown-key", "status-type",
         "unknown-field", "decision-value", "marketplace-needs-event", "pubsub-needs-duplicate",
         "step-without-id"],
)  # fmt: skip
def test_a_bad_scenario_is_refused_in_one_line_naming_where(tmp_path, text, message):
    path = scenario(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        pilots.load_scenario(path)
    said = str(caught.value)
    assert said.startswith(f"{path}: ") and message in said and "\n" not in said


def test_a_valid_step_becomes_the_request_the_release_expects(tmp_path):
    text = (
        HEAD
        + GRANT
        + """
[[operations]]
id = "op-2"
kind = "pubsub"
tenant = "acme-002"
message_id = "m-1"
data = { n = 1 }
expect_status = 202
expect_decision = "accept"
expect_duplicate = false
"""
    )
    loaded = pilots.load_scenario(scenario(tmp_path, text))
    assert (loaded.tenant_id, str(loaded.price), loaded.currency, loaded.concurrency) == (
        "acme-001", "0.25", "USD", 4)  # fmt: skip
    grant, push = loaded.operations
    assert (grant.path, grant.order_key, grant.expected()) == (
        "/marketplace",
        "tenant:acme-001",
        {"status": 202, "decision": "accept", "state": "active"},
    )
    assert json.loads(grant.body) == {
        "tenant_id": "acme-001", "event_type": "grant", "event_data": {"sku": "starter"}}  # fmt: skip
    message = json.loads(push.body)["message"]
    assert (push.path, push.order_key, message["messageId"]) == ("/pubsub", "pubsub:m-1", "m-1")
    assert json.loads(base64.b64decode(message["data"])) == {"n": 1}
    assert loaded.revenue(3) == pilots.Decimal("0.75")


def test_a_generated_scenario_loads_and_follows_the_state_machine(tmp_path):
    loaded = pilots.load_scenario(scenario(tmp_path, pilots.generate("globex", 200, seed=3)))
    assert len(loaded.operations) == 200
    state: dict[str, str] = {}
    for op in loaded.operations:
        if op.kind == "marketplace":
            assert op.tenant is not None and op.event is not None
            decision, nxt = pilots.TRANSITIONS[(state.get(op.tenant, "none"), op.event)]
            assert (op.expect_decision, op.expect_state) == (decision, nxt)
            state[op.tenant] = nxt
