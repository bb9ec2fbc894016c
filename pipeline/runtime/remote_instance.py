"""The release on a host over SSH: a process (RemoteInstance) or a gVisor sandbox
(RemoteSandboxInstance), each run under one wrapper script on the host that reports its pid and
exit status and stops it when asked, when the connection dies or when its lease lapses. See
runtime/remote.py for the runtime that starts them and the whole story.

Why ~870 lines: the two classes share the wrapper protocol, the log follower and the stop; the
sandbox's differences are the named hooks, overridden in the subclass."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko

from pipeline import release as releases
from pipeline.runtime import gvisor
from pipeline.runtime.base import Capture, LaunchSpec, StartupFailed, Stats
from pipeline.runtime.readiness import not_ready_reason
from pipeline.runtime.remote_gvisor import (
    NO_CGROUP,
    RemoteRunsc,
    RemoteSandbox,
    read_cgroup,
    remote_base,
    remove_sandbox,
    run_dir,
    runsc_log,
)
from pipeline.ssh.connection import (
    LOST_STATUS,
    Connection,
    RemoteFailure,
    Target,
    q,
)
from pipeline.ssh.forward import Forwarder

LOG_LINES = 500
LOG_FETCH_BYTES = 8 << 20
READ_LINE = 'IFS= read -r line <&3 && printf %s "$line"'  # one line, never more (sh reads bytewise)
FOLLOW_DRAIN_S = 3.0  # tail -f --pid notices the release's exit within its 0.1 s interval
TOOLS = (
    "tar",
    "sha256sum",
    "base64",
    "setsid",
    "timeout",
    "tail",
    "cat",
    "kill",
    "mkdir",
    "rm",
    "mv",
)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ------------------------------------------------------------------------------ process stats


def tree_usage(stat_text: str, root: int) -> tuple[int, int, int]:
    """(processes, rss pages, cpu ticks) of `root` and its descendants, from the lines of
    /proc/*/stat. The comm field may hold spaces and parentheses: split after the last ')'."""
    children: dict[int, list[int]] = {}
    usage: dict[int, tuple[int, int]] = {}
    for line in stat_text.splitlines():
        head, sep, rest = line.rpartition(")")
        if not sep:
            continue
        try:
            pid = int(head.split(" (", 1)[0])
            fields = rest.split()
            ppid, utime, stime, rss = (
                int(fields[1]),
                int(fields[11]),
                int(fields[12]),
                int(fields[21]),
            )
        except (ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
        usage[pid] = (rss, utime + stime)
    if root not in usage:
        return 0, 0, 0
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return (
        len(seen),
        sum(usage[p][0] for p in seen if p in usage),
        sum(usage[p][1] for p in seen if p in usage),
    )


@dataclass(frozen=True)
class RemoteOptions:
    dir: str = "~/.cache/taiea-pipeline"
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 20.0
    upload_timeout_s: float = 600.0
    keepalive_s: float = 5.0  # a keepalive wanting a reply this often; none in as long: lost
    stop_grace_s: float = 10.0  # what the host's watchdog gives the release when we vanish
    lease_s: float = 15.0  # no renewal from us this long: the host stops the release itself


class Host(Protocol):
    """What an instance needs from the runtime that started it (runtime/remote.py)."""

    target: Target
    options: RemoteOptions
    inner: str  # process | gvisor
    tarball: Path | None

    def connect(self) -> Connection: ...

    @property
    def runsc_name(self) -> str: ...

    @property
    def limits(self) -> gvisor.Limits: ...

    def sandbox_env(self, env: dict[str, str], port: int, host: str) -> dict[str, str]: ...


@dataclass
class Upload:
    path: str
    skipped: bool
    seconds: float
    bytes: int


class RemoteInstance:
    """The release on the host as a process. `url` is the local end of the forwarded port.
    RemoteSandboxInstance runs it in gVisor instead, through the hooks marked below."""

    def __init__(self, runtime: Host, spec: LaunchSpec):
        self.runtime = runtime
        self.spec = spec
        self.options = runtime.options
        self.url = ""
        self.pid = 0
        self.port = spec.port
        self.started_at = time.monotonic()
        self.capture = Capture()
        self.conn: Connection | None = None
        self.forwarder: Forwarder | None = None
        self.work: str | None = None  # the run dir on the host
        self.upload: Upload | None = None
        self.failure: str | None = None
        self.facts: dict[str, Any] = {"host": str(runtime.target), "runtime": runtime.inner}
        self._partial: str | None = None  # an upload under way
        self._chan: paramiko.Channel | None = None
        self._pid_seen = threading.Event()
        self._exit: int | None = None
        self._exited = threading.Event()
        self._send_lock = threading.Lock()  # the lease thread and the stop share the channel
        self._reader: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=LOG_LINES)
        self._status: int | None = None
        self._cpu_last: tuple[float, int] | None = None
        self._tick = 100
        self._page = 4096
        self._stop_sent = False
        self._own_exit = False  # the release exited before we asked it to stop
        self._follower: paramiko.Channel | None = None  # tail -f of the release's stdout
        self._follow_thread: threading.Thread | None = None
        self._log_offset = 0  # bytes of release.log fed to the capture
        self._log_rest = b""  # a line not yet complete

    # --- start

    def launch(self) -> None:
        spec = self.spec
        tarball = spec.tarball or self.runtime.tarball
        if tarball is None:
            raise RemoteFailure("the remote runtime needs the release tarball to upload")
        info = releases.inspect(Path(tarball))  # refuses unsafe members before any byte leaves
        self.conn = conn = self.runtime.connect()
        home = self._probe_host()
        base = remote_base(conn, self.options.dir, home)
        self.facts["dir"] = base
        self.upload = self._upload(Path(tarball), info, base)
        self.facts["upload"] = vars(self.upload)
        root = self._extract(info, base)
        self.port = spec.port or self._free_port()
        env = self._env(root)
        started = time.monotonic()
        self._start(root, env)
        self._follow()
        self.forwarder = Forwarder(conn, self.port, spec.reach_host)
        self.url = f"http://127.0.0.1:{self.forwarder.port}"
        self.facts.update(
            work=self.work,
            root=root,  # what runs (gvisor: what is bind-mounted read-only)
            remote_port=self.port,
            launch_s=round(time.monotonic() - started, 4),
        )

    def _probe_host(self) -> str:
        assert self.conn is not None
        script = (
            'printf "home %s\\n" "$HOME"; printf "tick %s\\n" "$(getconf CLK_TCK)"; '
            'printf "page %s\\n" "$(getconf PAGESIZE)"; '
            f'for t in {" ".join(TOOLS)}; do command -v "$t" >/dev/null 2>&1 || '
            'printf "missing %s\\n" "$t"; done'
        )
        script += self._probe_more()
        done = self.conn.must(script, "probing the host")
        facts: dict[str, str] = {}
        missing: list[str] = []
        for line in done.output.splitlines():
            word, _, value = line.partition(" ")
            if word == "missing":
                missing.append(value)
            else:
                facts[word] = value
        self._check_missing(missing)
        if missing:
            raise RemoteFailure(
                f"{self.runtime.target} lacks {', '.join(missing)} (needs GNU coreutils, tar, util-linux)"
            )
        with contextlib.suppress(ValueError):
            self._tick = int(facts.get("tick", "100")) or 100
            self._page = int(facts.get("page", "4096")) or 4096
        home = facts.get("home", "").strip()
        if not home.startswith("/"):
            raise RemoteFailure(f"{self.runtime.target}: no home directory ($HOME is {home!r})")
        return home

    def _upload(self, tarball: Path, info: releases.ReleaseInfo, base: str) -> Upload:
        """fabric put, unless a file with the same sha256 is there; checked, then renamed."""
        assert self.conn is not None
        conn = self.conn
        dest = f"{base}/uploads/{tarball.name}"
        there = conn.run(f"sha256sum -- {q(dest)} 2>/dev/null")
        if there.status == 0 and there.output.split(" ", 1)[0].strip() == info.sha256:
            return Upload(dest, True, 0.0, 0)
        part = self._partial = f"{dest}.part-{secrets.token_hex(4)}"
        began = time.monotonic()
        try:
            sftp = conn.fabric.sftp()
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.options.command_timeout_s)
            watchdog = threading.Timer(
                self.options.upload_timeout_s,
                lambda: conn.mark_lost(
                    f"the upload took longer than {self.options.upload_timeout_s:g} s"
                ),
            )
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.fabric.put(str(tarball), remote=part, preserve_mode=False)
            finally:
                watchdog.cancel()
                with contextlib.suppress(Exception):  # one SSH session fewer from here on
                    sftp.close()
                    conn.fabric._sftp = None
        except Exception as exc:  # noqa: BLE001 — an SFTP failure: say why, in one line
            reason = self._upload_failure(exc, part, base, info)
            raise RemoteFailure(reason) from None
        check = conn.run(f"sha256sum -- {q(part)}")
        if check.status != 0 or check.output.split(" ", 1)[0].strip() != info.sha256:
            conn.run(f"rm -f -- {q(part)}")
            raise RemoteFailure(f"the uploaded tarball {part} does not have sha256 {info.sha256}")
        conn.must(f"mv -f -- {q(part)} {q(dest)}", "renaming the upload")
        self._partial = None
        return Upload(dest, False, round(time.monotonic() - began, 4), info.size_bytes)

    def _upload_failure(
        self, exc: BaseException, part: str, base: str, info: releases.ReleaseInfo
    ) -> str:
        assert self.conn is not None
        detail = str(exc) or type(exc).__name__
        if not self.conn.active():
            return f"upload of {info.path.name} failed: {self.conn.lost}"
        with contextlib.suppress(RemoteFailure):
            self.conn.run(f"rm -f -- {q(part)}")
            self._partial = None
            free = self.conn.run(f"df -Pk -- {q(base)} | tail -n 1")
            fields = free.output.split()
            if free.status == 0 and len(fields) >= 4 and fields[3].isdigit():
                avail = int(fields[3]) * 1024
                if avail < info.size_bytes:
                    return (
                        f"upload of {info.path.name} failed: no space left on the remote disk "
                        f"({base}: {avail // 1024} KiB free, the tarball is "
                        f"{info.size_bytes // 1024} KiB) ({detail})"
                    )
        return f"upload of {info.path.name} to {self.runtime.target} failed: {detail}"

    def _extract(self, info: releases.ReleaseInfo, base: str) -> str:
        assert self.conn is not None and self.upload is not None
        work = run_dir(base, self.spec.run_id)
        self.conn.must(f"umask 077 && mkdir -- {q(work)}", f"creating the run dir {work}")
        self.work = work
        began = time.monotonic()
        done = self.conn.run(
            f"umask 022 && mkdir -- {q(work + '/release')} {q(work + '/tmp')} && "
            f"tar -x -f {q(self.upload.path)} -C {q(work + '/release')} "
            "--no-same-owner --no-same-permissions --no-overwrite-dir 2>&1",
            timeout=self.options.upload_timeout_s,
        )
        if done.status != 0:
            full = "No space left on device" in done.output
            what = "the remote disk is full" if full else f"tar exited {done.status}"
            raise RemoteFailure(f"remote extraction into {work} failed: {what}: {done.tail(3)}")
        root = f"{work}/release/{info.prefix}".rstrip("/")
        script = f"{root}/bin/{info.name}"
        self.conn.must(f"test -x {q(script)}", f"finding {script}")
        self.facts["extract_s"] = round(time.monotonic() - began, 4)
        return root

    def _free_port(self) -> int:
        """A port nothing listens on, from the host's /proc/net/tcp{,6}."""
        assert self.conn is not None
        done = self.conn.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")
        used = set()
        for line in done.output.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and ":" in parts[1]:
                with contextlib.suppress(ValueError):
                    used.add(int(parts[1].rsplit(":", 1)[1], 16))
        rng = secrets.SystemRandom()
        for _ in range(200):
            port = rng.randrange(20000, 61000)
            if port not in used:
                return port
        raise RemoteFailure(f"no free port found on {self.runtime.target}")

    def _env(self, root: str) -> dict[str, str]:
        """The env file's values for the host: paths under the local run dir move to the
        remote one (TMPDIR, ERL_CRASH_DUMP)."""
        assert self.work is not None
        spec = self.spec
        local_tmp = spec.env.get("TMPDIR")
        remote_tmp = f"{self.work}/tmp"
        env: dict[str, str] = {}
        for key, value in spec.env.items():
            if not _ENV_KEY.match(key):
                raise RemoteFailure(f"environment name {key!r} is not a shell identifier")
            if "\0" in value:
                raise RemoteFailure(f"environment value of {key} holds a NUL byte")
            if local_tmp and (value == local_tmp or value.startswith(local_tmp + "/")):
                value = remote_tmp + value[len(local_tmp) :]
            env[key] = value
        env["TMPDIR"] = remote_tmp
        env.setdefault("ERL_CRASH_DUMP", f"{remote_tmp}/erl_crash.dump")
        env["PORT"] = str(self.port)
        env.setdefault("HTTP_HOST", spec.host)
        return env

    def _runsc_name(self) -> str:
        return self.runtime.runsc_name

    def _follow(self) -> None:
        """Follow the release's stdout as it is written (`tail -f` until the release's process
        exits), so its receipts are counted live, as a local runtime counts them."""
        assert self.conn is not None and self.work is not None
        log = q(self.work + "/release.log")
        try:
            chan = self.conn.session(f"exec tail -c +1 -s 0.1 -F --pid={int(self.pid)} -- {log}")
        except RemoteFailure:
            return  # the stop collects the whole log instead
        self._follower = chan
        self._follow_thread = threading.Thread(target=self._read_log, args=(chan,), daemon=True)
        self._follow_thread.start()

    def _read_log(self, chan: paramiko.Channel) -> None:
        chan.settimeout(None)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := chan.recv(65536):
                self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._log_offset += len(data)
        *lines, self._log_rest = (self._log_rest + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self._tail.append(line)
            self.capture.feed_line(line)

    def _launcher(self, root: str, envfile: str) -> str:
        """The command the wrapper starts in its own session (its pid is the release's)."""
        script = f"{root}/bin/{self.spec.name}"
        source = 'set -a; . "$1" || exit 96; set +a; rm -f -- "$1"; shift; exec "$@"'
        return (
            'setsid env -i "PATH=$PATH" "HOME=$HOME" "LANG=${LANG:-C.UTF-8}" '
            f"/bin/sh -c {q(source)} taiea-launch {q(envfile)} {q(script)} foreground"
        )

    def _term(self) -> str:
        """How the wrapper asks the release to stop (SIGTERM)."""
        return 'kill -TERM "$pid"'

    def _reap(self) -> str:
        """What the wrapper does after SIGKILL to the group (a sandbox: it and its cgroups go)."""
        return ":"

    def _start(self, root: str, env: dict[str, str]) -> None:
        assert self.conn is not None and self.work is not None
        work = self.work
        envfile = f"{work}/launch.env"
        body = "".join(f"{key}={q(value)}\n" for key, value in env.items())
        if self._prepare(root, env):  # the environment went into the sandbox's config
            body = ""
        self.conn.must(
            f"umask 077 && cat > {q(envfile)}",
            "writing the release environment",
            stdin=body.encode(),
        )
        grace = f"{max(0.0, self.options.stop_grace_s):.3f}"
        lease = f"{max(1.0, self.options.lease_s):.3f}"
        wrapper = "\n".join(
            [
                f"cd {q(work + '/tmp')} || exit 97",
                f"{self._launcher(root, envfile)} >{q(work + '/release.log')} 2>&1 </dev/null &",
                "pid=$!",
                "printf 'pid %s\\n' \"$pid\"",
                "exec 3<&0",
                "(",
                # the lease: a `renew` line from us at least every lease_s; `stop G` stops;
                # silence (a frozen link) or EOF (a closed one) stops the release too
                f"  request=lost; grace={q(grace)}",
                "  while :; do",
                f"    line=$(timeout {q(lease)} sh -c {q(READ_LINE)}); rc=$?",
                '    case "$rc:$line" in',
                "      0:renew) ;;",
                "      '0:stop '*) request=stop; grace=${line#stop }; break ;;",
                "      0:*) ;;",
                "      124:*) request=expired; break ;;",
                "      *) break ;;",
                "    esac",
                "  done",
                '  if kill -0 "$pid" 2>/dev/null; then',
                f"    {self._term()}",
                '    [ "$grace" = 0.000 ] || timeout "$grace" tail -s 0.1 --pid="$pid" -f /dev/null',
                "  fi",
                '  kill -KILL -- "-$pid" 2>/dev/null',
                '  [ "$request" = stop ] && cat <&3 >/dev/null',
                f"  {self._reap()}",
                f"  rm -rf -- {q(work)}",
                ") >/dev/null 2>&1 &",
                "exec 3<&-",
                'wait "$pid"',
                "printf 'exit %s\\n' \"$?\"",
                "wait",
            ]
        )
        self._chan = chan = self.conn.session(wrapper)
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read_wrapper, args=(chan,), daemon=True)
        self._reader.start()
        threading.Thread(target=self._renew, args=(chan,), name="lease", daemon=True).start()
        if not self._pid_seen.wait(self.options.command_timeout_s) or not self.pid:
            tail = "; ".join(self._fetch_tail(5))
            raise RemoteFailure(
                f"the release did not start on {self.runtime.target}: {tail or 'no output'}"
            )

    def _send(self, chan: paramiko.Channel, line: str) -> None:
        with self._send_lock, contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.sendall(line.encode())

    def _renew(self, chan: paramiko.Channel) -> None:
        """While the release runs: renew its lease on the host, and check the link answers (a
        frozen one is marked lost: the liveness watch then stops the stage)."""
        every = min(self.options.lease_s / 3, self.options.keepalive_s or self.options.lease_s)
        while not self._exited.wait(max(0.2, every)) and not self._stop_sent:
            self._send(chan, "renew\n")
            conn = self.conn
            if conn is None or self.options.keepalive_s <= 0:
                continue
            if not conn.answers(self.options.keepalive_s):
                return

    def _read_wrapper(self, chan: paramiko.Channel) -> None:
        buffer = b""
        chan.settimeout(None)
        try:
            while True:
                data = chan.recv(4096)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    word, _, value = line.decode("utf-8", "replace").partition(" ")
                    if word == "pid" and value.strip().isdigit():
                        self.pid = int(value)
                        self._pid_seen.set()
                    elif word == "exit" and value.strip().lstrip("-").isdigit():
                        self._own_exit = not self._stop_sent
                        self._exit = int(value)
                        self._exited.set()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._pid_seen.set()
            if self._exit is None and self.conn is not None:
                self.conn.active()  # notes a lost connection
            self._exited.set()

    # --- the Instance interface

    def failed(self, reason: str) -> None:
        """Start failed: keep the reason for wait_ready(), undo what was done on the host."""
        self.failure = reason
        self._tail.append(f"remote: {reason}")
        self.teardown(0.0)

    def alive(self) -> bool:
        if self.failure is not None or self._status is not None or self._exit is not None:
            return False
        return self.conn is not None and self.conn.active() and not self._exited.is_set()

    def gone(self) -> str | None:
        if self.alive():
            return None
        after = f"{time.monotonic() - self.started_at:.1f} s after the start"
        if self.conn is not None and self.conn.lost:
            return f"{self.conn.lost} ({after})"
        if self._exit is not None:
            return f"the release exited on the host (status {self._exit}, {after})"
        if self.failure is not None:
            return self.failure
        return f"the SSH connection to the host closed ({after})"

    def wait_ready(self, timeout: float) -> float:
        if self.failure is not None:
            raise StartupFailed(self.failure, self.logs(50))
        reason = not_ready_reason(self.url, self.spec, self.alive, timeout)
        if reason is not None:
            if self.conn is not None and self.conn.lost:
                reason = self.conn.lost
            elif self._exit is not None:
                reason = self._exit_reason(self._exit)
            raise StartupFailed(reason, self.logs(50))
        return time.monotonic() - self.started_at

    def stats(self) -> Stats:
        if self.conn is None or not self.pid or not self.alive():
            return Stats(0, 0.0)
        try:
            done = self.conn.run("cat /proc/uptime; cat /proc/[0-9]*/stat 2>/dev/null")
        except RemoteFailure:
            return Stats(0, 0.0)
        first, _, rest = done.output.partition("\n")
        try:
            uptime = float(first.split()[0])
        except (ValueError, IndexError):
            return Stats(0, 0.0)
        _, pages, ticks = tree_usage(rest, self.pid)
        percent = 0.0
        if self._cpu_last is not None and uptime > self._cpu_last[0]:
            used = (ticks - self._cpu_last[1]) / self._tick
            percent = max(0.0, used / (uptime - self._cpu_last[0]) * 100)
        self._cpu_last = (uptime, ticks)
        return Stats(rss_bytes=pages * self._page, cpu_percent=percent)

    def _fetch_tail(self, n: int) -> list[str]:
        if self.conn is None or self.work is None or not self.conn.active():
            return []
        try:
            done = self.conn.run(f"tail -n {int(n)} -- {q(self.work + '/release.log')} 2>/dev/null")
        except RemoteFailure:
            return []
        return done.output.splitlines()[-n:]

    def logs(self, n: int = 50) -> list[str]:
        lines = self._fetch_tail(n) if self._status is None else []
        if lines:
            self._tail.clear()
            self._tail.extend(lines)
        extra = [self.conn.lost] if self.conn is not None and self.conn.lost else []
        if self.failure is not None:
            extra = []
        return (list(self._tail) + extra)[-n:]

    def stop(self, grace: float = 10.0) -> int:
        if self._status is not None:
            return self._status
        if self.failure is not None:
            self._status = LOST_STATUS
            return self._status
        self._status = self.teardown(grace)
        return self._status

    def teardown(self, grace: float) -> int:
        """SIGTERM, SIGKILL after `grace`, read the log, remove the run dir, disconnect.
        Returns the release's exit status, or 255 when it cannot be known."""
        status = LOST_STATUS
        conn = self.conn
        try:
            if conn is not None and self._chan is not None and conn.active():
                self._stop_sent = True
                self._send(self._chan, f"stop {max(0.0, grace):.3f}\n")
                self._exited.wait(grace + self.options.command_timeout_s)
                if self._exit is not None:
                    status = self._exit
                self._before_reap(conn)
                self._collect_log()
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    self._chan.shutdown_write()  # EOF: the wrapper removes the run dir
                    self._chan.status_event.wait(self.options.command_timeout_s)
                self._remove(conn, wrapper_ran=True)
            elif conn is not None and conn.active():
                with contextlib.suppress(RemoteFailure):  # start failed before the wrapper ran
                    if self._partial is not None:
                        conn.run(f"rm -f -- {q(self._partial)}")
                    self._remove(conn, wrapper_ran=False)
            elif self._chan is not None:  # the host is out of reach
                self._unverified(conn.lost if conn is not None and conn.lost else "not connected")
        finally:
            if self.forwarder is not None:
                self.forwarder.close()
            if self._follower is not None:
                self._follower.close()
            if self._chan is not None:
                self._chan.close()
            if conn is not None:
                conn.close()
        return status

    def _collect_log(self) -> None:
        """The rest of the release's stdout once it has exited: the follower reads to the end
        (tail exits after the release); if it cannot, the bytes it did not read are fetched."""
        assert self.conn is not None and self.work is not None
        follower, thread = self._follower, self._follow_thread
        complete = False
        if follower is not None and thread is not None:
            thread.join(FOLLOW_DRAIN_S)
            complete = not thread.is_alive() and follower.exit_status_ready()
            complete = complete and follower.recv_exit_status() == 0
            if not complete:
                follower.close()
                thread.join(2.0)
        if not complete and (thread is None or not thread.is_alive()):
            log = q(self.work + "/release.log")
            with contextlib.suppress(RemoteFailure):
                done = self.conn.run(
                    f"tail -c +{self._log_offset + 1} -- {log} | head -c {LOG_FETCH_BYTES}"
                )
                self._feed(done.output.encode())
        if self._log_rest:
            self._feed(b"\n")

    # --- hooks: what a sandbox does differently (RemoteSandboxInstance)

    def _probe_more(self) -> str:
        """More of the host to probe (a sandbox: is runsc there)."""
        return ""

    def _check_missing(self, missing: list[str]) -> None:
        """Refuse a host that lacks what this instance needs beyond TOOLS."""

    def _prepare(self, root: str, env: dict[str, str]) -> bool:
        """Before the start (a sandbox: its bundle and cgroup); True when `env` went there."""
        return False

    def _exit_reason(self, status: int) -> str:
        return f"exited with status {status} before it was ready"

    def _before_reap(self, conn: Connection) -> None:
        """At the stop, before the wrapper reaps what it started (a sandbox: its last state)."""

    def _remove(self, conn: Connection, *, wrapper_ran: bool) -> None:
        """What stays on the host after the stop: the wrapper removes the run dir it ran in."""
        if not wrapper_ran and self.work is not None:
            conn.run(f"rm -rf -- {q(self.work)}")

    def _unverified(self, why: str) -> None:
        """The host went out of reach before the stop could be checked there."""

    def __enter__(self) -> RemoteInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0 if exc and exc[0] is KeyboardInterrupt else self.options.stop_grace_s)


class RemoteSandboxInstance(RemoteInstance):
    """The release on the host inside gVisor: runtime/gvisor.py's OCI bundle and cgroup, run
    by runsc under the same wrapper; what GvisorInstance offers week 2, done on the host."""

    def __init__(self, runtime: Host, spec: LaunchSpec):
        super().__init__(runtime, spec)
        self.cid: str = gvisor.container_id(spec.run_id)
        self.sandbox = RemoteSandbox(self.cid)
        self.final: gvisor.CgroupReading | None = None  # the cgroup as the sandbox ended
        self.oom: gvisor.OomKill | None = None  # the kernel killed it at its limit
        self._runsc_log: list[str] = []

    def _prepare_sandbox(self, root: str, env: dict[str, str]) -> None:
        """gvisor on the host: the OCI bundle of runtime/gvisor.py and its memory cgroup."""
        assert self.conn is not None and self.work is not None
        limits = self.runtime.limits
        args = [f"{limits.mount_point.rstrip('/')}/bin/{self.spec.name}", "foreground"]
        inside = self.runtime.sandbox_env(env, self.port, self.spec.host)
        config = gvisor.oci_config(limits, self.cid, args, inside, Path(root))
        bundle = self.sandbox.bundle = f"{self.work}/bundle"
        cgroup = f"/sys/fs/cgroup/memory/{self.cid}"
        self.conn.must(
            f"umask 077 && mkdir -- {q(bundle)} && cat > {q(bundle + '/config.json')} && "
            f"chmod o+x {q(self.work)} {q(self.work + '/release')} && "
            f"mkdir -- {q(cgroup)} && printf '%s' {limits.memory_bytes} > {q(cgroup + '/memory.limit_in_bytes')}",
            "preparing the gVisor sandbox (root and the cgroup v1 memory controller needed)",
            stdin=json.dumps(config).encode(),
        )

    # --- the hooks

    def _probe_more(self) -> str:
        runsc = self._runsc_name()
        return f"; command -v {q(runsc)} >/dev/null 2>&1 || printf 'missing %s\\n' {q(runsc)}"

    def _check_missing(self, missing: list[str]) -> None:
        if self._runsc_name() in missing:
            raise RemoteFailure(
                f"{self.runtime.target} lacks runsc ({self._runsc_name()!r} not found on the "
                f"host): {gvisor.INSTALL}"
            )

    def _prepare(self, root: str, env: dict[str, str]) -> bool:
        self._prepare_sandbox(root, env)
        return True

    def _launcher(self, root: str, envfile: str) -> str:
        assert self.work is not None
        return (
            f"setsid {q(self._runsc_name())} --network=host --log {q(self.work + '/runsc.log')} "
            f"--log-format text run --bundle {q(self.work + '/bundle')} {q(self.cid)}"
        )

    def _term(self) -> str:
        return f"{q(self._runsc_name())} kill {q(self.cid)} TERM"

    def _reap(self) -> str:
        runsc, cid = q(self._runsc_name()), q(self.cid)
        return (
            f"{runsc} delete -force {cid}; "
            f'for d in /sys/fs/cgroup/*/{cid}; do [ -d "$d" ] && rmdir "$d"; done'
        )

    def _exit_reason(self, status: int) -> str:
        oom = self.oom_kill()
        if oom:
            return oom.reason
        reason = super()._exit_reason(status)
        last = runsc_log(self.conn, self._runsc_log_path(), 20)
        return f"{reason}: {last[-1].removeprefix('runsc: ')}" if last else reason

    def _before_reap(self, conn: Connection) -> None:
        self.final = read_cgroup(conn, self.cid)
        self.oom = self.oom_kill()
        self._runsc_log = runsc_log(conn, self._runsc_log_path(), 50)

    def _remove(self, conn: Connection, *, wrapper_ran: bool) -> None:
        self.sandbox.leftovers = remove_sandbox(conn, self._runsc_name(), self.cid, self.work)

    def _unverified(self, why: str) -> None:
        self.sandbox.leftovers = [f"not verified on the host: {why}"]

    def stats(self) -> Stats:
        if self.conn is None or not self.pid or not self.alive():
            return Stats(0, 0.0)
        return self._sandbox_stats()

    def logs(self, n: int = 50) -> list[str]:
        """The release's log, then runsc's own, as runtime/gvisor.py has it."""
        runsc = self._runsc_log
        if self._status is None:
            runsc = runsc_log(self.conn, self._runsc_log_path(), n) or runsc
        return super().logs(n) + runsc[-n:]

    # --- what runtime/gvisor.py's instance offers week 2

    @property
    def id(self) -> str | None:
        return self.cid

    @property
    def limits(self) -> gvisor.Limits:
        return self.runtime.limits

    @property
    def runsc(self) -> RemoteRunsc:
        """runsc on the host over this instance's connection."""
        return RemoteRunsc(self._runsc_name(), conn=self.conn)

    def _runsc_log_path(self) -> str | None:
        return f"{self.work}/runsc.log" if self.work and self.cid else None

    def cgroup(self) -> gvisor.CgroupReading:
        """The sandbox's cgroup read back on the host (as it ended, once stopped)."""
        if self.final is not None:
            return self.final
        if self.conn is None or self.cid is None or not self.conn.active():
            return NO_CGROUP
        return read_cgroup(self.conn, self.cid)

    def oom_kill(self) -> gvisor.OomKill | None:
        """An OOM kill, once the sandbox has died of one on its own (exit 137, the cgroup's
        failcnt or oom_kill)."""
        if self.oom is not None:
            return self.oom
        if self.cid is None or self._exit is None or not self._own_exit:
            return None
        return gvisor.judge_oom(self._exit, self.cgroup(), self.limits.memory_bytes)

    def exec(
        self, argv: list[str], *, as_release: bool = True, timeout: float = 15.0
    ) -> gvisor.ExecResult:
        """`runsc exec` inside the running sandbox (as the release's uid:gid by default)."""
        if self.cid is None:
            return gvisor.ExecResult(tuple(argv), -1, "", "no sandbox")
        limits = self.limits
        user = f"{limits.uid}:{limits.gid}" if as_release else None
        return self.runsc.exec(self.cid, argv, user=user, timeout=timeout)

    def sandbox_pid(self) -> int | None:
        state = self.runsc.state(self.cid) if self.cid else None
        pid = state.get("pid") if state else None
        return pid if isinstance(pid, int) and pid > 0 else None

    def ps(self) -> list[dict[str, Any]]:
        return self.runsc.ps(self.cid) if self.cid else []

    def _sandbox_stats(self) -> Stats:
        """Memory from the cgroup, CPU % of one core from `runsc events --stats` deltas over
        the host's uptime: one command on the host."""
        assert self.conn is not None and self.cid is not None
        memory = q(f"{gvisor.CGROUP_ROOT}/memory/{self.cid}/memory.usage_in_bytes")
        script = (
            f"cat /proc/uptime; cat -- {memory} 2>/dev/null || echo -; "
            f"timeout 5 {q(self._runsc_name())} events --stats {q(self.cid)} 2>/dev/null "
            "| head -n 1"
        )
        try:
            lines = self.conn.run(script).output.splitlines()
        except RemoteFailure:
            return Stats(0, 0.0)
        try:
            uptime = float(lines[0].split()[0])
        except (ValueError, IndexError):
            return Stats(0, 0.0)
        usage = int(lines[1]) if len(lines) > 1 and lines[1].strip().isdigit() else 0
        total = None
        with contextlib.suppress(ValueError, LookupError, TypeError):
            cpu = json.loads(lines[2])["data"]["cpu"]["usage"]["total"]
            total = int(cpu) if isinstance(cpu, int) else None
        percent = 0.0
        if total is not None:
            last = self._cpu_last
            if last is not None and uptime > last[0] and total >= last[1]:
                percent = (total - last[1]) / 1e9 / (uptime - last[0]) * 100
            self._cpu_last = (uptime, total)
        return Stats(rss_bytes=usage, cpu_percent=percent)
