"""Week 2 over SSH: `invoke phase2.week2 --host …` runs the sandbox on the host (tests/fixtures_sshd.py).

The "host" is this machine, reached only through sshd: the probe sandbox, the release's sandbox,
every `runsc exec`/`ps`/`state`/`events` and cgroup reading, and the native comparison run all
happen over SSH; the probes reach both releases through the forwarded port. Afterwards nothing
of the run is left on the host: no runsc container, no taiea cgroup, no run dir.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures_gvisor import leftovers

from pipeline import receipts
from pipeline.phases.week2 import STAGES
from pipeline.runtime.remote_gvisor import parse_cgroup

pytestmark = pytest.mark.usefixtures("gvisor_clean")

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")
COOKIE = "cookie-that-must-never-leave-the-host-env"


@pytest.fixture(autouse=True)
def _no_agent(monkeypatch):
    """Only the key the test names: an ssh-agent of whoever runs the suite must not help."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def sandbox_env(path: Path, remote_dir: Path, **sandbox: Any) -> Path:
    """envs/ccw-sandbox.toml run in `remote_dir` on the host, short SSH timeouts, a secret.
    The overhead budget is wide: a shared machine and a 2.5 s window are noise, not the test."""
    values = {"network_overhead_ms": 250, **sandbox}
    lines = [
        f'extends = "{REPO / "envs" / "ccw-sandbox.toml"}"',
        "[remote]",
        f"dir = {json.dumps(str(remote_dir))}",
        "connect_timeout_s = 5",
        "command_timeout_s = 15",
        "[sandbox]",
        *(f"{key} = {json.dumps(value)}" for key, value in values.items()),
        "[start.env]",
        f"ERLANG_COOKIE = {json.dumps(COOKIE)}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def week2_over_ssh(
    sshd, tarball: Path, env: Path, out: Path, duration: str = "2.5"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, "phase2.week2", "--tarball", str(tarball), "--env", str(env)]
        + ["--rate", "20", "--duration", duration, "--receipts", str(out)]
        + ["--host", sshd.host, "--identity", str(sshd.identity)]
        + ["--known-hosts", str(sshd.known_hosts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=150,
    )


def of_kind(found: list[dict[str, Any]], kind: str, stage: str | None = None) -> list[dict]:
    return [r for r in found if r["kind"] == kind and (stage is None or r["stage"] == stage)]


def test_week2_over_ssh_passes_gate1_and_leaves_the_host_clean(sshd, reference_tarball, tmp_path):
    remote_dir = tmp_path / "host"
    env = sandbox_env(tmp_path / "remote-sandbox.toml", remote_dir)
    out = tmp_path / "week2.jsonl"
    done = week2_over_ssh(sshd, reference_tarball(), env, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gate week2: PASS" in done.stdout + done.stderr
    verification = receipts.verify(out)
    assert verification.ok and verification.sealed
    found = list(receipts.iter_records(out))
    assert found[0]["runtime"] == "remote"
    ends = [r for r in of_kind(found, "stage") if r["event"] == "end"]
    assert [r["stage"] for r in ends] == list(STAGES[:-1])
    assert all(r["passed"] for r in ends), [r for r in ends if not r["passed"]]

    # 1: the probe sandbox ran on the host; its limits read back from the host's cgroup
    (environment,) = of_kind(found, "environment")
    assert environment["version"].startswith("0.0~20221219")
    assert environment["host_kernel"] == platform.release()  # the host is this machine
    applied = environment["applied"]
    assert applied["memory_limit_mb"] == 512 and applied["sentry_total_memory_mb"] == 512
    assert (applied["cpu_quota_us"], applied["cpu_period_us"]) == (100_000, 100_000)
    assert applied["sandbox_in_cgroup"] is True and environment["probe_removed"] is True
    assert applied["inside_kernel_release"] == "4.4.0" and applied["inside_uid"] == 65534

    # 5: the release's sandbox on the host, reached through the forwarded port
    (startup,) = of_kind(found, "startup")
    assert startup["runtime"] == "remote" and startup["where"]["runtime"] == "gvisor"
    assert startup["where"]["host"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    (sandbox,) = of_kind(found, "sandbox")
    assert sandbox["id"].startswith("taiea-") and sandbox["sandbox_pid"] > 0
    assert sandbox["bundle"].startswith(str(remote_dir / "runs"))
    (mount,) = of_kind(found, "mount")  # the tree extracted on the host, not the local check's
    assert mount["stage"] == "start" and mount["host"] == startup["where"]["host"]
    assert mount["source"] == startup["where"]["root"]
    assert mount["source"].startswith(str(remote_dir / "runs"))

    # 7 and 10: the release's own receipts, counted live (early) and to the end (after stop)
    early, final = of_kind(found, "capture")
    assert early["stage"] == "capture" and early["kinds"]["startup"] == 1
    assert early["kinds"]["request"] >= 5
    assert final["kinds"]["shutdown"] == 1 and final["count"] >= 8 + 50

    # 8: memory from the host's cgroup, CPU from runsc events, sampled over SSH
    (resources,) = of_kind(found, "resources")
    assert resources["memory_limit_mb"] == 512 and resources["memory_failcnt"] == 0
    assert 20 < resources["memory_peak_mb"] < 300
    samples = of_kind(found, "metrics")
    assert len(samples) >= 8 and all(20 < s["rss_mb"] < 300 for s in samples)
    assert any(s["cpu_percent"] > 0 for s in samples)

    # 9: every constraint proven from inside the sandbox on the host
    constraints = {r["name"]: r for r in of_kind(found, "constraint")}
    assert len(constraints) == 7
    assert all(r["passed"] for r in constraints.values())
    assert constraints["memory_cap"]["inside_mb"] == 512 and constraints["memory_cap"]["in_cgroup"]
    opt = constraints["opt_read_only"]
    assert "Read-only file system" in opt["sandbox_root"]["output"]
    assert constraints["tmp_writable"]["status"] == 0
    assert constraints["tmp_writable"]["tmpfs_kb"] == 65536
    assert constraints["non_root"]["id_u"] == 65534
    assert constraints["non_root"]["process_uids"] == [65534]
    assert constraints["cpu_quota"]["cpus"] == 1.0 and constraints["cpu_quota"]["in_cgroup"]
    assert constraints["syscall_surface"]["kernel_inside"] == "4.4.0"
    assert "gVisor" in constraints["syscall_surface"]["dmesg"]
    # the native comparison ran on the same host, as a process, through the same SSH forward
    (native,) = of_kind(found, "summary", "constraints")
    assert native["runtime"] == "process" and native["completed"] == 50
    assert native["where"]["host"] == startup["where"]["host"]
    assert native["where"]["runtime"] == "process"
    assert native["where"]["upload"]["skipped"] is True  # the same tarball, already there
    overhead = constraints["network_overhead"]
    assert overhead["native"]["completed"] == overhead["sandboxed"]["completed"] == 50

    # 10: stopped cleanly; nothing left on the host, no secret in the receipts
    (shutdown,) = of_kind(found, "shutdown")
    assert shutdown["exit_status"] == 0 and shutdown["clean"] and shutdown["removed"]
    assert shutdown["release_shutdown"]["reason"] == "sigterm"
    ids = [environment["probe"], sandbox["id"]]
    assert leftovers(ids) == []
    assert list((remote_dir / "runs").iterdir()) == []
    assert not Path(sandbox["bundle"]).exists()
    assert COOKIE not in out.read_text()


def test_leak_over_ssh_is_oom_killed_on_the_host_and_gate1_fails_on_memory(
    sshd, reference_tarball, tmp_path
):
    """The leak (~20 MB/s) outgrows the 512 MiB limit in ~25 s: the host's kernel kills the
    sandbox, and the cgroup's evidence (failcnt, oom_kill, exit 137) is read over SSH before
    the sandbox and its cgroup are removed from the host. (The production limit, as in
    test_week2's local leak test: with a much smaller one, gVisor's own memory accounting can
    fail the release before the kernel's OOM killer acts, which is not what this proves.)"""
    remote_dir = tmp_path / "host"
    env = sandbox_env(tmp_path / "leak.toml", remote_dir)
    out = tmp_path / "week2.jsonl"
    done = week2_over_ssh(sshd, reference_tarball("leak"), env, out, duration="60")
    assert done.returncode == 99, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    found = list(receipts.iter_records(out))
    (resources,) = of_kind(found, "resources")
    (shutdown,) = of_kind(found, "shutdown")
    assert shutdown["removed"] and shutdown["leftovers"] == []
    if of_kind(found, "oom"):  # the usual end: the host's kernel kills the sandbox
        assert "memory.oom_kills count == 0" in last and "OOM killed" in last and "137" in last
        (oom,) = of_kind(found, "oom")
        assert oom["exit_status"] == 137 and oom["failcnt"] > 0 and oom["oom_kills"] >= 1
        assert oom["limit_mb"] == 512 and oom["max_usage_mb"] >= 500
        (memory_cap,) = [r for r in of_kind(found, "constraint") if r["name"] == "memory_cap"]
        assert memory_cap["passed"] and memory_cap["oom_kill"] and memory_cap["exit_status"] == 137
        assert shutdown["exit_status"] == 137
    else:  # seen once in five: the kernel held the sandbox at its limit (reclaim), no kill yet
        assert "memory.mb max < 300" in last
        assert resources["memory_failcnt"] > 0 and resources["memory_peak_mb"] >= 500
    (environment,), (sandbox,) = of_kind(found, "environment"), of_kind(found, "sandbox")
    assert leftovers([environment["probe"], sandbox["id"]]) == []
    assert list((remote_dir / "runs").iterdir()) == []


def test_week2_over_ssh_without_runsc_on_the_host_fails_clearly(sshd, reference_tarball, tmp_path):
    """The host lacks runsc: the environment stage says so with the install command, the
    start fails the same way, Gate 1 fails (exit 99), and nothing is left on the host."""
    remote_dir = tmp_path / "host"
    env = sandbox_env(tmp_path / "no-runsc.toml", remote_dir, runsc="/nonexistent/runsc")
    out = tmp_path / "week2.jsonl"
    done = week2_over_ssh(sshd, reference_tarball(), env, out)
    assert done.returncode == 99, done.stdout[-3000:] + done.stderr[-3000:]
    found = list(receipts.iter_records(out))
    errors = {e["stage"]: e["reason"] for e in of_kind(found, "error")}
    assert "apt-get install -y runsc" in errors["environment"], errors
    assert "/nonexistent/runsc" in errors["start"] and "apt-get install" in errors["start"]
    gate = of_kind(found, "gate")[0]
    assert not gate["passed"]
    assert {r["metric"] for r in gate["results"] if not r["passed"]} >= {"stages.failed"}
    runs = remote_dir / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "\n@@ /sys/fs/cgroup/memory/taiea-x/memory.limit_in_bytes\n536870912\n"
            "\n@@ /sys/fs/cgroup/memory/taiea-x/memory.oom_control\n"
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
            "\n@@ /sys/fs/cgroup/cpu/taiea-x/cgroup.procs\n41\n42\n",
            {"memory_limit_bytes": 536870912, "oom_kills": 2, "cpu_procs": (41, 42)},
        ),
        (
            "\n@@ /sys/fs/cgroup/memory/taiea-x/memory.failcnt\n"
            "\n@@ /sys/fs/cgroup/cpu/taiea-x/cpu.stat\nnr_periods 9\nnr_throttled 3\n",
            {"memory_failcnt": None, "cpu_throttled": 3, "memory_procs": ()},
        ),
        ("", {"memory_limit_bytes": None, "oom_kills": None, "cpu_procs": ()}),
    ],
    ids=["values-and-keyed", "missing-file-is-none", "nothing-read"],
)
def test_cgroup_files_read_over_ssh_are_parsed_like_local_ones(text, expected):
    reading = parse_cgroup(text)
    assert {key: getattr(reading, key) for key in expected} == expected
