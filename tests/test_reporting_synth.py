"""Reports of synthesized runs: week 5 traffic and rollback, week 4 operations, long runs.

Receipts are written with the real ReceiptWriter; only its clock is injected
(`receipts.now_ts`), so a run of hours takes milliseconds to write.
"""

from __future__ import annotations

import pickle
import random
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fixtures_chromium import Node, parse_dom

from pipeline import __version__, config, gates, receipts
from pipeline.phases.base import PhaseRun, QuietView
from pipeline.reporting import charts, model, write_reports

RELEASE = {"name": "tai_autonomics", "version": "2.0.0", "sha256": "ab" * 32}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 26, 14, 0, 0, 250_000, tzinfo=UTC)

    def ts(self) -> str:
        return self.now.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(receipts, "now_ts", fake.ts)
    return fake


@pytest.fixture(scope="module")
def local_env() -> config.Env:
    return config.load_env("local")


def start_run(path: Path, phase: str) -> receipts.ReceiptWriter:
    writer = receipts.ReceiptWriter(path, run_id=f"synth-{phase}", phase=phase)
    writer.write(
        "run",
        tool="taiea-pipeline",
        tool_version=__version__,
        env="local",
        host="synth-host",
        release=RELEASE,
    )
    return writer


def finish_run(writer: receipts.ReceiptWriter, gate: str, table: dict[str, list[str]]) -> Any:
    spec = gates.parse_gate(gate, table, "test")
    verdict = gates.check(writer.path, spec, require_seal=False)
    writer.write("gate", "gate", **verdict.as_fields())
    writer.seal()
    writer.close()
    return verdict


def requests(writer, clock: Clock, seconds: int, rate: int, latency: float, stage: str) -> int:
    sent = 0
    for _ in range(seconds):
        for i in range(rate):
            writer.write(
                "request",
                stage,
                endpoint="/health",
                method="GET",
                status=200,
                latency_ms=latency * (1 + i / rate),
                passed=True,
                sent_s=0.0,
            )
            clock.advance(1 / rate)
            sent += 1
        writer.write("metrics", "monitor", rss_mb=80.0, cpu_percent=12.0)
    return sent


def charts_of(dom: Node) -> dict[str, Node]:
    return {svg.attrs["data-chart"]: svg for svg in dom.find_all("svg", data_chart=True)}


def values(node: Node) -> list[float]:
    return [float(v) for v in node.attrs["data-values"].split(",") if v]


# ---------------------------------------------------------------- what Chromium drew, measured

# Added to a copy of a report (never to the report itself, which has no script): every text,
# rect and line of every chart gets its box as Chromium laid it out (getBBox, in SVG units,
# through its own transform: the rotated axis titles).
MEASURE = """<script>
for (const el of document.querySelectorAll('svg.chart text, svg.chart rect, svg.chart line')) {
  const b = el.getBBox();
  let pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height],
             [b.x + b.width, b.y + b.height]];
  const t = el.transform.baseVal.consolidate();
  if (t) {
    const m = t.matrix;
    pts = pts.map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  el.setAttribute('data-box', [Math.min(...xs), Math.min(...ys), Math.max(...xs),
                               Math.max(...ys)].join(','));
}
</script>"""

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def measured(chromium, html: Path, tmp_path: Path) -> Node:
    """The report's DOM with every chart element's drawn box (data-box)."""
    copy = tmp_path / f"measured-{html.stem}.html"
    copy.write_text(html.read_text().replace("</body>", MEASURE + "</body>"))
    return parse_dom(chromium.dump_dom(copy))


def box_of(node: Node) -> Box:
    x0, y0, x1, y1 = (float(v) for v in node.attrs["data-box"].split(","))
    return x0, y0, x1, y1


def meet(a: Box, b: Box, slack: float = 0.5) -> bool:
    return (
        a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack
    )


def crosses(segment: Box, box: Box, slack: float = 0.5) -> bool:
    """Whether a line segment (x0, y0, x1, y1) passes through a box (sampled every 0.25 px)."""
    x0, y0, x1, y1 = segment
    steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) * 4))
    inner = (box[0] + slack, box[1] + slack, box[2] - slack, box[3] - slack)
    for i in range(steps + 1):
        x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
        if inner[0] < x < inner[2] and inner[1] < y < inner[3]:
            return True
    return False


def segments(svg: Node) -> list[tuple[str, Box]]:
    """Every straight line a chart draws: <line>s and the segments of the series' paths."""
    out = []
    for line in svg.find_all("line"):
        a = line.attrs
        out.append(("line", (float(a["x1"]), float(a["y1"]), float(a["x2"]), float(a["y2"]))))
    for path in svg.find_all("path"):
        points = re.findall(r"([ML])([-\d.]+),([-\d.]+)", path.attrs["d"])
        for (_, xa, ya), (op, xb, yb) in zip(points, points[1:], strict=False):
            if op == "L":
                out.append(("series", (float(xa), float(ya), float(xb), float(yb))))
    return out


HALOED = ("marker-label", "row-note")  # drawn over a white halo that hides what is under them


def clashes(svg: Node) -> list[str]:
    """Texts of a chart, as drawn, that overlap another text, that a line crosses, or that sit
    on a bar not theirs (a timeline label may sit inside its own bar only)."""
    found = []
    texts = [t for t in svg.find_all("text") if t.text.strip() and "data-box" in t.attrs]
    for i, text in enumerate(texts):
        box = box_of(text)
        for other in texts[i + 1 :]:
            if meet(box, box_of(other)):
                found.append(f"{text.text!r} overlaps {other.text!r}")
        if not any(h in text.attrs.get("class", "") for h in HALOED):
            for kind, segment in segments(svg):
                if crosses(segment, box):
                    found.append(f"{text.text!r} crossed by a {kind} {segment}")
    for stage in svg.find_all("g", **{"class": "stage"}):
        bar = box_of(stage.find("rect"))
        for text in stage.find_all("text"):
            if "inside" in text.attrs.get("class", ""):
                tb = box_of(text)
                assert bar[0] <= tb[0] and tb[2] <= bar[2], f"{text.text!r} leaves its bar"
        for other in svg.find_all("g", **{"class": "stage"}):
            if other is stage:
                continue
            for text in other.find_all("text"):
                if meet(box_of(text), bar):
                    found.append(f"{text.text!r} over the bar of {stage.attrs['data-stage']}")
    return found


def test_bar_labels_never_overlap_bars_or_each_other():
    """The timeline's layout: right of the bar, else inside, else left, else shortened."""
    lo, hi = charts.LEFT + 2, charts.WIDTH - 4
    end = charts.LEFT + charts.PLOT_W
    # the reviewer's case: a bar to the plot's end gets its duration right of it, in the margin
    (load,) = charts.place_bar_labels([(charts.LEFT + 25, end)], ["✓ 14.91 s"], lo, hi)
    assert load.where == "right" and load.left > end and load.right <= hi
    (tiny,) = charts.place_bar_labels([(charts.LEFT, charts.LEFT + 2)], ["✓ 0.00 s"], lo, hi)
    assert tiny.where == "right" and tiny.left > charts.LEFT + 2
    wide = "✗ 30.00 s — " + "x" * 40
    (inside,) = charts.place_bar_labels([(charts.LEFT, hi)], [wide], lo, hi)
    assert inside.where == "inside" and inside.text == wide
    (cut,) = charts.place_bar_labels([(charts.LEFT + 300, hi - 10)], ["✗ " + "y" * 200], lo, hi)
    assert cut.text.endswith("…") and cut.left >= lo and cut.right <= hi
    rng = random.Random(7)
    for _ in range(400):
        bars, x = [], float(lo + rng.uniform(0, 60))
        for _ in range(rng.randint(1, 5)):
            x0 = x + rng.choice([0.0, 1.0, rng.uniform(0, 200)])
            x1 = x0 + rng.choice([2.0, 6.0, rng.uniform(2, 500)])
            if x1 > end:
                break
            bars.append((x0, x1))
            x = x1
        texts = [rng.choice(["✓ 0.01 s", "✓ 14.91 s", "skipped: " + "z" * rng.randint(0, 60)])
                 for _ in bars]  # fmt: skip
        placed = charts.place_bar_labels(bars, texts, lo, hi)
        for i, (label, (x0, x1), text) in enumerate(zip(placed, bars, texts, strict=True)):
            assert label.text == text or (label.text.endswith("…") or not label.text)
            assert text.startswith(label.text.rstrip("…").rstrip())
            if not label.text:
                continue
            assert lo <= label.left and label.right <= hi
            assert label.right - label.left >= charts.text_width(label.text, bold=True) - 1e-6
            if label.where == "inside":
                assert x0 <= label.left and label.right <= x1
            else:
                assert label.right <= x0 or label.left >= x1
            for j, (b0, b1) in enumerate(bars):
                if j != i:
                    assert label.right <= b0 or label.left >= b1, (bars, texts, placed)
            for j, other in enumerate(placed):
                if j != i and other.text:
                    assert label.right <= other.left or label.left >= other.right


def test_timeline_labels_do_not_overlap_as_drawn(tmp_path, clock, chromium, local_env):
    """Very short, very long, repeated, skipped, open and far-right stages, a name too long for
    the margin and a long failure reason: as Chromium draws them, no label overlaps another
    label or another stage's bar."""
    writer = start_run(tmp_path / "receipts.jsonl", "week3")

    def stage(name: str, seconds: float, passed: bool = True, reason: str | None = None) -> None:
        writer.write("stage", name, event="start")
        clock.advance(seconds)
        writer.write("stage", name, event="end", passed=passed, seconds=seconds, reason=reason)

    stage("validate", 0.0)
    stage("extract", 0.2)
    writer.write("stage", "monitor", event="start")  # never ends
    writer.write("stage", "load", event="start")
    stage("a-stage-name-far-too-long-for-the-margin", 1.0)
    long_reason = "connection refused by upstream 127.0.0.1:8080 after 3 attempts of 1 s"
    stage("retry", 1.0, False, long_reason)
    stage("retry", 0.3, False, long_reason)
    stage("retry", 0.9)
    writer.write("stage", "scale", event="skip", reason="not on Cloud Run")
    clock.advance(25.0)
    writer.write("stage", "load", event="end", passed=True, seconds=27.4)
    stage("stop", 0.05)
    finish_run(writer, "week3", {"stages.failed": ["count == 0"]})
    html, _ = write_reports(writer.path, local_env)
    dom = measured(chromium, html, tmp_path)
    timeline = charts_of(dom)["timeline"]
    stages = timeline.find_all("g", **{"class": "stage"})
    assert len(stages) == 10
    assert clashes(timeline) == []
    load = timeline.find("g", data_stage="load")
    assert box_of(load.find("text"))[0] > box_of(load.find("rect"))[2]  # right of its bar
    names = ["".join(t.text_parts) for t in timeline.find_all("text", **{"class": "row-label"})]
    assert "load" in names and "a-stage-name-far-too-long-for-the-margin" not in names
    (cut,) = [n for n in names if n.endswith("…")]
    assert "a-stage-name-far-too-long-for-the-margin".startswith(cut[:-1])
    for name in timeline.find_all("text", **{"class": "row-label"}):
        assert box_of(name)[0] >= 0 and box_of(name)[2] <= charts.LEFT  # in the left margin


def test_band_and_line_labels_are_crossed_by_no_line(tmp_path, clock, chromium, local_env):
    """The memory chart: the 512 MB limit runs through the critical band; its label moves off
    the line. No text of a time chart is crossed by a line (grid, threshold, limit, series)."""
    writer = start_run(tmp_path / "receipts.jsonl", "week3")
    requests(writer, clock, 12, 4, 3.0, "load")
    finish_run(writer, "week3", {"memory.mb": ["max < 250"], "cpu.percent": ["max < 80"]})
    html, _ = write_reports(writer.path, local_env)
    dom = measured(chromium, html, tmp_path)
    found = charts_of(dom)
    memory = found["memory"]
    labels = {t.attrs["data-band-label"]: t for t in memory.find_all("text", data_band_label=True)}
    assert "critical" in labels
    limit = memory.find("g", data_limit="512").find("line")
    y = float(limit.attrs["y1"])
    critical = box_of(labels["critical"])
    assert not critical[1] <= y <= critical[3]
    for chart in ("memory", "cpu", "latency", "rps"):
        assert clashes(found[chart]) == [], chart


def test_week5_traffic_split_steps_and_rollback(tmp_path, clock, chromium, local_env):
    writer = start_run(tmp_path / "receipts.jsonl", "week5")
    writer.write("stage", "deploy", event="start")
    clock.advance(2)
    writer.write("stage", "deploy", event="end", passed=True, seconds=2.0)
    writer.write("traffic", "deploy", step=0, split={"rev-1": 100}, percent=0, revision="rev-2")
    for step, pct, latency in ((1, 10, 20.0), (2, 50, 400.0)):
        writer.write("stage", f"canary-{pct}", event="start")
        writer.write(
            "traffic",
            f"canary-{pct}",
            step=step,
            split={"rev-1": 100 - pct, "rev-2": pct},
            percent=pct,
            revision="rev-2",
        )
        requests(writer, clock, 4, 10, latency, f"canary-{pct}")
        writer.write("stage", f"canary-{pct}", event="end", passed=pct == 10, seconds=4.0)
    writer.write("rollback", "canary-50", reason="p(95) 790 ms ≥ 250 at 50 %", to="rev-1")
    writer.write("traffic", "rollback", step="rollback", split={"rev-1": 100, "rev-2": 0})
    clock.advance(1)
    verdict = finish_run(
        writer,
        "week5",
        {
            "http.latency_ms": ["p(95) < 250"],
            "rollbacks": ["count == 0"],
            "traffic.percent": ["value == 100"],
        },
    )
    assert not verdict.passed
    html, junit = write_reports(writer.path, local_env)
    dom = parse_dom(chromium.dump_dom(html))
    traffic = charts_of(dom)["traffic"]
    series = {g.attrs["data-series"]: g for g in traffic.find_all("g", data_series=True)}
    assert values(series["rev-1"]) == [100, 90, 50, 100]
    assert values(series["rev-2"]) == [0, 10, 50, 0]
    steps = traffic.find_all("g", data_marker="step")
    assert [m.attrs["data-step"] for m in steps] == ["0", "1", "2", "rollback"]
    ts = [float(m.attrs["data-t"]) for m in steps]
    assert ts == sorted(ts) and ts[2] - ts[1] == pytest.approx(4.0, abs=0.01)
    (rollback,) = traffic.find_all("g", data_marker="rollback")
    assert rollback.attrs["data-reason"] == "p(95) 790 ms ≥ 250 at 50 %"
    assert rollback.attrs["data-to"] == "rev-1"
    assert float(rollback.attrs["data-t"]) == pytest.approx(ts[3], abs=0.01)
    line = traffic.find("g", data_threshold="traffic.percent value == 100")
    assert line.attrs["data-passed"] == "false" and line.find("line")
    latency = charts_of(dom)["latency"]
    p95 = latency.find("g", data_threshold="http.latency_ms p(95) < 250")
    assert p95.attrs["data-passed"] == "false"
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite[@name='gate week5']")
    assert suite is not None
    assert int(suite.get("tests", "")) == 3 and int(suite.get("failures", "")) == 3


def test_week4_operations_matched_and_mismatched(tmp_path, clock, chromium, local_env):
    writer = start_run(tmp_path / "receipts.jsonl", "week4")
    writer.write("stage", "pilot", event="start")
    mismatched = {7, 19, 42}
    for step in range(60):
        matched = step not in mismatched
        writer.write(
            "operation",
            "pilot",
            step=step,
            op_kind="marketplace",
            event="grant",
            tenant="t-1",
            expected={"status": 202},
            actual={"status": 202 if matched else 409},
            differ=[] if matched else ["status"],
            matched=matched,
            billable=1,
        )
        clock.advance(0.05)
    writer.write("revenue", "pilot", amount=57.0, amount_text="57.00 EUR", consistent=True)
    writer.write("stage", "pilot", event="end", passed=False, seconds=3.0, reason="3 differ")
    verdict = finish_run(writer, "week4", local_env.gates["week4"])
    html, junit = write_reports(writer.path, local_env)
    dom = parse_dom(chromium.dump_dom(html))
    ops = charts_of(dom)["operations"]
    series = {g.attrs["data-series"]: g for g in ops.find_all("g", data_series=True)}
    assert sum(values(series["matched"])) == 57
    assert sum(values(series["mismatched"])) == 3
    steps = [row.find_all("td")[0].text for row in dom.find("table", **{"class": "mismatches"})
             .find_all("tr")[1:]]  # fmt: skip
    assert steps == ["7", "19", "42"]
    failed = {f"{r.metric} {r.expression}" for r in verdict.failures}
    assert "pilot.accuracy rate == 1" in failed
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite[@name='gate week4']")
    assert suite is not None and int(suite.get("failures", "")) == len(verdict.failures)
    # a pilot puts no load on the release and runs no smoke test: those panels are left out,
    # said once in plain words, not drawn empty; and no "0 of 0" reads like a result
    assert set(charts_of(dom)) == {"timeline", "operations"}
    assert not dom.find_all(data_empty="true")
    assert not dom.find_all("section", id="chart-latency") and not dom.find_all(id="chart-smoke")
    text = dom.find("main").text
    assert "0 of 0" not in text
    note = dom.find("section", id="not-charted").text
    assert "Latency over time and Requests per second (no request receipts" in note
    assert "no load" in note and "Smoke tests (no smoke test receipts)" in note
    assert "Memory over time and CPU over time (no metrics receipts)" in note
    assert dom.find("h1").text.startswith("tai_autonomics 2.0.0 · week 4 · Gate 3 ")


def test_cpu_is_smoothed_for_display_only(tmp_path, clock, chromium, local_env):
    """4 samples a second of a process using 1 % of a core, counted in 10 ms ticks: each sample
    is 0 % or 4 %. The chart shows the rolling mean (about 1 %), says so; the receipts and the
    gate keep the samples (max 4 %)."""
    writer = start_run(tmp_path / "receipts.jsonl", "week3")
    for n in range(80):
        writer.write("metrics", "monitor", rss_mb=70.0, cpu_percent=4.0 if n % 4 == 3 else 0.0)
        clock.advance(0.25)
    verdict = finish_run(writer, "week3", {"cpu.percent": ["max < 80"]})
    assert verdict.results[0].measured == 4.0
    before = writer.path.read_bytes()
    html, _ = write_reports(writer.path, local_env)
    assert writer.path.read_bytes() == before
    dom = parse_dom(chromium.dump_dom(html))
    cpu = charts_of(dom)["cpu"]
    shown = values(cpu.find("g", data_series="cpu"))
    assert len(shown) == 21  # 20 s of samples from .25 s past a second: 21 bins of 1 s
    assert all(0.6 <= v <= 1.4 for v in shown[1:-1]), shown  # not a 0 % / 4 % sawtooth
    assert all(0.5 <= v <= 2 for v in shown), shown  # the ends: windows cut by the run
    assert sum(shown) / len(shown) == pytest.approx(1.0, abs=0.1)
    assert float(cpu.attrs["data-y-max"]) >= 10  # near idle reads as near idle
    caption = dom.find("section", id="chart-cpu").find("p", **{"class": "caption"}).text
    assert "rolling 3 s window" in caption and "display only" in caption
    assert "Highest single sample: 4 %" in caption
    line = cpu.find("g", data_threshold="cpu.percent max < 80")
    assert line.attrs["data-passed"] == "true"
    row = dom.find("tr", data_metric="cpu.percent")
    assert float(row.attrs["data-measured"]) == 4.0  # the gate's value, untouched


@pytest.mark.parametrize(
    ("seconds", "every", "bin_s"),
    [(300, 0.5, 1), (6 * 3600, 4.0, 32)],
    ids=["five-minutes-per-second", "six-hours-coarsened"],
)
def test_html_stays_small_whatever_the_run_length(
    tmp_path, clock, local_env, seconds, every, bin_s
):
    writer = start_run(tmp_path / "receipts.jsonl", "week3")
    writer.write("stage", "load", event="start")
    sent = 0
    for n in range(int(seconds / every)):
        writer.write("request", "load", latency_ms=5.0 + n % 7, passed=n % 50 != 0, status=200)
        sent += 1
        if n % 4 == 0:
            writer.write("metrics", "monitor", rss_mb=70.0 + n % 11, cpu_percent=5.0)
        clock.advance(every)
    writer.write("stage", "load", event="end", passed=True, seconds=float(seconds))
    finish_run(writer, "week3", {"http.latency_ms": ["p(95) < 250"]})
    html, _ = write_reports(writer.path, local_env)
    assert html.stat().st_size < 2 * 1024 * 1024
    dom = parse_dom(html.read_text())
    charts = charts_of(dom)
    assert charts["rps"].attrs["data-bin"] == str(bin_s)
    for chart in ("latency", "rps", "memory", "cpu"):
        for series in charts[chart].find_all("g", data_series=True):
            assert 0 < int(series.attrs["data-points"]) <= model.MAX_BINS
    rps = {g.attrs["data-series"]: g for g in charts["rps"].find_all("g", data_series=True)}
    counted = (sum(values(rps["passed"])) + sum(values(rps["failed"]))) * bin_s
    assert counted == pytest.approx(sent)


def test_parallel_parts_merge_to_the_same_report(tmp_path, clock):
    """What the parallel scan does (parts fed apart, pickled back, merged in order) gives the
    same report as one pass."""
    writer = start_run(tmp_path / "receipts.jsonl", "week3")
    requests(writer, clock, 40, 7, 3.0, "load")
    writer.write("traffic", "x", split={"a": 100})
    writer.write("receipt", "smoke", test="health_check", latency_ms=2.0, passed=True)
    finish_run(writer, "week3", {"http.latency_ms": ["p(95) < 250"]})
    verification = receipts.verify(writer.path)
    all_records = [r for r in receipts.iter_records(writer.path) if r["kind"] != "seal"]
    whole = model.ReportCollector(max_bins=16)
    for record in all_records:
        whole.feed(record)
    parts = [model.ReportCollector(max_bins=16) for _ in range(3)]
    for i, record in enumerate(all_records):
        parts[i * 3 // len(all_records)].feed(record)
    parts = [pickle.loads(pickle.dumps(part)) for part in parts]
    for part in parts[1:]:
        parts[0].merge(part)
    one = model.build(writer.path, whole, verification)
    merged = model.build(writer.path, parts[0], verification)
    assert one.bin_s == merged.bin_s == 4  # 40 s of data in at most 16 bins
    assert one.points == merged.points
    assert sum(p.requests for p in merged.points) == 280
    assert (one.smoke, one.gates, one.traffic) == (merged.smoke, merged.gates, merged.traffic)


class Notes(QuietView):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.mark.parametrize("passing", [True, False], ids=["green-stays-green", "red-stays-red"])
def test_a_report_failure_is_a_note_never_a_verdict(tmp_path, local_env, passing):
    folder = tmp_path / "run"
    (folder / "report.html").mkdir(parents=True)  # the report cannot be written there
    view = Notes()
    run = PhaseRun("week3", local_env, receipts_path=folder / "receipts.jsonl", view=view)
    run.begin(RELEASE)
    run.write("startup", "start", seconds=0.5 if passing else 9.0)
    spec = gates.parse_gate("week3", {"startup.seconds": ["value < 5"]}, "test")
    result = run.finish(spec)
    assert result.verdict.passed is passing
    assert any(n.startswith("report not written: ") and "report.html" in n for n in view.notes)
    assert "report_html" not in result.facts
    verification = receipts.verify(result.receipts)
    assert verification.ok and verification.sealed


def test_unfinished_run_gets_a_report_that_says_it_was_not_judged(tmp_path, clock, local_env):
    writer = start_run(tmp_path / "receipts.jsonl", "week3")
    writer.write("stage", "load", event="start")
    requests(writer, clock, 3, 5, 10.0, "load")
    writer.close()  # the phase died here: no end, no gate, no seal
    html, junit = write_reports(writer.path, local_env)
    dom = parse_dom(html.read_text())
    assert "NOT JUDGED" in dom.find("h1").text
    assert dom.find("main").attrs["data-passed"] == "false"
    identity = dom.find("tr", data_field="receipts").text
    assert f"{writer.seq} receipts, verified, unsealed" in identity
    (bar,) = charts_of(dom)["timeline"].find_all("g", **{"class": "stage"})
    assert bar.attrs["data-state"] == "open"
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("1", "1")
    failure = root.find("testsuite[@name='gate']/testcase/failure")
    assert failure is not None and "not judged" in failure.get("message", "")
