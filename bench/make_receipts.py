"""Generate a realistic, sealed week-3 receipts file with the real ReceiptWriter.

    .venv/bin/python bench/make_receipts.py OUT.jsonl [--requests 1000000] [--seed 42]

The shape follows what `phase2.week3` writes: a `run` record, stage start/end records, a
`startup`, the five smoke `receipt`s, then the load: one `request` per request (target, endpoint,
method, status, latency_ms, service_ms, scheduled_s, sent_s, passed, error) at 1,000 req/s with a
`metrics` sample every 0.25 s, a `summary`, a `shutdown`, and the `seal`. The latencies are
lognormal (median ~18 ms), so the run passes the week3 gate of envs/local.toml.

`cached(N)` keeps one file per (generator version, N) under bench/out/, since writing a million
receipts takes a while; bump GENERATOR_VERSION whenever the shape changes.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.receipts import ReceiptWriter  # noqa: E402

GENERATOR_VERSION = 1
OUT_DIR = ROOT / "bench" / "out"
RATE = 1000.0  # req/s of the simulated load
SMOKE = [
    ("health_check", "GET", "/health", 200),
    ("marketplace_event", "POST", "/marketplace", 202),
    ("pubsub_webhook", "POST", "/pubsub", 202),
    ("metrics_endpoint", "GET", "/metrics", 200),
    ("ready_check", "GET", "/ready", 200),
]


def generate(path: Path, requests: int, seed: int = 42) -> Path:
    """Write `requests` request receipts plus the records around them to `path` (must not exist)."""
    rng = random.Random(seed)
    lognormal, uniform = rng.lognormvariate, rng.uniform
    writer = ReceiptWriter(path, run_id="20260126T142805Z-week3-bench0", phase="week3")
    with writer:
        write = writer.write
        write(
            "run",
            tool="taiea-pipeline 0.1.0",
            env="local",
            host="bench-host",
            release={
                "name": "tai_autonomics",
                "version": "1.0.0",
                "sha256": "5f" * 32,
                "erts": "13.1.5",
            },
        )
        write("stage", "start", event="start")
        write("startup", "start", seconds=round(uniform(0.8, 1.6), 3), ready_path="/ready")
        write("stage", "start", event="end", passed=True, seconds=1.42)
        write("stage", "smoke", event="start")
        for name, method, endpoint, status in SMOKE:
            write("receipt", "smoke", test=name, endpoint=endpoint, method=method,
                  status=status, latency_ms=round(uniform(2, 12), 3), passed=True)  # fmt: skip
        write("stage", "smoke", event="end", passed=True, seconds=0.21)
        write("stage", "load", event="start")
        next_sample = 0.0
        for n in range(requests):
            scheduled = n / RATE
            sent = scheduled + uniform(0.00002, 0.0004)
            service = lognormal(2.85, 0.45)  # ms; median ~17 ms
            target, method, endpoint, status = SMOKE[n % 5]
            write(
                "request",
                "load",
                target=target,
                endpoint=endpoint,
                method=method,
                status=status,
                latency_ms=round(service + (sent - scheduled) * 1000, 3),
                service_ms=round(service, 3),
                scheduled_s=round(scheduled, 6),
                sent_s=round(sent, 6),
                passed=True,
                error=None,
            )
            if scheduled >= next_sample:
                write("metrics", "monitor", rss_mb=round(uniform(92, 140), 2),
                      cpu_percent=round(uniform(5, 60), 1), band="green")  # fmt: skip
                next_sample += 0.25
        duration = requests / RATE
        write("summary", "load", scheduled=requests, sent=requests, completed=requests,
              passed=requests, dropped=0, achieved_rps=RATE, duration_s=duration)  # fmt: skip
        write("stage", "load", event="end", passed=True, seconds=round(duration, 3))
        write("shutdown", "stop", exit_status=0, seconds=0.35)
        writer.seal()
    return path


def cached(requests: int = 1_000_000, *, verbose: bool = True) -> Path:
    """The cached file for this generator version and size, generated once."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"week3-receipts-v{GENERATOR_VERSION}-{requests}.jsonl"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory(dir=OUT_DIR, prefix=".gen-") as tmp:
        if verbose:
            print(f"generating {requests:,} request receipts (cached as {path}) …", flush=True)
        start = time.perf_counter()
        partial = generate(Path(tmp) / "receipts.jsonl", requests)
        os.replace(partial, path)
        if verbose:
            size = path.stat().st_size
            print(f"  {size / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    generate(args.out, args.requests, args.seed)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
