"""Image layers: reproducible gzip'd tars written from a list of entries, and unpacking them
into a root filesystem.

Reproducible means the same entries give the same bytes on any machine: entries sorted by
path, every mtime `EPOCH`, owners given (never the host's), modes normalized (0755 for
directories and executables, 0644 otherwise), no user or group names, and gzip without a file
name or time stamp.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError

EPOCH = 0  # every entry's mtime (1970-01-01): nothing of the build's time enters the image
ROOT = (0, 0)


@dataclass(frozen=True)
class Entry:
    """One path in a layer: a directory, a file (its content from `source`, or `data`) or a
    symlink (`link`)."""

    path: str  # inside the image, without the leading slash: "opt/tai_autonomics/bin/x"
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    owner: tuple[int, int] = ROOT
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None


def directory(path: str, owner: tuple[int, int] = ROOT, mode: int = 0o755) -> Entry:
    return Entry(path.strip("/"), "dir", mode, owner)


def file(path: str, source: Path, owner: tuple[int, int] = ROOT) -> Entry:
    executable = os.stat(source).st_mode & 0o111
    return Entry(path.strip("/"), "file", 0o755 if executable else 0o644, owner, source=source)


def text(path: str, data: str, owner: tuple[int, int] = ROOT, mode: int = 0o644) -> Entry:
    return Entry(path.strip("/"), "file", mode, owner, data=data.encode())


def symlink(path: str, link: str, owner: tuple[int, int] = ROOT) -> Entry:
    return Entry(path.strip("/"), "symlink", 0o777, owner, link=link)


def tree(root: Path, under: str, owner: tuple[int, int]) -> list[Entry]:
    """Every path under the directory `root`, placed under `under` in the image."""
    base = under.strip("/")
    entries = [directory(base, owner)]
    for path in sorted(root.rglob("*")):
        name = f"{base}/{path.relative_to(root).as_posix()}"
        if path.is_symlink():
            entries.append(symlink(name, os.readlink(path), owner))
        elif path.is_dir():
            entries.append(directory(name, owner))
        elif path.is_file():
            entries.append(file(name, path, owner))
        else:
            raise PipelineError(f"{path}: not a file, directory or symlink: not put in an image")
    return entries


@dataclass(frozen=True)
class Layer:
    """A layer written to disk: its blob (gzip), digest, size and diff id (of the plain tar)."""

    path: Path
    digest: str  # "sha256:…" of the gzip'd blob
    size: int
    diff_id: str  # "sha256:…" of the uncompressed tar
    entries: int


class _Hashing:
    """A write-only stream that hashes and counts what passes through to `out`."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Entries sorted by path, each unique, with every parent directory present."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path and by_path[entry.path] != entry:
            raise PipelineError(f"two different entries for /{entry.path} in one layer")
        by_path[entry.path] = entry
    for name in list(by_path):
        parts = name.split("/")
        for i in range(1, len(parts)):
            by_path.setdefault("/".join(parts[:i]), directory("/".join(parts[:i])))
    return [by_path[name] for name in sorted(by_path, key=lambda n: n.split("/"))]


def write_layer(entries: Iterable[Entry], out: Path) -> Layer:
    """Write the layer's gzip'd tar to `out`; its digest, size and diff id."""
    ordered = _with_parents(entries)
    with open(out, "wb") as raw:
        blob = _Hashing(raw)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=blob, mtime=EPOCH, compresslevel=6
        ) as gz:  # type: ignore[arg-type]
            plain = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for entry in ordered:
                    _add(tar, entry)
    return Layer(
        out,
        f"sha256:{blob.hash.hexdigest()}",
        blob.size,
        f"sha256:{plain.hash.hexdigest()}",
        len(ordered),
    )


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
    info.mtime = EPOCH
    info.uid, info.gid = entry.owner
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.link or ""
        tar.addfile(info)
    elif entry.data is not None:
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    else:
        assert entry.source is not None
        with open(entry.source, "rb") as fh:
            info.size = os.fstat(fh.fileno()).st_size
            tar.addfile(info, fh)


def unpack(blobs: Iterable[Path], rootfs: Path) -> None:
    """Apply gzip'd layer tars in order onto `rootfs` (OCI whiteouts honoured). tarfile's `tar`
    filter keeps every path inside `rootfs`, also through symlinks laid by an earlier member;
    absolute symlink targets stay as they are (they mean the image's root once it runs)."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for blob in blobs:
        try:
            with tarfile.open(blob, mode="r|*") as tar:
                for member in tar:
                    name = Path(member.name)
                    if name.name.startswith(".wh."):
                        _whiteout(rootfs, name)
                        continue
                    tar.extract(member, rootfs, filter="tar")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PipelineError(f"layer {blob.name}: cannot unpack: {exc}") from None


def _whiteout(rootfs: Path, name: Path) -> None:
    target = rootfs / name.parent
    if not target.resolve().is_relative_to(rootfs.resolve()):
        raise PipelineError(f"whiteout {name} points outside the image")
    if name.name == ".wh..wh..opq":
        for child in target.iterdir() if target.is_dir() else []:
            _remove(child)
    else:
        _remove(target / name.name.removeprefix(".wh."))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
