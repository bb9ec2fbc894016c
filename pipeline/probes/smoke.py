"""The smoke tests: data from the env file, run concurrently, bodies checked, none stops another."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.config import SmokeTest


@dataclass(frozen=True)
class SmokeResult:
    test: str
    endpoint: str
    method: str
    status: int  # 0 when nothing answered
    latency_ms: float
    passed: bool
    reason: str | None = None

    def as_receipt(self) -> dict[str, Any]:
        return asdict(self)


def _subset_mismatch(expected: Any, actual: Any, where: str) -> str | None:
    """Where `actual` fails to contain `expected` (dicts: a subset; anything else: equal)."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"{where or 'body'} is not an object"
        for key, value in expected.items():
            if key not in actual:
                return f"missing field {where}{key}"
            problem = _subset_mismatch(value, actual[key], f"{where}{key}.")
            if problem:
                return problem
        return None
    if expected != actual:
        return f"{where.rstrip('.')} is {actual!r}, expected {expected!r}"
    return None


def judge(test: SmokeTest, status: int, content_type: str, body: bytes) -> str | None:
    """Why this answer fails the test, or None when it passes."""
    if status != test.expect_status:
        return f"status {status}, expected {test.expect_status}"
    if test.expect_content_type and not content_type.startswith(test.expect_content_type):
        return f"content type {content_type or 'none'!r}, expected {test.expect_content_type}"
    if test.expect_text is not None and test.expect_text not in body.decode("utf-8", "replace"):
        return f"body does not contain {test.expect_text!r}"
    if test.expect_json or test.expect_keys:
        try:
            document = json.loads(body)
        except ValueError:
            return "body is not JSON"
        problem = _subset_mismatch(test.expect_json, document, "")
        if problem:
            return problem
        missing = [
            key for key in test.expect_keys if not isinstance(document, dict) or key not in document
        ]
        if missing:
            return f"missing field {missing[0]}"
    return None


async def _one(session: Any, base_url: str, test: SmokeTest, timeout: float) -> SmokeResult:
    import aiohttp

    data = json.dumps(test.body).encode() if test.body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    started = time.perf_counter()
    try:
        async with session.request(
            test.method,
            base_url + test.path,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            latency = (time.perf_counter() - started) * 1000
            reason = judge(test, response.status, response.headers.get("Content-Type", ""), body)
            return SmokeResult(
                test.name,
                test.path,
                test.method,
                response.status,
                round(latency, 3),
                reason is None,
                reason,
            )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        latency = (time.perf_counter() - started) * 1000
        reason = (
            "timeout" if isinstance(exc, TimeoutError) else f"no answer: {exc.__class__.__name__}"
        )
        return SmokeResult(test.name, test.path, test.method, 0, round(latency, 3), False, reason)


async def _all(base_url: str, tests: Sequence[SmokeTest], timeout: float) -> list[SmokeResult]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_one(session, base_url, t, timeout) for t in tests)))


def run_smoke(
    base_url: str, tests: Sequence[SmokeTest], *, timeout: float = 5.0
) -> list[SmokeResult]:
    """Run every test concurrently; results in the order of `tests`."""
    return asyncio.run(_all(base_url.rstrip("/"), tests, timeout))
