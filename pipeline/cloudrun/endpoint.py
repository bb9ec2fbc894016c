"""Where the Cloud Run Admin API is: the env's endpoint, `PIPELINE_CLOUDRUN_ENDPOINT` or a flag.

A local endpoint where nothing listens is the emulator's place: a rollout starts the emulator
there (`python -m pipeline.emulator start --background`, as `invoke emulator.start` does) and
stops it at the end. The emulator is reached as a process and over HTTP, never imported."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Env
from pipeline.errors import PipelineError
from pipeline.waiting import WaitTimeout, poll

ENDPOINT_ENV = "PIPELINE_CLOUDRUN_ENDPOINT"


def endpoint_for(env: Env, override: str | None) -> str | None:
    return override or os.environ.get(ENDPOINT_ENV) or env.cloudrun.endpoint


def answering_endpoint(env: Env, override: str | None) -> str | None:
    """The endpoint for a call by hand: a local one where nothing answers is one line at once
    (the client would retry a refused connection until its deadline)."""
    where = endpoint_for(env, override)
    if _silent_local(env, where):
        raise PipelineError(
            f"nothing answers at {where}: start the emulator (invoke emulator.start --background)"
            " or name another endpoint with --endpoint"
        )
    return where


def _probe_path(env: Env) -> str:
    return f"/v2/projects/{env.cloudrun.project}/locations/{env.cloudrun.region}/services"


def _silent_local(env: Env, where: str | None) -> bool:
    """A local endpoint (the emulator's place) where nothing listens. A busy emulator slow to
    answer is not silent: only a refused connection is (a second emulator must never be
    started beside a slow first one)."""
    from pipeline.runtime.readiness import listening

    local = bool(where) and str(where).startswith("http://127.0.0.1")
    return local and not listening(str(where))


def ensure_endpoint(
    env: Env, override: str | None, note: Callable[[str], None] | None = None
) -> str | None:
    """The API endpoint to use; with a local endpoint where nothing answers yet, start the
    emulator in the background (and say how to stop it)."""
    return start_endpoint(env, override, note)[0]


def start_endpoint(
    env: Env, override: str | None, note: Callable[[str], None] | None = None
) -> tuple[str | None, bool]:
    """`ensure_endpoint`, and whether it started the emulator (then the run stops it)."""
    from urllib.parse import urlsplit

    from pipeline.runtime.readiness import http_status

    where = endpoint_for(env, override)
    if where is None or not _silent_local(env, where):
        return where, False
    port = urlsplit(where).port or 8089
    started = _emulator(
        "start", "--background", "--port", str(port), "--env", str(env.path),
        "--state-dir", str(emulator_state_dir()),
    )  # fmt: skip
    if started.returncode != 0:
        raise PipelineError(
            f"no Cloud Run API answers at {where} and the emulator did not start: {started.stderr.strip()}"
        )
    probe_path = _probe_path(env)
    try:
        poll(
            lambda: True if http_status(where, probe_path) else None,
            timeout=30,
            what="the emulator",
        )
    except WaitTimeout:
        raise PipelineError(f"started the emulator, but nothing answers at {where}") from None
    if note is not None:
        note(
            f"started the local Cloud Run emulator at {where} (stop it with `invoke emulator.stop`)"
        )
    return where, True


def emulator_state_dir() -> Path:
    """Where an emulator a run starts keeps its state: the runs dir's `emulator/`."""
    from pipeline.receipts import runs_dir

    return (runs_dir() / "emulator").resolve()


def stop_emulator(
    env: Env | None, note: Callable[[str], None] | None = None, state_dir: Path | None = None
) -> bool:
    """Stop the emulator `start_endpoint` started (same state dir: the runs dir's); whether
    one was running there."""
    import json

    done = _emulator("stop", "--json", "--state-dir", str(state_dir or emulator_state_dir()))
    try:
        was_running = bool(json.loads(done.stdout.strip().splitlines()[-1])["was_running"])
    except (ValueError, IndexError, KeyError, TypeError):
        was_running = False
    if note is not None and env is not None:
        note(
            "stopped the emulator this run started; its services are kept: "
            f"`invoke emulator.start --background --env {env.path}` brings them back "
            "(--keep-emulator leaves it running)"
        )
    return was_running


def _emulator(*args: str) -> Any:
    """`python -m pipeline.emulator ARGS`, as `invoke emulator.*` runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pipeline.emulator", *args],
        cwd=Path(__file__).resolve().parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
