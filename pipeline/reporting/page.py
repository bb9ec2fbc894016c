"""The report as one self-contained HTML page: inline CSS and SVG, no script, nothing to fetch.

Why ~810 lines: about a third is the page's inline CSS (one self-contained file); the rest is one
section function per part of the report.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pipeline import __version__
from pipeline.catalogue import GATE_NAMES
from pipeline.config import Env
from pipeline.reporting import charts
from pipeline.reporting.charts import PALETTE, Band, HLine, Marker, Row, Series, Span, esc
from pipeline.reporting.model import Report

# gate metric → the chart its threshold lines go on (the chart plots the same quantity per bin)
CHART_OF_METRIC = {
    "http.latency_ms": "latency",
    "http.rps": "rps",
    "memory.mb": "memory",
    "cpu.percent": "cpu",
    "traffic.percent": "traffic",
}
_NOT_A_LEVEL = ("count", "rate")  # aggregations that are not a level on the chart's y axis
NO_REQUESTS = "no request receipts: this run put no load on the release"
BAND_ORDER = ("green", "amber", "orange", "red")

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #212529; margin: 0; background: #f8f9fa; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 22px 40px; }
h1 { font-size: 22px; margin: 6px 0 4px; }
h2 { font-size: 17px; margin: 0 0 6px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
section { background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 12px 16px;
  margin: 14px 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff;
  font-weight: 700; letter-spacing: .04em; vertical-align: 2px; font-size: 15px; }
.pass { background: #2b8a3e; } .fail { background: #c92a2a; } .warn { background: #e67700; }
.ok { color: #2b8a3e; font-weight: 700; } .ko { color: #c92a2a; font-weight: 700; }
.sub { color: #495057; margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e9ecef; vertical-align: top; }
th { background: #f1f3f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.identity td:first-child { width: 150px; color: #495057; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12.5px; word-break: break-all; }
.banner { border-left: 6px solid #c92a2a; background: #fff5f5; }
.caption { color: #495057; margin: 4px 0 0; font-size: 13px; }
.figures { display: flex; flex-wrap: wrap; gap: 8px 26px; margin-top: 8px; }
.figures div { min-width: 120px; } .figures b { display: block; font-size: 18px; }
pre { background: #f1f3f5; padding: 6px 8px; overflow-x: auto; font-size: 12px; margin: 4px 0; }
svg.chart { display: block; margin: 4px 0; fill: #343a40; }
svg text { font-family: system-ui, "DejaVu Sans", sans-serif; font-size: 12px; }
svg text.tick { font-size: 11px; fill: #495057; }
svg text.axis { font-size: 11px; fill: #495057; }
svg text.legend { font-size: 12px; }
svg text.marker-label, svg text.row-note {
  paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg text.line-label { font-size: 12px; font-weight: 600; }
svg text.line-metric { font-size: 10.5px; fill: #6c757d; }
svg text.band-label { font-size: 10px; fill: #868e96; }
svg text.marker-label { font-size: 11px; font-weight: 600; }
svg text.row-label { font-size: 12px; }
svg text.row-note { font-size: 12px; font-weight: 600; }
svg text.row-note.inside { stroke: none; }
svg text.empty { font-size: 13px; fill: #868e96; }
footer { color: #6c757d; font-size: 12px; margin-top: 18px; }
"""

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


RUN_ID_META = "taiea-run-id"  # <meta name=… content=RUN-ID>: whose report a page is (machine-read)


def clean(value: Any) -> str:
    """Text for the page: escaped, without control characters (terminal colours in log tails)."""
    return esc(_CONTROL.sub("", "" if value is None else str(value)))


def measured_text(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "?"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


# ---------------------------------------------------------------- thresholds from gate receipts


def threshold_lines(report: Report) -> dict[str, list[HLine]]:
    """Every gate expression that is a level on a chart, once (passed only if it always passed)."""
    from pipeline.gates import parse_threshold

    found: dict[tuple[str, str], HLine] = {}
    for gate in report.gates:
        for result in gate["results"]:
            name = result["metric"].split("{")[0].strip()
            if name not in CHART_OF_METRIC:
                continue
            try:
                threshold = parse_threshold(result["expression"])
            except ValueError:
                continue
            if threshold.agg in _NOT_A_LEVEL:
                continue
            key = (result["metric"], result["expression"])
            label = f"{result['metric']} {result['expression']}"
            if key in found:
                found[key].passed = bool(found[key].passed) and result["passed"]
            else:
                found[key] = HLine(
                    "threshold",
                    label,
                    threshold.value,
                    result["metric"],
                    result["passed"],
                    result["expression"],
                )
    by_chart: dict[str, list[HLine]] = {}
    for (metric, _), line in found.items():
        by_chart.setdefault(CHART_OF_METRIC[metric.split("{")[0].strip()], []).append(line)
    return by_chart


def soft_bands(env: Env, metric: str, scale: float) -> list[Band]:
    """The env's monitor.bands for one metric, as value ranges (percent × scale)."""
    band = env.monitor.bands.get(metric)
    if band is None:
        return []
    out, low = [], 0.0
    for name in BAND_ORDER:
        high = getattr(band, name) * scale
        out.append(Band(name, low, high))
        low = high
    out.append(Band("critical", low, max(low * 10, low + 1)))
    return out


# ---------------------------------------------------------------- charts


def _x_max(report: Report) -> float:
    end = max((p.t + report.bin_s for p in report.points), default=0.0)
    return max(report.duration_s, end, 1.0)


def chart_timeline(report: Report) -> str:
    bars = report.timeline()
    if not bars:
        return charts.empty_chart("timeline", "Stage timeline", "no stage receipts")
    spans = []
    for bar in bars:
        start = bar["start"] if bar["start"] is not None else 0.0
        end = bar["end"] if bar["end"] is not None else start
        if bar.get("skipped"):
            state, label = "skipped", f"skipped: {bar.get('reason') or ''}".strip()
        elif bar["passed"] is True:
            state, label = "passed", f"✓ {end - start:.2f} s"
        elif bar["passed"] is False:
            state, label = "failed", f"✗ {end - start:.2f} s — {bar.get('reason') or 'failed'}"
        else:
            state, label = "open", f"… {end - start:.2f} s — {bar.get('reason') or 'no end'}"
        if len(label) > 90:
            label = label[:89] + "…"
        attrs = {
            "data-start": charts.num(round(start, 3)),
            "data-seconds": charts.num(round(end - start, 3)),
        }
        spans.append(Span(bar["name"], start, end, state, label, attrs))
    return charts.gantt("timeline", "Stage timeline", spans, _x_max(report))


def chart_latency(report: Report, lines: list[HLine]) -> str:
    pts = [p for p in report.points if p.requests and p.p50 is not None]
    title = f"Latency per {report.bin_s} s (p50, p95)"
    if not pts:
        return charts.empty_chart("latency", title, NO_REQUESTS)
    chart = charts.TimeChart(
        "latency",
        title,
        "ms",
        _x_max(report),
        bin_s=report.bin_s,
        y_label="latency (ms, log)",
        log=True,
    )
    ts = [p.t for p in pts]
    chart.series.append(
        Series("p50", "p50", ts, [p.p50 for p in pts], PALETTE[0], width_s=report.bin_s)
    )
    chart.series.append(
        Series("p95", "p95", ts, [p.p95 for p in pts], PALETTE[1], width_s=report.bin_s)
    )
    chart.lines += lines
    return chart.render()


def chart_rps(report: Report, lines: list[HLine]) -> str:
    title = f"Requests per second (bins of {report.bin_s} s)"
    with_requests = [i for i, p in enumerate(report.points) if p.requests]
    if not with_requests:
        return charts.empty_chart("rps", title, NO_REQUESTS)
    pts = report.points[with_requests[0] : with_requests[-1] + 1]
    width = report.bin_s
    ts = [p.t for p in pts]
    chart = charts.TimeChart(
        "rps", title, "req/s", _x_max(report), bin_s=report.bin_s, y_label="requests / s"
    )
    chart.stacked.append(
        Series(
            "passed",
            "passed req/s",
            ts,
            [(p.requests - p.failed) / width for p in pts],
            charts.PASS,
            "bar",
            width,
        )
    )
    chart.stacked.append(
        Series(
            "failed", "failed req/s", ts, [p.failed / width for p in pts], charts.FAIL, "bar", width
        )
    )
    chart.lines += lines
    return chart.render()


def chart_memory(report: Report, env: Env, lines: list[HLine]) -> str:
    pts = [p for p in report.points if p.rss_max is not None]
    title = f"Memory (resident, max per {report.bin_s} s)"
    if not pts:
        return charts.empty_chart("memory", title, "no metrics receipts")
    limit = env.monitor.memory_limit_mb
    chart = charts.TimeChart(
        "memory", title, "MB", _x_max(report), bin_s=report.bin_s, y_label="RSS (MB)"
    )
    chart.bands += soft_bands(env, "memory_percent", limit / 100.0)
    chart.series.append(
        Series("rss", "RSS MB", [p.t for p in pts], [p.rss_max for p in pts], PALETTE[4])
    )
    chart.series[-1].width_s = report.bin_s
    chart.lines.append(
        HLine("limit", f"limit {charts.num(limit)} MB", limit, short=f"{charts.num(limit)} MB")
    )
    chart.lines += lines
    return chart.render()


CPU_WINDOW_S = 3  # the CPU chart's rolling mean: ~12 samples at 4 Hz, steps of 0.33 % not 4 %
CPU_FLOOR = 10.0  # % : the CPU axis tops out at 10 % at least, so near-idle reads as near idle


def cpu_smoothed(report: Report) -> tuple[list[float], list[float | None], int]:
    """The CPU samples' mean over a rolling window centred on each bin (for display only: the
    receipts and the gates keep every sample), weighted by the samples in each bin. The window
    is the odd number of bins closest to CPU_WINDOW_S (3 bins of 1 s; one bin of 2 s or more,
    each already a mean of 8 samples or more at 4 Hz). Returns the bins' start times, the means,
    and the window in seconds."""
    pts = [p for p in report.points if p.cpu_n]
    half = max(0, round((CPU_WINDOW_S / report.bin_s - 1) / 2))  # bins each side
    reach = half * report.bin_s + 1e-6
    ts = [p.t for p in pts]
    values: list[float | None] = []
    lo = 0
    for p in pts:
        while pts[lo].t < p.t - reach:
            lo += 1
        window = [q for q in pts[lo : lo + 2 * half + 1] if q.t <= p.t + reach]
        values.append(sum(q.cpu_sum for q in window) / sum(q.cpu_n for q in window))
    return ts, values, (2 * half + 1) * report.bin_s


def _cpu_window(window: int, bin_s: int) -> str:
    return f"rolling mean over {window} s" if window > bin_s else f"mean per {window} s"


def chart_cpu(report: Report, env: Env, lines: list[HLine]) -> str:
    ts, smoothed, window = cpu_smoothed(report)
    title = f"CPU (% of one core, {_cpu_window(window, report.bin_s)})"
    if not ts:
        return charts.empty_chart("cpu", title, "no metrics receipts")
    chart = charts.TimeChart(
        "cpu",
        title,
        "%",
        _x_max(report),
        bin_s=report.bin_s,
        y_label="CPU (%)",
        y_floor=CPU_FLOOR,
    )
    chart.bands += soft_bands(env, "cpu_percent", 1.0)
    chart.series.append(
        Series(
            "cpu",
            f"CPU %, {_cpu_window(window, report.bin_s)}",
            ts,
            smoothed,
            PALETTE[3],
            width_s=report.bin_s,
        )
    )
    chart.lines += lines
    return chart.render()


def cpu_caption(report: Report) -> str:
    _, _, window = cpu_smoothed(report)
    samples = sum(p.cpu_n for p in report.points)
    bins = sum(1 for p in report.points if p.cpu_n)
    peak = max((p.cpu_max for p in report.points if p.cpu_max is not None), default=None)
    per = samples / bins * min(window / report.bin_s, bins) if bins else 0.0
    rate = samples / (bins * report.bin_s) if bins else 0.0  # samples a second
    where = (
        f"over a rolling {window} s window centred on each point"
        if window > report.bin_s
        else f"in each {window} s bin"
    )
    text = (
        f"Mean of the CPU samples {where} (about {per:.0f} sample{'s' if round(per) != 1 else ''}"
        " each), % of one core (whole process tree)."
    )
    if rate >= 1.5:
        text += (
            f" Smoothed for display only: at about {rate:.0f} samples a second, where CPU time "
            f"is counted in clock ticks of 10 ms, one sample moves in steps of {rate:.0f} %; "
            "the receipts and the gate keep every sample."
        )
    else:
        text += " For display only: the receipts and the gate keep every sample."
    if peak is not None:
        text += f" Highest single sample: {peak:.4g} % (what a cpu.percent max rule judges)."
    return text


def chart_smoke(report: Report) -> str:
    if not report.smoke:
        return charts.empty_chart("smoke", "Smoke tests", "no smoke test receipts")
    stages = {item["stage"] for item in report.smoke}
    rows = []
    for item in report.smoke:
        latency = item["latency_ms"] or 0.0
        note = f"{item['status']} · {latency:.1f} ms"
        if not item["passed"] and item["reason"]:
            note += f" — {item['reason']}"
        if len(note) > 70:
            note = note[:69] + "…"
        label = item["test"] if len(stages) == 1 else f"{item['stage']}: {item['test']}"
        attrs = {
            "data-test": item["test"],
            "data-stage": item["stage"],
            "data-status": item["status"],
            "data-latency": charts.num(round(latency, 3)),
        }
        rows.append(Row(label, latency, item["passed"], note, attrs))
    return charts.bar_rows("smoke", "Smoke tests (latency)", "latency (ms)", rows, "smoke")


def chart_traffic(report: Report, lines: list[HLine]) -> str:
    events = [e for e in report.traffic if e["split"] and e["t"] is not None]
    title = "Traffic split per revision"
    if not events:
        return charts.empty_chart("traffic", title, "no traffic receipts with a split")
    x_max = _x_max(report)
    revisions: list[str] = []
    for event in events:
        for revision in event["split"]:
            if revision not in revisions:
                revisions.append(revision)
    chart = charts.TimeChart(
        "traffic", title, "%", x_max, y_max=100.0, bin_s=report.bin_s, y_label="traffic (%)"
    )
    ts = [report.rel(e["t"]) or 0.0 for e in events]
    ends = ts[1:] + [x_max]
    bases = [0.0] * len(events)
    for n, revision in enumerate(revisions):
        values: list[float | None] = [e["split"].get(revision, 0.0) for e in events]
        rects = []
        for i, value in enumerate(values):
            assert value is not None
            rects.append((ts[i], ends[i], bases[i], bases[i] + value))
            bases[i] += value
        series = Series(revision, revision, ts, values, PALETTE[n % len(PALETTE)])
        chart.add_area(series, rects)
    for i, event in enumerate(events):
        split = ", ".join(f"{r} {charts.num(p)}%" for r, p in event["split"].items())
        label = f"step {event['step']}" if event["step"] is not None else f"shift {i + 1}"
        chart.markers.append(
            Marker("step", ts[i], label, {"data-step": event["step"], "data-split": split})
        )
    for rollback in report.rollbacks:
        t = report.rel(rollback["t"])
        if t is None:
            continue
        reason = rollback["reason"] or ""
        label = f"rollback: {reason}" if reason else "rollback"
        chart.markers.append(
            Marker(
                "rollback",
                t,
                label if len(label) <= 60 else label[:59] + "…",
                {"data-reason": rollback["reason"] or "", "data-to": rollback["to"] or ""},
            )
        )
    chart.lines += lines
    return chart.render()


def chart_operations(report: Report) -> str:
    pts = [p for p in report.points if p.matched or p.mismatched]
    title = f"Pilot operations per {report.bin_s} s: matched / mismatched"
    if not pts:
        return charts.empty_chart("operations", title, "no operation receipts")
    chart = charts.TimeChart(
        "operations", title, "ops", _x_max(report), bin_s=report.bin_s, y_label="operations"
    )
    ts = [p.t for p in pts]
    chart.stacked.append(
        Series(
            "matched",
            "matched",
            ts,
            [float(p.matched) for p in pts],
            charts.PASS,
            "bar",
            report.bin_s,
        )
    )
    chart.stacked.append(
        Series(
            "mismatched",
            "mismatched",
            ts,
            [float(p.mismatched) for p in pts],
            charts.FAIL,
            "bar",
            report.bin_s,
        )
    )
    return chart.render()


# ---------------------------------------------------------------- sections


def _identity(report: Report, env: Env) -> str:
    run = report.run
    release = report.release
    v = report.verification
    state = "verified" if v.ok else "DOES NOT VERIFY"
    sealed = "sealed" if v.sealed else "unsealed"
    rows = [
        ("release", release.get("name")),
        ("version", release.get("version")),
        ("sha256", release.get("sha256")),
        ("env", run.get("env")),
        ("host", run.get("host")),
        ("tool version", f"{run.get('tool') or 'taiea-pipeline'} {run.get('tool_version') or '?'}"),
        ("run", run.get("run_id")),
        ("phase", run.get("phase")),
        ("runtime", run.get("runtime")),
        ("started", _when(report.start_s)),
        ("duration", _duration(report.duration_s)),
        ("receipts", f"{report.path} — {v.count} receipts, {state}, {sealed}"),
        ("head", v.head),
    ]
    cells = "".join(
        f'<tr data-field="{esc(name)}"><td>{esc(name)}</td>'
        f'<td class="{"mono" if name in ("sha256", "head", "receipts", "run") else ""}">'
        f"{clean(value if value is not None else '—')}</td></tr>"
        for name, value in rows
    )
    return f'<table class="identity">{cells}</table>'


def _admission(report: Report) -> str:
    """Week 5: the signed gate attestations that admitted the image (its preflight's)."""
    preflight = report.run.get("preflight")
    found = preflight.get("attestations") if isinstance(preflight, dict) else None
    if not isinstance(found, list) or not found:
        return ""
    rows = "".join(
        f'<tr data-gate="{esc(str(a.get("gate")))}"><td>{clean(a.get("gate"))}</td>'
        f'<td>{clean(a.get("verdict"))}</td><td class="mono">{clean(a.get("keyid"))}</td>'
        f'<td class="mono">{clean(a.get("run_id"))}</td><td>{clean(a.get("issued_at"))}</td></tr>'
        for a in found
        if isinstance(a, dict)
    )
    return (
        '<section id="admission"><h2>Admitted by</h2><p class="caption">Signed gate '
        "attestations on the image's digest that the Binary Authorization policy accepted "
        "before the deploy.</p><table><tr><th>gate</th><th>verdict</th><th>signer key</th>"
        f"<th>run</th><th>issued</th></tr>{rows}</table></section>"
    )


def _figures(report: Report) -> str:
    facts = report.facts
    items: list[tuple[str, str]] = []
    startup = facts.get("startup", {})
    if isinstance(startup.get("seconds"), int | float):
        items.append(("ready in", f"{startup['seconds']:.2f} s"))
    requests = report.counts.get("request", 0)
    if requests:
        failed = sum(p.failed for p in report.points)
        items.append(("requests", f"{requests:,}"))
        items.append(("failed requests", f"{failed:,}"))
    summary = facts.get("summary", {})
    for key, label, unit in (
        ("achieved_rps", "achieved", "req/s"),
        ("p50_ms", "p50", "ms"),
        ("p95_ms", "p95", "ms"),
    ):
        if isinstance(summary.get(key), int | float):
            items.append((label, f"{summary[key]:.4g} {unit}"))
    peak = max((p.rss_max for p in report.points if p.rss_max is not None), default=None)
    if peak is not None:
        items.append(("peak memory", f"{peak:.1f} MB"))
    ops = sum(p.matched + p.mismatched for p in report.points)
    if ops:
        items.append(("operations", f"{ops:,}"))
        items.append(("mismatches", f"{sum(p.mismatched for p in report.points):,}"))
    revenue = facts.get("revenue", {})
    if revenue.get("amount_text"):
        items.append(("revenue", str(revenue["amount_text"])))
    shutdown = facts.get("shutdown", {})
    if "exit_status" in shutdown:
        items.append(("exit status", str(shutdown["exit_status"])))
    if report.counts.get("error"):
        items.append(("errors", str(report.counts["error"])))
    if report.counts.get("rollback"):
        items.append(("rollbacks", str(report.counts["rollback"])))
    if not items:
        return ""
    inner = "".join(
        f'<div data-figure="{esc(label)}">{esc(label)}<b>{clean(value)}</b></div>'
        for label, value in items
    )
    return f'<div class="figures">{inner}</div>'


def _verdicts(report: Report) -> str:
    if not report.gates:
        return (
            '<section id="verdict"><h2>Verdict</h2><p class="ko">No gate receipt: the run was '
            "not judged (unfinished or interrupted before its gate).</p></section>"
        )
    parts = ['<section id="verdict"><h2>Verdict</h2>']
    for gate in report.gates:
        badge = (
            '<span class="badge pass">PASS</span>'
            if gate["passed"]
            else ('<span class="badge fail">FAIL</span>')
        )
        where = f" · {clean(gate['stage'])}" if gate["stage"] and gate["stage"] != "gate" else ""
        parts.append(
            f'<h3 data-gate="{esc(gate["gate"])}">gate {clean(gate["gate"])}{where} {badge}</h3>'
        )
        if gate["reason"]:
            parts.append(f'<p class="ko">{clean(gate["reason"])}</p>')
        rows = []
        for result in gate["results"]:
            mark = '<span class="ok">✓</span>' if result["passed"] else '<span class="ko">✗</span>'
            reason = result["reason"] or ""
            rows.append(
                f'<tr class="result" data-metric="{esc(result["metric"])}"'
                f' data-expression="{esc(result["expression"])}"'
                f' data-passed="{str(result["passed"]).lower()}"'
                f' data-measured="{esc("" if result["measured"] is None else result["measured"])}">'
                f"<td>{mark}</td><td>{clean(result['metric'])}</td>"
                f"<td><code>{clean(result['expression'])}</code></td>"
                f'<td class="num">{clean(measured_text(result["measured"]))}</td>'
                f'<td class="num">{clean(result["samples"])}</td><td>{clean(reason)}</td></tr>'
            )
        parts.append(
            '<table class="verdict"><tr><th></th><th>metric</th><th>expression</th>'
            '<th class="num">measured</th><th class="num">samples</th><th>note</th></tr>'
            + "".join(rows)
            + "</table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _errors(report: Report) -> str:
    if not report.errors:
        return ""
    total = report.counts.get("error", len(report.errors))
    parts = [f'<section id="errors"><h2>Errors ({total})</h2>']
    for error in report.errors:
        t = report.rel(error["t"])
        when = f"+{t:.2f} s" if t is not None else ""
        parts.append(
            f'<div class="error"><b>{clean(error["stage"] or "run")}</b> {esc(when)}: '
            f"{clean(error['reason'])}</div>"
        )
        if error["log_tail"]:
            parts.append(f"<pre>{clean(chr(10).join(str(x) for x in error['log_tail']))}</pre>")
    if total > len(report.errors):
        parts.append(f'<p class="caption">and {total - len(report.errors)} more</p>')
    parts.append("</section>")
    return "".join(parts)


def _mismatches(report: Report) -> str:
    if not report.mismatches:
        return ""
    rows = "".join(
        f"<tr><td>{clean(m['step'])}</td><td>{clean(m['what'])}</td><td>{clean(m['tenant'])}</td>"
        f"<td>{clean(m['differ'])}</td><td><code>{clean(m['expected'])}</code></td>"
        f"<td><code>{clean(m['actual'])}</code></td></tr>"
        for m in report.mismatches
    )
    return (
        '<h3>First mismatches</h3><table class="mismatches"><tr><th>step</th><th>operation</th>'
        "<th>tenant</th><th>differ</th><th>expected</th><th>actual</th></tr>"
        f"{rows}</table>"
    )


def _card(chart_id: str, title: str, svg: str, caption: str = "") -> str:
    cap = f'<p class="caption">{caption}</p>' if caption else ""
    return f'<section class="card" id="chart-{esc(chart_id)}"><h2>{esc(title)}</h2>{svg}{cap}</section>'


def _panels(report: Report, env: Env, env_note: str) -> list[str]:
    """The chart cards, in order. A panel with no data in this phase (no load: no latency or
    requests per second; no smoke tests; ...) is left out, and one line says which and why."""
    lines = threshold_lines(report)
    limit = env.monitor.memory_limit_mb
    bands = env.monitor.bands.get("memory_percent")
    band_text = (
        ", ".join(
            f"{n} < {charts.num(getattr(bands, n))} % "
            f"({charts.num(round(getattr(bands, n) * limit / 100, 1))} MB)"
            for n in BAND_ORDER
        )
        if bands
        else "no bands in the env"
    )
    passed = sum(1 for s in report.smoke if s["passed"])
    smoke_caption = f"{passed} of {len(report.smoke)} passed." if report.smoke else ""
    panels: list[tuple[str, str, str, str]] = [
        (
            "timeline",
            "Stage timeline",
            chart_timeline(report),
            "Each bar spans a stage's start and end receipts; the time axis of every chart "
            "is seconds since the run's first receipt.",
        ),
        (
            "latency",
            "Latency over time",
            chart_latency(report, lines.get("latency", [])),
            "p50 and p95 of the request latencies in each bin (from the schedule, as the gate "
            "measures them), with the gate's http.latency_ms thresholds.",
        ),
        (
            "rps",
            "Requests per second",
            chart_rps(report, lines.get("rps", [])),
            "Requests completed per second, passed and failed.",
        ),
        (
            "memory",
            "Memory over time",
            chart_memory(report, env, lines.get("memory", [])),
            f"Limit {charts.num(limit)} MB and soft bands of env {clean(env.name)}: "
            f"{clean(band_text)}. {clean(env_note)}",
        ),
        ("cpu", "CPU over time", chart_cpu(report, env, lines.get("cpu", [])), cpu_caption(report)),
        ("smoke", "Smoke tests", chart_smoke(report), smoke_caption),
    ]
    if report.counts.get("traffic") or report.counts.get("rollback"):
        marks = len(report.rollbacks)
        panels.append(
            (
                "traffic",
                "Traffic split per revision",
                chart_traffic(report, lines.get("traffic", [])),
                f"{len(report.traffic)} traffic changes (dashed: rollout steps)"
                + (f"; {marks} rollback(s) in red." if marks else "; no rollback."),
            )
        )
    if report.counts.get("operation"):
        matched = sum(p.matched for p in report.points)
        mismatched = sum(p.mismatched for p in report.points)
        panels.append(
            (
                "operations",
                "Pilot operations",
                chart_operations(report) + _mismatches(report),
                f"{matched + mismatched} operations: {matched} matched, {mismatched} mismatched.",
            )
        )
    out: list[str] = []
    missing: dict[str, list[str]] = {}  # why → the panels left out for it
    note_at: int | None = None
    for chart_id, title, svg, caption in panels:
        if isinstance(svg, charts.Empty):
            missing.setdefault(svg.why, []).append(title)
            note_at = len(out) if note_at is None else note_at
            continue
        out.append(_card(chart_id, title, svg, caption))
    if note_at is not None:
        parts = [f"{_and(titles)} ({why})" for why, titles in missing.items()]
        out.insert(
            note_at,
            '<section id="not-charted"><p class="caption">Not charted, for want of data: '
            f"{clean('; '.join(parts))}.</p></section>",
        )
    return out


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def heading(report: Report) -> str:
    """The page's title: release, phase and gate, each said once ("week 3 · Gate 2")."""
    release = report.release
    name = f"{release.get('name') or 'release'} {release.get('version') or ''}".strip()
    phase = report.phase
    parts = [name, re.sub(r"^week(\d+)$", r"week \1", phase)]
    verdict = report.verdict
    if verdict is None:
        parts.append("no gate")
    else:
        gate = verdict["gate"]
        if gate in GATE_NAMES:
            parts.append(GATE_NAMES[gate] if gate == phase else f"{GATE_NAMES[gate]} ({gate})")
        elif gate != phase:
            parts.append(f"gate {gate}")
    return " · ".join(parts)


def render(report: Report, env: Env, *, env_note: str = "") -> str:
    v = report.verification
    verdict = report.verdict
    if not v.ok:
        status = '<span class="badge fail">RECEIPTS DO NOT VERIFY</span>'
    elif verdict is None:
        status = '<span class="badge warn">NOT JUDGED</span>'
    elif verdict["passed"]:
        status = '<span class="badge pass">PASS</span>'
    else:
        status = '<span class="badge fail">FAIL</span>'
    title = heading(report)
    body = [
        f"<header><h1>{clean(title)} {status}</h1>"
        f'<p class="sub">TAIEA release pipeline run report, built from the receipts alone.</p>'
        "</header>",
    ]
    if not v.ok:
        body.append(
            '<section class="banner" id="verification"><h2>The receipts do not verify</h2>'
            f"<p>{clean(v.describe())}</p><p>Nothing after the first bad line is shown: a gate "
            "judging this file fails, and so does this report.</p></section>"
        )
    body.append(
        f'<section id="identity"><h2>Run</h2>{_identity(report, env)}{_figures(report)}</section>'
    )
    body.append(_verdicts(report))
    body.append(_admission(report))
    body.append(_errors(report))
    if v.ok:
        body += _panels(report, env, env_note)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    dropped = ", ".join(f"{n} {name}" for name, n in report.dropped.items())
    body.append(
        f"<footer>Built by taiea-pipeline {esc(__version__)} at {generated} from {v.count} "
        f"receipts; time bins of {report.bin_s} s."
        + (f" Not listed (past the report's caps): {clean(dropped)}." if dropped else "")
        + "</footer>"
    )
    page_title = clean(f"{title} — {'PASS' if report.passed else 'FAIL'}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="{RUN_ID_META}" content="{esc(report.run.get("run_id") or "")}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{page_title}</title><style>{CSS}</style></head>"
        f'<body><main data-passed="{str(report.passed).lower()}">'
        + "".join(body)
        + "</main></body></html>\n"
    )
