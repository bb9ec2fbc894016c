"""Container images name releases: `file:///abs/path/to/release.tar.gz`, or a name that the env
file maps to a tarball (`[emulator] images`). Anything else names no release: 400.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.emulator.wire import ApiError, invalid
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Image:
    """A container image resolved to a release tarball."""

    ref: str
    tarball: str
    sha256: str
    name: str
    version: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Image:
        return cls(**{k: str(data[k]) for k in ("ref", "tarball", "sha256", "name", "version")})


def tarball_of(ref: str, mapping: Mapping[str, str], where: str) -> Path:
    """The tarball an image names, or a 400 saying why it names none."""
    if ref in mapping:
        return Path(mapping[ref]).expanduser()
    if ref.startswith("file://"):
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise invalid(
                f"{where}: image {ref!r}: a file:// image names a local path (file:///abs/path)"
            )
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise invalid(f"{where}: image {ref!r}: the path must be absolute")
        return path
    known = ", ".join(sorted(mapping)) or "none"
    raise invalid(
        f"{where}: image {ref!r} names no release: use file:///abs/path/to/release.tar.gz "
        f"or a name mapped in [emulator] images (mapped: {known})"
    )


class ImageResolver:
    """Resolves image references to inspected release tarballs, cached by (path, size, mtime).

    `resolve` reads the tarball (headers and hash): call it off the event loop.
    """

    def __init__(self, mapping: Mapping[str, str]):
        self.mapping = dict(mapping)
        self._cache: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str, where: str = "template.containers[0].image") -> Image:
        from pipeline import release

        if not isinstance(ref, str) or not ref:
            raise invalid(f"{where}: an image is required")
        path = tarball_of(ref, self.mapping, where)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise invalid(f"{where}: image {ref!r}: no such file {path}") from None
        except OSError as exc:
            raise invalid(f"{where}: image {ref!r}: {path}: {exc.strerror}") from None
        if not path.is_file():
            raise invalid(f"{where}: image {ref!r}: {path} is not a file")
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            info = self._cache.get(key)
        if info is None:
            try:
                info = release.inspect(path)
            except PipelineError as exc:
                raise invalid(f"{where}: image {ref!r} is not a release tarball: {exc}") from None
            with self._lock:
                self._cache[key] = info
        return Image(
            ref=ref,
            tarball=key[0],
            sha256=info.sha256,
            name=info.name,
            version=info.version,
        )


def check_readable(image: Image) -> ApiError | None:
    """Whether a resolved image's tarball is still there (a restart may find it gone)."""
    return (
        None
        if os.access(image.tarball, os.R_OK)
        else ApiError("FAILED_PRECONDITION", f"image {image.ref!r}: {image.tarball} is gone")
    )
