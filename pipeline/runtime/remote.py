"""The `remote` runtime: the release on a Linux host over SSH, built on fabric and paramiko.

`invoke phase2.week3 --host user@host[:port] [--identity KEY] [--known-hosts FILE]` runs the same
phase as on this machine; only where the release runs changes. One SSH connection carries it all:

- Trust: keys or an agent only (never a password: none is ever passed, so paramiko never tries
  one); the host key is checked against a known_hosts file (default ~/.ssh/known_hosts, or
  ``[remote] known_hosts``). An unknown key is refused with a PipelineError before any receipt is
  written (exit 2), unless ``accept_new_host_key``: then it is added to that file. A *changed* key
  is always refused. SSH and fabric config files are not read: the flags are the whole story.
- Upload: the tarball is validated here first (`release.inspect` refuses unsafe members), then
  put with fabric into ``<dir>/uploads/<name>`` — skipped when a file there already has the same
  sha256 (`sha256sum` remotely). A new upload goes to a temporary name, is checked by sha256 and
  only then renamed into place, so a broken upload never looks complete.
- Extract: remotely with `tar` into a fresh ``<dir>/runs/<run-id>-<rand>/release`` (`mkdir`
  refuses an existing dir), ``--no-same-owner --no-same-permissions``. That is safe because the
  bytes tar reads are the bytes `inspect` validated here (same sha256), and inspect refuses every
  member the local extraction would refuse (absolute paths, `..`, links leaving the tree, devices).
  (The other way — uploading release.py's logic as a Python script — needs python3 on the host;
  tar, sha256sum, setsid, timeout and tail are everywhere GNU coreutils and util-linux are.)
- Start: ``bin/<name> foreground`` in its own session (setsid), its environment in a 0600 file
  that is sourced and deleted at start (values never appear on a command line), under a small
  POSIX sh wrapper on one SSH channel that reports ``pid N`` and ``exit N``. Its stdin is the
  channel: a line ``stop G`` stops the release (SIGTERM, SIGKILL to its process group after G s);
  EOF — the connection is gone — does the same and removes the run dir, so a vanished pipeline
  never leaves a release running there. A frozen link sends no EOF: the release holds a lease
  that we renew (a ``renew`` line every lease_s/3); with no line for ``[remote] lease_s`` the
  wrapper stops it the same way. (Chosen over a remote supervisor: nothing to install on the
  host, and the lease lives and dies with the channel that started the release.) On our side a
  keepalive wanting a reply goes out every keepalive_s; none within as long marks the
  connection lost, which ends the running stage at once (the liveness watch). Every value put in a remote command is shlex-quoted, and
  every script runs under ``sh -c`` whatever the login shell.
- Port: the release listens on the host's 127.0.0.1; a listener on this machine's 127.0.0.1
  serves each connection over a ``direct-tcpip`` channel of the same SSH connection, so the
  readiness, smoke and load probes run here against ``instance.url``.
- Stats: ``/proc/<pid>/stat`` of the release's process tree (RSS pages and CPU ticks), read over
  SSH; CPU percent from the host's own uptime between samples (gvisor: memory from the sandbox's
  cgroup, CPU from ``runsc events --stats``, as runtime/gvisor.py). logs(n) tails the remote log;
  the release's stdout receipts are counted live (``tail -f --pid`` on a channel of its own).
- The env file names the runtime on the host: `process`, or `gvisor` when runsc is there (the same
  OCI config as runtime/gvisor.py, written to a bundle in the run dir; the memory cgroup is made
  first so its limit holds).

Week 2 on the host (`invoke phase2.week2 --host …`): with gvisor the runtime and its instances
offer what runtime/gvisor.py's do, each done on the host over SSH with every argument quoted —
``runsc`` (RemoteRunsc: gvisor.Runsc's subcommands and parsing: info, state, events, exec, ps,
list), ``limits``, ``sandbox_env``, ``probe()`` (a short sandbox with the limits, its cgroup read
back), ``host_info()`` (the host's kernel and CPUs), ``native()`` (the same host, the release as a
process: the comparison run), and per instance ``cgroup()``, ``oom_kill()``, ``exec()``, ``ps()``,
``sandbox_pid()``, ``final``, ``oom`` and ``sandbox`` (id, bundle, leftovers). At the stop the
cgroup is read once more before the wrapper removes it (an OOM kill's evidence), then the
container, cgroups and run dir are removed and that is checked on the host.

Failures are bounded and clear: connection refused, timeouts, authentication failure, a full
remote disk, a host that goes away mid-phase. Until the release runs, `start()` does not raise: a
failure is kept and `wait_ready()` raises StartupFailed with it, so the phase writes an `error`
receipt and the gate fails. After that, a lost connection makes `alive()` false, `stats()` zero
and `stop()` return 255 (ssh's own code for a connection error), each at once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from pipeline.errors import PipelineError
from pipeline.runtime import gvisor
from pipeline.runtime.base import LaunchSpec
from pipeline.runtime.readiness import NotReady
from pipeline.runtime.remote_gvisor import (
    RemoteRunsc,
    boot_total_memory,
    read_cgroup,
    remote_base,
    remove_sandbox,
    run_dir,
    runsc_log,
)
from pipeline.runtime.remote_instance import (
    RemoteInstance,
    RemoteOptions,
    RemoteSandboxInstance,
)
from pipeline.ssh.connection import (
    Connection,
    HostKeyPolicy,
    RemoteFailure,
    Target,
    UnknownHostKey,
    describe,
    q,
)
from pipeline.waiting import WaitTimeout, poll

DEFAULT_OPTIONS = RemoteOptions()

# ------------------------------------------------------------------------------ the runtime


class RemoteRuntime:
    """A host over SSH; on it, the release runs as a process or (gvisor) in a runsc sandbox."""

    name = "remote"

    def __init__(
        self,
        target: Target | str,
        *,
        identity: str | Path | None = None,
        known_hosts: str | Path = "~/.ssh/known_hosts",
        accept_new_host_key: bool = False,
        options: RemoteOptions = DEFAULT_OPTIONS,
        inner: str = "process",
        sandbox: Any = None,
        tarball: str | Path | None = None,
        preflight: bool = True,
    ):
        self.target = target if isinstance(target, Target) else Target.parse(target)
        self.identity = Path(identity).expanduser() if identity else None
        if self.identity is not None and not self.identity.is_file():
            raise PipelineError(f"--identity {self.identity}: no such key file")
        self.known_hosts = Path(known_hosts).expanduser()
        if self.known_hosts.exists() and not self.known_hosts.is_file():
            raise PipelineError(f"--known-hosts {self.known_hosts}: not a file")
        self.accept_new_host_key = accept_new_host_key
        self.options = options
        if inner not in ("process", "gvisor"):
            raise PipelineError(f"runtime {inner!r} cannot run on a remote host (process, gvisor)")
        self.inner = inner
        self.sandbox = sandbox
        self.tarball = Path(tarball) if tarball else None
        self.host_key_added: str | None = None
        self.unreachable: str | None = None  # the pre-flight's network failure, kept for start()
        self.host_check_s = 0.0
        self.instances: list[RemoteInstance] = []
        if preflight:
            self.verify_host()

    @classmethod
    def for_env(cls, env: Any, host: str, **kw: Any) -> RemoteRuntime:
        """The env's [remote] settings, its runtime (process or gvisor) run on `host`."""
        settings = env.remote
        if kw.get("known_hosts") is None:
            kw["known_hosts"] = settings.known_hosts
        options = RemoteOptions(
            dir=settings.dir,
            connect_timeout_s=settings.connect_timeout_s,
            command_timeout_s=settings.command_timeout_s,
            upload_timeout_s=settings.upload_timeout_s,
            keepalive_s=settings.keepalive_s,
            stop_grace_s=env.start.stop_grace_s,
            lease_s=settings.lease_s,
        )
        inner = env.runtime if env.runtime in ("process", "gvisor") else "process"
        return cls(host, options=options, inner=inner, sandbox=env.sandbox, **kw)

    # --- SSH

    def _client(self) -> tuple[paramiko.SSHClient, HostKeyPolicy]:
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            try:
                client.load_host_keys(str(self.known_hosts))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise PipelineError(f"known_hosts {self.known_hosts}: unreadable ({exc})") from None
        policy = HostKeyPolicy(self.known_hosts, self.accept_new_host_key)
        client.set_missing_host_key_policy(policy)
        return client, policy

    def _timeouts(self) -> dict[str, float]:
        t = self.options.connect_timeout_s
        return {"timeout": t, "banner_timeout": t, "auth_timeout": t, "channel_timeout": t}

    def _auth(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"allow_agent": True, "look_for_keys": self.identity is None}
        if self.identity is not None:
            kwargs["key_filename"] = [str(self.identity)]
        return kwargs

    def verify_host(self) -> None:
        """Before any receipt: the host key and our key. An unknown or changed host key, or a
        key the host refuses, is a PipelineError now (bad input: exit 2, as a missing key file
        is); a network failure is kept for start(), which records it in the run. How long this
        took is `host_check_s` (the run record's `remote`)."""
        client, policy = self._client()
        began = time.monotonic()
        try:
            client.connect(
                self.target.host,
                self.target.port,
                self.target.user,
                **self._auth(),
                **self._timeouts(),
            )
        except (
            UnknownHostKey,
            paramiko.BadHostKeyException,
            paramiko.AuthenticationException,
            paramiko.PasswordRequiredException,
        ) as exc:
            raise PipelineError(describe(exc, self.target, self.identity)) from None
        except Exception as exc:  # noqa: BLE001 — refused, timeout, …: the phase reports it
            self.unreachable = describe(
                exc, self.target, self.identity, self.options.connect_timeout_s
            )
        finally:
            client.close()
            self.host_check_s = round(time.monotonic() - began, 3)
        self.host_key_added = policy.added

    @property
    def run_facts(self) -> dict[str, Any]:
        """For the run's first line: where it runs, and the pre-flight's time and outcome."""
        return {
            "target": str(self.target),
            "host_check_s": self.host_check_s,
            "reachable": self.unreachable is None,
        }

    def connect(self) -> Connection:
        """An authenticated connection (fabric), or RemoteFailure saying why not."""
        from fabric import Config
        from fabric import Connection as FabricConnection

        if self.unreachable is not None:
            raise RemoteFailure(self.unreachable)
        kwargs: dict[str, Any] = {**self._auth(), **self._timeouts()}
        # lazy: no fabric/invoke config files; an empty SSHConfig: no ~/.ssh/config either
        config = Config(lazy=True, ssh_config=paramiko.SSHConfig())
        fab = FabricConnection(
            self.target.host,
            user=self.target.user,
            port=self.target.port,
            config=config,
            connect_kwargs=kwargs,
        )
        fab.client, _ = self._client()
        try:
            fab.open()
        except Exception as exc:  # noqa: BLE001 — every way of failing becomes one clear line
            with contextlib.suppress(Exception):
                fab.close()
            raise RemoteFailure(
                describe(exc, self.target, self.identity, self.options.connect_timeout_s)
            ) from None
        transport = fab.client.get_transport()
        if transport is not None:
            with contextlib.suppress(OSError, AttributeError):  # small requests, no Nagle stalls
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.options.keepalive_s > 0:
                transport.set_keepalive(max(1, round(self.options.keepalive_s)))
        return Connection(fab, self.target, self.options.command_timeout_s)

    # --- the Runtime interface

    def start(self, spec: LaunchSpec) -> RemoteInstance:
        kind = RemoteSandboxInstance if self.inner == "gvisor" else RemoteInstance
        instance = kind(self, spec)
        self.instances.append(instance)
        try:
            instance.launch()
        except RemoteFailure as exc:
            instance.failed(str(exc))
        except PipelineError as exc:
            instance.failed(str(exc))
        except BaseException:
            instance.teardown(0.0)
            raise
        return instance

    # --- gvisor on the host: what week 2 asks of a sandbox runtime (as runtime/gvisor.py has it)

    @property
    def runsc_name(self) -> str:
        return str(getattr(self.sandbox, "runsc", "runsc") or "runsc")

    @property
    def limits(self) -> gvisor.Limits:
        if self.sandbox is None:
            raise PipelineError("the remote runtime has no [sandbox] settings (runtime gvisor)")
        return gvisor.Limits.of(self.sandbox)

    sandbox_env = staticmethod(gvisor.GvisorRuntime.sandbox_env)

    @property
    def runsc(self) -> RemoteRunsc:
        """runsc on the host, before any instance: each command on a connection of its own."""
        return RemoteRunsc(self.runsc_name, connect=self.connect)

    def host_info(self) -> dict[str, Any]:
        """The host's kernel release and CPU count (None each when it cannot be reached)."""
        facts: dict[str, Any] = {"host": str(self.target), "kernel": None, "cpus": None}
        try:
            conn = self.connect()
        except RemoteFailure as exc:
            return {**facts, "error": str(exc)}
        try:
            words = conn.run("uname -r; getconf _NPROCESSORS_ONLN").output.split()
        except RemoteFailure as exc:
            return {**facts, "error": str(exc)}
        finally:
            conn.close()
        if len(words) >= 2 and words[1].isdigit():
            facts.update(kernel=words[0], cpus=int(words[1]))
        return facts

    def native(self) -> RemoteRuntime:
        """The native comparison run: the same host, the same connection settings, the release
        as a plain process (like with like: probed through the same kind of forwarded port)."""
        twin = RemoteRuntime(
            self.target,
            identity=self.identity,
            known_hosts=self.known_hosts,
            accept_new_host_key=self.accept_new_host_key,
            options=self.options,
            inner="process",
            sandbox=self.sandbox,
            tarball=self.tarball,
            preflight=False,
        )
        twin.unreachable = self.unreachable
        return twin

    def probe(self, run_id: str, timeout: float = 15.0) -> gvisor.ProbeReport:
        """gvisor.GvisorRuntime.probe() on the host: a sandbox with the limits and a shell
        instead of the release, its cgroup read back while it runs, then removed. Its run dir
        (bundle, runsc log) is under the remote dir; a watchdog on the host removes it all when
        the connection goes, whatever happens here."""
        cid = gvisor.container_id(run_id, "probe")
        try:
            conn = self.connect()
        except RemoteFailure as exc:
            return gvisor.ProbeReport(cid, False, None, None, None, {}, str(exc), [], [])
        probe = _Probe(self, conn, cid)
        try:
            return probe.run(run_id, timeout)
        finally:
            conn.close()


class _Probe:
    """One probe sandbox on the host (RemoteRuntime.probe)."""

    def __init__(self, runtime: RemoteRuntime, conn: Connection, cid: str):
        self.runtime = runtime
        self.conn = conn
        self.cid = cid
        self.runsc = RemoteRunsc(runtime.runsc_name, conn=conn)
        self.work: str | None = None
        self.lines: deque[str] = deque(maxlen=200)
        self.exit: int | None = None
        self.marker = f"__taiea_probe_exit_{secrets.token_hex(6)}__"

    def run(self, run_id: str, timeout: float) -> gvisor.ProbeReport:
        reading, total, error, pid, inside = None, None, None, None, {}
        chan: paramiko.Channel | None = None
        reader: threading.Thread | None = None
        tail: list[str] = []
        try:
            self.check_host()
            base = remote_base(self.conn, self.runtime.options.dir, self.home())
            chan = self.start(run_dir(base, run_id, "probe"))
            reader = threading.Thread(target=self.read, args=(chan,), daemon=True)
            reader.start()

            def ready() -> bool | None:
                if "probe-ready" in self.lines:
                    return True
                if self.exit is not None:
                    raise NotReady(f"runsc exited with status {self.exit}")
                if not self.conn.active():
                    raise NotReady(self.conn.lost or "the SSH connection is gone")
                return None

            poll(ready, timeout=timeout, interval=0.02, what="the probe sandbox")
            reading = read_cgroup(self.conn, self.cid)
            state = self.runsc.state(self.cid)
            pid = state.get("pid") if state else None
            total = boot_total_memory(self.conn, pid)
            inside = gvisor.probe_output(list(self.lines))
        except (WaitTimeout, NotReady, RemoteFailure) as exc:
            error = str(exc)
            last = runsc_log(self.conn, self.log_path, 20)
            if self.exit is not None and last:
                error += f": {last[-1].removeprefix('runsc: ')}"
        finally:
            tail = [*list(self.lines)[-20:], *runsc_log(self.conn, self.log_path, 50)]
            if chan is not None:  # EOF: the watchdog kills, deletes and removes the sandbox
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    chan.shutdown_write()
                    chan.status_event.wait(self.conn.command_timeout + 10)
                chan.close()
            if reader is not None:
                reader.join(2.0)
            left = remove_sandbox(self.conn, self.runsc.path, self.cid, self.work)
        return gvisor.ProbeReport(
            self.cid, error is None, pid, reading, total, inside, error, tail, left
        )

    @property
    def log_path(self) -> str | None:
        return f"{self.work}/runsc.log" if self.work else None

    def home(self) -> str:
        home = self.conn.must('printf "%s" "$HOME"', "probing the host").output.strip()
        if not home.startswith("/"):
            raise RemoteFailure(f"{self.runtime.target}: no home directory ($HOME is {home!r})")
        return home

    def check_host(self) -> None:
        """What runtime/gvisor.py's check_host() asks of this machine, asked of the host."""
        runsc = q(self.runsc.path)
        done = self.conn.run(
            f"command -v {runsc} >/dev/null 2>&1 || echo no-runsc; "
            '[ "$(id -u)" = 0 ] || echo not-root; '
            f"[ -f {gvisor.CGROUP_ROOT}/memory/memory.limit_in_bytes ] || echo no-cgroup-v1"
        )
        where = f"{self.runtime.target}"
        if "no-runsc" in done.output:
            raise RemoteFailure(
                f"{where}: runtime gvisor needs runsc ({self.runsc.path!r} not found on the host): "
                f"{gvisor.INSTALL}"
            )
        if "not-root" in done.output:
            raise RemoteFailure(f"{where}: runtime gvisor needs root on the host (cgroups, runsc)")
        if "no-cgroup-v1" in done.output:
            raise RemoteFailure(
                f"{where}: runtime gvisor needs the cgroup v1 memory controller on the host"
            )

    def start(self, work: str) -> paramiko.Channel:
        limits = self.runtime.limits
        bundle, cgroup = f"{work}/bundle", f"{gvisor.CGROUP_ROOT}/memory/{self.cid}"
        argv = ["/bin/sh", "-c", gvisor.PROBE_SCRIPT]
        config = gvisor.oci_config(limits, self.cid, argv, {}, None)
        self.conn.must(f"umask 077 && mkdir -- {q(work)}", f"creating the probe's run dir {work}")
        self.work = work
        self.conn.must(
            f"umask 077 && mkdir -- {q(bundle)} && cat > {q(bundle + '/config.json')} && "
            f"mkdir -- {q(cgroup)} && "
            f"printf '%s' {limits.memory_bytes} > {q(cgroup + '/memory.limit_in_bytes')}",
            "preparing the probe sandbox",
            stdin=json.dumps(config).encode(),
        )
        runsc, cid = q(self.runsc.path), q(self.cid)
        script = "\n".join(
            [
                f"cd {q(bundle)} || exit 97",
                f"{runsc} --network=host --log {q(self.log_path)} --log-format text "
                f"run --bundle {q(bundle)} {cid} </dev/null 2>&1 &",
                "pid=$!",
                "exec 3<&0",
                "(",
                "  cat <&3 >/dev/null",
                f'  kill -0 "$pid" 2>/dev/null && {runsc} kill {cid} KILL',
                '  timeout 10 tail -s 0.1 --pid="$pid" -f /dev/null',
                f"  {runsc} delete -force {cid}",
                f'  for d in {gvisor.CGROUP_ROOT}/*/{cid}; do [ -d "$d" ] && rmdir "$d"; done',
                f"  rm -rf -- {q(work)}",
                ") >/dev/null 2>&1 &",
                "exec 3<&-",
                'wait "$pid"',
                f"printf '\\n%s %s\\n' {q(self.marker)} \"$?\"",
                "wait",
            ]
        )
        return self.conn.session(script)

    def read(self, chan: paramiko.Channel) -> None:
        buffer = b""
        chan.settimeout(None)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := chan.recv(4096):
                buffer += data
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").strip()
                    word, _, value = line.partition(" ")
                    if word == self.marker and value.lstrip("-").isdigit():
                        self.exit = int(value)
                    elif line:
                        self.lines.append(line)


def remote_factory(
    host: str,
    *,
    tarball: str | Path,
    identity: str | None = None,
    known_hosts: str | None = None,
    accept_new_host_key: bool = False,
) -> Callable[[Any], RemoteRuntime]:
    """The `runtime_factory` the phase tasks pass for `--host`; the target is checked now."""
    Target.parse(host)
    if identity and not Path(identity).expanduser().is_file():
        raise PipelineError(f"--identity {identity}: no such key file")

    def factory(env: Any) -> RemoteRuntime:
        return RemoteRuntime.for_env(
            env,
            host,
            identity=identity,
            known_hosts=known_hosts,
            accept_new_host_key=accept_new_host_key,
            tarball=tarball,
        )

    return factory
