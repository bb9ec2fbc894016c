"""Local port forwarding over an SSH connection: a listener on 127.0.0.1 whose connections are
pumped through `direct-tcpip` channels to a port on the host (what `ssh -L` does)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Any

import paramiko

from pipeline.ssh.connection import Connection, RemoteFailure

# ------------------------------------------------------------------------------ port forwarding


class Forwarder:
    """127.0.0.1:<free port> here → 127.0.0.1:<port> on the host, one direct-tcpip channel per
    connection, each pumped by a thread (select over the socket and the channel)."""

    def __init__(self, conn: Connection, remote_port: int, remote_host: str = "127.0.0.1"):
        self.conn = conn
        self.remote = (remote_host, remote_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        self._accept = threading.Thread(target=self._serve, name="ssh-forward", daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(sock, peer), daemon=True).start()

    def _pump(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chan = None
        try:
            if not self.conn.active():
                return
            transport = self.conn.transport
            chan = transport.open_channel(
                "direct-tcpip", self.remote, peer, timeout=self.conn.command_timeout
            )
            chan.settimeout(self.conn.command_timeout)
            with self._lock:
                if self._closed.is_set():
                    return
                self._open.update((sock, chan))
                self.connections += 1
            self._shuttle(sock, chan)
        except (OSError, EOFError, paramiko.SSHException, RemoteFailure):
            pass  # the client sees its connection closed: no answer, a failed request
        finally:
            with self._lock:
                self._open.discard(sock)
                self._open.discard(chan)
            if chan is not None:
                chan.close()
            sock.close()

    def _shuttle(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ, "here")
            sel.register(chan, selectors.EVENT_READ, "there")
            open_ways = 2
            while open_ways and not self._closed.is_set():
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "here":
                        data = sock.recv(65536)
                        if data:
                            chan.sendall(data)
                            continue
                        chan.shutdown_write()
                        sel.unregister(sock)
                    else:
                        data = chan.recv(65536)
                        if data:
                            sock.sendall(data)
                            continue
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
                        sel.unregister(chan)
                    open_ways -= 1
                if chan.closed:
                    return

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            left = list(self._open)
            self._open.clear()
        for item in left:
            with contextlib.suppress(Exception):
                item.close()
        self._accept.join(2.0)
