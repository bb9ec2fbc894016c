"""Persistence: the control plane's state as one JSON file, written atomically.

`<state dir>/state.json` (default `<runs>/emulator/`). A write goes to a temp file in the same
directory, is fsynced and renamed over the old one, so a crash leaves the old or the new state,
never half of one. Writes are queued on one thread, in order, and coalesced.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import PipelineError

STATE_FILE = "state.json"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PipelineError(
            f"{path}: not valid JSON ({exc}); move it away to start afresh"
        ) from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise PipelineError(f"{path}: not an emulator state file (version 1)")
    return data


class Saver:
    """Writes snapshots in order on one background thread; a newer one replaces a queued one."""

    def __init__(self, path: Path):
        self.path = path
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"save-{path.name}", daemon=True)
        self._thread.start()
        self.writes = 0

    def save(self, snapshot: dict[str, Any]) -> None:
        data = orjson.dumps(snapshot, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        with self._cond:
            self._pending = data
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                data, self._pending = self._pending, None
                self._busy = True
            try:
                write_atomic(self.path, data)
                self.writes += 1
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
