"""Release-tarball fixtures (a pytest plugin module, loaded by tests/conftest.py).

`fake_otp_tarball(layout="rebar3"|"wrapped", extra_members=[Entry(...)], omit=["erts-"], ...)`
builds a small OTP-layout tarball with Python's tarfile and returns its path. The layout is fake
(the start script is a shell script, the boot file is not a real boot file) but the tree is the
one `rebar3 as prod tar` makes, so it exercises layout detection and the tar safety rules.
`Entry` describes one member, including hostile ones (absolute paths, `..`, links, devices).
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXED_MTIME = 1_700_000_000

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True)
class Entry:
    """One tar member: kind is file, dir, symlink, hardlink, chardev, blockdev or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None  # default: 0o755 for dirs, 0o644 for files, 0o777 for symlinks
    linkname: str = ""
    mtime: int = FIXED_MTIME

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = _TYPES[self.kind]
        info.mtime = self.mtime
        info.uid = info.gid = 1000
        info.uname = info.gname = "builder"
        default = {"dir": 0o755, "symlink": 0o777}.get(self.kind, 0o644)
        info.mode = default if self.mode is None else self.mode
        info.linkname = self.linkname
        if self.kind == "file":
            info.size = len(self.data)
        if self.kind in ("chardev", "blockdev"):
            info.devmajor, info.devminor = 1, 3
        return info


def otp_entries(
    name: str = "tai_autonomics",
    version: str = "1.0.0",
    erts: str = "13.1.5",
    *,
    with_dirs: bool = True,
    start_erl: bool = True,
    payload_files: int = 0,
    payload_size: int = 0,
) -> list[Entry]:
    """The members of a fake `rebar3 as prod tar` release, paths relative to the release root."""
    script = f'#!/bin/sh\n# fake start script of {name} {version}\necho "{name} $1"\n'.encode()
    rel = f'{{release,{{"{name}","{version}"}},{{erts,"{erts}"}},[{{kernel,"8.5.3"}}]}}.\n'
    files: list[Entry] = [
        Entry(f"bin/{name}", data=script, mode=0o755),
        Entry(f"bin/{name}-{version}", data=script, mode=0o755),
        Entry(f"erts-{erts}/bin/erlexec", data=b"\x7fELF fake erlexec\n", mode=0o755),
        Entry(f"erts-{erts}/bin/beam.smp", data=b"\x7fELF fake beam\n" * 64, mode=0o755),
        Entry("lib/kernel-8.5.3/ebin/kernel.app", data=b"{application,kernel,[]}.\n"),
        Entry(
            f"lib/{name}-{version}/ebin/{name}.app", data=f"{{application,{name},[]}}.\n".encode()
        ),
        Entry(f"lib/{name}-{version}/ebin/{name}_app.beam", data=b"FOR1 fake beam" * 40),
        Entry(f"releases/{version}/start.boot", data=b"\x83fake boot" * 20),
        Entry(f"releases/{version}/{name}.rel", data=rel.encode()),
        Entry(f"releases/{version}/sys.config", data=b"[].\n"),
        Entry(f"releases/{version}/vm.args", data=b"-name tai@127.0.0.1\n"),
        Entry("releases/RELEASES", data=b"[].\n"),
    ]
    if start_erl:
        files.append(Entry("releases/start_erl.data", data=f"{erts} {version}\n".encode()))
    rng = random.Random(1234)
    for i in range(payload_files):
        files.append(
            Entry(f"lib/{name}-{version}/priv/blob_{i:04d}.bin", data=rng.randbytes(payload_size))
        )
    if not with_dirs:
        return files
    dirs: set[str] = set()
    for f in files:
        parts = f.name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return [Entry(d, "dir") for d in sorted(dirs)] + files


def write_tarball(path: Path, entries: Iterable[Entry], *, compress: bool = True) -> Path:
    """Write `entries` in order as a tar (gzip-compressed unless compress=False) at `path`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            tar.addfile(e.tarinfo(), io.BytesIO(e.data) if e.kind == "file" else None)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


FakeTarball = Callable[..., Path]


@pytest.fixture
def fake_otp_tarball(tmp_path: Path) -> FakeTarball:
    """Factory: build a fake OTP release tarball under tmp_path/tarballs and return its path.

    layout: "rebar3" (files at the root) or "wrapped" (everything under `<name>/`).
    extra_members: Entries appended after the release, names taken as given (no prefix).
    omit: name prefixes (relative to the release root) of standard members to leave out.
    """
    counter = iter(range(1_000_000))

    def build(
        layout: str = "rebar3",
        *,
        name: str = "tai_autonomics",
        version: str = "1.0.0",
        erts: str = "13.1.5",
        extra_members: Sequence[Entry] = (),
        omit: Sequence[str] = (),
        with_dirs: bool = True,
        start_erl: bool = True,
        compress: bool = True,
        payload_files: int = 0,
        payload_size: int = 0,
        filename: str | None = None,
    ) -> Path:
        if layout not in ("rebar3", "wrapped"):
            raise ValueError(f"unknown layout {layout!r}")
        entries = [
            e
            for e in otp_entries(
                name,
                version,
                erts,
                with_dirs=with_dirs,
                start_erl=start_erl,
                payload_files=payload_files,
                payload_size=payload_size,
            )
            if not any(e.name.startswith(p) for p in omit)
        ]
        if layout == "wrapped":
            top = [Entry(name, "dir")] if with_dirs else []
            entries = top + [
                Entry(f"{name}/{e.name}", e.kind, e.data, e.mode, e.linkname, e.mtime)
                for e in entries
            ]
        entries += list(extra_members)
        suffix = ".tar.gz" if compress else ".tar"
        fname = filename or f"{name}-{version}-{layout}-{next(counter)}{suffix}"
        return write_tarball(tmp_path / "tarballs" / fname, entries, compress=compress)

    return build
