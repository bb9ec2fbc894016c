"""Reports of synthesized runs: week 5 traffic and rollback, week 4 operations, long runs.

Receipts are written with the real ReceiptWriter; only its clock is injected
(`receipts.now_ts`), so a run of hours takes milliseconds to write.
"""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fixtures_chromium import Node, parse_dom

from pipeline import __version__, config, gates, receipts
from pipeline.phases.base import PhaseRun, QuietView
from pipeline.reporting import model, write_reports

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
