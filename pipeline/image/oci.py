"""OCI image documents and the image layout on disk (image-spec v1.1), and image references.

An image is a manifest (its digest is the image's identity) naming a config and layers, all
content-addressed blobs. Documents are serialized canonically (sorted keys, no spaces), so the
same content always has the same digest. A layout is a directory: `oci-layout`, `index.json`
(one manifest per tag, `org.opencontainers.image.ref.name`) and `blobs/sha256/<hex>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def descriptor(
    media_type: str, data_or_digest: bytes | str, size: int | None = None, **extra: Any
) -> dict[str, Any]:
    if isinstance(data_or_digest, bytes):
        return {
            "mediaType": media_type,
            "digest": digest_of(data_or_digest),
            "size": len(data_or_digest),
            **extra,
        }
    assert size is not None
    return {"mediaType": media_type, "digest": data_or_digest, "size": size, **extra}


def start_facts(config: dict[str, Any]) -> dict[str, Any]:
    """How an image config starts its container: argv (Entrypoint + Cmd), env, numeric uid and
    gid, working dir, and the release's name (its entrypoint /opt/<name>/bin/<name>)."""
    runtime = config.get("config") or {}
    argv = [*(runtime.get("Entrypoint") or []), *(runtime.get("Cmd") or [])]
    if not argv:
        raise PipelineError("the image has no Entrypoint or Cmd: nothing to start")
    user = str(runtime.get("User") or "0")
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise PipelineError(f"image user {user!r}: only numeric uid[:gid] is supported")
    parts = Path(argv[0]).parts
    in_opt = len(parts) >= 5 and parts[1] == "opt" and parts[3] == "bin"
    return {
        "argv": argv,
        "env": dict(e.split("=", 1) for e in runtime.get("Env") or [] if "=" in e),
        "uid": int(uid),
        "gid": int(gid or uid),
        "cwd": runtime.get("WorkingDir") or "/",
        "name": parts[2] if in_opt else Path(argv[0]).name,
    }


# ------------------------------------------------------------------------------ references


def image_ref(template: str | None, name: str, version: str) -> Reference | None:
    """A release's image: `[image] ref` or `--tag` (REGISTRY/REPO:TAG), {name} and {version}
    filled in; None when there is none."""
    if not template:
        return None
    return Reference.parse(template.format(name=name, version=version))


def names_registry(image: str) -> bool:
    """Whether `image` reads as REGISTRY/REPO…: not a URL (`file://…`), and its first
    component a host (a dot, a port or localhost), as Docker tells a registry from a path."""
    if "://" in image:
        return False
    first, _, rest = image.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


@dataclass(frozen=True)
class Reference:
    """`registry/repository[:tag][@sha256:…]`, as Docker and OCI tools write it."""

    registry: str  # "127.0.0.1:5000", "us-central1-docker.pkg.dev"
    repository: str  # "taiea/tai_autonomics"
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        ref = text.strip()
        digest = None
        if "@" in ref:
            ref, digest = ref.split("@", 1)
            if not DIGEST.match(digest):
                raise PipelineError(f"image {text!r}: the digest must be sha256:<64 hex digits>")
        first, _, rest = ref.partition("/")
        if not rest or not ("." in first or ":" in first or first == "localhost"):
            raise PipelineError(
                f"image {text!r} names no registry: write it as REGISTRY/REPOSITORY[:TAG], "
                "e.g. 127.0.0.1:5000/taiea/tai_autonomics:1.0.0"
            )
        repository, tag = rest, None
        if ":" in rest.rsplit("/", 1)[-1]:
            repository, tag = rest.rsplit(":", 1)
        if not re.fullmatch(
            r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repository
        ):
            raise PipelineError(
                f"image {text!r}: repository {repository!r} must be lowercase path components"
            )
        if tag is not None and not re.fullmatch(r"[\w][\w.-]{0,127}", tag):
            raise PipelineError(f"image {text!r}: tag {tag!r} is not a valid tag")
        if tag is None and digest is None:
            tag = "latest"
        return cls(first, repository, tag, digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def pinned(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


# ------------------------------------------------------------------------------ the layout


class Layout:
    """An OCI image layout directory."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def create(cls, root: Path) -> Layout:
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
        layout = cls(root)
        if not (root / "index.json").exists():
            layout._write_index([])
        return layout

    @classmethod
    def open(cls, root: Path) -> Layout:
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise PipelineError(f"{root}: not an OCI image layout (no oci-layout or index.json)")
        return cls(root)

    def blob(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise PipelineError(f"{digest!r} is not a sha256 digest")
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self.blob(digest)
        if not path.exists():
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    def adopt(self, path: Path, digest: str) -> None:
        """Move a blob written elsewhere (a layer) into place under its digest."""
        target = self.blob(digest)
        if target.exists():
            path.unlink()
        else:
            shutil.move(path, target)

    def read_json(self, digest: str) -> dict[str, Any]:
        try:
            data = self.blob(digest).read_bytes()
        except OSError:
            raise PipelineError(f"{self.root}: blob {digest} is missing") from None
        if digest_of(data) != digest:
            raise PipelineError(f"{self.root}: blob {digest} does not match its digest")
        return json.loads(data)

    def index(self) -> list[dict[str, Any]]:
        return list(json.loads((self.root / "index.json").read_bytes()).get("manifests", []))

    def tag(self, name: str, manifest: dict[str, Any]) -> None:
        """Name `manifest` (a descriptor) `name` in index.json, replacing any old holder."""
        kept = [m for m in self.index() if m.get("annotations", {}).get(REF_NAME) != name]
        kept.append({**manifest, "annotations": {REF_NAME: name}})
        self._write_index(sorted(kept, key=lambda m: m["annotations"][REF_NAME]))

    def manifest(self, name: str | None = None) -> tuple[str, dict[str, Any]]:
        """(digest, manifest) of the image tagged `name`, or the only one."""
        entries = self.index()
        if name is not None:
            entries = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == name]
        if len(entries) != 1:
            what = f"tagged {name!r}" if name else "in it"
            raise PipelineError(f"{self.root}: {len(entries)} images {what}, expected one")
        digest = entries[0]["digest"]
        return digest, self.read_json(digest)

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
        tmp = self.root / "index.json.partial"
        tmp.write_bytes(canonical(doc))
        os.replace(tmp, self.root / "index.json")
