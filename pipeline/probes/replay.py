"""Replay a pilot scenario: operations sharing an ordering key in order, keys concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.pilots import Operation


@dataclass(frozen=True)
class Outcome:
    operation: Operation
    actual: dict[str, Any]
    differ: list[str]
    latency_ms: float
    sent_s: float

    @property
    def matched(self) -> bool:
        return not self.differ

    def as_receipt(self) -> dict[str, Any]:
        op = self.operation
        return {
            "step": op.id,
            "op_kind": op.kind,
            "event": op.event,
            "tenant": op.tenant,
            "endpoint": op.path,
            "expected": op.expected(),
            "actual": self.actual,
            "matched": self.matched,
            "differ": self.differ,
            "billable": op.billable(self.actual, self.matched),
            "latency_ms": self.latency_ms,
            "sent_s": self.sent_s,
        }


def ordered_groups(operations: Sequence[Operation]) -> list[list[Operation]]:
    """Operations grouped by ordering key, each group in file order, groups by first appearance."""
    groups: dict[str, list[Operation]] = {}
    for op in operations:
        groups.setdefault(op.order_key, []).append(op)
    return list(groups.values())


async def _replay(
    base_url: str,
    operations: Sequence[Operation],
    concurrency: int,
    on_outcome: Callable[[Outcome], None],
    timeout: float,
    stop: threading.Event | None = None,
) -> None:
    import aiohttp

    started = time.perf_counter()
    slots = asyncio.Semaphore(concurrency)

    async def send(session: Any, op: Operation) -> Outcome:
        sent = time.perf_counter()
        try:
            async with session.request(
                op.method,
                base_url + op.path,
                data=op.body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raw, status = json.dumps({"error": f"no answer: {exc.__class__.__name__}"}).encode(), 0
        latency = round((time.perf_counter() - sent) * 1000, 3)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": "answer is not JSON"}
        actual, differ = op.judge(status, answer)
        return Outcome(op, actual, differ, latency, round(sent - started, 4))

    async def run_group(session: Any, group: list[Operation]) -> None:
        for op in group:
            async with slots:
                outcome = await send(session, op)
            on_outcome(outcome)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        work = asyncio.ensure_future(
            asyncio.gather(*(run_group(session, g) for g in ordered_groups(operations)))
        )
        while stop is not None and not work.done():
            await asyncio.wait({work}, timeout=0.1)
            if stop.is_set() and not work.done():  # the release is gone: no more sends
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return
        await work


def replay(
    base_url: str,
    operations: Sequence[Operation],
    *,
    concurrency: int = 4,
    on_outcome: Callable[[Outcome], None] = lambda o: None,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
) -> None:
    """Send every operation once; `on_outcome` sees each answer as it arrives. `stop` set
    ends the replay at once (in-flight operations are abandoned, none is sent after)."""
    asyncio.run(_replay(base_url.rstrip("/"), operations, concurrency, on_outcome, timeout, stop))
