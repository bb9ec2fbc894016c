"""Bench: what the remote runtime's SSH port forward costs — in one run, against two anchors.

    .venv/bin/python bench/bench_remote_forward.py [--rate 50] [--duration 5] [--connections 8]

One real sshd on 127.0.0.1 (tests/fixtures_sshd.py's setup), one reference release started on it
by the `remote` runtime. The same release is then loaded three ways, in the same run:

- direct: straight to the release's port (the "host" is this machine) — no SSH at all;
- openssh: through OpenSSH's own client forward, ``ssh -N -L`` (the anchor for "an SSH forward");
- remote: through the runtime's forward (paramiko direct-tcpip channels), i.e. ``instance.url``.

For each: the open loop at ``--rate`` req/s for ``--duration`` s over the five smoke endpoints
(p50, p95, failures) — the week-3 profile is 10–50 req/s — and a closed loop with
``--connections`` busy connections for ``--duration`` s (max req/s). Printed: each figure and the
ratio remote / openssh. Target: the open loop at 50 req/s with no failure and p95 < 250 ms (Gate
2's bound) through the forward. Exit 0 when met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_sshd import free_port, start_sshd  # noqa: E402

from pipeline import config, reference  # noqa: E402
from pipeline.phases.stages import load_targets  # noqa: E402
from pipeline.probes.load import run_closed_loop, run_open_loop  # noqa: E402
from pipeline.runtime.base import LaunchSpec  # noqa: E402
from pipeline.runtime.remote import RemoteRuntime  # noqa: E402
from pipeline.runtime.remote_instance import RemoteOptions  # noqa: E402
from pipeline.waiting import poll  # noqa: E402


def measure(url: str, targets: list, rate: float, duration: float, connections: int) -> dict:
    run_open_loop(url, targets, 10, 1.0)  # warm-up: connections and caches
    open_ = run_open_loop(url, targets, rate, duration)
    closed = run_closed_loop(url, targets, connections, duration)
    return {
        "p50_ms": open_.p50_ms,
        "p95_ms": open_.p95_ms,
        "failed": open_.scheduled - open_.passed,
        "max_rps": closed.achieved_rps,
        "closed_p50_ms": closed.p50_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    env = config.load_env("local")
    targets = load_targets(env.smoke)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    server = start_sshd(work / "sshd")
    instance = None
    ssh = None
    try:
        tarball = reference.build(work / "build")
        runtime = RemoteRuntime(
            server.host,
            identity=server.identity,
            known_hosts=server.known_hosts,
            options=RemoteOptions(dir=str(work / "host")),
            tarball=tarball,
        )
        tmp = work / "tmp"
        tmp.mkdir()
        spec = LaunchSpec(root=work, name=reference.NAME, env={"TMPDIR": str(tmp)}, port=0)
        instance = runtime.start(spec)
        startup = instance.wait_ready(30)
        direct_url = f"http://127.0.0.1:{instance.port}"
        local = free_port()
        ssh = subprocess.Popen(
            [shutil.which("ssh") or "ssh", "-N", "-i", str(server.identity), "-p", str(server.port)]
            + ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes"]
            + [
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{local}:127.0.0.1:{instance.port}",
            ]
            + [f"{server.user}@127.0.0.1"],
            stdin=subprocess.DEVNULL,
        )

        def forwarding() -> bool | None:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    return True
            except OSError:
                return None

        poll(forwarding, timeout=10, what="ssh -L to listen")
        rows = {
            "direct": measure(direct_url, targets, args.rate, args.duration, args.connections),
            "openssh": measure(
                f"http://127.0.0.1:{local}", targets, args.rate, args.duration, args.connections
            ),
            "remote": measure(instance.url, targets, args.rate, args.duration, args.connections),
        }
    finally:
        if ssh is not None:
            ssh.terminate()
            ssh.wait(10)
        if instance is not None:
            instance.stop(5)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"release ready over SSH in {startup:.2f} s (upload, extract and start before that)")
    print(
        f"open loop {args.rate:g} req/s for {args.duration:g} s; closed loop {args.connections} conns"
    )
    print(f"{'path':<8} {'p50 ms':>8} {'p95 ms':>8} {'failed':>7} {'max req/s':>10}")
    for name, row in rows.items():
        print(
            f"{name:<8} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['failed']:7d} "
            f"{row['max_rps']:10.0f}"
        )
    ours, anchor = rows["remote"], rows["openssh"]
    print(
        f"remote / openssh: p50 x{ours['p50_ms'] / anchor['p50_ms']:.2f}, "
        f"p95 x{ours['p95_ms'] / anchor['p95_ms']:.2f}, max req/s x{ours['max_rps'] / anchor['max_rps']:.2f}"
    )
    ok = ours["failed"] == 0 and ours["p95_ms"] < 250
    print("target (no failure, p95 < 250 ms through the forward):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
