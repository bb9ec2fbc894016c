"""What every phase shares: the run (receipts, stages, the view) and its ending (gate, ledger, seal).

A phase is straight-line code over `PhaseRun`: `with run.stage("start") as stage:` writes the
stage's start and end receipts, times it, and turns a StageFailed into a failed stage with an
`error` receipt. `run.finish(spec)` judges the gate over the receipts written so far, writes the
`gate` receipt, appends the verdict to the ledger and seals the file.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline import __version__, interrupts, receipts, schema
from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.gates import GateSpec, Verdict, check, overruled
from pipeline.verdicts import ledger_entry


class StageFailed(Exception):
    """A stage could not do its job; the phase goes on to stop and judge (the gate fails)."""

    def __init__(self, reason: str, *, log_tail: list[str] | None = None, **details: Any):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail or []
        self.details = details


class View(Protocol):
    """How a phase shows itself; rich for humans (views.PhaseView), nothing in tests."""

    def stage_started(self, name: str) -> None: ...

    def stage_finished(self, name: str, passed: bool, seconds: float, note: str) -> None: ...

    def load_started(self, label: str, duration_s: float) -> None: ...

    def load_tick(self, elapsed_s: float, rps: float, p95_ms: float, sent: int) -> None: ...

    def load_finished(self) -> None: ...

    def note(self, text: str) -> None: ...


class QuietView:
    def stage_started(self, name: str) -> None:
        pass

    def stage_finished(self, name: str, passed: bool, seconds: float, note: str) -> None:
        pass

    def load_started(self, label: str, duration_s: float) -> None:
        pass

    def load_tick(self, elapsed_s: float, rps: float, p95_ms: float, sent: int) -> None:
        pass

    def load_finished(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class Stage:
    name: str
    note: str = ""
    passed: bool = True
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reason = self.reason or reason


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    run_id: str
    receipts: Path
    verdict: Verdict
    facts: dict[str, Any]
    wall_s: float


class PhaseRun:
    def __init__(
        self,
        phase: str,
        env: Env,
        *,
        receipts_path: str | Path | None = None,
        view: View | None = None,
        secrets: tuple[str, ...] = (),
    ):
        self.phase = phase
        self.env = env
        self.view: View = view or QuietView()
        self.writer = receipts.ReceiptWriter.for_run(
            phase, receipts_path, secrets=secrets, check=schema.checker()
        )
        self.started = time.monotonic()
        self.failed_stages: list[str] = []
        self.facts: dict[str, Any] = {}
        self.interrupted = ""  # why the run was interrupted ("interrupted by SIGTERM")
        self.crashed: str | None = None  # why the phase stopped half-way: the verdict says so
        self.release: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return self.writer.path

    def write(self, kind: str, stage: str | None = None, **fields: Any) -> dict[str, Any]:
        return self.writer.write(kind, stage, **fields)

    def begin(self, release: dict[str, Any], **extra: Any) -> None:
        self.release = release
        self.write(
            "run",
            tool="taiea-pipeline",
            tool_version=__version__,
            env=self.env.name,
            env_file=str(self.env.path),
            host=socket.gethostname(),
            platform=platform.platform(),
            python=platform.python_version(),
            release=release,
            **extra,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        interrupts.raise_pending()
        stage = Stage(name)
        self.view.stage_started(name)
        self.write("stage", name, event="start")
        began = time.monotonic()
        try:
            yield stage
            interrupts.raise_pending()
        except StageFailed as exc:
            stage.fail(exc.reason)
            self.error(name, exc.reason, log_tail=exc.log_tail, **exc.details)
        except KeyboardInterrupt:
            why = self.interrupt()
            stage.fail(why)
            self.error(name, why, signal=interrupts.cause())
            raise
        except Exception as exc:
            stage.fail(self.crash(exc, name))
            raise
        finally:
            seconds = round(time.monotonic() - began, 4)
            if not stage.passed:
                self.failed_stages.append(name)
            self.write(
                "stage",
                name,
                event="end",
                passed=stage.passed,
                seconds=seconds,
                reason=stage.reason,
                **stage.details,
            )
            self.view.stage_finished(name, stage.passed, seconds, stage.reason or stage.note)

    def skip(self, name: str, because: str) -> None:
        self.write("stage", name, event="skip", reason=because)
        self.view.stage_finished(name, False, 0.0, f"skipped: {because}")

    def error(self, stage: str | None, reason: str, **fields: Any) -> None:
        self.write("error", stage, reason=reason, **fields)

    def interrupt(self) -> str:
        """A signal ended the run (Ctrl-C, SIGTERM, SIGHUP): say which; the verdict will fail."""
        self.interrupted = interrupts.noted()
        return self.interrupted

    def crash(self, exc: BaseException, stage: str | None = None) -> str:
        """Something stopped the phase half-way, bad input found late or a bug: say so once, in
        an error receipt; the verdict will fail with it. Returns why."""
        if self.crashed is None:
            kind = "stopped" if isinstance(exc, PipelineError) else f"crashed: {type(exc).__name__}"
            self.crashed = f"{kind}: {exc}"
            self.error(stage, self.crashed)
        return self.crashed

    def finish(self, spec: GateSpec) -> PhaseResult:
        """Judge the gate over this run's receipts, record the verdict, seal the file, add it to
        the ledger and write the reports. A signal meanwhile fails the verdict if it came before
        the verdict was written, and never cuts the recording short."""
        with interrupts.deferred() as signalled:
            verdict = self._judge_and_seal(spec, signalled)
            self._record(verdict)
        return PhaseResult(
            self.phase,
            self.writer.run_id,
            self.path,
            verdict,
            self.facts,
            round(time.monotonic() - self.started, 3),
        )

    def _judge_and_seal(self, spec: GateSpec, signalled: Callable[[], bool]) -> Verdict:
        verdict = check(self.path, spec, require_seal=False)
        if signalled() and not self.interrupted:
            self.error(None, self.interrupt(), signal=interrupts.cause())
        if self.interrupted or self.crashed:  # judged as far as it got, failed whatever it shows
            verdict = overruled(verdict, self.interrupted or str(self.crashed))
        self.write("gate", "gate", **verdict.as_fields())
        self.writer.seal()
        self.writer.close()
        return verdict

    def _record(self, verdict: Verdict) -> None:
        """The verdict in the ledger; the page and JUnit XML beside the receipts
        (reporting.report_paths: never over another run's report). A report that cannot be
        written is a note, never a verdict."""
        entry = ledger_entry(verdict, self.path, source=self.phase)
        entry.update(
            receipts_head=self.writer.head,
            judged_run=self.writer.run_id,
            release_sha256=self.release.get("sha256"),
            release_version=self.release.get("version"),
        )
        receipts.append_ledger(entry)
        try:
            from pipeline.reporting import write_reports

            html, junit = write_reports(self.path, self.env)
            self.facts.update(report_html=str(html), junit_xml=str(junit))
        except Exception as exc:
            self.view.note(f"report not written: {exc}")

    def abandon(self) -> None:
        """Close the file without a seal (a bug interrupted the phase): gates will fail it."""
        self.writer.close()
