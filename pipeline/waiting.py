"""The one way this project waits: poll a condition with tenacity, never a fixed sleep.

`sleep` and `clock` are parameters (as in tenacity) so loops built on this run in zero time
in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, wait_fixed

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    pass


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `check` every `interval` s until it returns something other than None.

    An exception from `check` ends the wait at once (it is the caller's "give up" signal).
    Raises WaitTimeout after `timeout` seconds.
    """
    start = clock()

    def out_of_time(state: RetryCallState) -> bool:
        return clock() - start + interval > timeout

    retrying = Retrying(
        retry=retry_if_result(lambda value: value is None),
        wait=wait_fixed(interval),
        stop=out_of_time,
        sleep=sleep,
        retry_error_callback=lambda state: None,
    )
    result = retrying(check)
    if result is None:
        raise WaitTimeout(f"{what}: not reached after {timeout:g} s")
    return result


async def apoll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T | None:
    """`poll` for asyncio code: the loop keeps running between checks. Returns None (instead of
    raising) when the time runs out, for callers that go on either way."""
    import asyncio

    from tenacity import AsyncRetrying

    loop = asyncio.get_running_loop()
    start = loop.time()
    retrying = AsyncRetrying(
        retry=retry_if_result(lambda value: value is None),
        wait=wait_fixed(interval),
        stop=lambda state: loop.time() - start + interval > timeout,
        retry_error_callback=lambda state: None,
    )

    async def attempt() -> T | None:
        return check()

    return await retrying(attempt)
