"""Gates: k6-style thresholds over metrics derived from receipts, judged fail-closed.

Three layers kept apart, as in k6 and Argo Rollouts' analysis:
  parse   — `parse_threshold("p(95) < 250")` → Threshold (aggregation, operator, number), once;
  measure — `MetricCollector` turns verified receipts into samples per metric key;
  judge   — `evaluate(spec, samples)` is a pure function → Verdict; rendering lives in views.py.
Missing data fails (unlike k6): every aggregation but `count` needs at least one sample.
"""

from __future__ import annotations

import math
import operator
import re
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline import compare, receipts
from pipeline.errors import PipelineError
from pipeline.stats import Ordered, percentile

_select: Callable[[array[float], int], float] | None
try:
    from pipeline._native import select as _select
except ImportError:  # not built: Ranked sorts instead
    _select = None

# ---------------------------------------------------------------- thresholds

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
AGGREGATIONS = ("count", "rate", "value", "avg", "min", "max", "med", "p(N)")
_THRESHOLD = re.compile(
    r"^\s*(?P<agg>count|rate|value|avg|min|max|med|p\(\s*(?P<pct>[0-9]+(?:\.[0-9]+)?)\s*\))"
    r"\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<num>[-+]?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*$"
)


@dataclass(frozen=True)
class Threshold:
    source: str
    agg: str  # count, rate, value, avg, min, max, med, p
    op: str
    value: float
    pct: float | None = None
    compare: str | None = None  # ratio, diff, mannwhitney, proportions: candidate vs baseline

    @property
    def label(self) -> str:
        base = f"p({self.pct:g})" if self.agg == "p" else self.agg
        if self.compare in ("ratio", "diff"):
            return f"{base} {self.compare}"
        return f"{self.compare} p" if self.compare else base

    def holds(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.value)


def parse_threshold(text: str) -> Threshold:
    """`AGG OP NUMBER`; raises ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"threshold must be a string like 'p(95) < 250', got {text!r}")
    compared = compare.COMPARISON.match(text)
    if compared:
        return _comparison(text, compared)
    match = _THRESHOLD.match(text)
    if not match:
        head = text.strip().split(" ")[0] if text.strip() else ""
        agg = head.split("(")[0] if head else ""
        if agg and agg not in ("count", "rate", "value", "avg", "min", "max", "med", "p"):
            raise ValueError(
                f"unknown aggregation {agg!r} in {text!r} (known: {', '.join(AGGREGATIONS)}; "
                "comparisons: 'AGG ratio|diff OP X', 'mannwhitney p OP X', 'proportions p OP X')"
            )
        raise ValueError(
            f"malformed threshold {text!r}: expected 'AGG OP NUMBER', e.g. 'p(95) < 250'"
        )
    pct = float(match["pct"]) if match["pct"] is not None else None
    if pct is not None and not 0 <= pct <= 100:
        raise ValueError(f"percentile out of range in {text!r}: p(N) needs 0 ≤ N ≤ 100")
    agg = "p" if pct is not None else match["agg"]
    return Threshold(text.strip(), agg, match["op"], float(match["num"]), pct)


def _comparison(text: str, match: re.Match[str]) -> Threshold:
    pct = float(match["pct"]) if match["pct"] is not None else None
    if pct is not None and not 0 <= pct <= 100:
        raise ValueError(f"percentile out of range in {text!r}: p(N) needs 0 ≤ N ≤ 100")
    how = match["how"] or match["test"]
    agg = "p" if pct is not None else (match["agg"] or how)
    return Threshold(text.strip(), agg, match["op"], float(match["num"]), pct, how)


# ---------------------------------------------------------------- metrics derived from receipts

Extract = Callable[[dict[str, Any]], float | None]


@dataclass(frozen=True)
class Metric:
    kinds: tuple[str, ...]
    extract: Extract
    help: str
    # samples are counts of matching records per second of the load's schedule (`scheduled_s`;
    # `sent_s` where a receipt has none): a send a busy machine pushed past the window's end
    # counts in the second it was due, so a window has its own seconds and no partial extra one
    # (its lateness is charged to its latency, measured from the schedule)
    per_second: bool = False
    cross_check: bool = False  # samples come from comparing records with each other (see below)
    fields: tuple[str, ...] = ()  # the fields `extract` (or the cross-check) reads

    def reads(self) -> tuple[str, ...]:
        found = getattr(self.extract, "field", None)
        return (
            *self.fields,
            *((found,) if found else ()),
            *(("scheduled_s", "sent_s") if self.per_second else ()),
        )


def _field(name: str) -> Extract:
    def extract(record: dict[str, Any]) -> float | None:
        value = record.get(name)
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    extract.field, extract.mode = name, "value"  # type: ignore[attr-defined]
    return extract


def _one(record: dict[str, Any]) -> float:
    return 1.0


def _flag(name: str, want: bool) -> Extract:
    def extract(record: dict[str, Any]) -> float | None:
        return 1.0 if record.get(name) is want else None

    extract.field, extract.mode = name, "flag"  # type: ignore[attr-defined]
    return extract


def _bool(name: str) -> Extract:
    def extract(record: dict[str, Any]) -> float:
        return 1.0 if record.get(name) is True else 0.0

    extract.field, extract.mode = name, "bool"  # type: ignore[attr-defined]
    return extract


def _stage_end(passed: bool) -> Extract:
    return lambda r: 1.0 if r.get("event") == "end" and r.get("passed") is passed else None


_EVIDENCE_KINDS = (
    "startup",
    "receipt",
    "request",
    "metrics",
    "error",
    "shutdown",
    "operation",
    "revenue",
    "deploy",
    "traffic",
    "drain",
    "rollback",
    "capture",
    "constraint",
    "oom",
    "scale",
    "environment",
    "release",
    "extract",
    "summary",
)

REGISTRY: dict[str, Metric] = {
    "startup.seconds": Metric(("startup",), _field("seconds"), "time from start to ready"),
    "smoke.passed": Metric(
        ("receipt",), _flag("passed", True), "one sample per passing smoke test"
    ),
    "smoke.failed": Metric(
        ("receipt",), _flag("passed", False), "one sample per failing smoke test"
    ),
    "smoke.total": Metric(("receipt",), _one, "one sample per smoke test"),
    "http.latency_ms": Metric(
        ("request",), _field("latency_ms"), "request latency (from schedule)"
    ),
    "http.success": Metric(
        ("request",), _bool("passed"), "1 per passing request, 0 per failing one"
    ),
    "http.failed": Metric(("request",), _flag("passed", False), "one sample per failing request"),
    "http.rps": Metric(
        ("request",), _one, "requests sent per second of the schedule", per_second=True
    ),
    "memory.mb": Metric(("metrics",), _field("rss_mb"), "resident memory of the release, MB"),
    "cpu.percent": Metric(("metrics",), _field("cpu_percent"), "CPU of the release, % of one core"),
    "instances": Metric(("metrics",), _field("instances"), "instances serving, per sample"),
    "cpu.utilization": Metric(
        ("metrics",),
        _field("cpu_utilization"),
        "busiest instances' CPU (p99), fraction of the limit",
    ),
    "memory.utilization": Metric(
        ("metrics",),
        _field("memory_utilization"),
        "fullest instances' memory (p99), fraction of the limit",
    ),
    "errors": Metric(("error",), _one, "one sample per error receipt"),
    "crashed": Metric(("crashed",), _one, "a run closed by runs.recover after it was killed"),
    "instances.shortfall": Metric(
        ("metrics",),
        lambda r: (
            1.0
            if type(r.get("instances_needed")) is int
            and (r.get("instances") or 0) < r["instances_needed"]
            else None
        ),
        "one sample per moment with fewer instances than the in-flight requests needed",
        fields=("instances", "instances_needed"),
    ),
    "receipts": Metric(_EVIDENCE_KINDS, _one, "evidence receipts (not run/stage/gate/seal)"),
    "captured.receipts": Metric(("capture",), _field("count"), "receipts the release printed"),
    "stages.passed": Metric(
        ("stage",), _stage_end(True), "one sample per passed stage", fields=("event", "passed")
    ),
    "stages.failed": Metric(
        ("stage",), _stage_end(False), "one sample per failed stage", fields=("event", "passed")
    ),
    "shutdown.exit_status": Metric(("shutdown",), _field("exit_status"), "exit status at stop"),
    "constraints.failed": Metric(("constraint",), _flag("passed", False), "failed sandbox checks"),
    "constraints.passed": Metric(("constraint",), _flag("passed", True), "proven sandbox checks"),
    "memory.oom_kills": Metric(
        ("oom",), _one, "one sample per OOM kill of the sandbox (cgroup failcnt, exit 137)"
    ),
    "pilot.operations": Metric(("operation",), _one, "one sample per pilot operation"),
    "pilot.accuracy": Metric(("operation",), _bool("matched"), "1 per matched answer, 0 otherwise"),
    "pilot.mismatches": Metric(("operation",), _flag("matched", False), "one per mismatch"),
    "revenue.records": Metric(("revenue",), _one, "one sample per revenue record"),
    "revenue.consistent": Metric(
        ("operation", "revenue"),
        _one,
        "1 per revenue record whose billable count and amount agree with the operation receipts",
        cross_check=True,
        fields=("billable", "matched", "billable_operations", "amount", "price"),
    ),
    "rollbacks": Metric(("rollback",), _one, "one sample per rollback"),
    "traffic.percent": Metric(("traffic",), _field("percent"), "traffic share of the candidate"),
}

_KEY = re.compile(r"^(?P<name>[a-z][a-z0-9_.]*)(?:\{(?P<filters>[^{}]*)\})?$")


@dataclass(frozen=True)
class MetricKey:
    source: str
    name: str
    filters: tuple[tuple[str, str], ...] = ()

    def matches(self, record: dict[str, Any]) -> bool:
        return all(_as_text(record.get(k)) == v for k, v in self.filters)


def _as_text(value: Any) -> str:
    if type(value) is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


def parse_metric(text: str) -> MetricKey:
    match = _KEY.match(text.strip())
    if not match:
        raise ValueError(f"malformed metric {text!r}: expected NAME or NAME{{field:value,…}}")
    name = match["name"]
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(sorted(REGISTRY))})")
    filters: list[tuple[str, str]] = []
    for part in (match["filters"] or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"malformed filter {part!r} in {text!r}: expected field:value")
        filters.append((key.strip(), value.strip()))
    return MetricKey(text.strip(), name, tuple(filters))


# ---------------------------------------------------------------- gate specs


@dataclass(frozen=True)
class GateSpec:
    name: str
    rules: tuple[tuple[MetricKey, tuple[Threshold, ...]], ...]
    source: str = "<inline>"
    min_samples: int = compare.MIN_SAMPLES  # per side, for a comparison rule
    effect: tuple[float, float] = (compare.EFFECT_MS, compare.EFFECT_RATIO)  # mannwhitney's

    @property
    def keys(self) -> list[MetricKey]:
        """Every key the rules read; a key with comparison rules also as its two sides
        (records whose `side` field names them)."""
        out = []
        for key, thresholds in self.rules:
            out.append(key)
            if any(t.compare for t in thresholds):
                out += [
                    MetricKey(
                        compare.side_source(key.source, side),
                        key.name,
                        (*key.filters, ("side", side)),
                    )
                    for side in compare.SIDES
                ]
        return out


GATE_ALIASES = {"gate1": "week2", "gate2": "week3", "gate3": "week4", "gate4": "week5"}


def canonical_gate_name(name: str) -> str:
    return GATE_ALIASES.get(name.lower(), name)


def parse_gate(name: str, table: Mapping[str, Any], source: str) -> GateSpec:
    """Parse `[gates.NAME]`; a bad key or expression is a PipelineError naming file, gate and key."""
    rules = []
    if not table:
        raise PipelineError(
            f"{source}: [gates.{name}] has no thresholds (a gate without data fails)"
        )
    for raw_key, expressions in table.items():
        where = f"{source}: [gates.{name}] {raw_key!r}"
        try:
            key = parse_metric(raw_key)
            if isinstance(expressions, str) or not isinstance(expressions, list) or not expressions:
                raise ValueError('expected a non-empty list of expressions, e.g. ["p(95) < 250"]')
            thresholds = tuple(parse_threshold(expr) for expr in expressions)
        except ValueError as exc:
            raise PipelineError(f"{where}: {exc}") from None
        rules.append((key, thresholds))
    return GateSpec(name, tuple(rules), source)


# ---------------------------------------------------------------- measuring


class MetricCollector:
    """Feeds verified records into samples per metric key; dispatch is indexed by kind, and
    each key becomes one small closure (this loop runs once per receipt of a million)."""

    def __init__(self, keys: Sequence[MetricKey]):
        self.samples: dict[str, array[float]] = {}
        self.buckets: dict[str, dict[int, int]] = {}
        self.ledgers: dict[str, dict[str, Any]] = {}  # cross-checked metrics' running state
        self.counted: dict[str, tuple[str, ...]] = {}  # one sample per record of these kinds
        self.kind_counts: dict[str, int] = {}
        self._by_kind: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        reads = {"kind"}
        for key in keys:
            reads.update(REGISTRY[key.name].reads(), (name for name, _ in key.filters))
        self.fields: tuple[str, ...] | None = tuple(sorted(reads))  # what feed() reads
        for key in keys:
            if key.source in self.samples:
                continue
            metric = REGISTRY[key.name]
            self.samples[key.source] = array("d")
            if (
                metric.extract is _one
                and not key.filters
                and not metric.per_second
                and not metric.cross_check
            ):
                self.counted[key.source] = metric.kinds  # a plain count: no closure per record
                continue
            if metric.per_second:
                self.buckets[key.source] = {}
            if metric.cross_check:
                self.ledgers[key.source] = {"billable": 0, "revenues": []}
            handler = self._handler(key, metric)
            for kind in metric.kinds:
                self._by_kind.setdefault(kind, []).append(handler)

    def _handler(self, key: MetricKey, metric: Metric) -> Callable[[dict[str, Any]], None]:
        extract, filters = metric.extract, key.filters
        append = self.samples[key.source].append
        buckets = self.buckets.get(key.source)
        if metric.cross_check:
            return self._revenue_handler(self.ledgers[key.source])
        mode, field = getattr(extract, "mode", None), getattr(extract, "field", "")
        if not filters and buckets is None and mode == "value":

            def handle_value(record: dict[str, Any]) -> None:  # the hot path, inlined
                value = record.get(field)
                if type(value) is float or type(value) is int:
                    append(value)

            return handle_value
        if not filters and buckets is None and mode == "bool":

            def handle_bool(record: dict[str, Any]) -> None:
                append(1.0 if record.get(field) is True else 0.0)

            return handle_bool

        def handle(record: dict[str, Any]) -> None:
            for field_name, wanted in filters:
                if _as_text(record.get(field_name)) != wanted:
                    return
            value = extract(record)
            if value is None:
                return
            if buckets is None:
                append(value)
            else:
                due = record.get("scheduled_s")
                second = int((record.get("sent_s") if due is None else due) or 0)
                buckets[second] = buckets.get(second, 0) + 1

        return handle

    @staticmethod
    def _revenue_handler(ledger: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        """Count billable operations; keep each revenue record's claims for values()."""

        def handle(record: dict[str, Any]) -> None:
            if record.get("kind") == "operation":
                ledger["billable"] += (
                    record.get("billable") is True and record.get("matched") is True
                )
            else:
                ledger["revenues"].append(
                    (record.get("billable_operations"), record.get("amount"), record.get("price"))
                )

        return handle

    def feed(self, record: dict[str, Any]) -> None:
        kind: str = record.get("kind")  # type: ignore[assignment]
        counts = self.kind_counts
        counts[kind] = counts.get(kind, 0) + 1
        for handle in self._by_kind.get(kind, ()):
            handle(record)

    def __getstate__(self) -> dict[str, Any]:
        state = ("samples", "buckets", "ledgers", "counted", "kind_counts")
        return {name: getattr(self, name) for name in state}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._by_kind = {}  # results only travel between processes, not the dispatch

    def merge(self, later: MetricCollector) -> None:
        for kind, n in later.kind_counts.items():
            self.kind_counts[kind] = self.kind_counts.get(kind, 0) + n
        for name, values in later.samples.items():
            self.samples[name].extend(values)
        for name, buckets in later.buckets.items():
            mine = self.buckets[name]
            for second, n in buckets.items():
                mine[second] = mine.get(second, 0) + n
        for name, ledger in later.ledgers.items():
            self.ledgers[name]["billable"] += ledger["billable"]
            self.ledgers[name]["revenues"].extend(ledger["revenues"])

    def values(self) -> dict[str, Sequence[float]]:
        out: dict[str, Sequence[float]] = dict(self.samples)
        for name, kinds in self.counted.items():
            out[name] = array("d", [1.0]) * sum(self.kind_counts.get(k, 0) for k in kinds)
        for name, buckets in self.buckets.items():
            seconds = range(min(buckets), max(buckets) + 1) if buckets else range(0)
            out[name] = array("d", (float(buckets.get(s, 0)) for s in seconds))  # a gap is 0/s
        for name, ledger in self.ledgers.items():
            claims = ledger["revenues"]
            out[name] = array("d", (_agrees(ledger["billable"], *claim) for claim in claims))
        return out


def _agrees(billable: int, claimed: Any, amount: Any, price: Any) -> float:
    """1.0 when a revenue record's billable count and amount follow from the operations."""
    try:
        expected = round(float(price) * billable, 2)
        return 1.0 if claimed == billable and abs(float(amount) - expected) < 0.005 else 0.0
    except (TypeError, ValueError):
        return 0.0


# ---------------------------------------------------------------- judging (pure)


class Ranked:
    """Samples by rank (0 = smallest) for percentiles, without sorting a million of them: each
    rank is a quickselect in C (pipeline/_native.c) over a private copy. Without the C module
    it is a sorted list, which gives the same values."""

    def __init__(self, samples: Sequence[float]):
        self._size = len(samples)
        self._sorted: list[float] | None = None
        if _select is None:
            self._sorted = sorted(samples)
        else:
            self._copy = array("d", samples)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, rank: int) -> float:
        if not 0 <= rank < self._size:
            raise IndexError(rank)
        if self._sorted is not None:
            return self._sorted[rank]
        assert _select is not None  # without it the samples were sorted
        return float(_select(self._copy, rank))


def aggregate(
    threshold: Threshold, samples: Sequence[float], ordered: Ordered | None
) -> float | None:
    """The measured value, or None when there is no data (only `count` is defined on none)."""
    if threshold.agg == "count":
        return float(len(samples))
    if not samples:
        return None
    if threshold.agg in ("rate", "avg"):
        return math.fsum(samples) / len(samples)
    if threshold.agg == "value":
        return float(samples[-1])
    if threshold.agg == "min":
        return float(min(samples))
    if threshold.agg == "max":
        return float(max(samples))
    assert ordered is not None
    return percentile(ordered, 50.0 if threshold.agg == "med" else threshold.pct or 0.0)


@dataclass(frozen=True)
class Result:
    metric: str
    expression: str
    measured: float | None
    passed: bool
    samples: int
    reason: str | None = None  # "no data" when there was nothing to measure
    verdict: str | None = None  # a comparison's: pass, marginal or fail
    details: dict[str, Any] | None = None  # a comparison's sizes, aggregates and statistics

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "expression": self.expression,
            "measured": self.measured,
            "passed": self.passed,
            "samples": self.samples,
            "reason": self.reason,
        }
        if self.verdict is not None:
            out.update(verdict=self.verdict, details=self.details)
        return out


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    results: tuple[Result, ...]
    reason: str | None = None  # why the whole gate failed before any expression (chain, no data)
    verification: receipts.Verification | None = field(default=None, compare=False)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        if self.passed:
            return f"{self.gate}: PASS ({len(self.results)} expressions)"
        if self.reason:
            return f"{self.gate}: FAIL — {self.reason}"
        first = self.failures[0]
        measured = "no data" if first.measured is None else f"{first.measured:g}"
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"{self.gate}: FAIL — {first.metric} {first.expression} (measured {measured}){more}"

    def as_fields(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "reason": self.reason,
            "results": [r.as_dict() for r in self.results],
        }


def evaluate(
    spec: GateSpec, samples: Mapping[str, Sequence[float]], *, reason: str | None = None
) -> Verdict:
    """Judge every expression over the samples. A gate-level `reason` (broken chain) fails it all."""
    results = []
    for key, thresholds in spec.rules:
        values = samples.get(key.source, ())
        ranked = any(t.agg in ("p", "med") for t in thresholds)
        ordered = Ranked(values) if ranked and values else None
        for threshold in thresholds:
            if threshold.compare:
                results.append(_compared(spec, key, threshold, samples, reason))
                continue
            measured = aggregate(threshold, values, ordered)
            if reason is not None:
                results.append(
                    Result(key.source, threshold.source, measured, False, len(values), reason)
                )
            elif measured is None:
                results.append(Result(key.source, threshold.source, None, False, 0, "no data"))
            else:
                ok = threshold.holds(measured)
                results.append(Result(key.source, threshold.source, measured, ok, len(values)))
    passed = reason is None and bool(results) and all(r.passed for r in results)
    return Verdict(spec.name, passed, tuple(results), reason)


def _compared(
    spec: GateSpec,
    key: MetricKey,
    threshold: Threshold,
    samples: Mapping[str, Sequence[float]],
    reason: str | None,
) -> Result:
    candidate, baseline = (
        samples.get(compare.side_source(key.source, side), ()) for side in compare.SIDES
    )

    def measure(t: Threshold, values: Sequence[float]) -> float | None:
        ranked = Ranked(values) if t.agg in ("p", "med") and values else None
        return aggregate(t, values, ranked)

    outcome = compare.judge(threshold, candidate, baseline, measure, spec.min_samples, spec.effect)
    why = reason or outcome.reason
    return Result(
        key.source,
        threshold.source,
        outcome.measured,
        outcome.passed and reason is None,
        len(candidate) + len(baseline),
        why,
        outcome.verdict if reason is None else "fail",
        outcome.details,
    )


def overruled(verdict: Verdict, reason: str) -> Verdict:
    """A run that stopped half-way fails, whatever its partial data shows; the expressions keep
    what they measured, so the phase's table and a later gate.check show the same numbers."""
    return replace(verdict, passed=False, reason=reason)


def check(path: str | Path, spec: GateSpec, *, require_seal: bool = True) -> Verdict:
    """Verify the receipts file and judge the gate over it, in one streaming pass."""
    keys = spec.keys + [parse_metric("receipts"), parse_metric("crashed")]
    verification, collector = receipts.scan(
        path, lambda: MetricCollector(keys), require_seal=require_seal
    )
    if not verification.ok or not isinstance(collector, MetricCollector):
        verdict = evaluate(spec, {}, reason=f"receipts do not verify: {verification.describe()}")
    else:
        samples = collector.values()
        reason = None if len(samples["receipts"]) else "no data: the run has no evidence receipts"
        verdict = evaluate(spec, samples, reason=reason)
        if len(samples["crashed"]):
            verdict = overruled(verdict, "the run was killed before its gate (runs.recover)")
    return replace(verdict, verification=verification)
