"""Candidate against baseline: the comparison rules of `[gates.canary]`, judged on two samples
of the same window (requests sent to the candidate's tag URL and the stable revision's, at the
same rate and mix), Kayenta-style — each rule gives pass, marginal or fail, and a step's score
is the share of passes (a marginal counts half).

Rules, parsed once into a `Threshold` with `compare` set (gates.parse_threshold):
  `AGG ratio OP X`       AGG(candidate) / AGG(baseline), e.g. `p(95) ratio < 1.2`
  `AGG diff OP X`        AGG(candidate) − AGG(baseline), e.g. `rate diff > -0.005`
  `mannwhitney p OP X`   one-sided Mann-Whitney U: are the candidate's values larger than the
                         baseline's by more than the tolerated effect? (latencies), e.g.
                         `mannwhitney p > 0.01`. As Kayenta's allowed increase: the candidate's
                         values are first lowered by max(effect_ms, effect_ratio × the
                         baseline's median), so a real but immaterial difference (a warm
                         instance against a fresh one, 0.1 ms) is no regression
  `proportions p OP X`   one-sided Fisher exact test on 0/1 samples: is the candidate's rate of
                         ones lower? (successes), e.g. `proportions p > 0.01`
Fail closed: fewer than `min_samples` on either side is a fail saying so, never a pass; so is
an aggregate of 0 under a ratio. Pure functions (scipy imported only to judge a test).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SIDES = ("candidate", "baseline")
HOW = ("ratio", "diff", "mannwhitney", "proportions")
MIN_SAMPLES = 30  # per side, by default: below it a test has no power worth the name
PASS_SCORE = 95.0
MARGINAL_SCORE = 75.0
EFFECT_MS = 2.0  # the tolerated slowdown under a Mann-Whitney rule: the larger of 2 ms…
EFFECT_RATIO = 0.1  # …and 10 % of the baseline's median
MARGIN = 0.1  # a failing rule within 10 % of its bound (a p-value within 10×) is marginal

COMPARISON = re.compile(
    r"^\s*(?:(?P<agg>count|rate|value|avg|min|max|med|p\(\s*(?P<pct>[0-9]+(?:\.[0-9]+)?)\s*\))"
    r"\s+(?P<how>ratio|diff)|(?P<test>mannwhitney|proportions)\s+p)"
    r"\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<num>[-+]?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*$"
)


@dataclass(frozen=True)
class Outcome:
    measured: float | None  # the ratio, difference or p-value
    verdict: str  # "pass" | "marginal" | "fail"
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def side_source(source: str, side: str) -> str:
    """The samples key of one side of a metric key: `http.latency_ms{…}@candidate`."""
    return f"{source}@{side}"


def judge(
    threshold: Any,
    candidate: Sequence[float],
    baseline: Sequence[float],
    aggregate: Any,
    min_samples: int = MIN_SAMPLES,
    effect: tuple[float, float] = (EFFECT_MS, EFFECT_RATIO),
) -> Outcome:
    """One comparison rule over both sides. `aggregate(threshold, samples)` is the gate's own
    aggregation (so `p(95)` means here what it means everywhere)."""
    sizes = {"n_candidate": len(candidate), "n_baseline": len(baseline)}
    short = [
        f"{side} {n}"
        for side, n in zip(SIDES, (len(candidate), len(baseline)), strict=True)
        if n < min_samples
    ]
    if short:
        return Outcome(
            None,
            "fail",
            f"too few samples for a comparison: {', '.join(short)} (needs {min_samples} a side)",
            sizes,
        )
    if threshold.compare in ("ratio", "diff"):
        mine, theirs = aggregate(threshold, candidate), aggregate(threshold, baseline)
        details = {**sizes, "candidate": mine, "baseline": theirs}
        if mine is None or theirs is None:
            return Outcome(None, "fail", "no data", details)
        if threshold.compare == "ratio":
            if theirs == 0:
                return Outcome(None, "fail", f"baseline {threshold.label} is 0: no ratio", details)
            measured = mine / theirs
        else:
            measured = mine - theirs
    else:
        measured, details = _test(threshold.compare, candidate, baseline, effect)
        details = {**sizes, **details}
    return Outcome(measured, _classify(threshold, measured), None, details)


def _test(
    how: str, candidate: Sequence[float], baseline: Sequence[float], effect: tuple[float, float]
) -> tuple[float, dict]:
    from scipy import stats

    if how == "mannwhitney":
        mine, theirs = sorted(candidate), sorted(baseline)
        base_median = theirs[len(theirs) // 2]
        tolerated = max(effect[0], effect[1] * base_median)
        lowered = [value - tolerated for value in candidate]
        result = stats.mannwhitneyu(lowered, baseline, alternative="greater", method="asymptotic")
        return float(result.pvalue), {
            "statistic": float(result.statistic),
            "candidate_median": mine[len(mine) // 2],
            "baseline_median": base_median,
            "tolerated": tolerated,
        }
    ones = (int(round(math.fsum(candidate))), int(round(math.fsum(baseline))))
    table = [[ones[0], len(candidate) - ones[0]], [ones[1], len(baseline) - ones[1]]]
    result = stats.fisher_exact(table, alternative="less")
    return float(result.pvalue), {
        "candidate_rate": ones[0] / len(candidate),
        "baseline_rate": ones[1] / len(baseline),
    }


def _classify(threshold: Any, measured: float) -> str:
    if threshold.holds(measured):
        return "pass"
    bound = threshold.value
    if threshold.compare in ("mannwhitney", "proportions"):
        near = threshold.op in (">", ">=") and measured >= bound * MARGIN
    else:
        near = abs(measured - bound) <= MARGIN * max(abs(bound), 0.01)
    return "marginal" if near else "fail"


def score(verdicts: Sequence[str]) -> float | None:
    """Kayenta's step score: 100 × (passes + marginals / 2) / rules; None without rules."""
    if not verdicts:
        return None
    return round(
        100.0 * sum({"pass": 1.0, "marginal": 0.5}.get(v, 0.0) for v in verdicts) / len(verdicts), 2
    )


def classify_score(value: float | None, pass_score: float, marginal_score: float) -> str:
    if value is None:
        return "fail"
    if value >= pass_score:
        return "pass"
    return "marginal" if value >= marginal_score else "fail"
