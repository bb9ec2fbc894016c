"""The run as JUnit XML for CI: a testsuite per gate receipt (a testcase per expression) and a
testsuite per smoke stage (a testcase per smoke test), in the common schema CI systems read
(Jenkins/Ant `junit-10.xsd`: testsuites › testsuite › properties, testcase › failure)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from pipeline.reporting.model import Report

_XML_BAD = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(value: Any) -> str:
    """Text XML 1.0 can carry (log tails may hold control characters)."""
    return _XML_BAD.sub("", "" if value is None else str(value))


def _seconds(value: float | None) -> str:
    return f"{max(0.0, value or 0.0):.3f}"


def _measured(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.6g}"


def _timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _suite(parent: ET.Element, name: str, report: Report, time_s: float, index: int) -> ET.Element:
    return ET.SubElement(
        parent,
        "testsuite",
        {
            "name": _x(name),
            "tests": "0",
            "failures": "0",
            "errors": "0",
            "skipped": "0",
            "time": _seconds(time_s),
            "timestamp": _timestamp(report.start_s),
            "hostname": _x(report.run.get("host") or "unknown"),
            "id": str(index),
            "package": _x(f"taiea-pipeline.{report.phase}"),
        },
    )


def _properties(suite: ET.Element, report: Report) -> None:
    release = report.release
    v = report.verification
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", report.run.get("run_id")),
        ("release", release.get("name")),
        ("version", release.get("version")),
        ("sha256", release.get("sha256")),
        ("env", report.run.get("env")),
        ("tool_version", report.run.get("tool_version")),
        ("receipts", str(report.path)),
        ("receipts_verified", str(v.ok).lower()),
        ("receipts_sealed", str(v.sealed).lower()),
        ("receipts_head", v.head),
    ):
        ET.SubElement(
            props, "property", {"name": name, "value": _x(value if value is not None else "")}
        )


def _finish(suite: ET.Element, tests: int, failures: int) -> None:
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))


def build(report: Report) -> ET.Element:
    root = ET.Element(
        "testsuites",
        {"name": _x(f"taiea-pipeline {report.phase} {report.run.get('run_id') or report.path}")},
    )
    index = 0
    v = report.verification
    if not v.ok:
        suite = _suite(root, "receipts", report, 0.0, index)
        _properties(suite, report)
        case = ET.SubElement(
            suite,
            "testcase",
            {"name": "receipts verify", "classname": "receipts.chain", "time": "0.000"},
        )
        failure = ET.SubElement(
            case, "failure", {"message": _x(v.describe()), "type": "ReceiptsDoNotVerify"}
        )
        failure.text = _x(v.describe())
        _finish(suite, 1, 1)
        index += 1
    if v.ok and not report.gates:  # fail closed: a run without a verdict is not a pass
        suite = _suite(root, "gate", report, report.duration_s, index)
        _properties(suite, report)
        case = ET.SubElement(
            suite, "testcase", {"name": "gate verdict", "classname": "gate", "time": "0.000"}
        )
        why = "no gate receipt: the run was not judged (unfinished or interrupted before its gate)"
        ET.SubElement(case, "failure", {"message": why, "type": "NotJudged"}).text = why
        _finish(suite, 1, 1)
        index += 1
    for gate in report.gates:
        name = f"gate {gate['gate']}"
        if gate["stage"] and gate["stage"] != "gate":
            name += f" · {gate['stage']}"
        elapsed = report.rel(gate["t"])
        suite = _suite(root, name, report, elapsed or 0.0, index)
        index += 1
        _properties(suite, report)
        tests = failures = 0
        classname = f"gate.{gate['gate']}"
        for result in gate["results"]:
            tests += 1
            case = ET.SubElement(
                suite,
                "testcase",
                {
                    "name": _x(f"{result['metric']} {result['expression']}"),
                    "classname": _x(f"{classname}.{result['metric']}"),
                    "time": "0.000",
                },
            )
            if not result["passed"]:
                failures += 1
                why = result["reason"] or gate["reason"]
                message = (
                    f"{result['metric']}: measured {_measured(result['measured'])}, "
                    f"threshold {result['expression']}" + (f" ({why})" if why else "")
                )
                failure = ET.SubElement(
                    case, "failure", {"message": _x(message), "type": "GateThreshold"}
                )
                failure.text = _x(
                    f"gate {gate['gate']}: {result['metric']} {result['expression']}\n"
                    f"measured: {_measured(result['measured'])} over {result['samples']} samples\n"
                    + (f"reason: {why}\n" if why else "")
                )
        if not gate["results"]:
            tests, failures = 1, 0 if gate["passed"] else 1
            case = ET.SubElement(
                suite, "testcase", {"name": _x(name), "classname": _x(classname), "time": "0.000"}
            )
            if not gate["passed"]:
                ET.SubElement(
                    case,
                    "failure",
                    {"message": _x(gate["reason"] or "gate failed"), "type": "GateFailed"},
                )
        _finish(suite, tests, failures)
    stages: dict[str, list[dict[str, Any]]] = {}
    for item in report.smoke:
        stages.setdefault(item["stage"], []).append(item)
    for stage, items in stages.items():
        name = "smoke" if stage == "smoke" else f"smoke · {stage}"
        total = sum((item["latency_ms"] or 0.0) for item in items) / 1000.0
        suite = _suite(root, name, report, total, index)
        index += 1
        failures = 0
        for item in items:
            case = ET.SubElement(
                suite,
                "testcase",
                {
                    "name": _x(item["test"]),
                    "classname": _x(f"smoke.{stage}"),
                    "time": _seconds((item["latency_ms"] or 0.0) / 1000.0),
                },
            )
            if not item["passed"]:
                failures += 1
                message = (
                    f"{item['method'] or ''} {item['endpoint'] or ''}: status {item['status']}, "
                    f"{item['reason'] or 'failed'}"
                ).strip()
                failure = ET.SubElement(
                    case, "failure", {"message": _x(message), "type": "SmokeTest"}
                )
                failure.text = _x(message)
        _finish(suite, len(items), failures)
    suites = list(root)
    root.set("tests", str(sum(int(s.get("tests", "0")) for s in suites)))
    root.set("failures", str(sum(int(s.get("failures", "0")) for s in suites)))
    root.set("errors", "0")
    root.set("time", _seconds(sum(float(s.get("time", "0")) for s in suites)))
    return root


def render(report: Report) -> str:
    root = build(report)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
