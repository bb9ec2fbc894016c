"""pytest plugin: a real OpenSSH server (Debian's /usr/sbin/sshd) on 127.0.0.1, for the remote
runtime's tests.

Fixtures:
- ``sshd`` (module): one server for a test module.
- ``sshd_factory`` (function): ``() -> SshServer``, a fresh server each call (for tests that
  kill theirs); every server it started is stopped at teardown.

Each server lives in its own temp dir: a generated ed25519 host key, a generated client key
(its public half the only line of ``authorized_keys``), an ``sshd_config`` (127.0.0.1 only, a
free port, keys only, ``PermitRootLogin prohibit-password``, ``StrictModes no``, ``UsePAM no``,
the PidFile in the dir) and a ``known_hosts`` file that trusts the host key. It runs as the
current user (root here) in the foreground (``-D -e``); the fixture waits until it accepts
connections and stops it afterwards — the listener and every per-connection sshd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import require_tool

from pipeline.runtime.process import free_port
from pipeline.waiting import poll

PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege separation dir


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair without a passphrase: `path` and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


@dataclass
class SshServer:
    dir: Path
    port: int
    user: str
    identity: Path  # the client's private key (authorized)
    known_hosts: Path  # trusts this server's host key
    host_key_line: str  # "[127.0.0.1]:PORT ssh-ed25519 AAAA…"
    proc: subprocess.Popen[bytes]
    sessions: list[int] = field(default_factory=list)

    @property
    def host(self) -> str:
        """The --host value: user@127.0.0.1:PORT."""
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _sshd_processes(self) -> list[psutil.Process]:
        """The listener and every per-connection sshd under it (not the users' processes)."""
        try:
            root = psutil.Process(self.proc.pid)
            kids = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = [root]
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                if kid.name().startswith("sshd"):
                    found.append(kid)
        return found

    def vanish(self) -> None:
        """The host goes away: SIGKILL the listener and every connection's sshd at once.
        What the users were running there is left to fend for itself."""
        for proc in self._sshd_processes():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def freeze(self) -> list[psutil.Process]:
        """The link hangs (a dead router, a suspended VM): SIGSTOP every connection's sshd, not
        the listener; nothing is closed, nothing answers. Returns them, for thaw()."""
        frozen = [p for p in self._sshd_processes() if p.pid != self.proc.pid]
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
        return frozen

    def thaw(self, frozen: list[psutil.Process]) -> None:
        for proc in frozen:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        procs = self._sshd_processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def start_sshd(workdir: Path) -> SshServer:
    sshd = require_tool("sshd", "openssh-server")
    require_tool("ssh-keygen", "openssh-client")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = keygen(workdir / "ssh_host_ed25519_key", "taiea-test-host")
    identity = keygen(workdir / "client_ed25519", "taiea-test-client")
    (workdir / "authorized_keys").write_text((workdir / "client_ed25519.pub").read_text())
    port = free_port()
    sftp = next(
        (
            p
            for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
            if Path(p).exists()
        ),
        "internal-sftp",
    )
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "MaxSessions 10",
                "LogLevel VERBOSE",
                f"Subsystem sftp {sftp}",
                "",
            ]
        )
    )
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(f"sshd rejected its test config: {check.stderr.strip()}")
    log = open(workdir / "sshd.log", "wb")  # noqa: SIM115 — sshd writes it until it stops
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    pub = (workdir / "ssh_host_ed25519_key.pub").read_text().split()
    host_key_line = f"[127.0.0.1]:{port} {pub[0]} {pub[1]}"
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(host_key_line + "\n")
    server = SshServer(
        dir=workdir,
        port=port,
        user=psutil.Process(os.getpid()).username(),
        identity=identity,
        known_hosts=known_hosts,
        host_key_line=host_key_line,
        proc=proc,
    )

    def listening() -> bool | None:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with status {proc.returncode}: {server.log[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                return True if sock.recv(4).startswith(b"SSH-") else None
        except OSError:
            return None

    try:
        poll(listening, timeout=10, interval=0.02, what="sshd to listen")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[[], SshServer]]:
    started: list[SshServer] = []

    def factory() -> SshServer:
        server = start_sshd(tmp_path / f"sshd-{len(started)}")
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
