"""Per-instance samples the emulator's Cloud Monitoring serves, as Cloud Run measures them:
each instance's most concurrent requests per second (`container/max_request_concurrencies`,
state active = in rotation, idle = draining), and its CPU and memory as fractions of the
revision's limits every second (`container/cpu/utilizations`, `container/memory/utilizations`).
Kept for the last hour at most; recorded on the emulator's loop."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Reversible
from typing import Any, TypeVar

from pipeline.emulator.host import HostError
from pipeline.emulator.router import DRAINING, READY, Slot

KEEP = 3600 * 20  # an hour of one sample a second from 20 instances
USAGE_EVERY_S = 1.0
Row = TypeVar("Row", bound=tuple[Any, ...])


def after(rows: Reversible[Row], since: float) -> list[Row]:
    """The rows (oldest first, wall time first) later than `since`, read from the newest end:
    a query for the last seconds does not walk the hour kept."""
    recent = list(itertools.takewhile(lambda row: row[0] > since, reversed(rows)))
    recent.reverse()
    return recent


class InstanceSamples:
    def __init__(self) -> None:
        # (wall time of the second's middle, instance id, state, most requests at once)
        self.concurrency: collections.deque[tuple[float, str, str, int]] = collections.deque(
            maxlen=KEEP
        )
        # (wall time, instance id, CPU fraction of the limit, memory fraction of the limit)
        self.usage: collections.deque[tuple[float, str, float, float]] = collections.deque(
            maxlen=KEEP
        )
        self._second: int | None = None
        self._peaks: dict[str, tuple[str, int]] = {}
        self._sampling = False
        self._sampled_at = 0.0

    def tick(self, slots: Iterable[Slot], serving: Iterable[Slot], wall: float) -> None:
        """Every autoscaler tick: fold each serving or draining instance's peak since the last
        tick into its figure for this second, and start the next peak from what is in flight."""
        second = int(wall)
        if self._second is not None and second != self._second:
            self._flush()
        self._second = second
        rotation = {id(s) for s in serving}
        for slot in slots:
            if slot.state not in (READY, DRAINING):
                continue
            state = "active" if id(slot) in rotation else "idle"
            before = self._peaks.get(slot.id)
            self._peaks[slot.id] = (state, max(slot.peak, before[1] if before else 0))
            slot.peak = slot.inflight

    def _flush(self) -> None:
        assert self._second is not None
        for slot_id, (state, peak) in self._peaks.items():
            self.concurrency.append((self._second + 0.5, slot_id, state, peak))
        self._peaks = {}

    def concurrency_rows(self, since: float) -> list[tuple[float, str, str, int]]:
        """The finished seconds after `since`, and the second under way so far."""
        rows = after(self.concurrency, since)
        if self._second is not None and self._second + 0.5 > since:
            rows += [(self._second + 0.5, i, st, p) for i, (st, p) in self._peaks.items()]
        return rows

    def usage_due(self, wall: float) -> bool:
        return not self._sampling and wall - self._sampled_at >= USAGE_EVERY_S

    async def sample_usage(self, slots: list[Slot], cpu_limit: float, memory_limit: int) -> None:
        """Each ready or draining instance's CPU and memory, as fractions of the limits."""
        self._sampling = True
        try:
            for slot in slots:
                handle: Any = slot.handle
                if handle is None or slot.state not in (READY, DRAINING):
                    continue
                try:
                    stats = await handle.stats()
                except HostError:  # the instance just went away
                    continue
                self.usage.append(
                    (
                        time.time(),
                        slot.id,
                        stats["cpu_percent"] / 100.0 / cpu_limit,
                        stats["rss_bytes"] / memory_limit,
                    )
                )
        finally:
            self._sampling = False
            self._sampled_at = time.time()
