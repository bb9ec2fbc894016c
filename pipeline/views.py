"""Rich views of verdicts, verifications and receipts (rendering only: no judging here)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.gates import Verdict
from pipeline.receipts import Verification

PASS = "[green]✓[/green]"
FAIL = "[red]✗[/red]"


def measured_text(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"


def verdict_table(verdict: Verdict) -> Table:
    status = "[bold green]PASS[/bold green]" if verdict.passed else "[bold red]FAIL[/bold red]"
    table = Table(title=f"gate {verdict.gate}: {status}", title_justify="left")
    table.add_column("", width=1)
    table.add_column("metric")
    table.add_column("expression")
    table.add_column("measured", justify="right")
    table.add_column("samples", justify="right")
    for result in verdict.results:
        measured = measured_text(result.measured)
        if result.reason and result.reason != "no data" and not result.passed:
            measured = f"{measured} [dim]({result.reason.split(':')[0]})[/dim]"
        table.add_row(
            PASS if result.passed else FAIL,
            result.metric,
            result.expression,
            measured,
            str(result.samples),
        )
    return table


def render_verdict(console: Console, verdict: Verdict) -> None:
    console.print(verdict_table(verdict))
    if verdict.reason:
        console.print(f"[red]{verdict.reason}[/red]")


def render_verification(console: Console, verification: Verification) -> None:
    mark = PASS if verification.ok else FAIL
    console.print(f"{mark} {verification.describe()}")


def receipts_table(records: Iterable[dict[str, Any]], *, limit: int | None = None) -> Table:
    table = Table(title_justify="left")
    for column in ("seq", "ts", "kind", "stage", "details"):
        table.add_column(column, overflow="fold")
    common = {"ts", "kind", "run_id", "seq", "phase", "stage", "prev", "hash"}
    for n, record in enumerate(records):
        if limit is not None and n >= limit:
            break
        details = ", ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in common)
        table.add_row(
            str(record.get("seq", "")),
            str(record.get("ts", "")),
            str(record.get("kind", "")),
            str(record.get("stage") or ""),
            details,
        )
    return table


def _short(value: Any) -> str:
    """A field as a person reads it: nested values as compact JSON, long ones cut at 60."""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


class PhaseView:
    """Live view of a phase for humans: one line per stage, a progress bar with live req/s and
    p95 during load. Everything goes to the console given (stderr under --json)."""

    def __init__(self, console: Console, title: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.console.rule(title)
        self._progress = Progress(
            TextColumn("  [cyan]load[/cyan] {task.description}"),
            BarColumn(),
            TextColumn(
                "{task.fields[rps]:>7.1f} req/s  p95 {task.fields[p95]:>7.1f} ms  {task.fields[sent]:>6} sent"
            ),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None
        self._status: Any = None

    def stage_started(self, name: str) -> None:
        self._status = self.console.status(f"[bold]{name}[/bold] …")
        self._status.start()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def stage_finished(self, name: str, passed: bool, seconds: float, note: str) -> None:
        self._stop_status()
        mark = PASS if passed else FAIL
        self.console.print(
            f"{mark} [bold]{name:<10}[/bold] {seconds:7.2f} s  {note}", highlight=False
        )

    def load_started(self, label: str, duration_s: float) -> None:
        self._stop_status()
        self._progress.start()
        self._task = self._progress.add_task(label, total=duration_s, rps=0.0, p95=0.0, sent=0)

    def load_tick(self, elapsed_s: float, rps: float, p95_ms: float, sent: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=elapsed_s, rps=rps, p95=p95_ms, sent=sent)

    def load_finished(self) -> None:
        self._progress.stop()
        self._task = None

    def note(self, text: str) -> None:
        self._stop_status()
        self.console.print(f"  {text}", highlight=False)


def gates_table(outcomes: Any) -> Table:
    """phase2.all's closing table: every gate, its verdict, and where its receipts are."""
    table = Table(title="Phase 2", title_justify="left")
    for column in ("", "gate", "week", "verdict", "receipts"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            mark, verdict, where = "[dim]–[/dim]", outcome.note, ""
        else:
            mark = PASS if result.verdict.passed else FAIL
            verdict, where = outcome.note.split(" (")[0], _relative(result.receipts)
        table.add_row(mark, outcome.gate, outcome.week, verdict, where)
    return table


def _relative(path: Any) -> str:
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render_image(console: Console, facts: dict[str, Any]) -> None:
    """image.inspect: the digest, the release it holds, its layers and how it starts."""
    release = facts["release"]
    config = facts["config"]
    console.print(f"[bold]{facts['source']}[/bold]")
    console.print(f"digest   {facts['digest']}")
    held = f"{release['name']} {release['version']}" if release["name"] else "not a TAIEA release"
    console.print(f"release  {held}  (tarball sha256 {release['sha256'] or '?'})")
    console.print(
        f"platform {config['platform']}, user {config['user']}, ports {config['exposed_ports']}"
    )
    console.print(f"starts   {' '.join([*(config['entrypoint'] or []), *(config['cmd'] or [])])}")
    table = Table(title=f"layers ({facts['size_bytes'] / 2**20:.1f} MiB)", title_justify="left")
    table.add_column("digest")
    table.add_column("size", justify="right")
    for layer in facts["layers"]:
        table.add_row(layer["digest"], f"{layer['size'] / 2**20:.2f} MiB")
    console.print(table)
    for item in config["env"]:
        console.print(f"env      {item}", highlight=False)


def render_attestations(
    console: Console, image: str, digest: str, rows: list[dict[str, Any]]
) -> None:
    """attest.list: one row per attestation on the image's digest, as each states itself."""
    table = Table(title=f"{image} ({digest[:19]}…)", title_justify="left")
    for column in ("gate", "verdict", "signer key", "run", "issued"):
        table.add_column(column)
    for row in rows:
        if row.get("problem"):
            table.add_row("?", f"[red]{row['problem']}[/red]", "", "", "")
            continue
        verdict = row.get("verdict")
        mark = "[green]✓ PASS[/green]" if verdict == "PASS" else f"[red]✗ {verdict}[/red]"
        keyid = str(row.get("keyid") or "")
        table.add_row(
            str(row.get("gate")), mark, keyid[:19] + "…" if len(keyid) > 19 else keyid,
            str(row.get("run_id")), str(row.get("issued_at")),
        )  # fmt: skip
    if not rows:
        console.print(f"{image}: no attestation on {digest}")
        return
    console.print(table)


def render_admission(console: Console, checked: Any) -> None:
    """attest.verify: admitted or denied, each required attestation found or missing, and
    problems found re-judging receipts."""
    decision = checked.decision
    for found in decision.accepted:
        console.print(
            f"[green]✓[/green] gate {found['gate']} {found['verdict']} signed by "
            f"{str(found['keyid'])[:19]}… (run {found['run_id']}, {found['issued_at']})",
            highlight=False,
        )
    for missing in decision.missing:
        console.print(f"[red]✗[/red] {missing}", highlight=False)
    for problem in checked.rejudged:
        console.print(f"[red]✗[/red] {problem}", highlight=False)
    if checked.passed:
        console.print(f"[green]admitted[/green]: {decision.image}@{decision.digest}")
    elif decision.admitted:
        console.print(f"[yellow]admitted (dry run)[/yellow]: {decision.message}", highlight=False)
    else:
        console.print(f"[red]denied[/red]: {decision.message}", highlight=False)
