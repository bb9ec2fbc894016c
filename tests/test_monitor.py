"""The background sampler (probes/monitor.py): what it records, and that a failing read is said."""

from __future__ import annotations

import threading

import pytest

from pipeline.probes.monitor import Monitor
from pipeline.runtime.base import Stats


@pytest.mark.parametrize(
    ("fail_at", "failure"),
    [
        (None, None),
        (3, "sampling stopped after 2 samples: ConnectionError('ssh: host went away')"),
    ],
    ids=["reads-fine", "read-raises"],
)
def test_a_read_that_raises_stops_sampling_and_says_why(fail_at, failure):
    reads = []
    enough = threading.Event()

    def read() -> Stats:
        reads.append(1)
        if len(reads) == fail_at:
            enough.set()
            raise ConnectionError("ssh: host went away")
        if len(reads) >= 5:
            enough.set()
        return Stats(rss_bytes=len(reads) * 1024 * 1024, cpu_percent=1.0)

    with Monitor(read, lambda s: None, interval=0.001) as monitor:
        assert enough.wait(10)
    assert monitor.failure == failure
    if failure:
        assert monitor.samples == 2 and monitor.peak_rss_mb == 2.0  # what it had before
    else:
        assert monitor.samples >= 5 and monitor.peak_rss_mb >= 5.0
