"""pipeline.gates: the threshold grammar, aggregations, metrics from receipts, fail-closed verdicts.

Expected values are computed independently here (statistics module, a numpy-style percentile
written out below), never with the code under test.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config, gates, receipts, verdicts
from pipeline.errors import PipelineError
from pipeline.receipts import ReceiptWriter

SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
OPS = ["<", "<=", ">", ">=", "==", "!="]


def numpy_percentile(samples: Sequence[float], pct: float) -> float:
    """numpy.percentile(samples, pct) with the default method='linear', written out."""
    ordered = sorted(samples)
    index = (len(ordered) - 1) * pct / 100
    low, high = math.floor(index), math.ceil(index)
    a, b, t = ordered[low], ordered[high], index - low
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def spec_of(table: dict[str, list[str]], name: str = "t") -> gates.GateSpec:
    return gates.parse_gate(name, table, "inline.toml")


@contextlib.contextmanager
def parallel_scan(workers: int = 8) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(receipts, "PARALLEL_MIN_BYTES", 64)
        mp.setattr(receipts.os, "cpu_count", lambda: workers)
        yield


# ---------------------------------------------------------------------------------------------
# the threshold grammar

VALID = [
    ("p(95) < 250", "p", 95.0, "<", 250.0),
    ("p(95)<250", "p", 95.0, "<", 250.0),
    ("  p( 95 )   <=   250  ", "p", 95.0, "<=", 250.0),
    ("p(0) >= 0", "p", 0.0, ">=", 0.0),
    ("p(100) <= 1", "p", 100.0, "<=", 1.0),
    ("p(99.9) < 300", "p", 99.9, "<", 300.0),
    ("count == 5", "count", None, "==", 5.0),
    ("count==+5", "count", None, "==", 5.0),
    ("rate == 1", "rate", None, "==", 1.0),
    ("value >= 8", "value", None, ">=", 8.0),
    ("avg < 200", "avg", None, "<", 200.0),
    ("avg < 1.", "avg", None, "<", 1.0),
    ("min > -3.5", "min", None, ">", -3.5),
    ("max != 1e3", "max", None, "!=", 1000.0),
    ("med < 2.5E-2", "med", None, "<", 0.025),
    ("max > -1e-3", "max", None, ">", -0.001),
    ("avg\t<\t7", "avg", None, "<", 7.0),
]


@pytest.mark.parametrize("text,agg,pct,op,value", VALID, ids=[repr(v[0]).strip("'") for v in VALID])
def test_valid_thresholds(text: str, agg: str, pct: float | None, op: str, value: float) -> None:
    threshold = gates.parse_threshold(text)
    assert (threshold.agg, threshold.pct, threshold.op, threshold.value) == (agg, pct, op, value)
    assert threshold.source == text.strip()


INVALID = [
    ("mean < 5", "unknown aggregation"),
    ("p99 < 5", "unknown aggregation"),
    ("percentile(95) < 5", "unknown aggregation"),
    ("p(101) < 5", "out of range"),
    ("p(100.5) < 5", "out of range"),
    ("p(-1) < 5", "malformed"),
    ("p() < 5", "malformed"),
    ("avg <", "malformed"),
    ("avg < abc", "malformed"),
    ("avg 5", "malformed"),
    ("avg << 5", "malformed"),
    ("avg = 5", "malformed"),
    ("avg < 5 ms", "malformed"),
    ("avg < 5 and max < 9", "malformed"),
    ("avg < nan", "malformed"),
    ("avg < inf", "malformed"),
    ("", "malformed"),
    ("   ", "malformed"),
]


@pytest.mark.parametrize("text,message", INVALID, ids=[repr(v[0]) for v in INVALID])
def test_invalid_thresholds(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gates.parse_threshold(text)


@pytest.mark.parametrize("value", [None, 5, 2.5, ["avg < 5"], b"avg < 5"], ids=repr)
def test_a_threshold_must_be_a_string(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        gates.parse_threshold(value)


def _number(n: float) -> str:
    return repr(float(n)) if isinstance(n, float) else str(n)


@SETTINGS
@given(
    agg=st.sampled_from(["count", "rate", "value", "avg", "min", "max", "med", "p"]),
    pct=st.one_of(st.integers(0, 100), st.decimals(0, 100, places=2, allow_nan=False)),
    op=st.sampled_from(OPS),
    number=st.one_of(
        st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False)
    ),
    pad=st.tuples(*[st.sampled_from(["", " ", "  ", "\t"])] * 4),
)
def test_parse_round_trips_formatted_thresholds(agg, pct, op, number, pad) -> None:
    head = f"p({pct})" if agg == "p" else agg
    text = f"{pad[0]}{head}{pad[1]}{op}{pad[2]}{_number(number)}{pad[3]}"
    threshold = gates.parse_threshold(text)
    assert threshold.agg == agg and threshold.op == op
    assert threshold.value == float(number)
    assert threshold.pct == (float(pct) if agg == "p" else None)
    again = gates.parse_threshold(f"{threshold.label} {threshold.op} {threshold.value!r}")
    assert (again.agg, again.op, again.value, again.pct) == (agg, op, float(number), threshold.pct)


# ---------------------------------------------------------------------------------------------
# aggregations against independent computations

samples_st = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=60
)


@SETTINGS
@given(samples=samples_st, pct=st.floats(0, 100))
def test_aggregations_match_independent_values(samples: list[float], pct: float) -> None:
    ordered = sorted(samples)

    def measure(expr: str) -> float:
        value = gates.aggregate(gates.parse_threshold(expr), samples, ordered)
        assert value is not None
        return value

    approx = lambda x: pytest.approx(x, rel=1e-9, abs=1e-6)  # noqa: E731
    assert measure("count > 0") == len(samples)
    assert measure("avg > 0") == approx(statistics.fmean(samples))
    assert measure("rate > 0") == approx(statistics.fmean(samples))
    assert measure("min > 0") == min(samples)
    assert measure("max > 0") == max(samples)
    assert measure("value > 0") == samples[-1]
    assert measure("med > 0") == approx(statistics.median(samples))
    written = f"{pct:.6f}"
    assert measure(f"p({written}) > 0") == approx(numpy_percentile(samples, float(written)))
    assert measure("p(0) > 0") == min(samples) and measure("p(100) > 0") == max(samples)


@pytest.mark.parametrize(
    "samples,expr,expected",
    [
        (list(range(1, 101)), "p(95) < 0", 95.05),
        (list(range(1, 101)), "p(50) < 0", 50.5),
        ([1, 2, 3, 4], "med < 0", 2.5),
        ([10, 20], "p(25) < 0", 12.5),
        ([7], "p(99) < 0", 7),
        ([3, 1, 2], "value < 0", 2),  # the last sample, not the largest
        ([1, 0, 1, 1], "rate < 0", 0.75),
    ],
    ids=["p95-of-1..100", "p50-of-1..100", "med-even", "p25-two", "p99-one", "value-last", "rate"],
)
def test_known_aggregates(samples: list[float], expr: str, expected: float) -> None:
    verdict = gates.evaluate(spec_of({"http.latency_ms": [expr]}), {"http.latency_ms": samples})
    assert verdict.results[0].measured == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# evaluate: pure, fail closed


def test_evaluate_pass_and_fail_with_measured_values() -> None:
    spec = spec_of({"http.latency_ms": ["avg < 200", "p(95) < 250"], "errors": ["count == 0"]})
    samples = {"http.latency_ms": [100.0, 120.0, 300.0], "errors": []}
    verdict = gates.evaluate(spec, samples)
    assert not verdict.passed
    by_expr = {r.expression: r for r in verdict.results}
    assert by_expr["avg < 200"].passed and by_expr["avg < 200"].measured == pytest.approx(520 / 3)
    assert not by_expr["p(95) < 250"].passed
    assert by_expr["p(95) < 250"].measured == pytest.approx(282.0)
    assert by_expr["count == 0"].passed and by_expr["count == 0"].measured == 0
    assert [f.expression for f in verdict.failures] == ["p(95) < 250"]
    assert "http.latency_ms p(95) < 250 (measured 282)" in verdict.summary()
    ok = gates.evaluate(spec, {"http.latency_ms": [100.0, 110.0], "errors": []})
    assert ok.passed and ok.summary().endswith("PASS (3 expressions)")


@pytest.mark.parametrize("agg", ["rate", "value", "avg", "min", "max", "med", "p(50)", "p(0)"])
def test_every_aggregation_but_count_fails_without_data(agg: str) -> None:
    spec = spec_of({"memory.mb": [f"{agg} >= 0"]})
    verdict = gates.evaluate(spec, {})
    (result,) = verdict.results
    assert not verdict.passed and not result.passed
    assert result.reason == "no data" and result.measured is None and result.samples == 0
    assert "no data" in verdict.summary()


def test_count_over_no_samples_is_zero() -> None:
    spec = spec_of({"errors": ["count == 0"], "stages.failed": ["count < 1"]})
    verdict = gates.evaluate(spec, {})
    assert verdict.passed
    assert [r.measured for r in verdict.results] == [0, 0]
    assert not gates.evaluate(spec_of({"errors": ["count >= 1"]}), {}).passed


def test_a_gate_level_reason_fails_every_expression() -> None:
    spec = spec_of({"errors": ["count == 0"], "memory.mb": ["max < 250"]})
    verdict = gates.evaluate(spec, {"memory.mb": [10.0]}, reason="receipts do not verify: x")
    assert not verdict.passed and all(not r.passed for r in verdict.results)
    assert verdict.summary().endswith("receipts do not verify: x")


@pytest.mark.parametrize("op,expected", [("<", False), ("<=", True), (">", False), (">=", True),
                                         ("==", True), ("!=", False)])  # fmt: skip
def test_each_operator_at_the_boundary(op: str, expected: bool) -> None:
    verdict = gates.evaluate(spec_of({"memory.mb": [f"max {op} 250"]}), {"memory.mb": [250.0]})
    assert verdict.passed is expected


# ---------------------------------------------------------------------------------------------
# metric keys, filters, specs


def test_parse_metric_filters() -> None:
    key = gates.parse_metric("http.latency_ms{stage:load}")
    assert (key.name, key.filters) == ("http.latency_ms", (("stage", "load"),))
    multi = gates.parse_metric("http.latency_ms{ stage : load , method:GET }")
    assert multi.filters == (("stage", "load"), ("method", "GET"))
    with pytest.raises(ValueError, match="unknown metric 'http.latency'"):
        gates.parse_metric("http.latency{stage:load}")
    with pytest.raises(ValueError, match="malformed filter"):
        gates.parse_metric("http.latency_ms{stage}")
    with pytest.raises(ValueError, match="malformed metric"):
        gates.parse_metric("HTTP latency")


def test_registry_has_the_documented_metrics() -> None:
    documented = """startup.seconds smoke.passed smoke.failed smoke.total http.latency_ms
    http.success http.rps memory.mb cpu.percent errors receipts stages.failed pilot.operations
    pilot.accuracy revenue.records instances instances.shortfall cpu.utilization
    memory.utilization""".split()
    assert set(documented) <= set(gates.REGISTRY)


def request(**fields: Any) -> dict[str, Any]:
    return {"kind": "request", "stage": "load", "method": "GET", "passed": True, **fields}


def collect(keys: list[str], records: list[dict[str, Any]]) -> dict[str, list[float]]:
    collector = gates.MetricCollector([gates.parse_metric(k) for k in keys])
    for record in records:
        collector.feed(record)
    return {name: list(values) for name, values in collector.values().items()}


def test_filters_select_samples() -> None:
    records = [
        request(latency_ms=10, stage="load"),
        request(latency_ms=20, stage="warmup"),
        request(latency_ms=30, stage="load", method="POST"),
        request(latency_ms=40, stage="load", status=200),
        {"kind": "metrics", "rss_mb": 99, "stage": "load"},  # another kind: never a latency
        request(latency_ms="n/a", stage="load"),  # not a number: no sample
        request(latency_ms=True, stage="load"),  # a bool is not a number either
    ]
    got = collect(
        [
            "http.latency_ms",
            "http.latency_ms{stage:load}",
            "http.latency_ms{stage:load,method:POST}",
            "http.latency_ms{status:200}",
            "http.success{stage:warmup}",
        ],
        records,
    )
    assert got["http.latency_ms"] == [10, 20, 30, 40]
    assert got["http.latency_ms{stage:load}"] == [10, 30, 40]
    assert got["http.latency_ms{stage:load,method:POST}"] == [30]
    assert got["http.latency_ms{status:200}"] == [40]
    assert got["http.success{stage:warmup}"] == [1.0]


def test_boolean_metrics() -> None:
    records = [
        {"kind": "receipt", "passed": True},
        {"kind": "receipt", "passed": False},
        {"kind": "receipt", "passed": True},
        request(passed=False),
        request(passed=True),
        {"kind": "stage", "event": "start"},
        {"kind": "stage", "event": "end", "passed": False},
        {"kind": "stage", "event": "end", "passed": True},
        {"kind": "error", "reason": "boom"},
    ]
    got = collect(
        ["smoke.passed", "smoke.failed", "smoke.total", "http.success", "http.failed",
         "stages.failed", "stages.passed", "errors", "receipts"],
        records,
    )  # fmt: skip
    assert len(got["smoke.passed"]) == 2 and len(got["smoke.failed"]) == 1
    assert len(got["smoke.total"]) == 3
    assert got["http.success"] == [0.0, 1.0] and len(got["http.failed"]) == 1
    assert len(got["stages.failed"]) == 1 and len(got["stages.passed"]) == 1
    assert len(got["errors"]) == 1
    assert len(got["receipts"]) == 6  # receipt×3, request×2, error; stages are not evidence
    assert gates.evaluate(spec_of({"http.success": ["rate == 0.5"]}), got).passed


def test_http_rps_counts_requests_per_second_sent() -> None:
    sends = [0.1, 0.5, 0.9, 1.0, 1.2, 1.4, 1.6, 1.99, 2.5, 2.7, 2.8, 2.95]
    got = collect(["http.rps", "http.rps{method:POST}"], [request(sent_s=s) for s in sends])
    assert got["http.rps"] == [3.0, 5.0, 4.0]
    assert got["http.rps{method:POST}"] == []
    verdict = gates.evaluate(
        spec_of({"http.rps": ["rate == 4", "min >= 3", "max == 5", "count == 3"]}), got
    )
    assert verdict.passed, verdict.summary()


def test_http_rps_counts_a_late_send_in_the_second_it_was_due() -> None:
    """A busy machine sent the window's last requests a little after its end: they count in the
    second they were due (a 2 s window stays 2 buckets, not 3 with a partial one dragging the
    average down); their lateness is in their latency, measured from the schedule."""
    due = [0.1, 0.4, 0.7, 1.1, 1.4, 1.7]
    sent = [0.1, 0.4, 0.7, 1.1, 2.02, 2.05]
    got = collect(
        ["http.rps"], [request(scheduled_s=d, sent_s=s) for d, s in zip(due, sent, strict=True)]
    )
    assert got["http.rps"] == [3.0, 3.0]


def test_http_rps_counts_a_stalled_second_as_zero() -> None:
    """Nothing sent during second 1 (the generator stalled): that second's rate is 0 req/s."""
    sends = [0.1, 0.2, 0.3, 2.1, 2.2, 2.3]
    got = collect(["http.rps"], [request(sent_s=s) for s in sends])
    assert got["http.rps"] == [3.0, 0.0, 3.0]
    assert not gates.evaluate(spec_of({"http.rps": ["min >= 1"]}), got).passed


def test_parse_gate_errors_name_source_gate_and_key() -> None:
    cases = [
        ({"http.latency_ms": ["p(95) <"]}, "'http.latency_ms'", "malformed"),
        ({"http.latency_ms": ["p(101) < 3"]}, "'http.latency_ms'", "out of range"),
        ({"http.latencyms": ["avg < 3"]}, "'http.latencyms'", "unknown metric"),
        ({"errors": "count == 0"}, "'errors'", "non-empty list"),
        ({"errors": []}, "'errors'", "non-empty list"),
    ]
    for table, key, message in cases:
        with pytest.raises(PipelineError) as info:
            gates.parse_gate("week3", table, "envs/mine.toml")
        text = str(info.value)
        assert text.startswith("envs/mine.toml: [gates.week3] ") and key in text, text
        assert message in text, text
    with pytest.raises(PipelineError, match=r"envs/mine.toml: \[gates.week9\] has no thresholds"):
        gates.parse_gate("week9", {}, "envs/mine.toml")


# ---------------------------------------------------------------------------------------------
# check(): over real receipt files


def write_run(
    path: Path,
    *,
    latencies: Sequence[float] = (20.0, 30.0, 40.0, 50.0),
    startup: float | None = 1.2,
    smoke: int = 5,
    rss: Sequence[float] = (120.0, 140.0, 135.0),
    errors: int = 0,
    seal: bool = True,
    phase: str = "week3",
    sha256: str = "ab" * 32,
) -> Path:
    with ReceiptWriter(path, run_id="r-gates", phase=phase) as w:
        w.write("run", tool="pipeline", release={"name": "tai", "sha256": sha256})
        w.write("stage", "start", event="start")
        if startup is not None:
            w.write("startup", "start", seconds=startup)
        w.write("stage", "start", event="end", passed=True, seconds=1.3)
        for n in range(smoke):
            w.write("receipt", "smoke", test=f"t{n}", status=200, latency_ms=8, passed=True)
        for n, latency in enumerate(latencies):
            w.write("request", "load", endpoint="/health", method="GET", status=200,
                    latency_ms=latency, sent_s=n / 10, passed=True, error=None)  # fmt: skip
        for value in rss:
            w.write("metrics", "monitor", rss_mb=value, cpu_percent=3.5)
        for n in range(errors):
            w.write("error", "load", reason=f"boom {n}")
        if seal:
            w.seal()
    return path


@pytest.fixture(scope="module")
def week3() -> gates.GateSpec:
    return config.load_env("local").gate_spec("week3")


def test_check_passes_a_good_sealed_run(tmp_path: Path, week3: gates.GateSpec) -> None:
    verdict = gates.check(write_run(tmp_path / "r.jsonl"), week3)
    assert verdict.passed, verdict.summary()
    assert verdict.reason is None and verdict.verification is not None
    assert verdict.verification.ok and verdict.verification.sealed
    measured = {(r.metric, r.expression): r.measured for r in verdict.results}
    assert measured[("http.latency_ms", "avg < 200")] == pytest.approx(35.0)
    assert measured[("http.latency_ms", "p(95) < 250")] == pytest.approx(48.5)
    assert measured[("memory.mb", "max < 250")] == 140.0
    assert measured[("smoke.passed", "count == 5")] == 5
    assert measured[("startup.seconds", "value < 5")] == 1.2


def test_check_failing_run_names_expression_and_measured(tmp_path: Path, week3) -> None:
    path = write_run(tmp_path / "r.jsonl", latencies=[100.0] * 18 + [900.0, 1000.0], errors=1)
    verdict = gates.check(path, week3)
    assert not verdict.passed and verdict.reason is None
    failed = {(r.metric, r.expression): r.measured for r in verdict.failures}
    assert failed == {
        ("http.latency_ms", "p(95) < 250"): pytest.approx(905.0),
        ("errors", "count == 0"): 1.0,
    }
    assert "p(95) < 250 (measured 905)" in verdict.summary()


def test_check_fails_an_unsealed_run(tmp_path: Path, week3) -> None:
    path = write_run(tmp_path / "r.jsonl", seal=False)
    verdict = gates.check(path, week3)
    assert not verdict.passed and "unsealed" in verdict.reason
    assert all(not r.passed for r in verdict.results)
    assert gates.check(path, week3, require_seal=False).passed


def test_check_fails_an_edited_run_naming_the_line(tmp_path: Path, week3) -> None:
    path = write_run(tmp_path / "r.jsonl")
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"latency_ms":50.0', b'"latency_ms":5.0', 1))
    verdict = gates.check(path, week3)
    line = 1 + data[: data.index(b'"latency_ms":50.0')].count(b"\n")
    assert not verdict.passed
    assert f"line {line}: edited" in verdict.reason
    assert all(not r.passed for r in verdict.results)


def test_check_fails_a_run_with_only_run_and_seal(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as w:
        w.write("run")
        w.seal()
    verdict = gates.check(path, spec_of({"errors": ["count == 0"]}))
    assert not verdict.passed and verdict.reason.startswith("no data")


def test_check_fails_when_a_metric_has_no_samples(tmp_path: Path, week3) -> None:
    verdict = gates.check(write_run(tmp_path / "r.jsonl", startup=None), week3)
    assert not verdict.passed
    (failure,) = verdict.failures
    assert failure.metric == "startup.seconds" and failure.reason == "no data"


def test_check_of_a_missing_file_fails_closed(tmp_path: Path, week3) -> None:
    verdict = gates.check(tmp_path / "missing.jsonl", week3)
    assert not verdict.passed and "no such file" in verdict.reason


def test_collector_is_identical_serial_and_parallel(tmp_path: Path, week3) -> None:
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as w:
        w.write("run")
        w.write("startup", "start", seconds=0.8)
        for n in range(300):
            w.write("request", "load" if n % 3 else "warmup", method="GET" if n % 2 else "POST",
                    latency_ms=(n * 37) % 101 + 0.25, sent_s=n / 37, passed=n % 11 != 0)  # fmt: skip
            if n % 25 == 0:
                w.write("metrics", "monitor", rss_mb=100 + n % 7, cpu_percent=n / 10)
        w.seal()
    keys = [
        gates.parse_metric(k)
        for k in ["http.latency_ms", "http.latency_ms{stage:load,method:GET}", "http.rps",
                  "http.success", "memory.mb", "cpu.percent", "startup.seconds", "receipts"]
    ]  # fmt: skip
    serial_v, serial_c = receipts.scan(path, lambda: gates.MetricCollector(keys))
    with parallel_scan():
        parallel_v, parallel_c = receipts.scan(path, lambda: gates.MetricCollector(keys))
    assert serial_v.ok and parallel_v.ok
    serial = {k: list(v) for k, v in serial_c.values().items()}
    parallel = {k: list(v) for k, v in parallel_c.values().items()}
    assert serial == parallel
    assert len(serial["http.latency_ms"]) == 300 and len(serial["memory.mb"]) == 12
    plain = gates.check(path, week3)
    with parallel_scan():
        forked = gates.check(path, week3)
    assert plain.results == forked.results


def test_every_gate_in_the_shipped_envs_parses() -> None:
    env = config.load_env("local")
    for name in env.gates:
        spec = env.gate_spec(name)
        assert spec.rules and spec.name == name
    assert env.gate_spec("gate2").name == "week3"  # the aliases of the runbooks


def test_judge_file_records_and_find_passing_reverifies(tmp_path: Path, week3) -> None:
    sha = "ab" * 32  # the release sha256 write_run records
    good = write_run(tmp_path / "good.jsonl")
    bad = write_run(tmp_path / "bad.jsonl", errors=2)
    assert not verdicts.judge_file(bad, week3).passed
    assert verdicts.judge_file(good, week3).passed
    found = verdicts.find_passing("week3", sha, week3)
    assert found is not None and found["receipts"] == str(good.resolve())
    assert found["judged_run"] == "r-gates" and found["passed"] is True
    assert verdicts.find_passing("week3", "cd" * 32, week3) is None
    assert verdicts.find_passing("week4", sha, gates.GateSpec("week4", week3.rules)) is None
    # the run it came from no longer verifies: the pass does not count (the older run fails)
    good.write_bytes(good.read_bytes().replace(b'"rss_mb":140.0', b'"rss_mb":14.0'))
    assert verdicts.find_passing("week3", sha, week3) is None


@pytest.mark.parametrize(
    ("forged", "run"),
    [
        ({"release_sha256": "cd" * 32}, {}),  # a pass of release ab… claimed for cd…
        ({}, {"phase": "week4"}),  # a week 4 run recorded as a Gate 2 pass
    ],
    ids=["another-release", "another-phase"],
)
def test_find_passing_believes_the_run_file_not_the_ledger(
    tmp_path: Path, week3, forged: dict[str, str], run: dict[str, str]
) -> None:
    """The ledger is a plain hash chain anyone can append to: a line that points at a genuine
    passing run but names another release (or comes from another phase) does not count."""
    path = write_run(tmp_path / "r.jsonl", **run)
    entry = verdicts.ledger_entry(gates.check(path, week3), path, source="gate.check")
    entry.update(forged)
    receipts.append_ledger(entry)
    assert entry["passed"] is True
    assert verdicts.find_passing("week3", entry["release_sha256"], week3) is None


def test_a_pass_recorded_under_laxer_thresholds_does_not_count_for_a_stricter_reader(
    tmp_path: Path, week3
) -> None:
    """gate.check under a lenient env records a pass; week 5's preflight judges the run again
    with the deploying env's own thresholds and refuses it."""
    from pipeline.errors import GateFailed
    from pipeline.phases import week5

    sha = "ab" * 32
    slow = write_run(tmp_path / "slow.jsonl", startup=6.2)  # Gate 2 wants startup < 5 s
    lenient = gates.parse_gate("week3", {"errors": ["count < 1000"]}, "lenient.toml")
    assert verdicts.judge_file(slow, lenient).passed
    assert verdicts.find_passing("week3", sha, lenient)["receipts"] == str(slow.resolve())
    assert verdicts.find_passing("week3", sha, week3) is None
    with pytest.raises(GateFailed, match=r"the newest Gate 2 run \(r-gates\) fails .*startup"):
        week5.preflight(sha, config.load_env("cloudrun-local"))


def test_the_newest_run_decides_an_older_pass_does_not_outweigh_it(tmp_path: Path, week3) -> None:
    sha = "ab" * 32
    good = write_run(tmp_path / "good.jsonl")
    slow = write_run(tmp_path / "slow.jsonl", startup=6.2)
    assert verdicts.judge_file(good, week3).passed
    assert verdicts.find_passing("week3", sha, week3)["receipts"] == str(good.resolve())
    assert not verdicts.judge_file(slow, week3).passed  # a newer run of the same release fails
    assert verdicts.find_passing("week3", sha, week3) is None
    entry, verdict = verdicts.newest_verdict("week3", sha, week3)
    assert entry["receipts"] == str(slow.resolve()) and not verdict.passed
    assert verdicts.judge_file(good, week3).passed  # judged again: the newest verdict again
    assert verdicts.find_passing("week3", sha, week3)["receipts"] == str(good.resolve())
    # a newest entry whose run file no longer verifies is no evidence: passed over
    assert not verdicts.judge_file(slow, week3).passed
    slow.write_bytes(slow.read_bytes().replace(b'"rss_mb":140.0', b'"rss_mb":14.0'))
    assert verdicts.find_passing("week3", sha, week3)["receipts"] == str(good.resolve())


def test_collector_sees_the_same_with_projected_and_whole_records(tmp_path: Path) -> None:
    """The C fast path hands collectors only the fields they declare: every metric must come out
    as it does from whole records (the reference path, without the C module)."""
    path = tmp_path / "r.jsonl"
    with ReceiptWriter(path, run_id="r", phase="week3") as w:
        w.write("run", release={"name": "tai"})
        w.write("startup", "start", seconds=0.8)
        for passed in (True, False):
            w.write("stage", "start", event="end", passed=passed, seconds=1.5)
            w.write("receipt", "smoke", test="health", passed=passed)
            w.write("constraint", "sandbox", check="ro", passed=passed, detail={"nested": [1]})
            w.write("operation", "pilot", billable=True, matched=passed)
        for n in range(40):
            w.write("request", "load", method="GET", latency_ms=n + 0.5, sent_s=n / 9,
                    passed=n % 7 != 0, target="t", status=200, error=None)  # fmt: skip
            w.write("metrics", "monitor", rss_mb=100 + n, cpu_percent=n / 4, instances=n % 3,
                    instances_needed=n % 4, cpu_utilization=n / 80,
                    memory_utilization=n / 40)  # fmt: skip
        w.write("revenue", "pilot", billable_operations=1, amount=5.0, price=5.0)
        w.write("traffic", "canary", percent=10)
        w.write("shutdown", "stop", exit_status=0)
        w.write("capture", "stop", count=9)
        w.write("error", "load", message="x")
        w.write("oom", "sandbox", failcnt=1)
        w.write("rollback", "canary", reason="r")
        w.write("crashed", None, reason="killed")
        w.seal()
    keys = [gates.parse_metric(name) for name in gates.REGISTRY]
    keys.append(gates.parse_metric("http.latency_ms{stage:load,method:GET}"))
    projected_v, projected = receipts.scan(path, lambda: gates.MetricCollector(keys))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(receipts, "_link", receipts._no_link)
        whole_v, whole = receipts.scan(path, lambda: gates.MetricCollector(keys))
    assert projected_v.ok and whole_v.ok
    got = {k: list(v) for k, v in projected.values().items()}
    assert got == {k: list(v) for k, v in whole.values().items()}
    assert all(got[name] for name in gates.REGISTRY), [n for n in gates.REGISTRY if not got[n]]


def test_a_gate_over_another_weeks_run_is_bad_input_not_a_verdict(tmp_path: Path, week3) -> None:
    from pipeline.errors import PipelineError

    path = write_run(tmp_path / "r.jsonl", phase="week4")
    with pytest.raises(PipelineError, match=r"a week4 run, not a week3 one \(--gate week4"):
        verdicts.judge_file(path, week3)
    assert not receipts.ledger_path().exists()
