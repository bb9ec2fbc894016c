"""Bench: the load probe (pipeline/probes/load.py) against wrk, on the same server, in one run.

    .venv/bin/python bench/bench_load_probe.py [--rounds 3] [--duration 5] [--open-duration 10]
                                               [--stand-in]

The server is the reference release (pipeline/reference.py: built, extracted with tarfile into a
temp dir, started as ``bin/tai_autonomics foreground`` with PORT and TMPDIR, ready when /ready
answers 200). Without pipeline.reference (or with --stand-in), a minimal gen_tcp HTTP server (an
escript written here) stands in, and the bench says so.

Closed loop: ``wrk -t2 -c16 -d5s --latency`` and the probe at 16 connections alternate for a few
rounds against GET /health; each round's ratios are computed from its own wrk and probe runs, and
the median round is judged. Targets: probe req/s >= 0.5 x wrk's, probe p50 <= 1.5 x wrk's.
The probe runs once more with an on_result callback that does what the receipt writer will
(json.dumps and a flushed write per request): reported, not judged.

Open loop: 1,000 req/s for 10 s, without and with that callback. Target: >= 99 % of the scheduled
requests sent within late_ms (10 ms) of their schedule; dropped requests are reported.

Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.probes.load import (  # noqa: E402
    LoadSummary,
    RequestResult,
    Target,
    run_closed_loop,
    run_open_loop,
)
from pipeline.runtime.process import free_port  # noqa: E402

CLOSED_RPS_RATIO = 0.5
CLOSED_P50_RATIO = 1.5
OPEN_ON_TIME = 0.99
CONNECTIONS = 16

HEALTH = Target("health_check", "GET", "/health")

# A stand-in gen_tcp HTTP/1.1 server (keep-alive, Content-Length), used only without the
# reference release. Argument: the port; prints "listening <port>".
ESCRIPT = r"""#!/usr/bin/env escript
%%! +sbwt none
-mode(compile).
main([PortStr]) ->
    {ok, L} = gen_tcp:listen(list_to_integer(PortStr),
        [binary, {packet, http_bin}, {active, false}, {reuseaddr, true},
         {ip, {127,0,0,1}}, {backlog, 1024}, {nodelay, true}]),
    {ok, P} = inet:port(L),
    io:format("listening ~p~n", [P]),
    accept(L).
accept(L) ->
    {ok, S} = gen_tcp:accept(L),
    Pid = spawn(fun() -> receive go -> ok end, conn(S) end),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! go,
    accept(L).
conn(S) ->
    case gen_tcp:recv(S, 0) of
        {ok, {http_request, M, {abs_path, Path}, _}} -> headers(S, M, Path, 0);
        _ -> gen_tcp:close(S)
    end.
headers(S, M, P, Len) ->
    case gen_tcp:recv(S, 0) of
        {ok, {http_header, _, 'Content-Length', _, V}} -> headers(S, M, P, binary_to_integer(V));
        {ok, {http_header, _, _, _, _}} -> headers(S, M, P, Len);
        {ok, http_eoh} ->
            B = case Len of
                    0 -> <<>>;
                    _ -> ok = inet:setopts(S, [{packet, raw}]),
                         {ok, Bin} = gen_tcp:recv(S, Len),
                         ok = inet:setopts(S, [{packet, http_bin}]),
                         Bin
                end,
            respond(S, M, P, B),
            conn(S);
        _ -> gen_tcp:close(S)
    end.
respond(S, _, <<"/health">>, _) -> send(S, 200, <<"{\"status\":\"ok\",\"uptime\":1}">>);
respond(S, _, <<"/ready">>, _) -> send(S, 200, <<"{\"ready\":true}">>);
respond(S, 'POST', _, B) -> send(S, 202, B);
respond(S, _, _, _) -> send(S, 404, <<"{\"error\":\"not_found\"}">>).
send(S, Code, Body) ->
    gen_tcp:send(S, [<<"HTTP/1.1 ">>, integer_to_binary(Code),
        <<" OK\r\ncontent-type: application/json\r\ncontent-length: ">>,
        integer_to_binary(byte_size(Body)), <<"\r\n\r\n">>, Body]).
"""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    def probe() -> None:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was ready")
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own 127.0.0.1
            if resp.status != 200:
                raise OSError(f"status {resp.status}")

    for attempt in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.05),
        retry=retry_if_exception_type(OSError),
        reraise=True,
    ):
        with attempt:
            probe()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def reference_server(tmp: Path) -> Iterator[tuple[str, str]]:
    from pipeline import reference

    t = time.perf_counter()
    tarball = reference.build(tmp / "build")
    root = tmp / "release"
    root.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="tar")
    if not (root / "bin" / reference.NAME).exists():
        (root,) = [p for p in root.iterdir() if p.is_dir()]  # the "wrapped" layout
    port = free_port()
    run_tmp = tmp / "run"
    run_tmp.mkdir()
    env = dict(os.environ, PORT=str(port), TMPDIR=str(run_tmp), HTTP_HOST="127.0.0.1")
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(root / "bin" / reference.NAME), "foreground"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/ready", proc)
        what = (
            f"reference release {tarball.name} (built and ready in {time.perf_counter() - t:.1f} s)"
        )
        yield url, what
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def escript_server(tmp: Path) -> Iterator[tuple[str, str]]:
    escript = shutil.which("escript")
    if escript is None:
        raise SystemExit("escript not found: apt-get install -y erlang-base")
    script = tmp / "server.escript"
    script.write_text(ESCRIPT)
    port = free_port()
    proc = subprocess.Popen(
        [escript, str(script), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/ready", proc)
        yield url, "stand-in gen_tcp escript server"
    finally:
        stop_process(proc)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, duration_s: float) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    out = subprocess.run(
        [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{duration_s:g}s", "--latency", url + "/health"],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: int) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert m is not None, out
        return float(m.group(1)) * _UNITS[m.group(2)]

    return WrkResult(rps, pct(50), pct(99))


class ReceiptLikeWriter:
    """What the receipt writer costs per request: json.dumps of the record, write, flush."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.n = 0

    def __call__(self, r: RequestResult) -> None:
        self.n += 1
        rec = r.as_receipt()
        rec["seq"] = self.n
        self.f.write(json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def callback_cost_us(path: Path) -> float:
    w = ReceiptLikeWriter(path)
    r = RequestResult("health_check", "/health", "GET", 200, 0.5, 0.5, 1.0, 1.0, True, None)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        w(r)
    w.close()
    return (time.perf_counter() - t) / n * 1e6


def with_writer(tmp: Path, name: str, fn: Callable[[Callable[[RequestResult], None]], LoadSummary]):
    w = ReceiptLikeWriter(tmp / name)
    try:
        return fn(w)
    finally:
        w.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--open-rate", type=float, default=1000.0)
    ap.add_argument("--open-duration", type=float, default=10.0)
    ap.add_argument(
        "--stand-in",
        action="store_true",
        help="use the stand-in gen_tcp escript server even when pipeline.reference exists",
    )
    args = ap.parse_args()

    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        loop_name = "uvloop" if os.environ.get("PIPELINE_LOAD_UVLOOP", "1") != "0" else "asyncio"
    except ImportError:
        loop_name = "asyncio (uvloop not installed)"

    misses: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            import pipeline.reference  # noqa: F401

            server = escript_server(tmp) if args.stand_in else reference_server(tmp)
        except ImportError:
            print("pipeline.reference is not there: benchmarking against a stand-in server")
            server = escript_server(tmp)
        with server as (url, what):
            print(f"server: {what} at {url}")
            print(
                f"probe event loop: {loop_name}; {os.cpu_count()} CPUs; "
                f"load average {os.getloadavg()[0]:.2f} (other work on this host skews all figures)"
            )
            print(
                f"receipt-like callback alone: {callback_cost_us(tmp / 'cost.jsonl'):.1f} us/call"
            )
            print()
            print(f"closed loop, {CONNECTIONS} connections, GET /health, {args.duration:g} s each")
            print(
                f"{'round':>5} {'wrk req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
                f"{'probe req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'rps x':>6} {'p50 x':>6}"
            )
            rounds: list[tuple[float, float]] = []
            for k in range(args.rounds):
                w = run_wrk(url, args.duration)
                p = run_closed_loop(url, [HEALTH], CONNECTIONS, args.duration)
                if p.passed != p.completed:
                    misses.append(f"closed loop round {k + 1}: {p.completed - p.passed} failed")
                rr, pr = p.achieved_rps / w.rps, p.p50_ms / w.p50_ms
                rounds.append((rr, pr))
                print(
                    f"{k + 1:>5} {w.rps:>10.0f} {w.p50_ms:>7.3f} {w.p99_ms:>7.3f} | "
                    f"{p.achieved_rps:>11.0f} {p.p50_ms:>7.3f} {p.p99_ms:>7.3f} | "
                    f"{rr:>6.2f} {pr:>6.2f}"
                )
            med_rr = statistics.median(r for r, _ in rounds)
            med_pr = statistics.median(p for _, p in rounds)
            pc = with_writer(
                tmp,
                "closed.jsonl",
                lambda cb: run_closed_loop(url, [HEALTH], CONNECTIONS, args.duration, on_result=cb),
            )
            w_last = run_wrk(url, args.duration)
            print(
                f"  with receipt-like callback: probe {pc.achieved_rps:.0f} req/s, "
                f"p50 {pc.p50_ms:.3f} ms, p99 {pc.p99_ms:.3f} ms; wrk right after "
                f"{w_last.rps:.0f} req/s, p50 {w_last.p50_ms:.3f} ms "
                f"(x{pc.achieved_rps / w_last.rps:.2f} req/s, x{pc.p50_ms / w_last.p50_ms:.2f} p50)"
            )
            if loop_name == "uvloop":
                os.environ["PIPELINE_LOAD_UVLOOP"] = "0"
                try:
                    ps = run_closed_loop(url, [HEALTH], CONNECTIONS, args.duration)
                finally:
                    del os.environ["PIPELINE_LOAD_UVLOOP"]
                w_std = run_wrk(url, args.duration)
                print(
                    f"  on the stdlib asyncio loop (no uvloop): probe {ps.achieved_rps:.0f} req/s, "
                    f"p50 {ps.p50_ms:.3f} ms, p99 {ps.p99_ms:.3f} ms; wrk right after "
                    f"{w_std.rps:.0f} req/s, p50 {w_std.p50_ms:.3f} ms "
                    f"(x{ps.achieved_rps / w_std.rps:.2f} req/s, "
                    f"x{ps.p50_ms / w_std.p50_ms:.2f} p50)"
                )
            ok_rps = med_rr >= CLOSED_RPS_RATIO
            ok_p50 = med_pr <= CLOSED_P50_RATIO
            print(
                f"  median round: req/s x{med_rr:.2f} (target >= {CLOSED_RPS_RATIO}) "
                f"{'ok' if ok_rps else 'MISSED'}; p50 x{med_pr:.2f} "
                f"(target <= {CLOSED_P50_RATIO}) {'ok' if ok_p50 else 'MISSED'}"
            )
            if not ok_rps:
                misses.append(f"closed loop req/s x{med_rr:.2f} < {CLOSED_RPS_RATIO}")
            if not ok_p50:
                misses.append(f"closed loop p50 x{med_pr:.2f} > {CLOSED_P50_RATIO}")

            print()
            print(f"open loop, {args.open_rate:g} req/s for {args.open_duration:g} s, GET /health")
            for label, summary in (
                ("no callback", run_open_loop(url, [HEALTH], args.open_rate, args.open_duration)),
                (
                    "receipt-like callback",
                    with_writer(
                        tmp,
                        "open.jsonl",
                        lambda cb: run_open_loop(
                            url, [HEALTH], args.open_rate, args.open_duration, on_result=cb
                        ),
                    ),
                ),
            ):
                on_time = (
                    (summary.sent - summary.late) / summary.scheduled if summary.scheduled else 0.0
                )
                good = on_time >= OPEN_ON_TIME and summary.passed == summary.completed
                print(
                    f"  {label:<22} scheduled {summary.scheduled}, sent {summary.sent}, "
                    f"late {summary.late}, dropped {summary.dropped}, on time {on_time:.2%} "
                    f"(target >= {OPEN_ON_TIME:.0%}) {'ok' if good else 'MISSED'}; "
                    f"{summary.achieved_rps:.0f} req/s, p50 {summary.p50_ms:.3f} ms, "
                    f"p99 {summary.p99_ms:.3f} ms, max {summary.max_ms:.1f} ms, "
                    f"{summary.connections} connections"
                )
                if not good:
                    misses.append(
                        f"open loop ({label}): on time {on_time:.2%}, "
                        f"{summary.completed - summary.passed} failed"
                    )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if misses:
        print("MISSED: " + "; ".join(misses))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
