"""Bench: the emulator's router — through the service URL vs straight to the instance, same run.

    .venv/bin/python bench/bench_emulator_routing.py [--rounds 5] [--duration 4] [--threads 2]
                                                     [--tarball T]

The emulator runs as users run it (`python -m pipeline.emulator serve`, a process of its own);
one service runs the reference release (pipeline/reference.py, built here unless --tarball) at
exactly one instance (min = max = 1), so both measurements hit the same instance. Each round
runs ``wrk -t2 -c16 -d<duration>s --latency GET /health`` straight at the instance (the anchor)
and through the service URL, alternating which goes first; each round's ratios come from its own
two runs and the median round is judged.

On a 2-core machine both runs are CPU-bound (wrk and the instance fill both cores), so the
throughput ratio is about (instance + wrk CPU per request) / (the same + the router's): the
per-request CPU of the router and of the instance are printed for that reason.

Targets: service req/s >= 0.7 x the instance's; service p50 <= the instance's p50 + 1 ms.
Also printed (not judged): CPU time per request of the emulator process and of the instance.

Exit status: 0 when every target is met, 1 otherwise (2: the setup failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.waiting import poll  # noqa: E402

RPS_RATIO = 0.7
ADDED_P50_MS = 1.0
CONNECTIONS = 16
PARENT = "projects/bench/locations/us-central1"


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    emulator_us: float  # emulator CPU per request
    instance_us: float  # instance CPU per request


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    total = times.user + times.system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            total += t.user + t.system
    return total


def wrk(
    url: str, duration: float, emulator: psutil.Process, instance: psutil.Process, threads: int = 2
) -> Run:
    e0, i0 = emulator.cpu_times(), cpu_s(instance)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{CONNECTIONS}",
            f"-d{duration:g}s",
            "--latency",
            url + "/health",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    e1, i1 = emulator.cpu_times(), cpu_s(instance)
    text = out.stdout
    if out.returncode != 0 or "Requests/sec" not in text:
        raise SystemExit(f"wrk failed: {out.stderr.strip() or text}")
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        errors += sum(int(g) for g in m.groups())
    emulator_s = (e1.user + e1.system) - (e0.user + e0.system)
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),  # type: ignore[union-attr]
        requests=requests,
        errors=errors,
        emulator_us=emulator_s / max(requests, 1) * 1e6,
        instance_us=(i1 - i0) / max(requests, 1) * 1e6,
    )


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own 127.0.0.1
        return json.loads(resp.read())


@contextlib.contextmanager
def emulator(state: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    from pipeline.emulator import daemon

    log = open(state.parent / "emulator.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        daemon.serve_command("cloudrun-local", 0, state),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def up() -> str | None:
            if proc.poll() is not None:
                raise SystemExit(f"the emulator exited with {proc.returncode}")
            reg = daemon.read_registry(state)
            ok = reg is not None and reg.get("pid") == proc.pid and daemon.probe(reg["url"])
            return str(reg["url"]) if ok and reg is not None else None

        yield poll(up, timeout=60, what="the emulator"), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def deploy(url: str, tarball: Path) -> tuple[str, str, int]:
    """The service URL, the instance URL and the instance pid."""
    from google.api_core.future import polling
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    client = run_v2.ServicesClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )
    service = run_v2.Service(
        template=run_v2.RevisionTemplate(
            containers=[run_v2.Container(image=f"file://{tarball}")],
            scaling=run_v2.RevisionScaling(min_instance_count=1, max_instance_count=1),
        )
    )
    svc = client.create_service(parent=PARENT, service_id="bench", service=service).result(
        timeout=120, polling=polling.DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.2)
    )

    def one_ready() -> dict[str, Any] | None:
        metrics = fetch(f"{url}/emulator/v1/{svc.name}/metrics")
        ready = [
            i for r in metrics["revisions"] for i in r["instance_list"] if i["state"] == "ready"
        ]
        return ready[0] if len(ready) == 1 else None

    instance = poll(one_ready, timeout=60, what="one ready instance")
    return svc.uri, instance["url"], int(instance["pid"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--tarball", type=Path, default=None, help="a release tarball to serve")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (-t)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp_name:
        tmp = Path(tmp_name)
        tarball = args.tarball
        if tarball is None:
            from pipeline import reference

            tarball = reference.build(tmp / "build")
        with emulator(tmp / "state") as (url, proc):
            service_url, instance_url, pid = deploy(url, tarball.resolve())
            emu, inst = psutil.Process(proc.pid), psutil.Process(pid)
            print(
                f"emulator {url} (pid {proc.pid}); service {service_url} → instance {instance_url}"
            )
            print(
                f"wrk -t2 -c{CONNECTIONS} -d{args.duration:g}s --latency GET /health, {args.rounds} rounds"
            )
            wrk(instance_url, 1.0, emu, inst, args.threads)  # warm-up
            wrk(service_url, 1.0, emu, inst, args.threads)
            rounds = []
            for n in range(args.rounds):
                order = [("instance", instance_url), ("service", service_url)]
                if n % 2:
                    order.reverse()
                runs = {name: wrk(u, args.duration, emu, inst, args.threads) for name, u in order}
                d, s = runs["instance"], runs["service"]
                ratio, added = s.rps / d.rps, s.p50_ms - d.p50_ms
                rounds.append((ratio, added, d, s))
                print(
                    f"round {n + 1}: instance {d.rps:8.0f} req/s p50 {d.p50_ms:6.3f} ms | "
                    f"service {s.rps:8.0f} req/s p50 {s.p50_ms:6.3f} ms p99 {s.p99_ms:6.2f} ms | "
                    f"ratio {ratio:.2f}, +{added:.3f} ms p50 | CPU/req: router {s.emulator_us:.1f} us, "
                    f"instance {s.instance_us:.1f} us (direct {d.instance_us:.1f} us) | "
                    f"errors {d.errors}/{s.errors}"
                )
    rounds.sort(key=lambda r: r[0])
    ratio, added, d, s = rounds[len(rounds) // 2]
    added_median = statistics.median(r[1] for r in rounds)
    errors = sum(r[2].errors + r[3].errors for r in rounds)
    rps_ok = ratio >= RPS_RATIO
    p50_ok = added_median <= ADDED_P50_MS
    print(
        f"median round: service/instance throughput {ratio:.2f} (target >= {RPS_RATIO}) "
        f"{'PASS' if rps_ok else 'FAIL'}; added p50 {added_median:.3f} ms (target <= "
        f"{ADDED_P50_MS:g} ms) {'PASS' if p50_ok else 'FAIL'}; non-2xx/socket errors {errors}"
    )
    print(
        f"load on this machine during the run: {psutil.getloadavg()[0]:.1f} "
        f"({psutil.cpu_count()} CPUs; wrk, the instance and the router share them)"
    )
    return 0 if rps_ok and p50_ok and errors == 0 else 1


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
