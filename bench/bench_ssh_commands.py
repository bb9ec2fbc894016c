"""Bench: what a short remote command costs on one SSH connection — the persistent shell the
SSH layer keeps (pipeline/ssh/connection.py) against a channel per command, in one run.

    .venv/bin/python bench/bench_ssh_commands.py [--commands 200]

One real sshd on 127.0.0.1 (tests/fixtures_sshd.py's setup). The same short command (`cat` of a
cgroup-sized file, what the remote monitor runs every sample) is run `--commands` times:

- shell: `Connection.run(script)` — on the connection's one long-lived shell;
- channel: `Connection.run(script, stdin=b"")` — a session of its own per command (what
  fabric's `Connection.run` does, without invoke's runner threads);
- fabric: fabric's own `Connection.run(script, hide=True)` on the same connection;
- openssh: the anchor, OpenSSH's client multiplexing over one master connection
  (`ssh -o ControlPath=… host CMD`), a session per command as well.

Printed: ms per command for each, and the ratios channel / shell and fabric / shell. The
persistent shell is kept while it saves at least a third (ratio ≥ 1.5); exit 0 then, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_sshd import start_sshd  # noqa: E402

from pipeline.runtime.remote import RemoteRuntime  # noqa: E402
from pipeline.runtime.remote_instance import RemoteOptions  # noqa: E402


def timed(label: str, n: int, call) -> float:
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        call()
    ms = (time.perf_counter() - start) * 1000 / n
    print(f"  {label:<8} {ms:7.2f} ms per command")
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args()
    n = args.commands

    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    server = start_sshd(work / "sshd")
    master = None
    try:
        probe = work / "memory.usage_in_bytes"
        probe.write_text("123456789\n")
        script = f"cat {probe}"
        runtime = RemoteRuntime(
            server.host,
            identity=server.identity,
            known_hosts=server.known_hosts,
            options=RemoteOptions(dir=str(work / "host")),
        )
        conn = runtime.connect()
        control = work / "ctl"
        ssh = [
            "ssh",
            "-i",
            str(server.identity),
            "-p",
            str(server.port),
            "-o",
            f"UserKnownHostsFile={server.known_hosts}",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ControlPath={control}",
            f"{server.user}@127.0.0.1",
        ]
        master = subprocess.Popen([*ssh[:-1], "-o", "ControlMaster=yes", "-N", ssh[-1]])
        subprocess.run([*ssh, "true"], check=True, timeout=30)  # waits for the master

        print(f"{n} × `{script}` over one connection to a local sshd:")
        shell = timed("shell", n, lambda: conn.run(script))
        channel = timed("channel", n, lambda: conn.run(script, stdin=b""))
        fabric = timed("fabric", n, lambda: conn.fabric.run(script, hide=True))
        openssh = timed(
            "openssh",
            n,
            lambda: subprocess.run([*ssh, script], check=True, capture_output=True, timeout=30),
        )
        conn.close()
        print(
            f"channel / shell {channel / shell:.2f}×, fabric / shell {fabric / shell:.2f}×, "
            f"openssh / shell {openssh / shell:.2f}× (anchor: OpenSSH multiplexed sessions)"
        )
        return 0 if channel / shell >= 1.5 else 1
    finally:
        if master is not None:
            master.terminate()
            master.wait(timeout=10)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
