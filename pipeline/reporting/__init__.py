"""Run reports from receipts alone: a self-contained HTML page with charts, and JUnit XML.

    html, junit = write_reports("runs/<run-id>/receipts.jsonl", env)

One streaming pass over the receipts (`receipts.scan` with a `ReportCollector`, parallel for big
files, constant memory) builds the model (`model.Report`, aggregated per time bin); `page.render`
and `junit.render` turn it into text. See README.md beside this file for the chart choices.

A report never replaces another run's: each names the run it was written for (the page in
`<meta name="taiea-run-id">`, the JUnit XML in its `run_id` property), and a file found where a
report would go is rewritten only when it is the same run's report (`report_paths`).
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import BinaryIO

from pipeline import receipts
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.reporting import junit, model, page

HTML_NAME = "report.html"
JUNIT_NAME = "junit.xml"
RECEIPTS_NAME = "receipts.jsonl"
RUN_ID_META = page.RUN_ID_META  # <meta name="taiea-run-id" content="RUN-ID"> in every page
MAX_CHOICES = 1000

__all__ = [
    "HTML_NAME",
    "JUNIT_NAME",
    "report_paths",
    "report_run_id",
    "resolve_env",
    "write_reports",
]


def report_paths(receipts_path: str | Path, choice: int = 1) -> tuple[Path, Path]:
    """Where a run's reports go by default, beside its receipts: report.html and junit.xml for a
    `receipts.jsonl`, STEM.report.html and STEM.junit.xml for any other name (a.jsonl →
    a.report.html), so runs whose receipts share a folder do not share reports. `choice` n > 1
    is the n-th name (report-2.html, a.junit-2.xml, …), used when the earlier ones hold
    another run's report."""
    path = Path(receipts_path)
    prefix = "" if path.name == RECEIPTS_NAME else f"{path.stem}."
    suffix = "" if choice == 1 else f"-{choice}"
    html_name, html_ext = HTML_NAME.rsplit(".", 1)
    junit_name, junit_ext = JUNIT_NAME.rsplit(".", 1)
    return (
        path.parent / f"{prefix}{html_name}{suffix}.{html_ext}",
        path.parent / f"{prefix}{junit_name}{suffix}.{junit_ext}",
    )


_META = re.compile(rb'<meta name="' + RUN_ID_META.encode() + rb'" content="([^"]*)"')
_IDENTITY_ROW = re.compile(rb'<tr data-field="run"><td>run</td><td class="mono">([^<]*)</td>')


def report_run_id(path: str | Path) -> str | None:
    """The run a report file was written for: its run id, "" when the file is not a report of
    ours (or names no run), None when there is no file. OSError when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)  # the meta is in the first bytes, the identity table early
            if head.lstrip().startswith(b"<?xml"):
                fh.seek(0)
                return _junit_run_id(fh)
    except FileNotFoundError:
        return None
    found = _META.search(head) or _IDENTITY_ROW.search(head)  # the row: pages from before the meta
    return html.unescape(found.group(1).decode("utf-8", "replace")) if found else ""


def _junit_run_id(fh: BinaryIO) -> str:
    """The `run_id` property of the first testsuite (every report's first suite has one)."""
    try:
        for _event, element in ET.iterparse(fh, events=("end",)):
            if element.tag == "property" and element.get("name") == "run_id":
                return element.get("value") or ""
            if element.tag == "testsuite":
                return ""
    except ET.ParseError:
        pass
    return ""


def _owner(path: Path) -> str | None:
    try:
        return report_run_id(path)
    except OSError as exc:
        raise PipelineError(
            f"{path}: cannot tell which run's report it is: {exc.strerror or exc}"
        ) from None


def _ours(owner: str | None, run_id: str) -> bool:
    """A report may go where nothing is, or where this run's own report is."""
    return owner is None or (bool(run_id) and owner == run_id)


def _refuse(path: Path, owner: str, run_id: str, flag: str) -> PipelineError:
    held = f"holds the report of run {owner}" if owner else "exists and is not a report"
    return PipelineError(
        f"{path}: {held}, not of run {run_id or '(unknown)'}: {flag} never overwrites it; "
        "remove it or name another file"
    )


def resolve_env(env: Env | str | Path | None, report: model.Report) -> tuple[Env, str]:
    """The env for limits and bands: the one given, else the run's own (its file, then its name),
    else local. Returns it with a note saying where it came from when it was not given."""
    from pipeline import config

    if isinstance(env, Env):
        return env, ""
    if env is not None:
        return config.load_env(env), ""
    run = report.run
    for candidate in (run.get("env_file"), run.get("env")):
        if isinstance(candidate, str) and candidate:
            try:
                return config.load_env(candidate), ""
            except PipelineError:
                continue
    note = f"(the run's env {run.get('env')!r} could not be loaded: limits from env local)"
    return config.load_env(config.DEFAULT_ENV), note


def _write(path: Path, text: str, *, fresh: bool) -> bool:
    """Write whole or not at all (a temp file beside it, then rename). With `fresh` the name must
    still be free (a hard link, so a run finishing beside this one cannot be overwritten):
    False when it was taken meanwhile."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            if not fresh:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: checked just before, renamed
                os.replace(tmp, path)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot write the report: {exc.strerror or exc}") from None


def _place(
    text: str, chosen: Path | None, receipts_path: Path, which: int, run_id: str, flag: str
) -> Path:
    """Write one report: where `chosen` says (refused if another run's report or some other
    file is there), else at the first default name that is free or this run's own."""
    choice, races = 1, 0
    while choice <= MAX_CHOICES and races < MAX_CHOICES:
        out = chosen if chosen is not None else report_paths(receipts_path, choice)[which]
        owner = _owner(out)
        if not _ours(owner, run_id):
            if chosen is not None:
                raise _refuse(out, owner or "", run_id, flag)
            choice += 1
            continue
        if _write(out, text, fresh=owner is None):
            return out
        races += 1  # taken meanwhile by a run finishing beside this one: look at it again
    first = report_paths(receipts_path)[which]
    raise PipelineError(
        f"{first}: this name and the next {MAX_CHOICES - 1} hold other runs' reports"
    )


def write_reports(
    receipts_path: str | Path,
    env: Env | str | Path | None = None,
    *,
    html_path: str | Path | None = None,
    junit_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Build the report of a receipts file; write the page and the JUnit XML (beside the receipts,
    `report_paths`, unless told otherwise). A file that does not verify still gets both, saying
    so. Another run's report is never overwritten: a default name it holds is passed over for
    the next (report-2.html, …); a path given for --html/--junit that holds one is refused."""
    path = receipts.receipts_file(receipts_path)
    report = model.build(path)
    environment, note = resolve_env(env, report)
    default_html, default_junit = report_paths(path)
    html_out = Path(html_path) if html_path else default_html
    junit_out = Path(junit_path) if junit_path else default_junit
    for flag, out in (("--html", html_out), ("--junit", junit_out)):
        if out.resolve() == path.resolve() or out.suffix == ".jsonl":
            raise PipelineError(
                f"{out}: {flag} would overwrite receipts; a report never replaces evidence"
            )
    if html_out.resolve() == junit_out.resolve():
        raise PipelineError(f"{html_out}: --html and --junit name the same file")
    found = report.run.get("run_id")
    run_id = found if isinstance(found, str) else ""
    chosen = (
        (Path(html_path) if html_path else None, "--html"),
        (Path(junit_path) if junit_path else None, "--junit"),
    )
    for out_path, flag in chosen:  # refuse before writing either
        if out_path is not None:
            owner = _owner(out_path)
            if not _ours(owner, run_id):
                raise _refuse(out_path, owner or "", run_id, flag)
    html_text = page.render(report, environment, env_note=note)
    junit_text = junit.render(report)
    html_written = _place(html_text, chosen[0][0], path, 0, run_id, "--html")
    junit_written = _place(junit_text, chosen[1][0], path, 1, run_id, "--junit")
    return html_written, junit_written
