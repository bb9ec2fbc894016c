"""What every task shares: errors mapped to exit codes, and where human output goes."""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit

from pipeline.errors import GateFailed, PipelineError

if TYPE_CHECKING:
    from rich.console import Console


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """PipelineError → exit 2, GateFailed → exit 99, each with one line on stderr. SIGTERM and
    SIGHUP end the task as Ctrl-C does (pipeline.interrupts): a run that was judged exits 99,
    anything else 128 + the signal's number."""
    from pipeline import interrupts

    with interrupts.handled():
        try:
            yield
        except PipelineError as exc:
            raise Exit(f"error: {exc}", code=PipelineError.exit_code) from None
        except GateFailed as exc:
            raise Exit(f"gate failed: {exc}", code=GateFailed.exit_code) from None
        except KeyboardInterrupt:
            raise Exit(interrupts.reason(), code=interrupts.exit_code()) from None


def required(flag: str, value: Any, task: str) -> Any:
    """A flag the task cannot run without. Tasks declare no positional arguments (invoke would
    take `--help` after the task name as their value), so the check is here: one line, exit 2."""
    if value is None or value == "":
        raise PipelineError(f"{flag} is required (invoke --help {task})")
    return value


def positional(value: Any, task: str) -> Any:
    """The value of a positional argument: invoke hands it `--help` or `-h` typed after the task
    name, so show the task's help as invoke would (exit 0); another flag-like value is one line,
    exit 2."""
    if isinstance(value, str) and value in ("--help", "-h"):
        from invoke import Program

        from pipeline.tasks import namespace

        Program(namespace=namespace, binary="inv[oke]").run(["invoke", "--help", task], exit=False)
        raise Exit(code=0)
    if isinstance(value, str) and value.startswith("-"):
        raise PipelineError(f"{value}: a flag where {task} expects a path (invoke --help {task})")
    return value


_HOLDS = {">": operator.gt, ">=": operator.ge, "<=": operator.le}


def number(
    flag: str,
    value: object,
    default: float | None = None,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    integer: bool = False,
) -> Any:
    """A numeric flag's value (`default` when not given), or one line naming the flag: exit 2.

    Numeric flags are declared without typed defaults so that invoke hands over the text and a
    typo is this error, not invoke's traceback."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    try:
        parsed = int(text) if integer else float(text)
    except ValueError:
        parsed = None
    bounds = [
        (b, op) for b, op in ((above, ">"), (at_least, ">="), (at_most, "<=")) if b is not None
    ]
    wanted = " and ".join(f"{op} {b:g}" for b, op in bounds)
    if (
        parsed is None
        or not math.isfinite(parsed)
        or not all(_HOLDS[op](parsed, b) for b, op in bounds)
    ):
        kind = "an integer" if integer else "a number"
        raise PipelineError(
            f"{flag}: expected {kind}{' ' + wanted if wanted else ''}, got {text!r}"
        )
    return parsed


def human_console(json_mode: bool) -> Console:
    """The human view: stdout normally, stderr when --json keeps stdout for JSON lines."""
    from rich.console import Console

    return Console(stderr=json_mode, highlight=False, soft_wrap=True)  # paths stay whole


PHASE_HELP = {
    "tarball": "the release tarball (tai_autonomics-<vsn>.tar.gz, rebar3 or wrapped layout)",
    "env": "env name (envs/NAME.toml) or path; default local",
    "port": "port for the release; 0 picks a free one (default: the env file's)",
    "receipts": "where to write the receipts (default runs/<run-id>/receipts.jsonl)",
    "json": "print the receipts as JSON lines on stdout; the human view goes to stderr",
}


def finish_phase(result, console):
    """Render the verdict and where the receipts are; a failed gate becomes exit 99."""
    from pipeline import views
    from pipeline.errors import GateFailed

    views.render_verdict(console, result.verdict)
    console.print(f"receipts: {result.receipts}  ({result.wall_s:.2f} s)", highlight=False)
    for label, key in (("report", "report_html"), ("junit", "junit_xml")):
        if result.facts.get(key):
            console.print(f"{label}: {result.facts[key]}", highlight=False)
    if not result.verdict.passed:
        raise GateFailed(result.verdict.summary())


def phase_view(json_mode, title):
    """The console for humans and the live phase view on it."""
    from pipeline import views

    console = human_console(json_mode)
    return console, views.PhaseView(console, title)


def json_echo(json_mode):
    """A receipts listener printing each record as a JSON line on stdout, or None."""
    if not json_mode:
        return None
    import sys

    import orjson

    def echo(record):
        sys.stdout.buffer.write(orjson.dumps(record) + b"\n")
        sys.stdout.flush()

    return echo
