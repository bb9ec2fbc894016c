"""The one way the project waits: conditions polled through tenacity, tested in zero time."""

from __future__ import annotations

import pytest

from pipeline.runtime.readiness import NotReady, wait_until_ready
from pipeline.waiting import WaitTimeout, poll


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_poll_returns_the_first_value_in_zero_time():
    clock = FakeClock()
    answers = iter([None, None, "ready"])
    assert (
        poll(lambda: next(answers), timeout=5, interval=0.05, sleep=clock.sleep, clock=clock)
        == "ready"
    )
    assert clock.sleeps == [0.05, 0.05]


def test_poll_gives_up_after_the_timeout():
    clock = FakeClock()
    with pytest.raises(WaitTimeout, match="the thing: not reached after 1 s"):
        poll(
            lambda: None, timeout=1, interval=0.25, what="the thing", sleep=clock.sleep, clock=clock
        )
    assert clock.now == 1.0 and len(clock.sleeps) == 4  # checks at 0, .25, .5, .75 and 1 s


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [([503, 503, 200], "/ready"), ([404, 200], "/health"), ([0, 0, 200], "/ready")],
    ids=["ready-after-503s", "falls-back-to-health", "nothing-listening-yet"],
)
def test_readiness_polls_ready_and_falls_back_to_health(statuses, expected):
    clock = FakeClock()
    seen = iter(statuses)
    path = wait_until_ready(
        "http://127.0.0.1:1",
        timeout=5,
        alive=lambda: True,
        probe=lambda url, p: next(seen),
        sleep=clock.sleep,
        clock=clock,
    )
    assert path == expected and all(s <= 0.05 for s in clock.sleeps)


def test_readiness_stops_at_once_when_the_release_exits():
    clock = FakeClock()
    with pytest.raises(NotReady, match="exited before it was ready"):
        wait_until_ready(
            "http://127.0.0.1:1",
            timeout=30,
            alive=lambda: False,
            probe=lambda u, p: 0,
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.now == 0


def test_readiness_timeout_names_the_last_status():
    clock = FakeClock()
    with pytest.raises(NotReady, match=r"not ready after 2 s on /ready \(last status 503\)"):
        wait_until_ready(
            "http://127.0.0.1:1",
            timeout=2,
            alive=lambda: True,
            probe=lambda u, p: 503,
            sleep=clock.sleep,
            clock=clock,
        )


def test_apoll_waits_on_a_condition_and_gives_up_in_time():
    import asyncio

    from pipeline.waiting import apoll

    async def scenario():
        loop = asyncio.get_running_loop()
        ready_at = loop.time() + 0.05
        got = await apoll(
            lambda: "ok" if loop.time() >= ready_at else None, timeout=2, interval=0.01
        )
        began = loop.time()
        none = await apoll(lambda: None, timeout=0.1, interval=0.01)
        return got, none, loop.time() - began

    got, none, waited = asyncio.run(scenario())
    assert got == "ok" and none is None and waited < 1.0
