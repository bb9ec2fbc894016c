"""One SSH connection to a host: the target (user@host:port), host keys checked against a
known_hosts file (new ones only with consent), key or agent authentication, and commands with
bounded waits — a persistent shell for short ones, a channel of its own for long ones.
bench/bench_ssh_commands.py weighed the shell against a channel per command on a local sshd:
2.5 ms against 95 ms per command (fabric's `run` 109 ms, OpenSSH multiplexed sessions 121 ms),
so the remote monitor's samples and the runsc calls stay on the shell."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import secrets
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from pipeline.errors import PipelineError

# paramiko logs every refused forward (each readiness poll before the release listens) as a
# warning; with no handler Python would print them. Failures here are reported as receipts.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

LOST_STATUS = 255  # the release's state is unknown: the connection is gone (ssh's own code)
_TARGET = re.compile(
    r"^(?:(?P<user>[^@\s:/]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$"
)


def q(value: object) -> str:
    """One shell word, whatever the value holds."""
    return shlex.quote(str(value))


class RemoteFailure(Exception):
    """Something on the way to a running release failed; the message is the whole story."""


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, name: str, key: paramiko.PKey, path: Path):
        self.name, self.key, self.path = name, key, path
        super().__init__(
            f"unknown host key for {name} ({key.get_name()} {key.fingerprint}): it is not in "
            f"{path}; check the fingerprint with the host's owner, then pass "
            "--accept-new-host-key to add it"
        )


# ------------------------------------------------------------------------------ the target


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str) -> Target:
        """``user@host[:port]`` (user defaults to the local user; ``[v6addr]`` for IPv6)."""
        match = _TARGET.match(text.strip())
        port = int(match.group("port")) if match and match.group("port") else 22
        if match is None or not 0 < port < 65536:
            raise PipelineError(f"--host {text!r}: expected user@host[:port]")
        return cls(match.group("user") or getpass.getuser(), match.group("host").strip("[]"), port)

    @property
    def key_name(self) -> str:
        """The host's name in known_hosts, as OpenSSH writes it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refused, or (accept_new) appended to the known_hosts file and trusted."""

    def __init__(self, path: Path, accept_new: bool):
        self.path = path
        self.accept_new = accept_new
        self.added: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        if not self.accept_new:
            raise UnknownHostKey(hostname, key, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.added = f"{key.get_name()} {key.fingerprint}"


def describe(
    exc: BaseException, target: Target, identity: Path | None, timeout: float | None = None
) -> str:
    """One line saying what went wrong reaching the host (never any key material)."""
    where = f"{target.user}@{target.host}:{target.port}"
    if isinstance(exc, paramiko.SSHException) and str(exc) in (
        "No existing session",  # paramiko's word once the banner wait ran out
        "Error reading SSH protocol banner",
    ):
        within = f" in {timeout:g} s" if timeout else ""
        return (
            f"{target.host}:{target.port} accepted TCP but sent no SSH banner{within} "
            "(not an SSH server, or one too busy to answer)"
        )
    if isinstance(exc, UnknownHostKey):
        return str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"host key for {target.key_name} CHANGED ({exc.key.get_name()} {exc.key.fingerprint}, "
            f"expected {exc.expected_key.fingerprint}): refusing to connect (a man-in-the-middle, "
            "or a reinstalled host: fix known_hosts by hand)"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return f"identity {identity} is encrypted: load it into an ssh-agent first"
    if isinstance(exc, paramiko.AuthenticationException):
        tried = f"identity {identity}" if identity else "the default keys"
        agent = " and the ssh-agent" if os.environ.get("SSH_AUTH_SOCK") else ""
        return f"authentication failed for {where} ({tried}{agent}; keys only, never a password)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errors = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errors <= {111}:
            return f"connection refused by {target.host}:{target.port} (no SSH server listening)"
        return f"cannot connect to {target.host}:{target.port}: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {target.host}:{target.port} (no SSH server listening)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {target.host}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {target.host}:{target.port} in time (connect timeout)"
    if isinstance(exc, paramiko.SSHException | EOFError):
        return f"SSH to {where} failed: {exc or type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
    return f"SSH to {where} failed: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Done:
    status: int
    output: str

    def tail(self, n: int = 5) -> str:
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return " | ".join(lines[-n:])


class Connection:
    """One SSH connection (fabric): commands with deadlines, uploads, channels."""

    def __init__(self, fabric_conn: Any, target: Target, command_timeout: float):
        self.fabric = fabric_conn
        self.target = target
        self.command_timeout = command_timeout
        self.lost: str | None = None  # why the connection went away (not when we closed it)
        self.closed = False
        self._shell: paramiko.Channel | None = None
        self._shell_lock = threading.Lock()
        self._marker = f"__taiea_done_{secrets.token_hex(8)}__".encode()

    @property
    def transport(self) -> paramiko.Transport:
        if not self.active():
            raise RemoteFailure(self.lost or "the SSH connection is closed")
        transport: paramiko.Transport = self.fabric.client.get_transport()
        return transport

    def mark_lost(self, why: str) -> None:
        if self.lost is None and not self.closed:
            self.lost = f"lost the SSH connection to {self.target}: {why}"
        with contextlib.suppress(Exception):
            self.fabric.close()

    def active(self) -> bool:
        if self.lost is not None or self.closed:
            return False
        transport = self.fabric.client.get_transport()
        if transport is None or not transport.is_active():
            self.mark_lost("the host closed it, or went away")
            return False
        return True

    def answers(self, timeout: float) -> bool:
        """A keepalive that wants a reply (OpenSSH's keepalive@openssh.com; any reply counts,
        a refusal too). None in `timeout` s: the connection is marked lost, as frozen."""
        if not self.active():
            return False
        transport = self.fabric.client.get_transport()
        replied = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):
                transport.global_request("keepalive@openssh.com", wait=True)
            replied.set()

        threading.Thread(target=ask, name="ssh-keepalive", daemon=True).start()
        if replied.wait(timeout):
            return self.active()
        self.mark_lost(f"keepalive: no answer in {timeout:g} s")
        return False

    def check(self) -> None:
        if not self.active():
            raise RemoteFailure(self.lost or "not connected")

    def session(self, script: str, *, combine: bool = False) -> paramiko.Channel:
        """A channel running `script` under POSIX sh (whatever the login shell is)."""
        self.check()
        try:
            chan = self.transport.open_session(timeout=self.command_timeout)
            chan.settimeout(self.command_timeout)
            chan.set_combine_stderr(combine)
            chan.exec_command(f"exec /bin/sh -c {q(script)}")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.mark_lost(str(exc) or type(exc).__name__)
            raise RemoteFailure(self.lost or str(exc)) from None
        return chan

    def run(self, script: str, *, timeout: float | None = None, stdin: bytes | None = None) -> Done:
        """Run `script`; its merged output and exit status, within `timeout` seconds.

        Without stdin, on the connection's one long-lived shell (a new SSH session costs a
        login shell start on the host: its rc files, every time); with stdin, in a session of
        its own."""
        limit = self.command_timeout if timeout is None else timeout
        if stdin is None:
            return self._on_shell(script, limit)
        deadline = time.monotonic() + limit
        chan = self.session(script, combine=True)
        chunks: list[bytes] = []
        try:
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                chan.settimeout(max(0.001, deadline - time.monotonic()))
                data = chan.recv(65536)
                if not data:
                    break
                chunks.append(data)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
        except TimeoutError:
            self.mark_lost(f"a remote command got no answer in {limit:g} s")
            raise RemoteFailure(self.lost or "timeout") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.mark_lost(str(exc) or type(exc).__name__)
            raise RemoteFailure(self.lost or str(exc)) from None
        finally:
            chan.close()
        status = chan.exit_status
        return Done(
            status if status >= 0 else LOST_STATUS, b"".join(chunks).decode("utf-8", "replace")
        )

    def _on_shell(self, script: str, limit: float) -> Done:
        """One command on the long-lived shell: sent base64-encoded on one line, run in a
        subshell (stdin /dev/null, stderr merged), its end marked by a random marker line."""
        import base64

        with self._shell_lock:
            deadline = time.monotonic() + limit
            if self._shell is None:
                loop = (
                    "while IFS= read -r line; do "
                    'script=$(printf "%s" "$line" | base64 -d) || exit 99; '
                    '( eval "$script" ) </dev/null 2>&1; '
                    f'printf "\\n%s %s\\n" {q(self._marker.decode())} "$?"; done'
                )
                self._shell = self.session(loop, combine=True)
            chan = self._shell
            buffer = bytearray()
            end = b"\n" + self._marker + b" "
            try:
                chan.sendall(base64.b64encode(script.encode()) + b"\n")
                while True:
                    at = buffer.find(end)
                    if at >= 0 and buffer.find(b"\n", at + len(end)) >= 0:
                        break
                    chan.settimeout(max(0.001, deadline - time.monotonic()))
                    data = chan.recv(65536)
                    if not data:
                        raise EOFError("the remote shell ended")
                    buffer += data
            except TimeoutError:
                self.mark_lost(f"a remote command got no answer in {limit:g} s")
                raise RemoteFailure(self.lost or "timeout") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.mark_lost(str(exc) or type(exc).__name__)
                raise RemoteFailure(self.lost or str(exc)) from None
            status_line = buffer[at + len(end) : buffer.find(b"\n", at + len(end))]
            try:
                status = int(status_line)
            except ValueError:
                status = LOST_STATUS
            return Done(status, bytes(buffer[:at]).decode("utf-8", "replace"))

    def must(self, script: str, what: str, **kw: Any) -> Done:
        done = self.run(script, **kw)
        if done.status != 0:
            raise RemoteFailure(
                f"{what} failed on {self.target} (status {done.status}): {done.tail()}"
            )
        return done

    def close(self) -> None:
        self.closed = True
        if self._shell is not None:
            self._shell.close()
        with contextlib.suppress(Exception):
            self.fabric.close()
