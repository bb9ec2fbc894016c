"""What every task shares: errors mapped to exit codes, and where human output goes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from invoke.exceptions import Exit
from rich.console import Console

from pipeline.errors import GateFailed, PipelineError


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """PipelineError → exit 2, GateFailed → exit 99, each with one line on stderr."""
    try:
        yield
    except PipelineError as exc:
        raise Exit(f"error: {exc}", code=PipelineError.exit_code) from None
    except GateFailed as exc:
        raise Exit(f"gate failed: {exc}", code=GateFailed.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


def human_console(json_mode: bool) -> Console:
    """The human view: stdout normally, stderr when --json keeps stdout for JSON lines."""
    return Console(stderr=json_mode, highlight=False)
