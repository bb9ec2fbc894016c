"""Customer pilot scenarios (pilots/*.toml): validated on load with pydantic like env files, and generated.

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
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Customer(_Strict):
    tenant_id: str
    name: str


class _Pricing(_Strict):
    price_per_operation: Decimal = Field(strict=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$")

    @field_validator("price_per_operation", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number")
        return value

    @field_validator("price_per_operation")
    @classmethod
    def _not_negative(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value < 0:
            raise ValueError(f"must be ≥ 0, got {value}")
        return value


class _Replay(_Strict):
    concurrency: int = Field(4, ge=1)


class _Step(_Strict):
    """One `[[operations]]` table; what a kind requires is checked after the fields."""

    id: str
    kind: Literal["marketplace", "pubsub", "raw"]
    expect_status: int
    expect_decision: Literal["accept", "refuse"] | None = None
    expect_state: Literal["none", "active", "suspended", "revoked"] | None = None
    expect_duplicate: bool | None = None
    event: Literal["grant", "revoke", "suspend", "sku_changed"] | None = None
    action: str | None = None
    tenant: str | None = None
    sku: str | None = None
    entitlement_id: str | None = None
    message_id: str | int | None = None
    data: dict[str, Any] | None = None
    body: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _what_the_kind_needs(self) -> _Step:
        needs = {
            "marketplace": ("event", "expect_decision"),
            "raw": ("body", "expect_decision"),
            "pubsub": ("expect_duplicate",) if self.expect_status == 202 else (),
        }[self.kind]
        for name in needs:
            if getattr(self, name) is None:
                raise ValueError(f"missing field {name!r}")
        return self


class _ScenarioFile(_Strict):
    description: str | None = None
    customer: _Customer
    pricing: _Pricing
    replay: _Replay = _Replay()
    operations: list[_Step] = Field(min_length=1)


def _operation(step: _Step, tenant: str) -> Operation:
    """The request a validated step sends, and the answer it expects."""
    op_tenant = step.tenant or tenant
    if step.kind == "marketplace":
        body: dict[str, Any] = {"tenant_id": op_tenant, "event_type": step.event, "event_data": {}}
        if step.sku is not None:
            body["event_data"]["sku"] = step.sku
        if step.entitlement_id is not None:
            body["entitlement_id"] = step.entitlement_id
        return Operation(
            step.id,
            step.kind,
            "POST",
            "/marketplace",
            json.dumps(body).encode(),
            f"tenant:{op_tenant}",
            op_tenant,
            step.expect_status,
            step.expect_decision,
            step.expect_state,
            None,
            step.event,
        )
    if step.kind == "pubsub":
        message: dict[str, Any] = {
            "attributes": {},
            "data": base64.b64encode(json.dumps(step.data or {}).encode()).decode(),
        }
        if step.message_id is not None:
            message["messageId"] = str(step.message_id)
        body = {"message": message, "subscription": f"projects/{op_tenant}/subscriptions/pilot"}
        key = f"pubsub:{step.message_id}" if step.message_id is not None else f"step:{step.id}"
        return Operation(
            step.id,
            step.kind,
            "POST",
            "/pubsub",
            json.dumps(body).encode(),
            key,
            op_tenant,
            step.expect_status,
            step.expect_decision,
            None,
            step.expect_duplicate,
        )
    assert step.body is not None  # raw: a malformed or hand-written request, sent as it is
    return Operation(
        step.id,
        step.kind,
        "POST",
        "/marketplace",
        step.body.encode(),
        f"tenant:{op_tenant}",
        op_tenant,
        step.expect_status,
        step.expect_decision,
        step.expect_state,
    )


def _refusal(where: str, data: dict[str, Any], error: Any) -> PipelineError:
    """One line naming the file, and the step and field (or the key) that is wrong."""
    loc, message = error["loc"], error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field" if loc[:1] == ("operations",) else "unknown key"
    elif error["type"] not in ("missing", "value_error") and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    if len(loc) >= 2 and loc[0] == "operations" and isinstance(loc[1], int):
        raw = data["operations"][loc[1]]
        step = raw.get("id", f"#{loc[1] + 1}") if isinstance(raw, dict) else f"#{loc[1] + 1}"
        field = loc[2] if len(loc) > 2 else None
        if error["type"] == "missing":
            return PipelineError(f"{where}: step {step}: missing field {field!r}")
        if field is None:
            return PipelineError(f"{where}: step {step}: {message}")
        return PipelineError(f"{where}: step {step}: field {field!r}: {message}")
    dotted = ".".join(str(part) for part in loc)
    if error["type"] == "missing":
        return PipelineError(f"{where}: key {dotted}: missing")
    return PipelineError(f"{where}: key {dotted}: {message}")


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    raw_bytes, data = read_toml(path, "scenario file")
    try:
        scenario = _ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise _refusal(str(path), data, exc.errors()[0]) from None
    operations = []
    seen: set[str] = set()
    for step in scenario.operations:
        if step.id in seen:
            raise PipelineError(f"{path}: step {step.id}: field 'id': duplicate step id")
        seen.add(step.id)
        operations.append(_operation(step, scenario.customer.tenant_id))
    return Scenario(
        path,
        hashlib.sha256(raw_bytes).hexdigest(),
        scenario.customer.tenant_id,
        scenario.customer.name,
        scenario.pricing.price_per_operation,
        scenario.pricing.currency,
        scenario.replay.concurrency,
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
