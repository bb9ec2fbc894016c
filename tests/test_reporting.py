"""Run reports of real week 3 runs, looked at in headless Chromium, and their JUnit XML.

One passing run and one failing run (fault `slow`) of the reference release are shared by the
module; every phase writes report.html and junit.xml beside its receipts (PhaseRun.finish).
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from fixtures_chromium import Node, parse_dom
from rich.console import Console
from test_reporting_synth import box_of, clashes, measured

from pipeline import config, receipts
from pipeline.errors import GateFailed
from pipeline.phases.week3 import run_week3
from pipeline.reporting import write_reports

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")
TIME_CHARTS = ("latency", "rps", "memory", "cpu")
ALL_CHARTS = ("timeline", *TIME_CHARTS, "smoke")


@pytest.fixture(scope="module")
def local_env() -> config.Env:
    return config.load_env("local")


@pytest.fixture(scope="module")
def runs(reference_tarball, tmp_path_factory, local_env) -> dict[str, Any]:
    """A passing week 3 run and a failing one (fault `slow`), 2 s of load each."""
    base = tmp_path_factory.mktemp("reporting-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_RUNS_DIR", str(base))
        mp.delenv("PIPELINE_RECEIPT_KEY", raising=False)
        env = local_env
        return {
            "pass": run_week3(reference_tarball(), env, duration=2),
            "slow": run_week3(reference_tarball("slow"), env, duration=2),
        }


@pytest.fixture(scope="module")
def doms(runs, chromium) -> dict[str, Node]:
    """Each run's report.html as Chromium loaded it (--dump-dom)."""
    return {
        name: parse_dom(chromium.dump_dom(Path(result.facts["report_html"])))
        for name, result in runs.items()
    }


def records(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in receipts.iter_records(path) if kind is None or r["kind"] == kind]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


RUNS = pytest.mark.parametrize("name", ["pass", "slow"], ids=["passing-run", "slow-fault-run"])


def test_every_phase_writes_both_reports_beside_its_receipts(runs):
    for result in runs.values():
        html, junit = Path(result.facts["report_html"]), Path(result.facts["junit_xml"])
        assert html == result.receipts.parent / "report.html" and html.stat().st_size > 10_000
        assert junit == result.receipts.parent / "junit.xml"
        assert receipts.verify(result.receipts).ok  # the report came after the seal


@RUNS
def test_finish_phase_prints_the_report_paths(runs, name):
    from pipeline.tasks._cli import finish_phase

    result = runs[name]
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    if result.verdict.passed:
        finish_phase(result, console)
    else:
        with pytest.raises(GateFailed):
            finish_phase(result, console)
    lines = out.getvalue().splitlines()
    assert f"report: {result.facts['report_html']}" in lines
    assert f"junit: {result.facts['junit_xml']}" in lines


@RUNS
def test_identity_and_verdict_at_the_top(runs, doms, name):
    result, dom = runs[name], doms[name]
    run = records(result.receipts, "run")[0]
    main = dom.find("main")
    assert main.attrs["data-passed"] == str(result.verdict.passed).lower()
    header = dom.find("h1").text
    assert ("PASS" if result.verdict.passed else "FAIL") in header
    release = f"{run['release']['name']} {run['release']['version']}"
    assert header.startswith(f"{release} · week 3 · Gate 2 ")  # phase and gate, each once
    assert header.count("week") == 1
    assert dom.find("title").text.startswith(f"{release} · week 3 · Gate 2 — ")

    def field(name: str) -> str:
        return dom.find("tr", data_field=name).find_all("td")[1].text.strip()

    assert field("release") == run["release"]["name"]
    assert field("version") == run["release"]["version"]
    assert field("sha256") == run["release"]["sha256"]
    assert field("env") == run["env"] == "local"
    assert field("host") == run["host"]
    assert field("tool version") == f"taiea-pipeline {run['tool_version']}"
    assert "verified, sealed" in field("receipts")
    rows = dom.find("table", **{"class": "verdict"}).find_all("tr", **{"class": "result"})
    assert [(r.attrs["data-metric"], r.attrs["data-expression"]) for r in rows] == [
        (x.metric, x.expression) for x in result.verdict.results
    ]
    for row, expected in zip(rows, result.verdict.results, strict=True):
        mark = row.find_all("td")[0].text
        assert mark == ("✓" if expected.passed else "✗")
        assert row.attrs["data-passed"] == str(expected.passed).lower()
        assert float(row.attrs["data-measured"]) == pytest.approx(expected.measured)


@RUNS
def test_every_chart_has_its_data(runs, doms, name):
    result, dom = runs[name], doms[name]
    charts = {svg.attrs["data-chart"]: svg for svg in dom.find_all("svg", data_chart=True)}
    assert set(ALL_CHARTS) <= set(charts)
    for chart in ALL_CHARTS:
        svg = charts[chart]
        assert "data-empty" not in svg.attrs, f"{chart} chart is empty"
        series = svg.find_all("g", data_series=True)
        assert series, f"{chart} chart has no series"
        for s in series:
            assert int(s.attrs["data-points"]) > 0 and s.attrs["data-values"], (chart, s.attrs)
    requests = records(result.receipts, "request")
    rps = {s.attrs["data-series"]: s for s in charts["rps"].find_all("g", data_series=True)}
    bin_s = float(charts["rps"].attrs.get("data-bin", "1"))
    total = sum(floats(rps["passed"].attrs["data-values"])) + sum(
        floats(rps["failed"].attrs["data-values"])
    )
    assert total * bin_s == pytest.approx(len(requests))  # every request is counted, once
    assert sum(floats(rps["failed"].attrs["data-values"])) == sum(
        1 for r in requests if not r["passed"]
    )
    smoke = records(result.receipts, "receipt")
    rows = charts["smoke"].find_all("g", **{"class": "row"})
    assert [r.attrs["data-test"] for r in rows] == [s["test"] for s in smoke]
    assert [r.attrs["data-passed"] for r in rows] == [str(s["passed"]).lower() for s in smoke]
    stages = charts["timeline"].find_all("g", **{"class": "stage"})
    assert [s.attrs["data-stage"] for s in stages] == [
        "validate",
        "extract",
        "start",
        "smoke",
        "load",
        "stop",
    ]
    ends = {
        r["stage"]: r["passed"] for r in records(result.receipts, "stage") if r["event"] == "end"
    }
    for bar in stages:
        assert bar.attrs["data-state"] == ("passed" if ends[bar.attrs["data-stage"]] else "failed")
    rss = [r["rss_mb"] for r in records(result.receipts, "metrics")]
    memory = charts["memory"].find("g", data_series="rss")
    assert max(floats(memory.attrs["data-values"])) == pytest.approx(max(rss), abs=1e-3)


@RUNS
def test_threshold_lines_limit_and_bands(runs, doms, name, local_env):
    result, dom = runs[name], doms[name]
    env = local_env
    verdict = {f"{r.metric} {r.expression}": r.passed for r in result.verdict.results}
    latency = dom.find("svg", data_chart="latency")
    lines = {g.attrs["data-threshold"]: g for g in latency.find_all("g", data_threshold=True)}
    assert set(lines) == {"http.latency_ms avg < 200", "http.latency_ms p(95) < 250"}
    assert lines["http.latency_ms p(95) < 250"].attrs["data-value"] == "250"
    assert lines["http.latency_ms avg < 200"].attrs["data-value"] == "200"
    for label, line in lines.items():
        assert line.attrs["data-passed"] == str(verdict[label]).lower()
        assert line.find("line")  # drawn, not only described
    memory = dom.find("svg", data_chart="memory")
    assert memory.find("g", data_limit=True).attrs["data-limit"] == "512"
    threshold = memory.find("g", data_threshold="memory.mb max < 250")
    assert threshold.attrs["data-passed"] == str(verdict["memory.mb max < 250"]).lower()
    bands = {b.attrs["data-band"]: b for b in memory.find_all("rect", data_band=True)}
    limit = env.monitor.memory_limit_mb
    soft = env.monitor.bands["memory_percent"]
    for band in ("green", "amber", "orange", "red"):
        assert float(bands[band].attrs["data-to"]) == pytest.approx(
            getattr(soft, band) * limit / 100
        )
    assert float(bands["critical"].attrs["data-from"]) == pytest.approx(soft.red * limit / 100)


def test_failing_run_shows_what_failed(runs, doms):
    result, dom = runs["slow"], doms["slow"]
    assert not result.verdict.passed
    p95 = dom.find("svg", data_chart="latency").find(
        "g", data_threshold="http.latency_ms p(95) < 250"
    )
    assert p95.attrs["data-passed"] == "false"
    series = dom.find("svg", data_chart="latency").find("g", data_series="p95")
    assert max(floats(series.attrs["data-values"])) > 250  # the curve crosses the line
    failed = dom.find_all("tr", **{"class": "result", "data-passed": "false"})
    assert "http.latency_ms" in {row.attrs["data-metric"] for row in failed}


@RUNS
def test_latency_per_second_matches_the_receipts(runs, doms, name):
    """p50/p95 per second from the receipts (nearest rank) within the 2 % histogram buckets."""
    result, dom = runs[name], doms[name]
    start = receipts.iter_records(result.receipts).__next__()["ts"]
    from pipeline.reporting.model import epoch

    t0 = epoch(start)
    assert t0 is not None
    by_second: dict[float, list[float]] = defaultdict(list)
    for r in records(result.receipts, "request"):
        second = epoch(r["ts"][:19] + "Z")
        assert second is not None
        by_second[round(second - t0, 3)].append(r["latency_ms"])
    latency = dom.find("svg", data_chart="latency")
    for pct in (50, 95):
        series = latency.find("g", data_series=f"p{pct}")
        shown = dict(
            zip(floats(series.attrs["data-t"]), floats(series.attrs["data-values"]), strict=True)
        )
        assert shown.keys() == by_second.keys()
        for t, values in by_second.items():
            ordered = sorted(values)
            exact = ordered[max(0, math.ceil(len(ordered) * pct / 100) - 1)]
            assert shown[t] == pytest.approx(exact, rel=0.025, abs=0.002), (pct, t)


@RUNS
def test_report_opens_offline(runs, doms, name):
    html_path = Path(runs[name].facts["report_html"])
    text = html_path.read_text()
    assert html_path.stat().st_size < 2 * 1024 * 1024
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert not re.search(r"""(src|href|action|poster|srcset)\s*=""", text, re.I)
    assert not re.search(r"""=\s*["']?\s*(https?:)?//""", text)  # no attribute loads anything
    for node in doms[name].iter():
        assert not {"src", "href", "xlink:href", "srcset"} & set(node.attrs), node.tag
        assert node.tag not in ("script", "link", "iframe", "img", "object", "embed")


def test_no_text_is_overlapped_or_crossed_as_drawn(runs, chromium, tmp_path):
    """As Chromium lays the page out: no label overlaps another or a bar not its own, and no
    line (grid, threshold, limit, series) crosses a label, on any chart of a real run. The
    load stage's duration sits right of its bar, clear of the name "load"."""
    dom = measured(chromium, Path(runs["pass"].facts["report_html"]), tmp_path)
    found = {svg.attrs["data-chart"]: svg for svg in dom.find_all("svg", data_chart=True)}
    for chart in ALL_CHARTS:
        assert clashes(found[chart]) == [], chart
    timeline = found["timeline"]
    name = next(t for t in timeline.find_all("text", **{"class": "row-label"}) if t.text == "load")
    load = timeline.find("g", data_stage="load")
    duration = box_of(load.find("text"))
    assert duration[0] > box_of(load.find("rect"))[2] > box_of(name)[2]
    assert load.find("text").text.startswith("✓ ")


def test_screenshot_is_readable(runs, chromium, tmp_path):
    png = chromium.screenshot(Path(runs["slow"].facts["report_html"]), tmp_path / "report.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2000)
    assert len(data) > 60_000  # text, tables and charts, not a blank page
    keep = os.environ.get("REPORT_SCREENSHOT")  # to look at it: REPORT_SCREENSHOT=/some/file.png
    if keep:
        shutil.copy(png, keep)


# ---------------------------------------------------------------- JUnit XML

# The common JUnit schema (Jenkins/Ant junit-10.xsd): allowed attributes, required ones, children.
SCHEMA: dict[str, tuple[set[str], set[str], tuple[str, ...]]] = {
    "testsuites": (
        {"name", "time", "tests", "failures", "errors", "disabled", "skipped"},
        set(),
        ("testsuite",),
    ),
    "testsuite": (
        {
            "name",
            "tests",
            "failures",
            "errors",
            "skipped",
            "disabled",
            "time",
            "timestamp",
            "hostname",
            "id",
            "package",
            "file",
            "log",
            "url",
            "version",
            "group",
        },
        {"name", "tests"},
        ("properties", "testcase", "system-out", "system-err"),
    ),
    "properties": (set(), set(), ("property",)),
    "property": ({"name", "value"}, {"name", "value"}, ()),
    "testcase": (
        {"name", "classname", "time", "assertions", "status", "file", "line", "group"},
        {"name"},
        ("skipped", "error", "failure", "system-out", "system-err"),
    ),
    "failure": ({"message", "type"}, set(), ()),
    "error": ({"message", "type"}, set(), ()),
    "skipped": ({"message"}, set(), ()),
}
_INT = re.compile(r"^\d+$")
_TIME = re.compile(r"^\d+(\.\d+)?$")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def check_junit_schema(element: ET.Element) -> None:
    allowed, required, children = SCHEMA[element.tag]
    assert set(element.attrib) <= allowed, (element.tag, set(element.attrib) - allowed)
    assert required <= set(element.attrib), (element.tag, required - set(element.attrib))
    for key in ("tests", "failures", "errors", "skipped", "disabled"):
        if key in element.attrib:
            assert _INT.match(element.attrib[key]), (element.tag, key, element.attrib[key])
    if "time" in element.attrib:
        assert _TIME.match(element.attrib["time"]), element.attrib["time"]
    if "timestamp" in element.attrib:
        assert _STAMP.match(element.attrib["timestamp"]), element.attrib["timestamp"]
    order = [children.index(child.tag) for child in element]  # unknown tag: ValueError
    assert order == sorted(order), f"{element.tag}: children out of schema order"
    for child in element:
        check_junit_schema(child)


def junit_of(result) -> ET.Element:
    root = ET.parse(result.facts["junit_xml"]).getroot()
    check_junit_schema(root)
    return root


@RUNS
def test_junit_suites_match_the_verdict(runs, name):
    result = runs[name]
    root = junit_of(result)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"gate week3", "smoke"}
    gate = suites["gate week3"]
    cases = gate.findall("testcase")
    assert int(gate.get("tests")) == len(cases) == len(result.verdict.results)
    assert int(gate.get("failures")) == len(result.verdict.failures)
    assert gate.get("errors") == "0"
    for case, expected in zip(cases, result.verdict.results, strict=True):
        assert case.get("name") == f"{expected.metric} {expected.expression}"
        failure = case.find("failure")
        if expected.passed:
            assert failure is None
        else:
            assert failure is not None
            message = failure.get("message", "")
            assert expected.expression in message
            measured = "no data" if expected.measured is None else f"{expected.measured:.6g}"
            assert f"measured {measured}" in message
    props = {p.get("name"): p.get("value") for p in gate.iter("property")}
    run = records(result.receipts, "run")[0]
    assert props["sha256"] == run["release"]["sha256"] and props["receipts_verified"] == "true"
    smoke = suites["smoke"]
    tests = records(result.receipts, "receipt")
    assert [c.get("name") for c in smoke.findall("testcase")] == [t["test"] for t in tests]
    assert int(smoke.get("failures")) == sum(1 for t in tests if not t["passed"])
    assert int(root.get("tests")) == len(result.verdict.results) + len(tests)
    assert int(root.get("failures")) == len(result.verdict.failures) + int(smoke.get("failures"))


def test_junit_failure_names_measured_value_and_threshold(runs):
    root = junit_of(runs["slow"])
    case = root.find(".//testcase[@name='http.latency_ms p(95) < 250']")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None
    message = failure.get("message", "")
    measured = next(
        r.measured for r in runs["slow"].verdict.results if r.expression == "p(95) < 250"
    )
    assert message == f"http.latency_ms: measured {measured:.6g}, threshold p(95) < 250"


# ---------------------------------------------------------------- invoke report


def invoke(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, *args], cwd=cwd, capture_output=True, text=True, env=os.environ, timeout=120
    )


def test_invoke_report_writes_where_asked_and_prints_the_paths(runs, tmp_path):
    source = runs["slow"].receipts
    html, junit = tmp_path / "out" / "r.html", tmp_path / "out" / "r.xml"
    done = invoke("report", "--receipts", str(source), "--html", str(html), "--junit", str(junit))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"report: {html}", f"junit: {junit}"]
    assert 'data-chart="latency"' in html.read_text()
    assert ET.parse(junit).getroot().get("failures") == ET.parse(
        runs["slow"].facts["junit_xml"]
    ).getroot().get("failures")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--receipts FILE is required"),
        (("--receipts", "{tmp}/nothing.jsonl"), "{tmp}/nothing.jsonl: no such receipts file"),
        (("--receipts", "{tmp}"), "{tmp}: a directory with no receipts.jsonl, not a receipts file"),
        (("--receipts", "{good}", "--env", "nope"), "nope.toml: no such env file"),
        (("--receipts", "{good}", "--html", "{good}"), "--html would overwrite receipts"),
        (("--receipts", "{good}", "--junit", "{tmp}/other.jsonl"), "--junit would overwrite"),
        (("--receipts", "{good}", "--html", "{tmp}/r", "--junit", "{tmp}/r"), "name the same file"),
    ],
    ids=[
        "no-receipts-flag",
        "missing-file",
        "a-directory",
        "unknown-env",
        "html-over-the-receipts",
        "junit-over-some-receipts",
        "html-and-junit-one-file",
    ],
)
def test_invoke_report_bad_input_exits_2(runs, tmp_path, args, message):
    good = str(runs["pass"].receipts)
    before = runs["pass"].receipts.read_bytes()
    argv = [a.format(tmp=tmp_path, good=good) for a in args]
    done = invoke("report", *argv)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0]
    assert runs["pass"].receipts.read_bytes() == before


def test_tampered_receipts_report_says_so(runs, tmp_path, local_env):
    """An edited receipt: the report shows the first bad line and no charts; JUnit fails it."""
    lines = runs["pass"].receipts.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"kind":"request"' in line)
    record = orjson.loads(lines[index])
    record["latency_ms"] = 1.0
    lines[index] = orjson.dumps(record) + b"\n"
    path = tmp_path / "receipts.jsonl"
    path.write_bytes(b"".join(lines))
    html, junit = write_reports(path, local_env)
    dom = parse_dom(html.read_text())
    banner = dom.find("section", id="verification").text
    assert f"line {index + 1}: edited" in banner
    assert dom.find("main").attrs["data-passed"] == "false"
    assert not dom.find_all("svg", data_chart="latency")
    root = ET.parse(junit).getroot()
    check_junit_schema(root)
    case = root.find("testsuite[@name='receipts']/testcase")
    assert case is not None and case.find("failure") is not None
    assert f"line {index + 1}: edited" in case.find("failure").get("message", "")  # type: ignore[union-attr]


# ---------------------------------------------------------------- whose report is where


def finished_run(receipts_path: Path, env: config.Env) -> Any:
    """A real (small) week 3 run of its own, finished by PhaseRun: sealed, judged, reported."""
    from test_reporting_synth import RELEASE

    from pipeline import gates
    from pipeline.phases.base import PhaseRun, QuietView

    run = PhaseRun("week3", env, receipts_path=receipts_path, view=QuietView())
    run.begin(RELEASE)
    run.write("startup", "start", seconds=0.5)
    return run.finish(gates.parse_gate("week3", {"startup.seconds": ["value < 5"]}, "test"))


def owners(html: Path, junit: Path) -> tuple[str, str]:
    """The run id in a page's <meta name="taiea-run-id"> and in its JUnit's run_id property."""
    meta = parse_dom(html.read_text()).find("meta", name="taiea-run-id").attrs["content"]
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    return str(meta), str(props["run_id"])


SHARED_FOLDER = [
    # (first receipts, second receipts, the first run's reports, the second run's)
    ("a.jsonl", "b.jsonl", ("a.report.html", "a.junit.xml"), ("b.report.html", "b.junit.xml")),
    (
        "receipts.jsonl",
        "b.jsonl",
        ("report.html", "junit.xml"),
        ("b.report.html", "b.junit.xml"),
    ),
    # the first run's receipts moved away (a receipts file is never overwritten), its reports not
    (
        "receipts.jsonl",
        "receipts.jsonl",
        ("report.html", "junit.xml"),
        ("report-2.html", "junit-2.xml"),
    ),
]


@pytest.mark.parametrize(
    "first, second, first_reports, second_reports",
    SHARED_FOLDER,
    ids=["two-named-receipts", "receipts-jsonl-and-a-named-one", "receipts-jsonl-twice"],
)
def test_two_runs_with_receipts_in_one_folder_keep_both_reports(
    tmp_path, local_env, first, second, first_reports, second_reports
):
    folder, reports = tmp_path / "shared", (first_reports, second_reports)
    one = finished_run(folder / first, local_env)
    kept = {name: (folder / name).read_bytes() for name in first_reports}
    if first == second:
        (tmp_path / "kept").mkdir()
        (folder / first).rename(tmp_path / "kept" / first)
    two = finished_run(folder / second, local_env)
    assert one.run_id != two.run_id
    written = [(r.facts["report_html"], r.facts["junit_xml"]) for r in (one, two)]
    assert written == [tuple(str(folder / n) for n in names) for names in reports]
    assert {name: (folder / name).read_bytes() for name in first_reports} == kept  # untouched
    for result, (html, junit) in zip((one, two), reports, strict=True):
        assert owners(folder / html, folder / junit) == (result.run_id, result.run_id)


def test_invoke_report_rewrites_its_own_runs_report_and_only_that(tmp_path, local_env):
    folder = tmp_path / "shared"
    (tmp_path / "kept").mkdir()
    one = finished_run(folder / "receipts.jsonl", local_env)
    (folder / "receipts.jsonl").rename(tmp_path / "kept" / "receipts.jsonl")
    two = finished_run(folder / "receipts.jsonl", local_env)
    assert two.facts["report_html"] == str(folder / "report-2.html")
    theirs = (folder / "report.html").read_bytes()
    # the same run again: its own files, rewritten in place (also a page from before the meta)
    page = folder / "report-2.html"
    page.write_text(re.sub(r'<meta name="taiea-run-id"[^>]*>', "", page.read_text()))
    again = invoke("report", "--receipts", str(folder / "receipts.jsonl"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"report: {page}", f"junit: {folder / 'junit-2.xml'}"]
    assert owners(page, folder / "junit-2.xml") == (two.run_id, two.run_id)
    assert sorted(p.name for p in folder.glob("*.*")) == [
        "junit-2.xml",
        "junit.xml",
        "receipts.jsonl",
        "report-2.html",
        "report.html",
    ]
    assert (folder / "report.html").read_bytes() == theirs
    assert owners(folder / "report.html", folder / "junit.xml") == (one.run_id, one.run_id)


@pytest.mark.parametrize(
    "flag, target, held",
    [
        ("--html", "report.html", "holds the report of run {one}, not of run {two}"),
        ("--junit", "junit.xml", "holds the report of run {one}, not of run {two}"),
        ("--junit", "pytest.xml", "exists and is not a report, not of run {two}"),
    ],
    ids=["html-of-another-run", "junit-of-another-run", "someone-elses-junit"],
)
def test_invoke_report_refuses_a_path_holding_something_else(
    tmp_path, local_env, flag, target, held
):
    folder = tmp_path / "shared"
    one = finished_run(folder / "receipts.jsonl", local_env)
    two = finished_run(folder / "b.jsonl", local_env)
    (folder / "pytest.xml").write_text(
        '<?xml version="1.0"?>\n<testsuites><testsuite/></testsuites>'
    )
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    done = invoke("report", "--receipts", str(folder / "b.jsonl"), flag, str(folder / target))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"error: {folder / target}: {held.format(one=one.run_id, two=two.run_id)}: {flag} never "
        "overwrites it; remove it or name another file"
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written


def test_a_file_at_the_default_name_that_is_no_report_is_left_alone(tmp_path, local_env):
    """A CI job's own junit.xml in the folder the receipts go to: the run's goes beside it."""
    folder = tmp_path / "ci"
    folder.mkdir()
    (folder / "junit.xml").write_text("<testsuites/>\n")
    result = finished_run(folder / "receipts.jsonl", local_env)
    assert result.facts["report_html"] == str(folder / "report.html")
    assert result.facts["junit_xml"] == str(folder / "junit-2.xml")
    assert (folder / "junit.xml").read_text() == "<testsuites/>\n"
    assert owners(folder / "report.html", folder / "junit-2.xml") == (result.run_id,) * 2
