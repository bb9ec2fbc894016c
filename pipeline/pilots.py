"""Customer pilot scenarios (pilots/*.toml): validated on load like env files, and generated.

A scenario names the customer, the price of a billable (accepted) operation, and an ordered list
of operations — marketplace entitlement events and Pub/Sub messages — each with the answer the
release must give. Operations that share an ordering key (the tenant for marketplace events, the
messageId for Pub/Sub) are replayed in file order; different keys may run concurrently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.tomlfile import read_toml

EVENTS = ("grant", "revoke", "suspend", "sku_changed")
KINDS = ("marketplace", "pubsub", "raw")
STATES = ("none", "active", "suspended", "revoked")

# The reference release's entitlement state machine (examples/taiea/src/tai_governor.erl):
# (state, event) → (decision, next state). The generator predicts expectations with it.
TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("none", "grant"): ("accept", "active"),
    ("active", "grant"): ("refuse", "active"),
    ("suspended", "grant"): ("accept", "active"),
    ("revoked", "grant"): ("accept", "active"),
    ("none", "suspend"): ("refuse", "none"),
    ("active", "suspend"): ("accept", "suspended"),
    ("suspended", "suspend"): ("refuse", "suspended"),
    ("revoked", "suspend"): ("refuse", "revoked"),
    ("none", "revoke"): ("refuse", "none"),
    ("active", "revoke"): ("accept", "revoked"),
    ("suspended", "revoke"): ("accept", "revoked"),
    ("revoked", "revoke"): ("refuse", "revoked"),
    ("none", "sku_changed"): ("accept", "active"),
    ("active", "sku_changed"): ("accept", "active"),
    ("suspended", "sku_changed"): ("refuse", "suspended"),
    ("revoked", "sku_changed"): ("refuse", "revoked"),
}


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str  # marketplace | pubsub | raw
    method: str
    path: str
    body: bytes
    order_key: str
    tenant: str | None
    expect_status: int
    expect_decision: str | None = None
    expect_state: str | None = None
    expect_duplicate: bool | None = None
    event: str | None = None

    def expected(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.expect_status}
        for name in ("decision", "state", "duplicate"):
            value = getattr(self, f"expect_{name}")
            if value is not None:
                out[name] = value
        return out

    def billable(self, actual: dict[str, Any], matched: bool) -> bool:
        """Billed: a matched, accepted operation that is not a duplicate delivery."""
        return (
            matched and actual.get("decision") == "accept" and actual.get("duplicate") is not True
        )

    def judge(self, status: int, answer: Any) -> tuple[dict[str, Any], list[str]]:
        """(what the release answered, the fields that differ from the expectation)."""
        body = answer if isinstance(answer, dict) else {}
        actual: dict[str, Any] = {"status": status}
        for name in ("decision", "state", "duplicate", "reason", "error", "event_id"):
            if name in body:
                actual[name] = body[name]
        if "decision" not in actual and body.get("subscription") == "acknowledged":
            actual["decision"] = "accept"  # a Pub/Sub push is accepted by acknowledging it
        differ = [name for name, want in self.expected().items() if actual.get(name) != want]
        return actual, differ


@dataclass(frozen=True)
class Scenario:
    path: Path
    sha256: str
    tenant_id: str
    customer: str
    price: Decimal
    currency: str
    concurrency: int
    operations: tuple[Operation, ...]

    def revenue(self, billable: int) -> Decimal:
        return (self.price * billable).quantize(Decimal("0.01"))


def _need(
    step: str, table: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str
) -> Any:
    if field not in table:
        raise PipelineError(f"{where}: step {step}: missing field {field!r}")
    value = table[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PipelineError(f"{where}: step {step}: field {field!r} has the wrong type ({value!r})")
    return value


_OP_FIELDS = {
    "id",
    "kind",
    "event",
    "action",
    "tenant",
    "sku",
    "entitlement_id",
    "message_id",
    "data",
    "body",
    "expect_status",
    "expect_decision",
    "expect_state",
    "expect_duplicate",
    "note",
}


def _operation(raw: dict[str, Any], index: int, tenant: str, where: str) -> Operation:
    step = str(raw.get("id", f"#{index + 1}"))
    unknown = set(raw) - _OP_FIELDS
    if unknown:
        raise PipelineError(f"{where}: step {step}: unknown field {sorted(unknown)[0]!r}")
    _need(step, raw, "id", str, where)
    kind = _need(step, raw, "kind", str, where)
    if kind not in KINDS:
        raise PipelineError(
            f"{where}: step {step}: field 'kind': unknown operation kind {kind!r} (known: {', '.join(KINDS)})"
        )
    status = _need(step, raw, "expect_status", int, where)
    decision = raw.get("expect_decision")
    if decision is not None and decision not in ("accept", "refuse"):
        raise PipelineError(
            f"{where}: step {step}: field 'expect_decision' must be accept or refuse"
        )
    state = raw.get("expect_state")
    if state is not None and state not in STATES:
        raise PipelineError(
            f"{where}: step {step}: field 'expect_state' must be one of {', '.join(STATES)}"
        )
    op_tenant = raw.get("tenant", tenant)
    if kind == "marketplace":
        event = _need(step, raw, "event", str, where)
        if event not in EVENTS:
            raise PipelineError(
                f"{where}: step {step}: field 'event': unknown event {event!r} (known: {', '.join(EVENTS)})"
            )
        _need(step, raw, "expect_decision", str, where)
        body: dict[str, Any] = {"tenant_id": op_tenant, "event_type": event, "event_data": {}}
        if "sku" in raw:
            body["event_data"]["sku"] = raw["sku"]
        if "entitlement_id" in raw:
            body["entitlement_id"] = raw["entitlement_id"]
        return Operation(
            step,
            kind,
            "POST",
            "/marketplace",
            json.dumps(body).encode(),
            f"tenant:{op_tenant}",
            op_tenant,
            status,
            decision,
            state,
            None,
            event,
        )
    if kind == "pubsub":
        message_id = raw.get("message_id")
        data = raw.get("data", {})
        message: dict[str, Any] = {
            "attributes": {},
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
        }
        if message_id is not None:
            message["messageId"] = str(message_id)
        duplicate = raw.get("expect_duplicate")
        if status == 202 and duplicate is None:
            raise PipelineError(f"{where}: step {step}: missing field 'expect_duplicate'")
        body = {"message": message, "subscription": f"projects/{op_tenant}/subscriptions/pilot"}
        key = f"pubsub:{message_id}" if message_id is not None else f"step:{step}"
        return Operation(
            step,
            kind,
            "POST",
            "/pubsub",
            json.dumps(body).encode(),
            key,
            op_tenant,
            status,
            decision,
            None,
            duplicate,
        )
    # raw: a malformed or hand-written request, sent as it is
    text = _need(step, raw, "body", str, where)
    if decision is None:
        raise PipelineError(f"{where}: step {step}: missing field 'expect_decision'")
    return Operation(
        step,
        kind,
        "POST",
        "/marketplace",
        text.encode(),
        f"tenant:{op_tenant}",
        op_tenant,
        status,
        decision,
        state,
    )


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    raw_bytes, data = read_toml(path, "scenario file")
    where = str(path)
    unknown = set(data) - {"customer", "pricing", "replay", "operations", "description"}
    if unknown:
        raise PipelineError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    customer = data.get("customer")
    if (
        not isinstance(customer, dict)
        or not isinstance(customer.get("tenant_id"), str)
        or not isinstance(customer.get("name"), str)
    ):
        raise PipelineError(f"{where}: key customer: needs tenant_id and name (strings)")
    pricing = data.get("pricing")
    if not isinstance(pricing, dict):
        raise PipelineError(f"{where}: key pricing: missing table [pricing]")
    price_raw = pricing.get("price_per_operation")
    if isinstance(price_raw, bool) or not isinstance(price_raw, int | float | str):
        raise PipelineError(f"{where}: key pricing.price_per_operation: expected a number")
    try:
        price = Decimal(str(price_raw))
    except ArithmeticError:
        raise PipelineError(f"{where}: key pricing.price_per_operation: not a number") from None
    if not price.is_finite() or price < 0:
        raise PipelineError(
            f"{where}: key pricing.price_per_operation: must be ≥ 0, got {price_raw}"
        )
    currency = pricing.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
        raise PipelineError(f"{where}: key pricing.currency: expected an ISO 4217 code like USD")
    concurrency = (data.get("replay") or {}).get("concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise PipelineError(f"{where}: key replay.concurrency: expected an integer ≥ 1")
    ops_raw = data.get("operations")
    if not isinstance(ops_raw, list) or not ops_raw:
        raise PipelineError(f"{where}: key operations: no [[operations]]")
    operations = []
    seen: set[str] = set()
    for index, raw in enumerate(ops_raw):
        op = _operation(raw, index, customer["tenant_id"], where)
        if op.id in seen:
            raise PipelineError(f"{where}: step {op.id}: field 'id': duplicate step id")
        seen.add(op.id)
        operations.append(op)
    return Scenario(
        path,
        hashlib.sha256(raw_bytes).hexdigest(),
        customer["tenant_id"],
        customer["name"],
        price,
        currency,
        concurrency,
        tuple(operations),
    )


# ---------------------------------------------------------------- the generator


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def generate(
    tenant: str,
    operations: int,
    seed: int,
    *,
    name: str | None = None,
    price: str = "0.25",
    currency: str = "USD",
    tenants: int = 3,
) -> str:
    """A scenario of `operations` steps whose expectations follow the reference state machine."""
    if operations < 1:
        raise PipelineError(f"--operations must be ≥ 1, got {operations}")
    rng = random.Random(seed)
    accounts = [tenant] + [f"{tenant}-ws{i}" for i in range(1, tenants)]
    state = dict.fromkeys(accounts, "none")
    seen_messages: list[str] = []
    lines = [
        f"# generated by `invoke pilot.generate --tenant {tenant} --operations {operations} --seed {seed}`",
        f'description = "generated pilot for {tenant}: {operations} operations, seed {seed}"',
        "",
        "[customer]",
        f"tenant_id = {json.dumps(tenant)}",
        f"name = {json.dumps(name or tenant)}",
        "",
        "[pricing]",
        f"price_per_operation = {price}",
        f"currency = {json.dumps(currency)}",
        "",
        "[replay]",
        "concurrency = 4",
    ]
    for i in range(operations):
        step: dict[str, Any] = {"id": f"op-{i + 1:04d}"}
        roll = rng.random()
        if roll < 0.7:
            account = rng.choice(accounts)
            event = rng.choice(EVENTS)
            decision, nxt = TRANSITIONS[(state[account], event)]
            state[account] = nxt
            step.update(kind="marketplace", event=event)
            if account != tenant:
                step["tenant"] = account
            if event in ("grant", "sku_changed"):
                step["sku"] = rng.choice(["starter", "professional", "enterprise"])
            step.update(expect_status=202, expect_decision=decision, expect_state=nxt)
        elif roll < 0.95:
            duplicate = bool(seen_messages) and rng.random() < 0.25
            message_id = rng.choice(seen_messages) if duplicate else f"msg-{seed}-{i + 1}"
            if not duplicate:
                seen_messages.append(message_id)
            step.update(
                kind="pubsub",
                message_id=message_id,
                data={"n": i + 1},
                expect_status=202,
                expect_decision="accept",
                expect_duplicate=duplicate,
            )
        else:
            step.update(
                kind="raw",
                body='{"tenant_id": "' + tenant + '", "event_type": ',
                expect_status=400,
                expect_decision="refuse",
            )
        lines += ["", "[[operations]]"] + [f"{k} = {_toml_value(v)}" for k, v in step.items()]
    return "\n".join(lines) + "\n"
