"""Bench: the emulator's router — through the service URL vs straight to the instance, same run.

    .venv/bin/python bench/bench_emulator_routing.py [--rounds 5] [--duration 4] [--threads 2]
                                                     [--tarball T] [--split-cores]

The emulator runs as users run it (`python -m pipeline.emulator start --background`);
one service runs the reference release (pipeline/reference.py, built here unless --tarball) at
exactly one instance (min = max = 1), so both measurements hit the same instance. Each round
runs ``wrk -t2 -c16 -d<duration>s --latency GET /health`` straight at the instance (the anchor)
and through the service URL, alternating which goes first; each round's ratios come from its own
two runs and the median round is judged.

On a 2-core machine both runs are CPU-bound (wrk and the instance fill both cores), so the
throughput ratio is about (instance + wrk CPU per request) / (the same + the router's): the
per-request CPU of the router, of the instance and of wrk (getrusage of the waited-for child)
are printed for that reason, with their sums per path.

Targets: service req/s >= 0.7 x the instance's; service p50 <= the instance's p50 + 1 ms.
Also printed (not judged): CPU time per request of the emulator process and of the instance, and
the floor: the same wrk run through bench/floor_relay.c (built here with gcc), a C epoll relay
that writes every read to the other side and does nothing else — no parsing, routing or
accounting — so no router can do better than its ratio on the same machine.

--split-cores puts wrk and the instance on CPU 0 and the emulator and the floor relay on CPU 1,
so the relay no longer takes CPU from wrk and the instance (Cloud Run's front end never shares
an instance's CPU). That is not the bar's setup; its verdict line says so.

Exit status: 0 when every target is met, 1 otherwise (2: the setup failed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
    proxy_us: float  # CPU per request of the process in the middle (emulator or floor relay)
    instance_us: float  # instance CPU per request
    client_us: float  # wrk's CPU per request

    def spent_us(self, proxied: bool) -> float:
        """CPU per request of every process involved: wrk, the instance and the one between."""
        return self.client_us + self.instance_us + (self.proxy_us if proxied else 0.0)


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
    url: str, duration: float, proxy: psutil.Process, instance: psutil.Process, threads: int = 2
) -> Run:
    e0, i0, w0 = proxy.cpu_times(), cpu_s(instance), _children_cpu_s()
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
    e1, i1, w1 = proxy.cpu_times(), cpu_s(instance), _children_cpu_s()
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
    proxy_s = (e1.user + e1.system) - (e0.user + e0.system)
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),  # type: ignore[union-attr]
        requests=requests,
        errors=errors,
        proxy_us=proxy_s / max(requests, 1) * 1e6,
        instance_us=(i1 - i0) / max(requests, 1) * 1e6,
        client_us=(w1 - w0) / max(requests, 1) * 1e6,
    )


def _children_cpu_s() -> float:
    """CPU of this process's waited-for children: around one wrk run, exactly wrk's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def floor_relay(tmp: Path, instance_url: str) -> Iterator[tuple[str, psutil.Process] | None]:
    """The floor relay in front of the instance, or None when there is no C compiler."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        yield None
        return
    exe = tmp / "floor_relay"
    source = Path(__file__).with_name("floor_relay.c")
    subprocess.run([cc, "-O2", "-o", str(exe), str(source)], check=True)
    port = instance_url.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [str(exe), port, "0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        listen = proc.stdout.readline().strip()
        if not listen.isdigit():
            raise SystemExit(f"the floor relay did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{listen}", psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def pin(proc: psutil.Process, cpus: set[int]) -> None:
    """Every thread of `proc` and of its children onto `cpus` (children started later inherit)."""
    for p in [proc, *proc.children(recursive=True)]:
        for thread in p.threads():
            os.sched_setaffinity(thread.id, cpus)


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own 127.0.0.1
        return json.loads(resp.read())


@contextlib.contextmanager
def emulator(state: Path) -> Iterator[tuple[str, int]]:
    """The emulator started in the background as users start it: its URL and pid."""
    command = [sys.executable, "-m", "pipeline.emulator"]
    where = ["--state-dir", str(state)]
    started = subprocess.run(
        [*command, "start", "--background", "--port", "0", *where],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    try:
        if started.returncode != 0:
            raise SystemExit(f"the emulator did not start: {started.stderr.strip()}")
        status = json.loads(
            subprocess.run(
                [*command, "status", "--json", *where],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        yield status["url"], int(status["pid"])
    finally:
        subprocess.run([*command, "stop", *where], cwd=REPO, capture_output=True)


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
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="wrk and the instance on CPU 0, the emulator and the floor relay on CPU 1: the relay "
        "no longer shares CPU with them (as Cloud Run's front end does not); not the bar's setup",
    )
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
        with contextlib.ExitStack() as stack:
            url, emulator_pid = stack.enter_context(emulator(tmp / "state"))
            service_url, instance_url, pid = deploy(url, tarball.resolve())
            emu, inst = psutil.Process(emulator_pid), psutil.Process(pid)
            if args.split_cores:
                pin(emu, {1})
                pin(inst, {0})
                pin(psutil.Process(), {0})  # wrk inherits it
            floor = stack.enter_context(floor_relay(tmp, instance_url))
            if args.split_cores and floor is not None:
                pin(floor[1], {1})
                print("cores split: wrk and the instance on CPU 0, the relays on CPU 1")
            print(
                f"emulator {url} (pid {emulator_pid}); service {service_url} → instance {instance_url}"
            )
            print(
                f"wrk -t2 -c{CONNECTIONS} -d{args.duration:g}s --latency GET /health, {args.rounds} rounds"
            )
            wrk(instance_url, 1.0, emu, inst, args.threads)  # warm-up
            wrk(service_url, 1.0, emu, inst, args.threads)
            rounds = []
            floors: list[float] = []
            floor_us: list[float] = []
            budgets: list[dict[str, float]] = []  # per round: CPU per request of each path
            busy: list[float] = []  # per round: cores kept busy by wrk, instance and relay
            for n in range(args.rounds):
                order = [("instance", instance_url, emu), ("service", service_url, emu)]
                if floor is not None:
                    order.append(("floor", floor[0], floor[1]))
                order = order[n % len(order) :] + order[: n % len(order)]
                runs = {
                    name: wrk(u, args.duration, proxy, inst, args.threads)
                    for name, u, proxy in order
                }
                d, s = runs["instance"], runs["service"]
                ratio, added = s.rps / d.rps, s.p50_ms - d.p50_ms
                rounds.append((ratio, added, d, s))
                floor_note = ""
                if "floor" in runs:
                    f = runs["floor"]
                    floors.append(f.rps / d.rps)
                    floor_us.append(f.proxy_us)
                    floor_note = (
                        f" | floor {f.rps / d.rps:.2f} ({f.proxy_us:.1f} us/req,"
                        f" instance {f.instance_us:.1f} us)"
                    )
                budgets.append(
                    {name: run.spent_us(name != "instance") for name, run in runs.items()}
                )
                busy.append(
                    statistics.mean(run.spent_us(True) * run.rps / 1e6 for run in runs.values())
                )
                print(
                    f"round {n + 1}: instance {d.rps:8.0f} req/s p50 {d.p50_ms:6.3f} ms | "
                    f"service {s.rps:8.0f} req/s p50 {s.p50_ms:6.3f} ms p99 {s.p99_ms:6.2f} ms | "
                    f"ratio {ratio:.2f}, +{added:.3f} ms p50 | CPU/req: router {s.proxy_us:.1f} us, "
                    f"instance {s.instance_us:.1f} us (direct {d.instance_us:.1f} us), "
                    f"wrk {s.client_us:.1f} us (direct {d.client_us:.1f} us) | "
                    f"errors {d.errors}/{s.errors}{floor_note}"
                )
    setup = " (cores split: not the bar's setup)" if args.split_cores else ""
    rounds.sort(key=lambda r: r[0])
    ratio, added, d, s = rounds[len(rounds) // 2]
    added_median = statistics.median(r[1] for r in rounds)
    errors = sum(r[2].errors + r[3].errors for r in rounds)
    rps_ok = ratio >= RPS_RATIO
    p50_ok = added_median <= ADDED_P50_MS
    print(
        f"median round{setup}: service/instance throughput {ratio:.2f} (target >= {RPS_RATIO}) "
        f"{'PASS' if rps_ok else 'FAIL'}; added p50 {added_median:.3f} ms (target <= "
        f"{ADDED_P50_MS:g} ms) {'PASS' if p50_ok else 'FAIL'}; non-2xx/socket errors {errors}"
    )
    if floors:
        print(
            f"floor (C read→write relay, no HTTP work): median {statistics.median(floors):.2f} "
            f"of the instance's throughput at {statistics.median(floor_us):.1f} us CPU/req; "
            f"the router reaches {ratio / statistics.median(floors):.0%} of the floor"
        )
    else:
        print("floor: not measured (no C compiler)")
    spent = {
        name: statistics.median(b[name] for b in budgets if name in b)
        for name in ("instance", "service", "floor")
        if any(name in b for b in budgets)
    }
    through = ", ".join(
        f"through the {name} {us:.1f} us (predicts {spent['instance'] / us:.2f})"
        for name, us in spent.items()
        if name != "instance"
    )
    print(
        f"CPU per request of wrk + instance (+ relay), median: straight {spent['instance']:.1f} us, "
        f"{through}; wrk, the instance and the relay kept {statistics.median(busy):.2f} of "
        f"{psutil.cpu_count()} cores busy"
    )
    print(
        f"load on this machine during the run: {psutil.getloadavg()[0]:.1f} "
        f"({psutil.cpu_count()} CPUs)"
    )
    return 0 if rps_ok and p50_ok and errors == 0 else 1


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
