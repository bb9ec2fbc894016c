"""Run reports from receipts alone: a self-contained HTML page with charts, and JUnit XML.

    html, junit = write_reports("runs/<run-id>/receipts.jsonl", env)

One streaming pass over the receipts (`receipts.scan` with a `ReportCollector`, parallel for big
files, constant memory) builds the model (`model.Report`, aggregated per time bin); `page.render`
and `junit.render` turn it into text. See README.md beside this file for the chart choices.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline import receipts
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.reporting import junit, model, page

HTML_NAME = "report.html"
JUNIT_NAME = "junit.xml"

__all__ = ["HTML_NAME", "JUNIT_NAME", "report_paths", "resolve_env", "write_reports"]


def report_paths(receipts_path: str | Path) -> tuple[Path, Path]:
    """Where a run's reports go by default: beside its receipts."""
    folder = Path(receipts_path).parent
    return folder / HTML_NAME, folder / JUNIT_NAME


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


def _write(path: Path, text: str) -> None:
    """Write whole or not at all (a temp file beside it, then rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PipelineError(f"{path}: cannot write the report: {exc.strerror or exc}") from None


def write_reports(
    receipts_path: str | Path,
    env: Env | str | Path | None = None,
    *,
    html_path: str | Path | None = None,
    junit_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Build the report of a receipts file; write report.html and junit.xml (beside the receipts
    unless told otherwise). A file that does not verify still gets both, saying so."""
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
    _write(html_out, page.render(report, environment, env_note=note))
    _write(junit_out, junit.render(report))
    return html_out, junit_out
