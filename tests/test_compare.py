"""Comparison rules (candidate against baseline): the grammar, the statistics, the verdicts and
the step score — table-driven, pure (pipeline/compare.py through gates.evaluate)."""

from __future__ import annotations

import random

import pytest

from pipeline import compare
from pipeline.gates import GateSpec, evaluate, parse_gate, parse_threshold


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("p(95) ratio < 1.2", ("p", 95.0, "ratio", "<", 1.2, "p(95) ratio")),
        ("avg ratio <= 1.1", ("avg", None, "ratio", "<=", 1.1, "avg ratio")),
        ("rate diff > -0.005", ("rate", None, "diff", ">", -0.005, "rate diff")),
        ("mannwhitney p > 0.01", ("mannwhitney", None, "mannwhitney", ">", 0.01, "mannwhitney p")),
        (
            "proportions p >= 0.05",
            ("proportions", None, "proportions", ">=", 0.05, "proportions p"),
        ),
        ("p(95) < 250", ("p", 95.0, None, "<", 250.0, "p(95)")),
    ],
    ids=["p95-ratio", "avg-ratio", "rate-diff", "mannwhitney", "proportions", "absolute-unchanged"],
)
def test_comparison_rules_parse_once_into_a_small_value(text, fields):
    t = parse_threshold(text)
    assert (t.agg, t.pct, t.compare, t.op, t.value, t.label) == fields


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("p(95) ratio", "malformed threshold"),
        ("p(101) ratio < 2", "percentile out of range"),
        ("welch p > 0.01", "unknown aggregation 'welch'"),
        ("mannwhitney < 0.01", "'mannwhitney p OP X'"),
    ],
    ids=["no-operator", "bad-percentile", "unknown-test", "test-without-p"],
)
def test_bad_comparison_rules_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_threshold(text)


def spec(*expressions: str, min_samples: int = 30, effect=(0.0, 0.0)) -> GateSpec:
    parsed = parse_gate("canary", {"http.latency_ms": list(expressions)}, "test")
    return GateSpec(parsed.name, parsed.rules, parsed.source, min_samples, effect)


def sides(candidate, baseline, metric="http.latency_ms"):
    return {
        f"{metric}@candidate": candidate,
        f"{metric}@baseline": baseline,
        metric: [*candidate, *baseline],
    }


def seeded(n, mean, spread=0.5, seed=1):
    rnd = random.Random(seed)
    return [mean + rnd.uniform(-spread, spread) for _ in range(n)]


@pytest.mark.parametrize(
    ("expression", "candidate", "baseline", "verdict"),
    [
        ("p(95) ratio < 1.2", seeded(100, 10), seeded(100, 10, seed=2), "pass"),
        ("p(95) ratio < 1.2", seeded(100, 14), seeded(100, 10, seed=2), "fail"),
        ("p(95) ratio < 1.2", seeded(100, 12.2, 0.1), seeded(100, 10, 0.1, seed=2), "marginal"),
        ("avg diff < 2", seeded(100, 11), seeded(100, 10, seed=2), "pass"),
        ("mannwhitney p > 0.01", seeded(100, 10), seeded(100, 10, seed=2), "pass"),
        ("mannwhitney p > 0.01", seeded(100, 10.3), seeded(100, 10, seed=2), "fail"),
        ("mannwhitney p > 0.01", seeded(60, 10.25), seeded(60, 10, seed=2), "marginal"),
    ],
    ids=[
        "same-p95",
        "40pct-slower-p95",
        "ratio-just-over",
        "avg-within-diff",
        "same-distribution",
        "shifted-distribution",
        "shift-near-the-bound",
    ],
)
def test_latency_comparisons(expression, candidate, baseline, verdict):
    (result,) = evaluate(spec(expression), sides(candidate, baseline)).results
    assert result.verdict == verdict, result
    assert result.passed is (verdict == "pass")
    assert result.details["n_candidate"] == len(candidate)


@pytest.mark.parametrize(
    ("shift_ms", "verdict"),
    [(0.3, "pass"), (1.5, "pass"), (5.0, "fail"), (20.0, "fail")],
    ids=["warm-vs-fresh-0.3ms", "within-2ms", "5ms-slower", "20ms-slower"],
)
def test_mannwhitney_tolerates_the_allowed_increase_only(shift_ms, verdict):
    """Default effect: max(2 ms, 10 % of the baseline's median) is no regression; beyond it,
    a systematic slowdown is caught however small the spread."""
    candidate, baseline = seeded(100, 1.0 + shift_ms, 0.3), seeded(100, 1.0, 0.3, seed=2)
    (result,) = evaluate(
        spec("mannwhitney p > 0.01", effect=(2.0, 0.1)), sides(candidate, baseline)
    ).results
    assert result.verdict == verdict, result
    assert result.details["tolerated"] == 2.0


@pytest.mark.parametrize(
    ("candidate_errors", "baseline_errors", "verdict"),
    [(0, 0, "pass"), (1, 0, "pass"), (12, 0, "fail"), (12, 10, "pass")],
    ids=["none", "one-error", "5pct-errors", "both-equally-bad"],
)
def test_error_rate_comparison_with_fishers_exact_test(candidate_errors, baseline_errors, verdict):
    n = 250
    candidate = [0.0] * candidate_errors + [1.0] * (n - candidate_errors)
    baseline = [0.0] * baseline_errors + [1.0] * (n - baseline_errors)
    gate = parse_gate("canary", {"http.success": ["proportions p > 0.01"]}, "test")
    (result,) = evaluate(gate, sides(candidate, baseline, "http.success")).results
    assert result.verdict == verdict, result


@pytest.mark.parametrize(
    ("n_candidate", "n_baseline"),
    [(29, 100), (100, 0), (0, 0)],
    ids=["candidate-short", "baseline-empty", "both-empty"],
)
def test_too_few_samples_is_a_fail_never_a_pass(n_candidate, n_baseline):
    (result,) = evaluate(
        spec("mannwhitney p > 0.01"), sides(seeded(n_candidate, 10), seeded(n_baseline, 10))
    ).results
    assert not result.passed and result.verdict == "fail"
    assert "too few samples for a comparison" in result.reason


def test_a_baseline_of_zero_gives_no_ratio():
    (result,) = evaluate(spec("avg ratio < 1.2", min_samples=1), sides([1.0], [0.0])).results
    assert not result.passed and "no ratio" in result.reason


@pytest.mark.parametrize(
    ("verdicts", "score", "step"),
    [
        (["pass", "pass"], 100.0, "pass"),
        (["pass", "marginal"], 75.0, "marginal"),
        (["pass", "pass", "pass", "marginal"], 87.5, "marginal"),
        (["pass", "fail"], 50.0, "fail"),
        ([], None, "fail"),
    ],
    ids=["all-pass", "one-marginal", "one-marginal-of-four", "one-fail", "no-rules"],
)
def test_step_score_like_kayenta(verdicts, score, step):
    assert compare.score(verdicts) == score
    assert compare.classify_score(compare.score(verdicts), 95, 75) == step


def test_the_side_keys_filter_on_the_side_field():
    keys = {k.source: k for k in spec("p(95) ratio < 1.2").keys}
    assert keys["http.latency_ms@candidate"].matches({"side": "candidate"})
    assert not keys["http.latency_ms@candidate"].matches({"side": "baseline"})
    assert not keys["http.latency_ms@baseline"].matches({})
