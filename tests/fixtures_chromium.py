"""pytest plugin: headless Chromium (Debian package `chromium`) to look at pages as a person would.

Fixture ``chromium`` (session): a ``Chromium`` with
- ``dump_dom(page) -> str``: the DOM after load (``--dump-dom``), serialized as HTML;
- ``screenshot(page, png, size=(1280, 2000)) -> Path``: a PNG of the page.

Every call starts a fresh browser with an empty ``--user-data-dir`` in a temp dir, no network
services (``--disable-background-networking``, ``--disable-component-update``, ``--disable-sync``,
``--disable-quic``), under a timeout. The browser runs below a small reaper process (a Linux child
subreaper), so the helpers Chromium detaches (crashpad handlers) are its children too: they are
waited for, killed if they linger, and reaped. After each call no process of that browser (live
or zombie) is left, which the call checks; ``parse_dom`` turns the dump into a small tree to query.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)
TIMEOUT_S = 60.0

# Runs Chromium as its child, as a child subreaper: whatever Chromium forks off and orphans is
# re-parented here, waited for (killed after a grace), and reaped; exits with Chromium's status.
_REAPER = r"""
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def children():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        yield int(entry)
            except (OSError, ValueError, IndexError):
                pass
def kill_children(signum, frame):
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
signal.signal(signal.SIGTERM, kill_children)
status = child.wait()
signal.signal(signal.SIGALRM, kill_children)  # helpers still there after 5 s: killed
signal.setitimer(signal.ITIMER_REAL, 5.0)
while True:  # reap every orphan re-parented here, until none is left
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
sys.exit(status if status >= 0 else 128 - status)
"""


class ChromiumFailed(AssertionError):
    pass


def _leftovers(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@dataclass
class Chromium:
    binary: str
    runs: list[float] = field(default_factory=list)  # seconds per call

    def _run(self, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        argv = [
            sys.executable,
            "-c",
            _REAPER,
            self.binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        began = time.monotonic()
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the reaper kills the browser and its helpers, reaps, exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            raise ChromiumFailed(
                f"chromium did not finish within {TIMEOUT_S:.0f} s on {url}: "
                f"{err.decode(errors='replace')[-2000:]}"
            ) from None
        finally:
            self.runs.append(time.monotonic() - began)
            left = _leftovers(profile)
            for pid in left:  # fail below, but never leave them running
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(profile, ignore_errors=True)
            if left:
                raise ChromiumFailed(f"chromium processes left running: {left}")
        if proc.returncode != 0:
            raise ChromiumFailed(
                f"chromium exited with {proc.returncode} on {url}: "
                f"{err.decode(errors='replace')[-2000:]}"
            )
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def dump_dom(self, page: Path) -> str:
        result = self._run(Path(page).resolve().as_uri(), "--dump-dom")
        return result.stdout.decode()

    def screenshot(self, page: Path, png: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
        png = Path(png).resolve()
        self._run(
            Path(page).resolve().as_uri(),
            f"--screenshot={png}",
            f"--window-size={size[0]},{size[1]}",
        )
        if not png.is_file():
            raise ChromiumFailed(f"chromium wrote no screenshot at {png}")
        return png


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    from conftest import require_tool

    binary = CHROMIUM if os.access(CHROMIUM, os.X_OK) else require_tool("chromium", "chromium")
    yield Chromium(binary)


# ---------------------------------------------------------------- a small DOM to query


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts) + "".join(child.text for child in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str | bool) -> list[Node]:
        """Descendants by tag and attributes (name_with_underscores = data-… with dashes;
        True = present)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        found = []
        for node in self.iter():
            if node is self or (tag is not None and node.tag != tag):
                continue
            if all(
                (k in node.attrs) if v is True else node.attrs.get(k) == v
                for k, v in wanted.items()
            ):
                found.append(node)
        return found

    def find(self, tag: str | None = None, **attrs: str | bool) -> Node:
        found = self.find_all(tag, **attrs)
        if not found:
            raise AssertionError(f"no <{tag or '*'}> with {attrs} in the DOM")
        return found[0]


_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text_parts.append(data)


def parse_dom(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
