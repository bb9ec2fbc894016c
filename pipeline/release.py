"""OTP release tarballs: inspect, safe extract, layout detection.

A release tarball is what `rebar3 as prod tar` makes (files at the tarball root: `bin/<name>`,
`erts-<vsn>/`, `lib/`, `releases/<vsn>/`) or the same tree under one top folder `<name>/`.

`inspect` reads member headers only (plus the few bytes of `releases/start_erl.data`) and never
writes anything. `extract` validates every member before it writes a byte, extracts into a
temporary directory beside `dest` and renames it into place, so a refused or interrupted
extraction leaves nothing behind and nothing is ever written outside `dest`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from pipeline.errors import PipelineError

__all__ = ["Release", "ReleaseInfo", "extract", "inspect", "sha256_file"]

_CHUNK = 1 << 20
_EXPECTED = "expected bin/<name>, releases/<vsn>/, erts-<vsn>/ at the root or under one top folder"
# Scripts relx/rebar3 put in bin/ beside the start script; never the release name.
_HELPERS = {"nodetool", "install_upgrade.escript", "no_dot_erlang.boot"}
_HELPER_SUFFIXES = (".cmd", ".ps1", ".bat", ".escript", ".boot")
_MAX_SYMLINK_HOPS = 40
_START_ERL_MAX = 4096
# inspect has no caller-given limits; this only bounds the memory the member list takes.
_INSPECT_MAX_FILES = 200_000
# Decompressed data allowed after the tar's end-of-archive blocks (tar pads to its record size).
_MAX_TRAILING = 64 << 20


@dataclass(frozen=True)
class ReleaseInfo:
    """What a release tarball holds, read from its member headers."""

    name: str
    version: str
    erts_version: str
    layout: str  # "rebar3" (files at the root) or "wrapped" (one top folder)
    prefix: str  # "" or "<top>/"
    size_bytes: int
    uncompressed_bytes: int
    file_count: int
    sha256: str
    path: Path

    def as_receipt(self) -> dict[str, Any]:
        """A flat JSON-able dict for a receipt."""
        return {
            "name": self.name,
            "version": self.version,
            "erts_version": self.erts_version,
            "layout": self.layout,
            "prefix": self.prefix,
            "size_bytes": self.size_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "file_count": self.file_count,
            "sha256": self.sha256,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class Release:
    """An extracted release: its tarball's info and the directory holding bin/<name>."""

    info: ReleaseInfo
    root: Path

    @property
    def start_script(self) -> Path:
        return self.root / "bin" / self.info.name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Reading: one streaming pass over the tarball, hashing the bytes it reads.


@dataclass(frozen=True)
class _Member:
    raw: str  # the name as stored
    parts: tuple[str, ...]  # normalized components ("." and "" dropped)
    kind: str  # file, dir, symlink, hardlink, chardev, blockdev, fifo, other
    size: int
    mode: int
    linkname: str
    signature: tuple[Any, ...]

    @property
    def path(self) -> str:
        return "/".join(self.parts)


@dataclass
class _Scan:
    members: list[_Member] = field(default_factory=list)
    sha256: str = ""
    size_bytes: int = 0
    small_files: dict[str, bytes] = field(default_factory=dict)  # start_erl.data contents


class _HashingReader:
    """A read-only file wrapper that hashes every byte read through it."""

    mode = "rb"

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "chardev"
    if m.isblk():
        return "blockdev"
    if m.isfifo():
        return "fifo"
    return "other"


def _signature(m: tarfile.TarInfo) -> tuple[Any, ...]:
    return (m.name, m.type, m.size, m.mode, m.linkname, m.mtime)


def _split(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


class _Limits:
    def __init__(self, max_files: int | None, max_bytes: int | None) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes


def _check_path(m: tarfile.TarInfo) -> str | None:
    """Why this member's own path is refused (None: fine)."""
    if m.name.startswith("/"):
        return "absolute path"
    if ".." in m.name.split("/"):
        return "'..' component in path"
    return None


def _open_tar(reader: _HashingReader, head: bytes) -> tuple[tarfile.TarFile, gzip.GzipFile | None]:
    """Open a streaming TarFile over `reader`; gzip is decompressed by GzipFile (CRC-checked)."""
    if head[:2] == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=cast(Any, reader), mode="rb")
        return tarfile.open(fileobj=gz, mode="r|", bufsize=_CHUNK), gz
    return tarfile.open(fileobj=cast(Any, reader), mode="r|", bufsize=_CHUNK), None


def _finish(tarball: Path, reader: _HashingReader, gz: gzip.GzipFile | None) -> None:
    """Read past the tar's end: checks the gzip CRC and length, and hashes every byte."""
    if gz is not None:
        trailing = 0
        while chunk := gz.read(_CHUNK):
            trailing += len(chunk)
            if trailing > _MAX_TRAILING:
                raise PipelineError(
                    f"{tarball}: more than {_MAX_TRAILING >> 20} MiB of data after the end of "
                    "the tar archive"
                )
    reader.drain()


def _check_input(tarball: Path) -> None:
    if not os.path.lexists(tarball):
        raise PipelineError(f"{tarball}: no such file")
    if tarball.is_dir():
        raise PipelineError(f"{tarball}: is a directory, not a release tarball")
    if not tarball.is_file():
        raise PipelineError(f"{tarball}: not a regular file")


def _read_error(tarball: Path, exc: BaseException, gzipped: bool) -> PipelineError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "unexpected end" in detail:
        return PipelineError(f"{tarball}: truncated archive ({detail})")
    what = "gzip-compressed tar archive" if gzipped else "tar or tar.gz archive"
    return PipelineError(f"{tarball}: not a valid {what} ({detail})")


_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _scan(tarball: Path, limits: _Limits) -> _Scan:
    """Read every member header once; refuse early when a limit or a path rule is broken."""
    _check_input(tarball)
    scan = _Scan()
    total = 0
    try:
        with open(tarball, "rb") as raw:
            head = raw.read(2)
            if not head:
                raise PipelineError(f"{tarball}: empty file, not a release tarball")
            raw.seek(0)
            reader = _HashingReader(raw)
            gzipped = head == b"\x1f\x8b"
            try:
                tar, gz = _open_tar(reader, head)
                with tar:
                    for m in tar:
                        if limits.max_files is not None and len(scan.members) >= limits.max_files:
                            raise _refuse(tarball, m.name, f"more than {limits.max_files} entries")
                        if (why := _check_path(m)) is not None:
                            raise _refuse(tarball, m.name, why)
                        kind = _kind(m)
                        parts = _split(m.name)
                        if kind == "file":
                            total += m.size
                            if limits.max_bytes is not None and total > limits.max_bytes:
                                raise _refuse(
                                    tarball,
                                    m.name,
                                    f"more than {limits.max_bytes} bytes uncompressed in total",
                                )
                            if (
                                parts[-1:] == ("start_erl.data",)
                                and len(parts) <= 3
                                and m.size <= _START_ERL_MAX
                            ):
                                f = tar.extractfile(m)
                                if f is not None:
                                    scan.small_files["/".join(parts)] = f.read()
                        scan.members.append(
                            _Member(
                                raw=m.name,
                                parts=parts,
                                kind=kind,
                                size=m.size,
                                mode=m.mode,
                                linkname=m.linkname,
                                signature=_signature(m),
                            )
                        )
                _finish(tarball, reader, gz)
            except PipelineError:
                raise
            except _READ_ERRORS as exc:
                raise _read_error(tarball, exc, gzipped) from exc
            scan.sha256 = reader.digest.hexdigest()
            scan.size_bytes = reader.count
    except PipelineError:
        raise
    except OSError as exc:
        raise PipelineError(f"{tarball}: cannot read: {exc.strerror or exc}") from exc
    return scan


# --------------------------------------------------------------------------------------------
# Safety rules, checked on the whole member list before anything is written.


def _refuse(tarball: Path, member: str, why: str) -> PipelineError:
    return PipelineError(f"{tarball}: refusing to extract member {member!r}: {why}")


def _resolve(start: list[str], target: str, links: dict[str, str]) -> list[str] | None:
    """Resolve `target` relative to directory `start` through the archive's own symlinks.

    Returns the resolved components, or None when the path climbs above the archive root or
    is absolute. Raises ValueError on a symlink loop.
    """
    if target.startswith("/"):
        return None
    out = list(start)
    todo = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        key = "/".join([*out, part])
        if key in links:
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise ValueError("symlink loop")
            link = links[key]
            if link.startswith("/"):
                return None
            todo = [p for p in link.split("/") if p not in ("", ".")] + todo
            continue
        out.append(part)
    return out


def _check_members(tarball: Path, members: list[_Member]) -> None:
    """Refuse anything that could write outside the destination or create special files."""
    links: dict[str, str] = {}
    kinds: dict[str, str] = {}
    regular: set[str] = set()
    for m in members:
        if m.kind in ("chardev", "blockdev"):
            raise _refuse(tarball, m.raw, "device file")
        if m.kind == "fifo":
            raise _refuse(tarball, m.raw, "FIFO")
        if m.kind == "other":
            raise _refuse(tarball, m.raw, "unsupported member type")
        if m.mode & stat.S_ISUID:
            raise _refuse(tarball, m.raw, f"setuid bit set (mode {m.mode:o})")
        if m.mode & stat.S_ISGID:
            raise _refuse(tarball, m.raw, f"setgid bit set (mode {m.mode:o})")
        path = m.path
        if not m.parts and m.kind != "dir":
            raise _refuse(tarball, m.raw, "the archive root is not a directory")
        previous = kinds.get(path)
        if previous is not None and not (previous == "dir" and m.kind == "dir"):
            raise _refuse(tarball, m.raw, "duplicate member (it would replace an earlier one)")
        kinds[path] = m.kind
        if m.kind == "symlink":
            links[path] = m.linkname
        elif m.kind == "hardlink":
            target = m.linkname
            if target.startswith("/"):
                raise _refuse(tarball, m.raw, f"hard link to absolute path {target!r}")
            if ".." in target.split("/"):
                raise _refuse(tarball, m.raw, f"hard link to {target!r} outside the archive")
            if "/".join(_split(target)) not in regular:
                raise _refuse(
                    tarball, m.raw, f"hard link to {target!r}, not an earlier regular file"
                )
            regular.add(path)
        elif m.kind == "file":
            regular.add(path)

    for m in members:
        for i in range(1, len(m.parts)):
            parent = "/".join(m.parts[:i])
            if parent in links:
                raise _refuse(tarball, m.raw, f"path goes through symlink {parent!r}")
            if kinds.get(parent, "dir") != "dir":
                raise _refuse(tarball, m.raw, f"parent {parent!r} is not a directory")
        if m.kind == "symlink":
            try:
                resolved = _resolve(list(m.parts[:-1]), m.linkname, links)
            except ValueError:
                raise _refuse(tarball, m.raw, f"symlink loop via {m.linkname!r}") from None
            if resolved is None:
                raise _refuse(
                    tarball,
                    m.raw,
                    f"symlink to {m.linkname!r} resolves outside the destination",
                )


# --------------------------------------------------------------------------------------------
# Layout detection.


def _version_key(vsn: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+_]", vsn))


def _highest(versions: list[str]) -> str:
    return max(versions, key=_version_key)


def _is_helper(name: str) -> bool:
    return name in _HELPERS or name.endswith(_HELPER_SUFFIXES)


def _detect(tarball: Path, scan: _Scan) -> tuple[str, str, str, str]:
    """(name, version, erts_version, prefix) of the release, or a PipelineError naming the gap."""
    children: dict[str, dict[str, str]] = {}
    for m in scan.members:
        for i, part in enumerate(m.parts):
            parent = "/".join(m.parts[:i])
            kind = "dir" if i < len(m.parts) - 1 else m.kind
            children.setdefault(parent, {})[part] = kind

    def dirs(p: str) -> list[str]:
        return sorted(n for n, k in children.get(p, {}).items() if k == "dir")

    def files(p: str) -> dict[str, str]:
        return {n: k for n, k in children.get(p, {}).items() if k != "dir"}

    def join(*parts: str) -> str:
        return "/".join(p for p in parts if p)

    tops = children.get("", {})
    top = ""
    if len(tops) == 1:
        only, kind = next(iter(tops.items()))
        if kind == "dir":
            top = only
    prefix = f"{top}/" if top else ""
    where = f" under {prefix}" if prefix else ""

    def missing(what: str) -> PipelineError:
        return PipelineError(f"{tarball}: not an OTP release: {what}{where} ({_EXPECTED})")

    if not scan.members:
        raise PipelineError(f"{tarball}: not an OTP release: the archive is empty ({_EXPECTED})")
    root_dirs = dirs(top)
    erts_dirs = [d[len("erts-") :] for d in root_dirs if d.startswith("erts-") and len(d) > 5]
    gaps = []
    if "bin" not in root_dirs:
        gaps.append("no bin/ directory")
    if "releases" not in root_dirs:
        gaps.append("no releases/ directory")
    if not erts_dirs:
        gaps.append("no erts-* directory")
    if gaps:
        raise missing(", ".join(gaps))

    rel_dir = join(top, "releases")
    versions = {}
    for vsn in dirs(rel_dir):
        entries = files(join(rel_dir, vsn))
        rels = {n[: -len(".rel")] for n, k in entries.items() if n.endswith(".rel") and k != "dir"}
        if "start.boot" in entries or rels:
            versions[vsn] = rels
    if not versions:
        raise missing("no releases/<vsn>/ directory with start.boot or <name>.rel")

    start_erl = scan.small_files.get(join(top, "releases", "start_erl.data"))
    wanted_erts: str | None = None
    if start_erl is not None:
        fields = start_erl.decode("utf-8", "replace").split()
        if len(fields) != 2:
            raise PipelineError(
                f"{tarball}: {prefix}releases/start_erl.data: expected 'ERTS_VSN REL_VSN', "
                f"found {start_erl[:80]!r}"
            )
        wanted_erts, version = fields
        if version not in versions:
            raise missing(
                f"releases/start_erl.data names release {version} but there is no "
                f"releases/{version}/ with start.boot or <name>.rel"
            )
    else:
        version = _highest(list(versions))
    erts_version = wanted_erts if wanted_erts in erts_dirs else _highest(erts_dirs)

    bin_entries = files(join(top, "bin"))
    name = ""
    for rel_names in (versions[version], set().union(*versions.values())):
        matches = sorted(n for n in bin_entries if n in rel_names)
        if len(matches) == 1:
            name = matches[0]
            break
    if not name:
        candidates = sorted(n for n in bin_entries if not _is_helper(n))
        candidates = [
            n for n in candidates if not any(n.startswith(f"{o}-") for o in candidates if o != n)
        ]
        if len(candidates) != 1:
            held = ", ".join(sorted(bin_entries)) or "nothing"
            raise missing(f"cannot tell the release name: bin/ holds {held}")
        name = candidates[0]
    if bin_entries[name] not in ("file", "hardlink"):
        raise missing(f"bin/{name} is a {bin_entries[name]}, not a regular file")
    rel_entries = files(join(rel_dir, version))
    if "start.boot" not in rel_entries and f"{name}.rel" not in rel_entries:
        raise missing(f"releases/{version}/ has neither start.boot nor {name}.rel")
    return name, version, erts_version, prefix


def _info(tarball: Path, scan: _Scan) -> ReleaseInfo:
    name, version, erts_version, prefix = _detect(tarball, scan)
    files = [m for m in scan.members if m.kind == "file"]
    return ReleaseInfo(
        name=name,
        version=version,
        erts_version=erts_version,
        layout="wrapped" if prefix else "rebar3",
        prefix=prefix,
        size_bytes=scan.size_bytes,
        uncompressed_bytes=sum(m.size for m in files),
        file_count=len(files),
        sha256=scan.sha256,
        path=tarball,
    )


def inspect(tarball: Path) -> ReleaseInfo:
    """Describe a release tarball from its member headers; writes nothing.

    Raises PipelineError when the file is not a (gzipped) tar, is not an OTP release, or holds a
    member `extract` would refuse.
    """
    tarball = Path(tarball)
    scan = _scan(tarball, _Limits(_INSPECT_MAX_FILES, None))
    _check_members(tarball, scan.members)
    return _info(tarball, scan)


# --------------------------------------------------------------------------------------------
# Extraction.


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=onerror)


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise PipelineError(f"{dest}: destination is a symlink")
    if dest.exists():
        if not dest.is_dir():
            raise PipelineError(f"{dest}: destination exists and is not a directory")
        if any(dest.iterdir()):
            raise PipelineError(f"{dest}: destination directory is not empty")


def _write(tarball: Path, scan: _Scan, into: Path) -> None:
    """Second pass: extract into `into`, checking each member is the one validated."""
    expected = [m.signature for m in scan.members]
    changed = PipelineError(f"{tarball}: the tarball changed while it was being extracted")

    with open(tarball, "rb") as raw:
        head = raw.read(2)
        raw.seek(0)
        reader = _HashingReader(raw)
        tar, gz = _open_tar(reader, head)

        def checked() -> Iterator[tarfile.TarInfo]:
            seen = 0
            for m in tar:
                if seen >= len(expected) or _signature(m) != expected[seen]:
                    raise changed
                seen += 1
                yield m
            if seen != len(expected):
                raise changed

        with tar:
            tar.errorlevel = 2
            try:
                tar.extractall(into, members=checked(), filter="data")
            except tarfile.FilterError as exc:
                raise _refuse(tarball, exc.tarinfo.name, str(exc)) from exc
        _finish(tarball, reader, gz)
    if reader.digest.hexdigest() != scan.sha256:
        raise changed


def extract(
    tarball: Path, dest: Path, *, max_files: int = 20000, max_bytes: int = 1 << 30
) -> Release:
    """Safely extract a release tarball into `dest` (absent or an empty directory).

    Every member is validated before anything is written; the tree is built in a temp dir
    beside `dest` and renamed into place, so on any failure neither `dest` nor the temp dir
    is left behind.
    """
    tarball = Path(tarball)
    dest = Path(dest)
    _check_dest(dest)
    scan = _scan(tarball, _Limits(max_files, max_bytes))
    _check_members(tarball, scan.members)
    info = _info(tarball, scan)

    parent = dest.absolute().parent
    created: Path | None = None
    if not parent.exists():
        created = parent
        while not created.parent.exists():
            created = created.parent
    tmp: Path | None = None
    try:
        try:
            if created is not None:
                parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
        except OSError as exc:
            raise PipelineError(f"{dest}: cannot extract here: {exc.strerror or exc}") from None
        try:
            _write(tarball, scan, tmp)
        except PipelineError:
            raise
        except _READ_ERRORS as exc:
            raise PipelineError(f"{tarball}: extraction into {dest} failed: {exc}") from exc
        os.chmod(tmp, 0o755)
        _check_dest(dest)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            raise PipelineError(
                f"{dest}: cannot move the extracted release into place: {exc}"
            ) from exc
        tmp = None
    except BaseException:
        if tmp is not None:
            _rmtree(tmp)
        if created is not None:
            _rmtree(created)
        raise
    return Release(info=info, root=dest / info.prefix.rstrip("/") if info.prefix else dest)
