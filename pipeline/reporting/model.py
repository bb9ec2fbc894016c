"""Receipts → the report model, in one streaming pass in constant memory (like gates.check).

`ReportCollector` is a `receipts.Collector`: `receipts.scan` verifies the chain (in parallel for big
files) and feeds it every verified record. Time-series receipts (request, metrics, operation) are
aggregated into bins of `2**shift` seconds of the records' `ts`; when there are more than
`MAX_BINS` bins, the width doubles and neighbours merge, so memory and chart points stay bounded
whatever the run's size. Latencies go into log-scaled histograms (2 % wide buckets) per bin, so
p50/p95 per bin need no list of samples. Everything else a report shows (stages, smoke tests,
gates, traffic steps, rollbacks, errors, mismatches) is short and kept up to a fixed cap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline import receipts

MAX_BINS = 900  # at most this many time bins (chart points): 15 min at 1 s, then 2 s, 4 s, …
RES = 50  # histogram buckets per e-fold of latency: bucket width exp(1/50) - 1 = 2 %
_OFFSET = 10.0  # log(latency) + 10 keeps bucket indices positive down to 45 µs
_FLOOR_MS = 1e-4
CAP_STAGES = 500
CAP_SMOKE = 500
CAP_GATES = 100
CAP_TRAFFIC = 500
CAP_ROLLBACKS = 100
CAP_ERRORS = 20
CAP_MISMATCHES = 20
CAP_LOG_LINES = 12
CAP_TEXT = 400


def epoch(ts: Any) -> float | None:
    """RFC 3339 `ts` → seconds since the epoch (None when it is not a timestamp)."""
    if type(ts) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _second(prefix: str) -> int | None:
    """`2026-01-26T14:28:05` → its epoch second (UTC)."""
    try:
        return int(datetime.fromisoformat(prefix).replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def _text(value: Any, cap: int = CAP_TEXT) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = orjson.dumps(value, default=str).decode()
    else:
        text = str(value)
    return text if len(text) <= cap else text[: cap - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def bucket_value(index: int) -> float:
    """The latency (ms) a histogram bucket stands for: its geometric middle."""
    return math.exp((index + 0.5) / RES - _OFFSET)


def hist_percentile(hist: dict[int, int], pct: float) -> float | None:
    """Nearest-rank percentile of a latency histogram (within one bucket, 2 %, of the exact)."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, math.ceil(total * pct / 100.0))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(hist))  # pragma: no cover - rank <= total


class Bin:
    """What happened in one time bin."""

    __slots__ = (
        "requests",
        "failed",
        "hist",
        "rss_max",
        "cpu_max",
        "cpu_sum",
        "cpu_n",
        "samples",
        "matched",
        "mismatched",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.hist: dict[int, int] = {}
        self.rss_max: float | None = None
        self.cpu_max: float | None = None
        self.cpu_sum = 0.0  # for the mean (the CPU chart's smoothing); the max is what gates see
        self.cpu_n = 0
        self.samples = 0
        self.matched = 0
        self.mismatched = 0

    def absorb(self, other: Bin) -> None:
        self.requests += other.requests
        self.failed += other.failed
        hist = self.hist
        for index, n in other.hist.items():
            hist[index] = hist.get(index, 0) + n
        if other.rss_max is not None and (self.rss_max is None or other.rss_max > self.rss_max):
            self.rss_max = other.rss_max
        if other.cpu_max is not None and (self.cpu_max is None or other.cpu_max > self.cpu_max):
            self.cpu_max = other.cpu_max
        self.cpu_sum += other.cpu_sum
        self.cpu_n += other.cpu_n
        self.samples += other.samples
        self.matched += other.matched
        self.mismatched += other.mismatched

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


def _capped(items: list[Any], item: Any, cap: int) -> int:
    """Append while under the cap; returns 1 when the item was dropped (to count the rest)."""
    if len(items) < cap:
        items.append(item)
        return 0
    return 1


class ReportCollector:
    """Feeds verified records into the report's aggregates. Merges in file order (parallel scan)."""

    fields: tuple[str, ...] | None = None  # reads whole records

    def __init__(self, max_bins: int = MAX_BINS) -> None:
        self.max_bins = max_bins
        self.shift = 0  # bins are 2**shift seconds wide
        self.bins: dict[int, Bin] = {}
        self.first_s: float | None = None  # the earliest and latest ts seen (any kind)
        self.last_s: float | None = None
        self.counts: dict[str, int] = {}
        self.stages: list[dict[str, Any]] = []  # start/end/skip events, in order
        self.smoke: list[dict[str, Any]] = []
        self.gates: list[dict[str, Any]] = []
        self.traffic: list[dict[str, Any]] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.mismatches: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}  # startup, shutdown, revenue, summary: the last of each
        self.dropped: dict[str, int] = {}  # records beyond a cap, per list
        self._last_prefix = ""
        self._last_sec = 0
        self._last_bin: Bin | None = None

    # ------------------------------------------------------------ feeding (runs per receipt)

    def _bin(self, ts: Any) -> Bin | None:
        """The bin of a record's ts (cached per second: records come in time order)."""
        if type(ts) is not str:
            return None
        prefix = ts[:19]
        if prefix == self._last_prefix and self._last_bin is not None:
            return self._last_bin
        sec = _second(prefix)
        if sec is None:
            return None
        frac = ts[19:23]
        self._note_time(sec + (float(frac) if frac[:1] == "." and frac[1:].isdigit() else 0.0))
        key = sec >> self.shift
        found = self.bins.get(key)
        if found is None:
            found = self.bins[key] = Bin()
            if len(self.bins) > self.max_bins:
                self._coarsen()
                return self._bin(ts)
        self._last_prefix, self._last_sec, self._last_bin = prefix, sec, found
        return found

    def _note_time(self, t: float | None) -> None:
        if t is None:
            return
        if self.first_s is None or t < self.first_s:
            self.first_s = t
        if self.last_s is None or t > self.last_s:
            self.last_s = t

    def _coarsen(self) -> None:
        while len(self.bins) > self.max_bins:
            self.coarsen_once()

    def coarsen_once(self) -> None:
        """Double the bin width, merging neighbours."""
        merged: dict[int, Bin] = {}
        for key in sorted(self.bins):
            target = merged.get(key >> 1)
            if target is None:
                merged[key >> 1] = self.bins[key]
            else:
                target.absorb(self.bins[key])
        self.bins = merged
        self.shift += 1
        self._last_prefix, self._last_bin = "", None

    def feed(self, record: dict[str, Any]) -> None:
        kind: Any = record.get("kind")
        if kind == "request":
            self._request(record)
            return
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, record)
        else:
            self._note_time(epoch(record.get("ts")))

    def _request(self, record: dict[str, Any]) -> None:
        self.counts["request"] = self.counts.get("request", 0) + 1
        b = self._bin(record.get("ts"))
        if b is None:
            return
        b.requests += 1
        if record.get("passed") is not True:
            b.failed += 1
        latency = record.get("latency_ms")
        if type(latency) is float or type(latency) is int:
            if latency < _FLOOR_MS:
                latency = _FLOOR_MS
            index = int((math.log(latency) + _OFFSET) * RES)
            hist = b.hist
            hist[index] = hist.get(index, 0) + 1

    def _metrics(self, record: dict[str, Any]) -> None:
        b = self._bin(record.get("ts"))
        if b is None:
            return
        b.samples += 1
        rss = _number(record.get("rss_mb"))
        if rss is not None and (b.rss_max is None or rss > b.rss_max):
            b.rss_max = rss
        cpu = _number(record.get("cpu_percent"))
        if cpu is not None:
            b.cpu_sum += cpu
            b.cpu_n += 1
            if b.cpu_max is None or cpu > b.cpu_max:
                b.cpu_max = cpu

    def _operation(self, record: dict[str, Any]) -> None:
        b = self._bin(record.get("ts"))
        if b is None:
            return
        if record.get("matched") is True:
            b.matched += 1
            return
        b.mismatched += 1
        item = {
            "step": _text(record.get("step")),
            "what": _text(record.get("event") or record.get("op_kind") or record.get("op")),
            "tenant": _text(record.get("tenant")),
            "differ": _text(record.get("differ")),
            "expected": _text(record.get("expected")),
            "actual": _text(record.get("actual")),
        }
        self._drop("mismatches", _capped(self.mismatches, item, CAP_MISMATCHES))

    def _drop(self, name: str, n: int) -> None:
        if n:
            self.dropped[name] = self.dropped.get(name, 0) + n

    def _stage(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        item = {
            "name": _text(record.get("stage")) or "?",
            "event": record.get("event"),
            "t": t,
            "passed": record.get("passed"),
            "seconds": _number(record.get("seconds")),
            "reason": _text(record.get("reason")),
        }
        self._drop("stages", _capped(self.stages, item, CAP_STAGES))

    def _smoke(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        item = {
            "test": _text(record.get("test")) or "?",
            "stage": _text(record.get("stage")) or "smoke",
            "method": _text(record.get("method")),
            "endpoint": _text(record.get("endpoint")),
            "status": record.get("status"),
            "latency_ms": _number(record.get("latency_ms")),
            "passed": record.get("passed") is True,
            "reason": _text(record.get("reason")),
            "t": t,
        }
        self._drop("smoke", _capped(self.smoke, item, CAP_SMOKE))

    def _gate(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        results = []
        for result in record.get("results") or ():
            if isinstance(result, dict):
                results.append(
                    {
                        "metric": _text(result.get("metric")) or "?",
                        "expression": _text(result.get("expression")) or "?",
                        "measured": _number(result.get("measured")),
                        "passed": result.get("passed") is True,
                        "samples": result.get("samples"),
                        "reason": _text(result.get("reason")),
                    }
                )
        item = {
            "gate": _text(record.get("gate")) or "?",
            "stage": _text(record.get("stage")),
            "passed": record.get("passed") is True,
            "reason": _text(record.get("reason")),
            "results": results[:200],
            "t": t,
        }
        self._drop("gates", _capped(self.gates, item, CAP_GATES))

    def _traffic(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        item = {
            "t": t,
            "split": traffic_split(record),
            "step": _text(record.get("step")),
            "stage": _text(record.get("stage")),
        }
        self._drop("traffic", _capped(self.traffic, item, CAP_TRAFFIC))

    def _rollback(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        item = {
            "t": t,
            "reason": _text(record.get("reason")),
            "to": _text(record.get("to") or record.get("revision") or record.get("to_revision")),
            "step": _text(record.get("step")),
        }
        self._drop("rollbacks", _capped(self.rollbacks, item, CAP_ROLLBACKS))

    def _error(self, record: dict[str, Any]) -> None:
        t = epoch(record.get("ts"))
        self._note_time(t)
        tail = record.get("log_tail")
        lines = (
            [_text(line, 300) for line in tail[-CAP_LOG_LINES:]] if isinstance(tail, list) else []
        )
        item = {
            "t": t,
            "stage": _text(record.get("stage")),
            "reason": _text(record.get("reason")),
            "log_tail": lines,
        }
        self._drop("errors", _capped(self.errors, item, CAP_ERRORS))

    def _fact(self, record: dict[str, Any]) -> None:
        self._note_time(epoch(record.get("ts")))
        kind = str(record.get("kind"))
        keep = {
            key: value
            for key, value in record.items()
            if key not in ("ts", "kind", "run_id", "seq", "phase", "prev", "hash")
            and (value is None or isinstance(value, str | int | float | bool))
        }
        self.facts[kind] = {k: _text(v) if isinstance(v, str) else v for k, v in keep.items()}

    # ------------------------------------------------------------ merging (parallel scan)

    def merge(self, later: ReportCollector) -> None:
        while self.shift < later.shift:
            self.coarsen_once()
        while later.shift < self.shift:
            later.coarsen_once()
        for key, b in later.bins.items():
            mine = self.bins.get(key)
            if mine is None:
                self.bins[key] = b
            else:
                mine.absorb(b)
        self._coarsen()
        self._note_time(later.first_s)
        self._note_time(later.last_s)
        for kind, n in later.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        for name, cap in (
            ("stages", CAP_STAGES),
            ("smoke", CAP_SMOKE),
            ("gates", CAP_GATES),
            ("traffic", CAP_TRAFFIC),
            ("rollbacks", CAP_ROLLBACKS),
            ("errors", CAP_ERRORS),
            ("mismatches", CAP_MISMATCHES),
        ):
            mine_list: list[Any] = getattr(self, name)
            for item in getattr(later, name):
                self._drop(name, _capped(mine_list, item, cap))
            self._drop(name, later.dropped.get(name, 0))
        self.facts.update(later.facts)
        self._last_prefix, self._last_bin = "", None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last_bin"], state["_last_prefix"] = None, ""
        return state


_HANDLERS = {
    "metrics": ReportCollector._metrics,
    "operation": ReportCollector._operation,
    "stage": ReportCollector._stage,
    "receipt": ReportCollector._smoke,
    "gate": ReportCollector._gate,
    "traffic": ReportCollector._traffic,
    "rollback": ReportCollector._rollback,
    "error": ReportCollector._error,
    "startup": ReportCollector._fact,
    "shutdown": ReportCollector._fact,
    "revenue": ReportCollector._fact,
    "summary": ReportCollector._fact,
    "deploy": ReportCollector._fact,
    "drain": ReportCollector._fact,
}


def traffic_split(record: dict[str, Any]) -> dict[str, float]:
    """revision → percent of a `traffic` receipt. Accepted shapes: a mapping field (`split`,
    `traffic`, `revisions`, `percent`, `percents`) of revision → percent, a list of
    {revision, percent} objects, or one `revision` with a numeric `percent` (the rest of the
    traffic then goes to `previous`/`stable` when named)."""
    for name in ("split", "traffic", "revisions", "percent", "percents"):
        value = record.get(name)
        if isinstance(value, dict):
            split = {str(k): v for k, v in value.items() if _number(v) is not None}
            if split:
                return {k: float(v) for k, v in split.items()}
        if isinstance(value, list):
            out: dict[str, float] = {}
            for item in value:
                if isinstance(item, dict):
                    rev = item.get("revision") or item.get("tag")
                    pct = _number(item.get("percent"))
                    if rev is not None and pct is not None:
                        out[str(rev)] = out.get(str(rev), 0.0) + pct
            if out:
                return out
    revision, percent = record.get("revision"), _number(record.get("percent"))
    if revision is not None and percent is not None:
        out = {str(revision): percent}
        other = record.get("previous") or record.get("stable")
        if other is not None and str(other) != str(revision):
            out[str(other)] = 100.0 - percent
        return out
    return {}


# ---------------------------------------------------------------- the model the renderers read


@dataclass(frozen=True)
class Point:
    t: float  # seconds since the run's start (bin start)
    requests: int
    failed: int
    p50: float | None
    p95: float | None
    rss_max: float | None
    cpu_max: float | None
    matched: int
    mismatched: int
    cpu_sum: float = 0.0  # the bin's CPU samples, summed, and how many (for means)
    cpu_n: int = 0


@dataclass
class Report:
    path: Path
    verification: receipts.Verification
    run: dict[str, Any]
    start_s: float  # epoch of t = 0
    duration_s: float
    bin_s: int  # width of a point, seconds
    points: list[Point]
    counts: dict[str, int]
    stages: list[dict[str, Any]]
    smoke: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    traffic: list[dict[str, Any]]
    rollbacks: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    mismatches: list[dict[str, Any]]
    facts: dict[str, Any]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def release(self) -> dict[str, Any]:
        release = self.run.get("release")
        return release if isinstance(release, dict) else {}

    @property
    def verdict(self) -> dict[str, Any] | None:
        """The run's gate: the last gate receipt."""
        return self.gates[-1] if self.gates else None

    @property
    def passed(self) -> bool:
        verdict = self.verdict
        return self.verification.ok and verdict is not None and verdict["passed"]

    @property
    def phase(self) -> str:
        return str(self.run.get("phase") or (self.verdict or {}).get("gate") or "run")

    def rel(self, t: float | None) -> float | None:
        return None if t is None else t - self.start_s

    def timeline(self) -> list[dict[str, Any]]:
        """Stage bars: start/end pairs (a start without end runs to the end), and skips."""
        bars: list[dict[str, Any]] = []
        open_: dict[str, dict[str, Any]] = {}
        bar: dict[str, Any] | None
        for event in self.stages:
            name, t = event["name"], self.rel(event["t"])
            if event["event"] == "start":
                bar = {"name": name, "start": t, "end": None, "passed": None, "reason": None}
                open_[name] = bar
                bars.append(bar)
            elif event["event"] == "end":
                bar = open_.pop(name, None)
                if bar is None:
                    seconds = event["seconds"] or 0.0
                    bar = {"name": name, "start": None if t is None else t - seconds}
                    bars.append(bar)
                bar.update(end=t, passed=event["passed"], reason=event["reason"])
                if event["seconds"] is not None and t is not None:
                    bar["start"] = t - event["seconds"]
            elif event["event"] == "skip":
                bars.append(
                    {
                        "name": name,
                        "start": t,
                        "end": t,
                        "passed": None,
                        "skipped": True,
                        "reason": event["reason"],
                    }
                )
        for bar in bars:
            if bar.get("end") is None:
                bar["end"] = self.duration_s
                bar.setdefault("reason", "no end receipt")
        return bars


def build(
    path: str | Path,
    collector: ReportCollector | None = None,
    verification: receipts.Verification | None = None,
) -> Report:
    """Verify and aggregate a receipts file (streaming, parallel for big files)."""
    path = Path(path)
    if collector is None or verification is None:
        verification, found = receipts.scan(path, ReportCollector, require_seal=False)
        collector = found if isinstance(found, ReportCollector) else ReportCollector()
    # render-time bound on points: the span of the bins (gaps included) stays within max_bins
    while collector.bins and _span(collector) > collector.max_bins:
        collector.coarsen_once()
    run = verification.run or {}
    start = epoch(run.get("ts"))
    if start is None:
        start = collector.first_s if collector.first_s is not None else 0.0
    end = collector.last_s if collector.last_s is not None else start
    width = 1 << collector.shift
    points = []
    for key in sorted(collector.bins):
        b = collector.bins[key]
        points.append(
            Point(
                t=(key << collector.shift) - start,
                requests=b.requests,
                failed=b.failed,
                p50=hist_percentile(b.hist, 50.0),
                p95=hist_percentile(b.hist, 95.0),
                rss_max=b.rss_max,
                cpu_max=b.cpu_max,
                matched=b.matched,
                mismatched=b.mismatched,
                cpu_sum=b.cpu_sum,
                cpu_n=b.cpu_n,
            )
        )
    return Report(
        path=path,
        verification=verification,
        run=run,
        start_s=start,
        duration_s=max(0.0, end - start),
        bin_s=width,
        points=points,
        counts=dict(collector.counts),
        stages=collector.stages,
        smoke=collector.smoke,
        gates=collector.gates,
        traffic=collector.traffic,
        rollbacks=collector.rollbacks,
        errors=collector.errors,
        mismatches=collector.mismatches,
        facts=collector.facts,
        dropped=dict(collector.dropped),
    )


def _span(collector: ReportCollector) -> int:
    keys: Iterable[int] = collector.bins.keys()
    return max(keys) - min(collector.bins) + 1
