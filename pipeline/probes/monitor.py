"""Resource monitor: samples an instance's memory and CPU on a fixed cadence in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.runtime.base import Stats

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the monitor started
    rss_mb: float
    cpu_percent: float


def sample_loop(
    read: Callable[[], Stats],
    on_sample: Callable[[Sample], None],
    *,
    interval: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    limit: float | None = None,
) -> int:
    """Sample every `interval` s until `stop` is set (or `limit` s passed); returns the count.

    The wait between samples is `stop.wait`, a condition, so stopping is immediate; ticks are
    scheduled on the clock, so a slow read does not drift the cadence.
    """
    start = clock()
    count = 0
    while not stop.is_set():
        stats = read()
        now = clock() - start
        on_sample(
            Sample(round(now, 3), round(stats.rss_bytes / MB, 3), round(stats.cpu_percent, 2))
        )
        count += 1
        due = start + count * interval
        if limit is not None and due - start > limit:
            break
        stop.wait(max(0.0, due - clock()))
    return count


class Monitor:
    """`with Monitor(instance.stats, on_sample, interval=0.25):` samples in the background.

    A read that raises ends the sampling; `failure` then says why, for the caller to record
    (the samples taken so far would otherwise pass for the whole window)."""

    def __init__(
        self, read: Callable[[], Stats], on_sample: Callable[[Sample], None], *, interval: float
    ):
        self._stop = threading.Event()
        self.peak_rss_mb = 0.0
        self.samples = 0
        self.failure: str | None = None

        def record(sample: Sample) -> None:
            self.peak_rss_mb = max(self.peak_rss_mb, sample.rss_mb)
            self.samples += 1
            on_sample(sample)

        def sample() -> None:
            try:
                sample_loop(read, record, interval=interval, stop=self._stop)
            except Exception as exc:
                self.failure = f"sampling stopped after {self.samples} samples: {exc!r}"

        self._thread = threading.Thread(target=sample, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
