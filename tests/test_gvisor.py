"""The gvisor runtime against the reference release in real runsc sandboxes (cgroup v1 here)."""

from __future__ import annotations

import http.client
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fixtures_gvisor import leftovers, runsc_ids, write_env
from fixtures_release import extract_release

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.runtime import runtime_for
from pipeline.runtime.base import LaunchSpec, StartupFailed
from pipeline.runtime.gvisor import (
    GvisorInstance,
    GvisorRuntime,
    Limits,
    container_id,
    log_message,
    oci_config,
    probe_output,
)
from pipeline.waiting import poll

pytestmark = pytest.mark.usefixtures("gvisor_clean")
MIB = 1 << 20


def get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def release_root(reference_tarball, tmp_path_factory) -> Path:
    root = extract_release(reference_tarball(), tmp_path_factory.mktemp("gvisor-release"))
    root.chmod(0o755)  # pytest's dirs are 0700: the sandbox's uid 65534 must enter the mount
    return root


def launch(runtime: GvisorRuntime, root: Path, **env: str) -> GvisorInstance:
    spec = LaunchSpec(root=root, name="tai_autonomics", env=dict(env), port=0, run_id="test")
    return runtime.start(spec)


# ---------------------------------------------------------------- pure parts


def test_oci_config_holds_the_ccw_limits():
    limits = Limits.of(config.load_env("ccw-sandbox").sandbox)
    cfg = oci_config(
        limits, "taiea-x", ["/opt/taiea/bin/tai", "foreground"], {"A": "1"}, Path("/r")
    )
    assert cfg["root"] == {"path": "/", "readonly": True}
    assert cfg["process"]["user"] == {"uid": 65534, "gid": 65534}
    assert cfg["process"]["env"] == ["A=1"] and cfg["process"]["cwd"] == "/tmp"
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert mounts["/opt/taiea"]["source"] == "/r" and "ro" in mounts["/opt/taiea"]["options"]
    assert mounts["/tmp"]["type"] == "tmpfs" and "size=64m" in mounts["/tmp"]["options"]
    resources = cfg["linux"]["resources"]
    assert resources["memory"]["limit"] == 512 * MIB
    assert resources["cpu"] == {"quota": 100_000, "period": 100_000}
    assert cfg["linux"]["cgroupsPath"] == "/taiea-x"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"msg":"running container: boom","level":"error"}', "running container: boom"),
        ("W1128 plain text line", "W1128 plain text line"),
        ('{"level":"error"}', '{"level":"error"}'),
    ],
    ids=["json-line", "text-line", "json-without-msg"],
)
def test_runsc_log_lines_are_unwrapped(line, message):
    assert log_message(line) == message


def test_probe_output_is_parsed():
    lines = ["MemTotal:         524288 kB", "4.4.0", "65534", "probe-ready"]
    assert probe_output(lines) == {
        "mem_total_bytes": 512 * MIB,
        "kernel_release": "4.4.0",
        "uid": 65534,
    }


def test_container_ids_are_safe_and_unique():
    first, second = container_id("2026 run/1"), container_id("2026 run/1")
    assert first != second and first.startswith("taiea-2026-run-1-r")
    assert all(c.isalnum() or c in "-_." for c in first)


# ---------------------------------------------------------------- runsc missing


def test_runsc_missing_names_the_install_command(tmp_path):
    env = config.load_env(
        write_env(tmp_path / "no-runsc.toml", {"sandbox": {"runsc": "/nonexistent/runsc"}})
    )
    with pytest.raises(PipelineError, match=r"apt-get install -y runsc") as caught:
        runtime_for(env)
    assert "no-runsc.toml" in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- real sandboxes


def test_probe_reads_back_the_limits_from_the_cgroup_and_from_inside(runsc):
    runtime = runtime_for(config.load_env("ccw-sandbox"))
    report = runtime.probe("test")
    assert report.started, report.error
    assert report.cgroup.memory_limit_bytes == 512 * MIB
    assert (report.cgroup.cpu_quota_us, report.cgroup.cpu_period_us) == (100_000, 100_000)
    assert report.sandbox_pid in report.cgroup.memory_procs
    assert report.total_memory_bytes == 512 * MIB
    assert report.inside == {"mem_total_bytes": 512 * MIB, "kernel_release": "4.4.0", "uid": 65534}
    assert report.leftovers == [] and leftovers([report.id]) == []


def test_release_serves_from_the_sandbox_and_stop_removes_everything(runsc, release_root):
    runtime = runtime_for(config.load_env("ccw-sandbox"))
    instance = launch(runtime, release_root, ERLANG_COOKIE="never-in-argv")
    bundle = instance.sandbox.bundle
    try:
        ready_s = instance.wait_ready(20)
        assert 0 < ready_s < 20
        assert get(instance.url, "/health")[0] == 200
        config_json = json.loads((bundle / "config.json").read_text())
        assert "HOME=/tmp" in config_json["process"]["env"]
        assert oct((bundle / "config.json").stat().st_mode & 0o777) == "0o600"
        assert instance.id in runsc_ids()
        reading = instance.cgroup()
        assert (
            reading.memory_limit_bytes == 512 * MIB and instance.sandbox_pid() in reading.cpu_procs
        )
        first = instance.stats()
        assert 20 * MIB < first.rss_bytes < 300 * MIB  # the cgroup's usage: the whole sandbox
        for _ in range(30):
            get(instance.url, "/metrics")
        second = instance.stats()
        assert second.cpu_percent > 0  # runsc events --stats: cumulative ns, as a delta
        processes = instance.ps()
        assert processes and {p["uid"] for p in processes} == {65534}
        assert instance.exec(["id", "-u"]).stdout.strip() == "65534"
        assert instance.capture.counts["startup"] == 1
    finally:
        status = instance.stop(10)
    assert status == 0
    assert instance.capture.last["shutdown"]["reason"] == "sigterm"
    assert instance.oom is None and instance.final is not None
    assert not bundle.exists()
    assert leftovers([instance.id]) == [] and instance.sandbox.leftovers == []
    assert instance.stop(10) == 0  # idempotent


def test_a_killed_runsc_is_still_cleaned_up_and_is_not_an_oom(runsc, release_root):
    runtime = runtime_for(config.load_env("ccw-sandbox"))
    instance = launch(runtime, release_root)
    try:
        instance.wait_ready(20)
        os.kill(instance.pid, signal.SIGKILL)  # the runsc process, as a crash would
        poll(lambda: True if not instance.alive() else None, timeout=10, what="runsc to die")
    finally:
        status = instance.stop(5)
    assert status == 137 and instance.oom is None
    assert leftovers([instance.id]) == [] and not instance.sandbox.bundle.exists()


def test_a_sandbox_that_cannot_start_reports_the_runsc_log(runsc, release_root, sandbox_env):
    runtime = runtime_for(sandbox_env(sandbox={"cpus": 0.001}))  # 100 µs quota: the kernel refuses
    instance = launch(runtime, release_root)
    try:
        with pytest.raises(StartupFailed) as caught:
            instance.wait_ready(20)
    finally:
        instance.stop(5)
    assert "exited with status 128" in caught.value.reason
    assert "cpu.cfs_quota_us: invalid argument" in caught.value.reason
    assert any(line.startswith("runsc: ") for line in caught.value.log_tail)
    assert leftovers([instance.id]) == []


def _reading(**files: str) -> Any:
    from pipeline.runtime.gvisor import reading_of

    return reading_of({k.replace("__", "/"): v for k, v in files.items()})


@pytest.mark.parametrize(
    ("status", "files", "oom"),
    [
        (137, {"memory__memory.failcnt": "12\n", "memory__memory.limit_in_bytes": str(512 * MIB)}, True),
        (137, {"memory__memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"}, True),
        (137, {"memory__memory.failcnt": "0\n"}, False),
        (0, {"memory__memory.failcnt": "3\n"}, False),
        (137, {}, False),
    ],
    ids=["failcnt", "oom_kill-line", "137-without-evidence", "clean-exit", "cgroup-gone"],
)  # fmt: skip
def test_an_oom_kill_needs_exit_137_and_the_cgroups_evidence(status, files, oom):
    from pipeline.runtime.gvisor import judge_oom

    found = judge_oom(status, _reading(**files), 512 * MIB)
    assert (found is not None) == oom
    if found is not None:
        assert found.limit_mb == 512 and found.exit_status == 137 and "OOM killed" in found.reason


def test_a_cgroup_reading_from_its_files_text():
    reading = _reading(**{"cpu__cpu.stat": "nr_periods 4\nnr_throttled 2\n",
                          "memory__cgroup.procs": "12\n40\n", "cpu__cpu.cfs_quota_us": "100000\n"})  # fmt: skip
    assert (reading.cpu_throttled, reading.memory_procs, reading.cpu_quota_us) == (
        2,
        (12, 40),
        100000,
    )
    assert reading.memory_limit_bytes is None  # unreadable: None, never 0
