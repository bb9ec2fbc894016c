"""The remote runtime against a real OpenSSH server (tests/fixtures_sshd.py) on 127.0.0.1.

The "host" is this machine, reached only through sshd: the release is uploaded, extracted and
started over SSH, and every probe goes through the forwarded port. Each failure is provoked for
real: a wrong key, an unknown or changed host key, nothing listening, a full remote disk (a 1 MiB
tmpfs), and sshd killed in the middle of the load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import require_tool
from fixtures_chaos import processes_under
from fixtures_sshd import free_port, keygen

from pipeline import config, receipts
from pipeline.errors import PipelineError
from pipeline.phases.week3 import run_week3
from pipeline.release import sha256_file
from pipeline.runtime.remote import RemoteRuntime
from pipeline.runtime.remote_instance import tree_usage
from pipeline.ssh.connection import Target
from pipeline.waiting import poll

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")


@pytest.fixture(autouse=True)
def _no_agent(monkeypatch):
    """Only the keys a test names: an ssh-agent of whoever runs the suite must not help."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def remote_env(tmp_path: Path, remote_dir: Path, **start_env: str) -> config.Env:
    """envs/local.toml, run on the host in `remote_dir`, with short SSH timeouts."""
    lines = [
        f'extends = "{REPO / "envs" / "local.toml"}"',
        "[remote]",
        f"dir = {json.dumps(str(remote_dir))}",
        "connect_timeout_s = 5",
        "command_timeout_s = 10",
        "[start]",
        "stop_grace_s = 5",
    ]
    if start_env:
        lines.append("[start.env]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in start_env.items()]
    path = tmp_path / f"remote-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return config.load_env(path)


def runtime_for(server: Any, tarball: Path, holder: list[RemoteRuntime], **kw: Any) -> Any:
    kw.setdefault("identity", server.identity)
    kw.setdefault("known_hosts", server.known_hosts)

    def factory(env: config.Env) -> RemoteRuntime:
        runtime = RemoteRuntime.for_env(env, server.host, tarball=tarball, **kw)
        holder.append(runtime)
        return runtime

    return factory


def records(path: Path) -> list[dict[str, Any]]:
    return list(receipts.iter_records(path))


def errors_of(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["kind"] == "error"]


def failing(result: Any) -> set[str]:
    return {f"{r.metric} {r.expression}" for r in result.verdict.failures}


# ------------------------------------------------------------------------------ the happy path


def test_week3_over_ssh_passes_gate2(sshd, reference_tarball, tmp_path):
    tarball = reference_tarball()
    remote_dir = tmp_path / "host"
    stale = remote_dir / "uploads" / tarball.name  # same name, other bytes: must be replaced
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not the release")
    env = remote_env(tmp_path, remote_dir, ERLANG_COOKIE="cookie-never-in-receipts")
    made: list[RemoteRuntime] = []
    result = run_week3(
        tarball, env, duration=2, rate=20, runtime_factory=runtime_for(sshd, tarball, made)
    )
    assert result.verdict.passed, (result.verdict.summary(), errors_of(result.receipts))
    verification = receipts.verify(result.receipts)
    assert verification.ok and verification.sealed
    found = records(result.receipts)
    kinds = [r["kind"] for r in found]
    assert kinds.count("receipt") == 5 and kinds.count("request") >= 38
    assert found[0]["runtime"] == "remote"
    startup = next(r for r in found if r["kind"] == "startup")
    assert startup["runtime"] == "remote" and startup["url"].startswith("http://127.0.0.1:")
    shutdown = next(r for r in found if r["kind"] == "shutdown")
    assert shutdown["exit_status"] == 0 and shutdown["clean"] is True
    capture = next(r for r in found if r["kind"] == "capture")
    assert capture["kinds"]["startup"] == 1 and capture["kinds"]["shutdown"] == 1
    assert any(r["kind"] == "metrics" and r["rss_mb"] > 10 for r in found)  # sampled over SSH
    # uploaded (the stale file replaced), the run dir on the host removed at the stop
    instance = made[0].instances[0]
    assert instance.facts["upload"]["skipped"] is False
    assert sha256_file(stale) == startup_sha(found)
    assert list((remote_dir / "runs").iterdir()) == []
    assert not list((remote_dir / "uploads").glob("*.part-*"))
    # nothing secret in the receipts: no key material, no cookie
    text = result.receipts.read_text()
    key_body = "".join(Path(sshd.identity).read_text().splitlines()[1:-1])
    assert key_body[:40] not in text and "PRIVATE KEY" not in text
    assert "cookie-never-in-receipts" not in text


def test_week3_over_ssh_in_gvisor_on_the_host(sshd, reference_tarball, tmp_path):
    """runtime = "gvisor" in the env: on the host, the release runs in runsc with the limits."""
    require_tool("runsc", "runsc")
    tarball = reference_tarball()
    remote_dir = tmp_path / "host"
    path = tmp_path / "gvisor.toml"
    path.write_text(
        f'extends = "{REPO / "envs" / "ccw-sandbox.toml"}"\n'
        f"[remote]\ndir = {json.dumps(str(remote_dir))}\n"
    )
    env = config.load_env(path)
    seen: dict[str, Any] = {}

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "startup":
            cid = made[0].instances[0].cid
            seen["cmdline"] = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
            seen["limit"] = int(
                Path(f"/sys/fs/cgroup/memory/{cid}/memory.limit_in_bytes").read_text()
            )

    made: list[RemoteRuntime] = []
    result = run_week3(
        tarball,
        env,
        duration=2,
        rate=10,
        runtime_factory=runtime_for(sshd, tarball, made),
        on_record=on_record,
    )
    assert result.verdict.passed, (result.verdict.summary(), errors_of(result.receipts))
    instance = made[0].instances[0]
    assert instance.facts["runtime"] == "gvisor" and instance.cid
    assert Path(seen["cmdline"][0].decode()).name == "runsc" and b"run" in seen["cmdline"]
    assert seen["limit"] == 512 * 2**20
    shutdown = next(r for r in records(result.receipts) if r["kind"] == "shutdown")
    assert shutdown["exit_status"] == 0 and shutdown["clean"] is True
    assert not Path(f"/sys/fs/cgroup/memory/{instance.cid}").exists()
    listed = subprocess.run(["runsc", "list", "-quiet"], capture_output=True, text=True)
    assert listed.returncode == 0 and instance.cid not in listed.stdout
    assert list((remote_dir / "runs").iterdir()) == []


def startup_sha(found: list[dict[str, Any]]) -> str:
    return str(found[0]["release"]["sha256"])


HOSTILE_VALUE = 'it\'s "quoted" $(touch {canary}) `touch {canary}` ${{HOME}} \\ ; rm -rf ~ \n|&'


@pytest.mark.parametrize(
    "name",
    ["x; rm -rf ~.tar.gz", "$(touch {canary})`touch {canary}`'\".tar.gz"],
    ids=["semicolon-rm-name", "command-substitution-name"],
)
def test_hostile_tarball_names_and_env_values_are_inert(sshd, reference_tarball, tmp_path, name):
    canary = f"pwned-{uuid.uuid4().hex[:8]}"
    tarball = tmp_path / name.format(canary=canary)
    shutil.copyfile(reference_tarball(), tarball)
    remote_dir = tmp_path / "host"
    value = HOSTILE_VALUE.format(canary=canary)
    env = remote_env(tmp_path, remote_dir, TAIEA_HOSTILE=value)
    seen: dict[str, str] = {}

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "startup":  # the release runs on this machine: read its environment
            raw = Path(f"/proc/{record['pid']}/environ").read_bytes()
            seen.update(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    made: list[RemoteRuntime] = []
    result = run_week3(
        tarball,
        env,
        duration=2,
        rate=10,
        runtime_factory=runtime_for(sshd, tarball, made),
        on_record=on_record,
    )
    assert result.verdict.passed, (result.verdict.summary(), errors_of(result.receipts))
    assert seen["TAIEA_HOSTILE"] == value  # byte for byte, nothing expanded
    assert seen["PORT"] == str(made[0].instances[0].port)
    assert seen["TMPDIR"].startswith(str(remote_dir / "runs"))
    assert (remote_dir / "uploads" / tarball.name).is_file()  # the name, exactly
    for where in (Path.home(), remote_dir, tmp_path, Path("/")):
        assert not (where / canary).exists(), f"a command ran: {where / canary}"
    assert Path.home().is_dir()


# ------------------------------------------------------------------------------ failures


def test_host_going_away_mid_load_fails_the_gate_in_bounded_time(
    sshd_factory, reference_tarball, tmp_path
):
    server = sshd_factory()
    tarball = reference_tarball()
    remote_dir = tmp_path / "host"
    cached = remote_dir / "uploads" / tarball.name  # already there: no upload at all
    cached.parent.mkdir(parents=True)
    shutil.copyfile(tarball, cached)
    inode = cached.stat().st_ino
    env = remote_env(tmp_path, remote_dir)
    vanished: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "request" and not vanished:
            vanished.append(time.monotonic())
            server.vanish()

    made: list[RemoteRuntime] = []
    began = time.monotonic()
    result = run_week3(
        tarball,
        env,
        duration=30,
        rate=20,
        runtime_factory=runtime_for(server, tarball, made),
        on_record=on_record,
    )
    assert vanished, "the load never started"
    # bound: the run ends within 15 s of the loss, not when its 30 s load window would have
    assert time.monotonic() - vanished[0] < 15 and time.monotonic() - began < 40
    assert receipts.verify(result.receipts).sealed
    assert not result.verdict.passed
    assert {"http.success rate == 1", "errors count == 0", "stages.failed count == 0"} <= failing(
        result
    )
    errors = errors_of(result.receipts)
    load = [e for e in errors if e.get("stage") == "load"]
    assert load and load[0]["reason"].startswith("lost the SSH connection to"), errors
    assert "during the load; the load stopped after" in load[0]["reason"]
    shutdown = next(r for r in records(result.receipts) if r["kind"] == "shutdown")
    assert shutdown["exit_status"] == 255  # unknown: the host is gone
    assert made[0].instances[0].facts["upload"]["skipped"] is True
    assert cached.stat().st_ino == inode
    # the host's watchdog saw the connection go: the release stopped, its run dir removed
    poll(lambda: True if not any((remote_dir / "runs").iterdir()) else None, timeout=15)


@pytest.mark.chaos
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_a_pipeline_killed_mid_load_leaves_nothing_on_the_host(
    sshd, reference_tarball, tmp_path, signame
):
    """SIGTERM: stopped like Ctrl-C, sealed, naming the signal. SIGKILL: the connection drops
    with the process; the wrapper on the host stops the release and removes its run dir (the
    host cleans up: runs.recover never stops a remote run's pids here). The env keeps the
    product's defaults but for the remote dir."""
    from fixtures_chaos import assert_ended_by, kill_at, recover

    remote_dir = tmp_path / "host"
    env_file = tmp_path / "remote-defaults.toml"
    env_file.write_text(
        f'extends = "{REPO / "envs" / "local.toml"}"\n[remote]\ndir = {json.dumps(str(remote_dir))}\n'
    )
    out = tmp_path / "r.jsonl"
    command = [INVOKE, "phase2.week3", "--tarball", str(reference_tarball()),
               "--env", str(env_file), "--duration", "20", "--receipts", str(out),
               "--host", sshd.host, "--identity", str(sshd.identity),
               "--known-hosts", str(sshd.known_hosts)]  # fmt: skip
    killed = kill_at(command, lambda: out, "load", signame)
    assert_ended_by(killed, signame)
    grace = config.load_env(env_file).start.stop_grace_s
    poll(
        lambda: True if not any((remote_dir / "runs").iterdir()) else None,
        timeout=grace + 10,
        what="the host to remove the run dir",
    )
    assert not processes_under(remote_dir), "the release outlived the pipeline on the host"
    if signame == "SIGKILL":
        closed = recover(out)
        assert closed[-2]["kind"] == "crashed" and closed[-2]["stopped"] == []
    verified = receipts.verify(out)
    assert verified.ok and verified.sealed, verified.describe()
    assert not Path(records(out)[0]["workdir"]).exists()


def test_a_release_killed_on_the_host_mid_load_ends_the_load_at_once(
    sshd, reference_tarball, tmp_path
):
    """beam.smp killed on the host 1 s into a 30 s load: the wrapper reports its exit over the
    channel and the load stops then, naming it (bound: the run ends within 15 s of the kill)."""
    env = remote_env(tmp_path, tmp_path / "host")
    tarball = reference_tarball()
    pid: list[int] = []
    killed: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "startup":
            pid.append(record["pid"])
        if record["kind"] == "request" and record.get("sent_s", 0) >= 1.0 and not killed:
            killed.append(time.monotonic())
            os.kill(pid[0], 9)  # the host is this machine: its pid is ours to see

    result = run_week3(
        tarball, env, duration=30, rate=20,
        runtime_factory=runtime_for(sshd, tarball, []), on_record=on_record,
    )  # fmt: skip
    assert killed and time.monotonic() - killed[0] < 15
    (error,) = [e for e in errors_of(result.receipts) if e.get("stage") == "load"]
    assert error["reason"].startswith("the release exited on the host (status 137"), error
    assert receipts.verify(result.receipts).sealed
    assert not any((tmp_path / "host" / "runs").iterdir())  # the host's side removed
    assert not Path(records(result.receipts)[0]["workdir"]).exists()  # and ours


def test_a_frozen_link_ends_the_stage_and_the_host_stops_the_release_itself(
    sshd_factory, reference_tarball, tmp_path
):
    """Every sshd of the connection stopped (SIGSTOP) 1 s into a 30 s load: nothing closes,
    nothing answers. Our keepalive gets no answer in 2 s: the stage ends naming it; the host's
    wrapper gets no lease renewal in 6 s: it stops the release and removes its run dir while the
    link is still frozen. (keepalive_s and lease_s are the knobs under test, set short.)"""
    server = sshd_factory()
    tarball = reference_tarball()
    remote_dir = tmp_path / "host"
    env_file = tmp_path / "lease.toml"
    env_file.write_text(
        f'extends = "{REPO / "envs" / "local.toml"}"\n[remote]\ndir = {json.dumps(str(remote_dir))}\n'
        "keepalive_s = 2\nlease_s = 6\n"
    )
    env = config.load_env(env_file)
    frozen: list[Any] = []
    at: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "request" and record.get("sent_s", 0) >= 1.0 and not frozen:
            at.append(time.monotonic())
            frozen.extend(server.freeze())

    try:
        result = run_week3(
            tarball, env, duration=30, rate=20,
            runtime_factory=runtime_for(server, tarball, []), on_record=on_record,
        )  # fmt: skip
        assert frozen, "the load never reached 1 s"
        ended = time.monotonic() - at[0]
        (error,) = [e for e in errors_of(result.receipts) if e.get("stage") == "load"]
        assert "keepalive: no answer in 2 s" in error["reason"], error
        assert ended < 25, ended  # not the 29 s the window had left
        assert receipts.verify(result.receipts).sealed
        # the host, on its own, with the link still frozen
        poll(
            lambda: True if not processes_under(remote_dir) else None,
            timeout=6 + env.start.stop_grace_s + 10,
            what="the host to stop the release",
        )
        poll(lambda: True if not any((remote_dir / "runs").iterdir()) else None, timeout=15)
        assert not Path(records(result.receipts)[0]["workdir"]).exists()
    finally:
        server.thaw(frozen)


def test_a_frozen_link_mid_pilot_stops_the_replay_naming_it(
    sshd_factory, reference_tarball, tmp_path
):
    """Week 4 over SSH, the link frozen at the first answer: the replay ends when the
    keepalive goes unanswered (2 s) — the lost link closes the forwarded port, or the watch
    stops the replay, whichever comes first — instead of each operation waiting out its own
    10 s timeout; the stage names the lost link."""
    from pipeline.phases.week4 import run_week4

    server = sshd_factory()
    tarball = reference_tarball()
    env_file = tmp_path / "lease.toml"
    env_file.write_text(
        f'extends = "{REPO / "envs" / "local.toml"}"\n[remote]\n'
        f"dir = {json.dumps(str(tmp_path / 'host'))}\nkeepalive_s = 2\nlease_s = 6\n"
    )
    frozen: list[Any] = []
    at: list[float] = []

    def on_record(record: dict[str, Any]) -> None:
        if record["kind"] == "operation" and not frozen:
            at.append(time.monotonic())
            frozen.extend(server.freeze())

    try:
        result = run_week4(
            tarball, config.load_env(env_file), concurrency=1,
            runtime_factory=runtime_for(server, tarball, []), on_record=on_record,
        )  # fmt: skip
        assert frozen and time.monotonic() - at[0] < 25
        (error,) = [e for e in errors_of(result.receipts) if e.get("stage") == "pilot"]
        assert "keepalive: no answer in 2 s" in error["reason"], error
        assert receipts.verify(result.receipts).sealed
    finally:
        server.thaw(frozen)


@pytest.fixture
def silent_port():
    """A port on 127.0.0.1 that accepts TCP and never says a word."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for sock in accepted:
        sock.close()
    server.close()


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs as the remote dir: the 8 MiB upload cannot fit."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_remote_disk_fails_the_upload(sshd, reference_tarball, tmp_path, full_disk):
    tarball = reference_tarball()
    env = remote_env(tmp_path, full_disk)
    result = run_week3(
        tarball, env, duration=2, rate=10, runtime_factory=runtime_for(sshd, tarball, [])
    )
    assert not result.verdict.passed
    assert "startup.seconds value < 5" in failing(result)
    errors = errors_of(result.receipts)
    assert errors[0]["stage"] == "start"
    assert "no space left on the remote disk" in errors[0]["reason"], errors[0]
    left = [p.name for p in (full_disk / "uploads").iterdir()]
    assert left == []  # the partial upload was removed
    skipped = [r["stage"] for r in records(result.receipts) if r.get("event") == "skip"]
    assert skipped == ["smoke", "load"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("nothing-listening", "connection refused by 127.0.0.1:"),
        ("silent-port", "accepted TCP but sent no SSH banner in 5 s"),
    ],
    ids=["connection-refused", "silent-port"],
)
def test_unreachable_host_fails_the_phase_with_an_error_receipt(
    sshd, reference_tarball, tmp_path, case, expected, silent_port
):
    tarball = reference_tarball()
    env = remote_env(tmp_path, tmp_path / "host")  # connect_timeout_s 5: the knob under test
    port = silent_port if case == "silent-port" else free_port()
    known = tmp_path / "known_hosts"
    known.write_text(sshd.host_key_line.replace(str(sshd.port), str(port)) + "\n")
    target = SimpleNamespace(
        host=f"root@127.0.0.1:{port}", identity=sshd.identity, known_hosts=known
    )
    began = time.monotonic()
    result = run_week3(
        tarball, env, duration=2, rate=10, runtime_factory=runtime_for(target, tarball, [])
    )
    assert time.monotonic() - began < 15
    assert not result.verdict.passed
    assert {"startup.seconds value < 5", "stages.failed count == 0"} <= failing(result)
    errors = errors_of(result.receipts)
    reason = errors[0]["reason"]
    assert expected in reason and "BEGIN" not in reason
    first = records(result.receipts)[0]
    assert first["remote"]["reachable"] is False and first["remote"]["host_check_s"] >= 0
    if case == "silent-port":  # the seconds spent waiting for a banner are in the evidence
        assert first["remote"]["host_check_s"] >= 5
    assert receipts.verify(result.receipts).sealed
    # no phantom "release exited" for a release never started
    assert len(errors) == 1, [(e.get("stage"), e["reason"]) for e in errors]
    assert not (tmp_path / "host" / "runs").exists() or not any(
        (tmp_path / "host" / "runs").iterdir()
    )


@pytest.mark.parametrize(
    ("known", "accept", "outcome"),
    [
        ("empty", False, "unknown host key for [127.0.0.1]:"),
        ("empty", True, "added"),
        ("missing-file", True, "added"),
        ("changed", True, "CHANGED"),
    ],
    ids=["unknown-refused", "unknown-accepted", "no-file-accepted", "changed-always-refused"],
)
def test_host_key_is_checked_against_known_hosts(sshd, tmp_path, known, accept, outcome):
    path = tmp_path / "known_hosts"
    if known == "empty":
        path.write_text("")
    elif known == "changed":
        other = keygen(tmp_path / "impostor", "impostor").with_suffix(".pub").read_text().split()
        path.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    kw = {"identity": sshd.identity, "known_hosts": path, "accept_new_host_key": accept}
    if outcome != "added":
        with pytest.raises(PipelineError, match=outcome.replace("[", r"\[")):
            RemoteRuntime(sshd.host, **kw)
        return
    runtime = RemoteRuntime(sshd.host, **kw)
    assert runtime.host_key_added and runtime.host_key_added.startswith("ssh-ed25519 SHA256:")
    assert path.read_text().splitlines() == [sshd.host_key_line]
    again = RemoteRuntime(sshd.host, identity=sshd.identity, known_hosts=path)  # now trusted
    assert again.host_key_added is None and again.unreachable is None


@pytest.mark.parametrize("case", ["unknown-host-key", "refused-key"])
def test_bad_trust_is_exit_2_before_any_receipt(sshd, reference_tarball, tmp_path, case):
    """An unknown host key and a key the host refuses are the operator's input, as a missing
    key file is: one line, exit 2, no run opened, nothing in the ledger."""
    known = tmp_path / "known_hosts"
    known.write_text("" if case == "unknown-host-key" else sshd.known_hosts.read_text())
    identity = (
        sshd.identity if case == "unknown-host-key" else keygen(tmp_path / "stranger", "stranger")
    )
    runs = tmp_path / "runs"
    done = subprocess.run(
        [INVOKE, "phase2.week3", "--tarball", str(reference_tarball()), "--host", sshd.host]
        + ["--identity", str(identity), "--known-hosts", str(known)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PIPELINE_RUNS_DIR": str(runs)},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    if case == "unknown-host-key":
        assert "unknown host key for [127.0.0.1]:" in done.stderr
        assert "--accept-new-host-key" in done.stderr
    else:
        assert f"authentication failed for {sshd.host}" in done.stderr
        assert "keys only, never a password" in done.stderr
    assert not list(runs.rglob("receipts.jsonl")) and not (runs / "gates.jsonl").exists()


def test_week4_over_ssh_with_the_cli_flags(sshd, reference_tarball, tmp_path):
    env = remote_env(tmp_path, tmp_path / "host")
    out = tmp_path / "week4.jsonl"
    done = subprocess.run(
        [INVOKE, "phase2.week4", "--tarball", str(reference_tarball()), "--env", str(env.path)]
        + ["--host", sshd.host, "--identity", str(sshd.identity)]
        + ["--known-hosts", str(sshd.known_hosts), "--receipts", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    found = records(out)
    assert found[0]["runtime"] == "remote"
    assert sum(r["kind"] == "operation" for r in found) >= 50
    assert found[-2]["kind"] == "gate" and found[-2]["passed"] is True


# ------------------------------------------------------------------------------ small parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deploy@sandbox.example:2222", Target("deploy", "sandbox.example", 2222)),
        ("root@127.0.0.1", Target("root", "127.0.0.1", 22)),
        ("ops@[::1]:2200", Target("ops", "::1", 2200)),
        ("a@b:0", None),
        ("a@b; rm -rf /", None),
        ("a@b:22:33", None),
        ("", None),
    ],
    ids=["user-host-port", "default-port", "ipv6", "port-0", "shell-junk", "two-ports", "empty"],
)
def test_host_flag_parsing(text, expected):
    if expected is None:
        with pytest.raises(PipelineError, match="expected user@host"):
            Target.parse(text)
    else:
        assert Target.parse(text) == expected


def test_tree_usage_follows_children_and_odd_process_names():
    stat = "\n".join(
        [
            "1 (init) S 0 1 1 0 -1 0 0 0 0 0 10 10 0 0 20 0 1 0 1 100 50",
            "100 (beam.smp) S 1 100 100 0 -1 0 0 0 0 0 300 100 0 0 20 0 1 0 1 100 1000",
            "101 (erl (child) x) S 100 100 100 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 100 20",
            "102 (inet_gethost) S 101 100 100 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 1 100 7",
            "200 (other) S 1 200 200 0 -1 0 0 0 0 0 99 99 0 0 20 0 1 0 1 100 999",
        ]
    )
    assert tree_usage(stat, 100) == (3, 1027, 412)
    assert tree_usage(stat, 999) == (0, 0, 0)
