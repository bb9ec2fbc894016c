"""Container images name releases: `file:///abs/path/to/release.tar.gz`, a name that the env
file maps to a tarball (`[emulator] images`), or an OCI image in a registry
(`127.0.0.1:5000/taiea/tai_autonomics:1.0.0`, as Cloud Run takes them). Anything else: 400.

A registry image is resolved to its digest when a revision is made, pulled and unpacked once
per digest under `<state>/images/` (blobs in an OCI layout, root filesystems beside it, each
with a `.json` saying how it starts); the revision keeps the pinned `…@sha256:` reference, so a
tag moved later changes nothing that runs. An image the registry does not have is Cloud Run's
"Image '…' not found."
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.emulator.wire import ApiError, invalid
from pipeline.errors import PipelineError
from pipeline.image.oci import names_registry

log = logging.getLogger("pipeline.emulator")


@dataclass(frozen=True)
class Image:
    """A container image resolved to a release tarball."""

    ref: str
    tarball: str  # "" for a registry image
    sha256: str  # the release tarball's
    name: str
    version: str
    digest: str = ""  # a registry image's manifest digest
    pinned: str = ""  # REGISTRY/REPO@sha256:…, what the revision runs
    rootfs: str = ""  # where it is unpacked (beside it, `<rootfs>.json`: how it starts)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Image:
        keys = ("ref", "tarball", "sha256", "name", "version", "digest", "pinned", "rootfs")
        return cls(**{k: str(data[k]) for k in keys if k in data})

    def start_facts(self) -> dict[str, Any]:
        """How an unpacked registry image starts: argv, env, uid, gid, cwd (ImageRoot's)."""
        return dict(json.loads(Path(self.rootfs + ".json").read_text()))


@dataclass(frozen=True)
class ReleaseName:
    name: str


@dataclass(frozen=True)
class ImageRelease:
    """The release inside an unpacked registry image, as the data plane launches it."""

    root: Path
    info: ReleaseName

    @classmethod
    def of(cls, image: Image) -> ImageRelease:
        facts = image.start_facts()
        return cls(Path(facts["release_root"]), ReleaseName(facts["name"]))


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
        f"or a name mapped in [emulator] images (mapped: {known}), or a registry image "
        "REGISTRY/REPO:TAG"
    )


class ImageResolver:
    """Resolves image references to inspected release tarballs, cached by (path, size, mtime).

    `resolve` reads the tarball (headers and hash): call it off the event loop.
    """

    def __init__(
        self, mapping: Mapping[str, str], cache_dir: Path | None = None, policy: Any = None
    ):
        self.mapping = dict(mapping)
        self.cache_dir = cache_dir
        self.policy = policy  # an attest.policy.Policy: every new image is admitted by it
        self._cache: dict[tuple[str, int, int], Any] = {}
        self._pinned: dict[str, Image] = {}  # registry ref → as resolved by the last `pull`
        self._lock = threading.Lock()

    def resolve(self, ref: str, where: str = "template.containers[0].image") -> Image:
        """The image `ref` names. A registry image is taken as the request's `pull` left it
        (pulled now if it did not run)."""
        if not isinstance(ref, str) or not ref:
            raise invalid(f"{where}: an image is required")
        if ref not in self.mapping and names_registry(ref):
            with self._lock:
                pinned = self._pinned.get(ref)
            return pinned if pinned is not None else self.pull(ref, where)
        return self._tarball_image(ref, where)

    def prepare(self, ref: str, where: str) -> Image:
        """Before a request's control-plane call, off the event loop: a registry tag is
        resolved to its digest now (and the image pulled); a tarball is inspected."""
        if isinstance(ref, str) and ref not in self.mapping and names_registry(ref):
            image = self.pull(ref, where)
        else:
            image = self.resolve(ref, where)
        if self.policy is not None:
            self.admit(image)
        return image

    def admit(self, image: Image) -> None:
        """Binary Authorization, as Cloud Run enforces it: the image's digest needs a valid
        attestation from every attestor the policy requires, for every gate it requires; else
        FAILED_PRECONDITION naming what is missing. Dry run: admitted, the denial logged."""
        from pipeline.attest import policy, store
        from pipeline.image import oci, registry

        envelopes: list[bytes] = []
        if image.digest:
            ref = oci.Reference.parse(image.pinned)
            client = registry.Registry(ref.registry, registry.credentials_for(ref.registry))
            try:
                envelopes = [s.envelope for s in store.fetch(client, ref, image.digest)]
            except PipelineError as exc:
                raise ApiError(
                    "FAILED_PRECONDITION", f"image {image.pinned}: attestations unreadable: {exc}"
                ) from None
            name, digest = ref.name, image.digest
        else:  # a tarball: nothing can be attested about it
            name, digest = image.ref, f"sha256:{image.sha256}"
        decision = policy.evaluate(self.policy, name, digest, envelopes)
        if not decision.admitted:
            raise ApiError("FAILED_PRECONDITION", decision.message)
        if decision.missing:
            log.warning("%s", decision.message)
        else:
            log.info("image %s@%s admitted by Binary Authorization policy", name, digest)

    def pull(self, ref: str, where: str) -> Image:
        from pipeline.image import layers, oci, registry

        if self.cache_dir is None:
            raise invalid(f"{where}: image {ref!r}: this emulator keeps no image cache")
        try:
            parsed = oci.Reference.parse(ref)
        except PipelineError as exc:
            raise invalid(f"{where}: {exc}") from None
        if not registry.is_loopback(parsed.registry):
            raise invalid(
                f"{where}: image {ref!r}: the emulator pulls only from a registry on this machine "
                "(127.0.0.1, localhost): push the image there (invoke registry.start, image.build --tag)"
            )
        layout = oci.Layout.create(self.cache_dir / "layout")
        try:
            client = registry.Registry(parsed.registry, registry.credentials_for(parsed.registry))
            digest = registry.pull(parsed, layout, client)
        except registry.RegistryError as exc:
            if str(exc).startswith("Image '"):
                raise invalid(f"{where}: Image '{ref}' not found.") from None
            raise invalid(f"{where}: image {ref!r}: {exc}") from None
        rootfs = self.cache_dir / "rootfs" / digest.removeprefix("sha256:")[:24]
        _, manifest = layout.manifest(digest)
        config = layout.read_json(manifest["config"]["digest"])
        with self._lock:
            if not Path(str(rootfs) + ".json").is_file():
                partial = rootfs.with_name(rootfs.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                try:
                    layers.unpack([layout.blob(d["digest"]) for d in manifest["layers"]], partial)
                except PipelineError as exc:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise invalid(f"{where}: image {ref!r}: {exc}") from None
                shutil.rmtree(rootfs, ignore_errors=True)
                partial.rename(rootfs)
                Path(str(rootfs) + ".json").write_text(
                    json.dumps(_start_facts(config, str(rootfs)))
                )
        facts = json.loads(Path(str(rootfs) + ".json").read_text())
        notes = {
            **(config.get("config", {}).get("Labels") or {}),
            **manifest.get("annotations", {}),
        }
        image = Image(
            ref=ref,
            tarball="",
            sha256=notes.get("dev.taiea.release.sha256") or digest.removeprefix("sha256:"),
            name=facts["name"],
            version=notes.get("org.opencontainers.image.version", ""),
            digest=digest,
            pinned=parsed.pinned(digest),
            rootfs=str(rootfs),
        )
        with self._lock:
            self._pinned[ref] = image
        return image

    def _tarball_image(self, ref: str, where: str) -> Image:
        from pipeline import release

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


def _start_facts(config: Mapping[str, Any], rootfs: str) -> dict[str, Any]:
    """oci.start_facts, and where the release sits in the unpacked root; a 400 when the
    config cannot start anything."""
    from pipeline.image.oci import start_facts

    try:
        facts = start_facts(dict(config))
    except PipelineError as exc:
        raise invalid(str(exc)) from None
    return {**facts, "release_root": str(Path(rootfs) / "opt" / facts["name"])}


def check_readable(image: Image) -> ApiError | None:
    """Whether a resolved image's tarball or unpacked root is still there (a restart may find
    it gone)."""
    if image.rootfs:
        return (
            None
            if Path(image.rootfs + ".json").is_file()
            else ApiError("FAILED_PRECONDITION", f"image {image.pinned}: {image.rootfs} is gone")
        )
    return (
        None
        if os.access(image.tarball, os.R_OK)
        else ApiError("FAILED_PRECONDITION", f"image {image.ref!r}: {image.tarball} is gone")
    )
