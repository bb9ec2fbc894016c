"""Bench: GET /health on the reference TAIEA release, measured with wrk.

    .venv/bin/python bench/bench_reference_health.py [--duration 5] [--connections 16]

Builds the reference release (pipeline/reference.py: erlc + systools, ERTS included), extracts it
with tarfile into a temp dir, starts ``bin/tai_autonomics foreground`` natively with PORT and
TMPDIR (stdout receipts go to a file, as the pipeline does), waits until /ready answers 200, then
runs ``wrk -t2 -c16 -d5s --latency http://127.0.0.1:PORT/health`` (16 keep-alive connections).

Prints req/s, p50 and p99. Target: >= 2,000 req/s. Exit status 0 when met, 1 otherwise, 2 when
wrk or Erlang is missing.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import reference  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.runtime.process import free_port  # noqa: E402

TARGET_RPS = 2000.0
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class NotReady(Exception):
    pass


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, p50 and p99 (ms), and non-2xx/socket error counts from wrk --latency output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if not (rps and p50 and p99):
        raise ValueError(f"cannot parse wrk output:\n{out}")
    total = re.search(r"^\s+(\d+) requests in", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": to_ms(p50.group(1)),
        "p99_ms": to_ms(p99.group(1)),
        "requests": float(total.group(1)) if total else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(n) for n in re.findall(r"\d+", errors.group(0))))
        if errors
        else 0.0,
    }


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    def check() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the release exited with status {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/ready")
            if conn.getresponse().status != 200:
                raise NotReady
        except OSError as exc:
            raise NotReady from exc
        finally:
            conn.close()

    for attempt in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.05),
        retry=retry_if_exception_type(NotReady),
        reraise=True,
    ):
        with attempt:
            check()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="wrk duration in seconds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    args = parser.parse_args()

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        work = Path(tmp)
        try:
            tarball = reference.build(work / "build")
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with tarfile.open(tarball) as tar:
            tar.extractall(work / "release", filter="data")
        root = work / "release"
        (work / "tmp").mkdir()
        port = free_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work / "tmp"),
            "TMPDIR": str(work / "tmp"),
            "PORT": str(port),
        }
        with open(work / "stdout.log", "wb") as out, open(work / "stderr.log", "wb") as err:
            proc = subprocess.Popen(
                [str(root / "bin" / reference.NAME), "foreground"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        try:
            wait_ready(port, proc)
            run = subprocess.run(
                [
                    wrk,
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{args.duration}s",
                    "--latency",
                    f"http://127.0.0.1:{port}/health",
                ],
                capture_output=True,
                text=True,
                timeout=args.duration + 60,
                check=True,
            )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        figures = parse_wrk(run.stdout)
        receipts = sum(1 for _ in open(work / "stdout.log", "rb"))

    print(f"wrk -t2 -c{args.connections} -d{args.duration}s GET /health (reference release)")
    print(f"  req/s  {figures['rps']:,.0f}   (target >= {TARGET_RPS:,.0f})")
    print(f"  p50    {figures['p50_ms']:.3f} ms")
    print(f"  p99    {figures['p99_ms']:.3f} ms")
    print(f"  non-2xx {figures['non2xx']:.0f}, socket errors {figures['socket_errors']:.0f}")
    print(
        f"  {figures['requests']:,.0f} requests, {receipts:,} stdout receipts written;"
        f" release exit status {proc.returncode}"
    )
    ok = (
        figures["rps"] >= TARGET_RPS
        and figures["non2xx"] == 0
        and figures["socket_errors"] == 0
        and proc.returncode == 0
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
