"""Canary analysis: one window's receipts judged with the `[gates.canary]` table, and the
candidate revision's own figures (from a metrics provider) judged with the same thresholds.

Pure functions over gate specs and plain dicts: the steps that act live in phases/rollout_steps.py,
the providers in cloudrun/metrics.py."""

from __future__ import annotations

from typing import Any

from pipeline.compare import COMPARISON, classify_score, score
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.gates import GateSpec, Verdict, parse_gate


def canary_table(env: Env) -> dict[str, list[str]]:
    table = env.gates.get("canary")
    if not table:
        raise PipelineError(f"{env.path}: no [gates.canary] table for the canary steps")
    return {key: [exprs] if isinstance(exprs, str) else list(exprs) for key, exprs in table.items()}


def has_comparisons(env: Env) -> bool:
    """Whether `[gates.canary]` compares the candidate with the baseline (then each bake also
    loads both tag URLs)."""
    return any(COMPARISON.match(e) for exprs in canary_table(env).values() for e in exprs)


def window_gate(env: Env, stage: str, compare_stage: str | None = None) -> GateSpec:
    """The `[gates.canary]` thresholds, judged on the receipts of one window only; a window
    without a single request fails, whatever the table asks (count rules alone would pass it).
    Comparison rules are judged on the requests of `compare_stage` (both tag URLs, same window),
    each side at least `[analysis] min_samples`."""
    source = env.sources.get("gates.canary", str(env.path))
    scoped: dict[str, list[str]] = {}
    for key, exprs in canary_table(env).items():
        for expr in exprs:
            where: str | None = compare_stage if COMPARISON.match(expr) else stage
            if where is None:
                continue  # a comparison, and no baseline in this window: nothing to compare with
            scoped.setdefault(_in_window(key, where), []).append(expr)
    scoped.setdefault(_in_window("http.latency_ms", stage), []).append("count > 0")
    spec = parse_gate(f"canary:{stage}", scoped, source)
    settings = env.analysis
    return GateSpec(
        spec.name,
        spec.rules,
        spec.source,
        settings.min_samples,
        (settings.effect_ms, settings.effect_ratio),
    )


def side_urls_of(service: Any, tag: str, baseline_tag: str) -> dict[str, str]:
    """The candidate's and the baseline's tag URLs, as the service reports them."""
    urls = {"candidate": service.tag_uris.get(tag), "baseline": service.tag_uris.get(baseline_tag)}
    missing = [side for side, url in urls.items() if not url]
    if missing:
        raise PipelineError(f"no tag URL for the {' and the '.join(missing)}: nothing to compare")
    return {side: str(url) for side, url in urls.items()}


def step_gate(env: Env, step: str) -> GateSpec:
    """A canary step's window gate as week 5 judged it (`canary-10`: its bake, and its
    comparison requests when `[gates.canary]` compares), for gate.check to judge again."""
    if not step.startswith("canary-"):
        raise PipelineError(f"{step!r} is no canary step: expected canary-N, e.g. canary:canary-10")
    return window_gate(env, f"{step}-bake", f"{step}-compare" if has_comparisons(env) else None)


def step_score(env: Env, verdict: Verdict) -> dict[str, Any] | None:
    """Kayenta's per-step score over the comparison rules of a window's verdict, and what it
    makes of the step (pass, marginal, fail); None without comparison rules."""
    verdicts = [r.verdict for r in verdict.results if r.verdict is not None]
    if not verdicts:
        return None
    value = score(verdicts)
    settings = env.analysis
    return {
        "score": value,
        "verdict": classify_score(value, settings.pass_score, settings.marginal_score),
        "pass_score": settings.pass_score,
        "marginal_score": settings.marginal_score,
    }


def _in_window(key: str, stage: str) -> str:
    """`metric{filters}` narrowed to one stage's receipts, its own filters kept; a key that
    names a stage itself is left as written."""
    name, _, filters = key.partition("{")
    filters = filters.rstrip("}").strip()
    if any(f.split(":", 1)[0].strip() == "stage" for f in filters.split(",")):
        return key
    return f"{name}{{{filters + ',' if filters else ''}stage:{stage}}}"


def revision_window(
    before: dict | None, after: dict | None, revision: str | None
) -> dict[str, Any] | None:
    """The candidate's own requests and errors during the window, where the backend gives them."""
    if not after or not revision or revision not in after:
        return None
    now, then = after[revision], (before or {}).get(revision, {})
    return {
        "requests": now.get("requests", 0) - then.get("requests", 0),
        "errors": now.get("errors", 0) - then.get("errors", 0),
        "instances": now.get("instances"),
        "latency_ms": now.get("latency_ms"),
    }


_BACKEND_NAME = {"med": "p50"}  # the backend's name for an aggregation, where it differs


def revision_latency_problems(
    spec: GateSpec, latency: dict[str, Any], revision: str | None
) -> list[str]:
    """The window's latency thresholds applied to the candidate's own figures (the backend
    measures per revision what the client sees mixed). Count rules are about the window's
    requests, not the candidate's share, and stay with the window's verdict; an aggregation the
    backend does not give fails (it would otherwise never be judged per revision)."""
    if not latency.get("count"):
        return []
    problems: list[str] = []
    for key, thresholds in spec.rules:
        if key.name != "http.latency_ms":
            continue
        for threshold in thresholds:
            if threshold.agg == "count" or threshold.compare:
                continue  # comparisons are judged on both tag URLs' requests, not here
            name = (
                f"p{threshold.pct:g}"
                if threshold.agg == "p"
                else _BACKEND_NAME.get(threshold.agg, threshold.agg)
            )
            value = latency.get(name)
            if value is None:
                given = ", ".join(k for k in latency if k != "count")
                problems.append(
                    f"{revision} {threshold.label}: not measured per revision (given: {given})"
                )
            elif not threshold.holds(value):
                problems.append(
                    f"{revision} {threshold.label} {value:g} ms (needs {threshold.source})"
                )
    return problems
