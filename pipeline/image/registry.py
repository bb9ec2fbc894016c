"""A client of the OCI distribution API (distribution-spec v1.1): push a layout's image, resolve
a tag, pull an image into a layout.

Push uploads each blob that the registry does not have yet (HEAD first, then one monolithic
POST + PUT), then the manifest by digest, then the tag. Auth follows the registry's challenge:
`Basic` (a local registry with htpasswd) sends the credentials; `Bearer` (Artifact Registry,
Docker Hub) trades them at the realm for a token, as `docker login` does. Where credentials come
from is `credentials_for`: Application Default Credentials for Google's registries (user
`oauth2accesstoken`, the access token as password, as Google documents), else
PIPELINE_REGISTRY_USER / PIPELINE_REGISTRY_PASSWORD, else none. Credentials never reach a
receipt, a log line or an error message.

A registry on a loopback address is spoken to over http; any other over https.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.image import oci

ACCEPT = ", ".join((oci.MANIFEST, oci.INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_LIST))
GOOGLE_REGISTRIES = re.compile(r"(^|\.)(gcr\.io|pkg\.dev)$")
CHUNK = 1 << 20


class RegistryError(PipelineError):
    """The registry refused or could not be reached; one line naming the image and why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def credentials_for(registry: str, environ: dict[str, str] | None = None) -> Credentials | None:
    environ = dict(os.environ) if environ is None else environ
    host = registry.split(":")[0]
    if GOOGLE_REGISTRIES.search(host):
        return _google_token()
    user, password = (
        environ.get("PIPELINE_REGISTRY_USER"),
        environ.get("PIPELINE_REGISTRY_PASSWORD"),
    )
    if user and password:
        return Credentials(user, password)
    return None


def _google_token() -> Credentials:
    try:
        import google.auth
        import google.auth.transport.requests

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.requests.Request())
    except Exception as exc:  # noqa: BLE001 — any way ADC fails is one line
        raise RegistryError(
            f"no Application Default Credentials for Artifact Registry ({type(exc).__name__}): "
            "run `gcloud auth application-default login` or use workload identity"
        ) from None
    return Credentials("oauth2accesstoken", str(creds.token))


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class PushReport:
    reference: str  # repo:tag@digest
    digest: str
    uploaded: list[str] = field(default_factory=list)  # blob digests sent
    skipped: list[str] = field(default_factory=list)  # blob digests the registry had
    bytes_sent: int = 0


class Registry:
    """One registry (`host:port`), with its auth state; `session` is a requests.Session."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials | None = None,
        *,
        session: Any = None,
        timeout: float = 60.0,
    ):
        import requests

        self.registry = registry
        self.base = f"{'http' if is_loopback(registry) else 'https'}://{registry}"
        self.credentials = credentials
        self.session = session or requests.Session()
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # scope → Authorization header

    # ---- HTTP with the registry's auth challenge answered

    def request(
        self, method: str, path: str, repository: str, *, push: bool = False, **kw: Any
    ) -> Any:
        import requests

        url = path if path.startswith("http") else self.base + path
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        for attempt in (1, 2):
            headers = dict(kw.pop("headers", None) or {})
            if scope in self._auth:
                headers["Authorization"] = self._auth[scope]
            data = kw.get("data")
            if data is not None and hasattr(data, "seek"):
                data.seek(0)
            try:
                reply = self.session.request(
                    method, url, headers=headers, timeout=self.timeout, allow_redirects=True, **kw
                )
            except requests.RequestException as exc:
                raise RegistryError(
                    f"registry {self.registry} unreachable: {_short(exc)}"
                ) from None
            kw["headers"] = headers
            if reply.status_code != 401 or attempt == 2:
                return reply
            self._auth[scope] = self._answer(reply.headers.get("WWW-Authenticate", ""), scope)
        raise AssertionError("unreachable")

    def _answer(self, challenge: str, scope: str) -> str:
        import base64

        if self.credentials is None:
            raise RegistryError(
                f"registry {self.registry} wants credentials: set PIPELINE_REGISTRY_USER and "
                "PIPELINE_REGISTRY_PASSWORD (Google's registries use Application Default Credentials)"
            )
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        basic = "Basic " + base64.b64encode(pair).decode()
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            return basic
        if scheme.lower() != "bearer":
            raise RegistryError(f"registry {self.registry}: unsupported auth challenge {scheme!r}")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.registry}: a Bearer challenge without a realm")
        reply = self.session.get(
            realm,
            params={"service": fields.get("service", ""), "scope": scope},
            headers={"Authorization": basic},
            timeout=self.timeout,
        )
        if reply.status_code != 200:
            raise RegistryError(
                f"registry {self.registry}: the token service refused the credentials ({reply.status_code})"
            )
        body = reply.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"registry {self.registry}: the token service gave no token")
        return f"Bearer {token}"

    def _check(self, reply: Any, ref: oci.Reference | str, what: str, ok: tuple[int, ...]) -> Any:
        if reply.status_code in ok:
            return reply
        if reply.status_code == 401:
            raise RegistryError(f"{ref}: {what}: credentials refused by {self.registry}")
        if reply.status_code == 403:
            raise RegistryError(f"{ref}: {what}: denied by {self.registry}")
        if reply.status_code == 404:
            raise RegistryError(f"Image '{ref}' not found")
        detail = _errors(reply)
        raise RegistryError(f"{ref}: {what}: {self.registry} answered {reply.status_code}{detail}")

    # ---- reading

    def resolve(self, ref: oci.Reference) -> tuple[str, dict[str, Any], str, bytes]:
        """(digest, manifest, media type, the manifest's bytes) of the image `ref` names; a tag
        is resolved now."""
        target = ref.digest or ref.tag
        reply = self.request(
            "GET",
            f"/v2/{ref.repository}/manifests/{target}",
            ref.repository,
            headers={"Accept": ACCEPT},
        )
        self._check(reply, ref, "manifest", (200,))
        body = reply.content
        digest = oci.digest_of(body)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{ref}: the registry's manifest does not match its digest")
        manifest = reply.json()
        media = manifest.get("mediaType") or reply.headers.get("Content-Type", "")
        return digest, manifest, media, body

    def has_blob(self, repository: str, digest: str, push: bool = False) -> bool:
        reply = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository, push=push)
        return reply.status_code == 200

    def fetch_blob(self, ref: oci.Reference, digest: str, into: Path) -> None:
        """Download a blob to `into`, checking its digest."""
        import hashlib

        reply = self.request(
            "GET", f"/v2/{ref.repository}/blobs/{digest}", ref.repository, stream=True
        )
        self._check(reply, ref, f"blob {digest[:19]}", (200,))
        hashed = hashlib.sha256()
        tmp = into.with_suffix(".partial")
        with open(tmp, "wb") as fh:
            for chunk in reply.iter_content(CHUNK):
                hashed.update(chunk)
                fh.write(chunk)
        if f"sha256:{hashed.hexdigest()}" != digest:
            tmp.unlink()
            raise RegistryError(f"{ref}: blob {digest} does not match its digest")
        os.replace(tmp, into)

    # ---- writing

    def push(
        self,
        layout: oci.Layout,
        tag_in_layout: str,
        ref: oci.Reference,
        on_blob: Callable[[str, int, bool], None] | None = None,
    ) -> PushReport:
        """Push the layout's image `tag_in_layout` as `ref` (its tag, when it has one)."""
        digest, manifest = layout.manifest(tag_in_layout)
        report = PushReport(ref.pinned(digest), digest)
        repo = ref.repository
        for desc in [manifest["config"], *manifest["layers"]]:
            blob = desc["digest"]
            if self.has_blob(repo, blob, push=True):
                report.skipped.append(blob)
                if on_blob:
                    on_blob(blob, desc["size"], False)
                continue
            self._upload(ref, layout.blob(blob), blob)
            report.uploaded.append(blob)
            report.bytes_sent += desc["size"]
            if on_blob:
                on_blob(blob, desc["size"], True)
        body = layout.blob(digest).read_bytes()
        for target in (digest, *([ref.tag] if ref.tag else [])):
            reply = self.request(
                "PUT",
                f"/v2/{repo}/manifests/{target}",
                repo,
                push=True,
                data=body,
                headers={"Content-Type": manifest.get("mediaType", oci.MANIFEST)},
            )
            self._check(reply, ref, f"manifest {target}", (201, 200))
        return report

    def put_blob(self, ref: oci.Reference, data: bytes) -> str:
        """A small blob (an envelope, a config) uploaded unless the registry has it."""
        import io

        digest = oci.digest_of(data)
        if not self.has_blob(ref.repository, digest, push=True):
            self._send(ref, io.BytesIO(data), len(data), digest)
        return digest

    def put_manifest(self, ref: oci.Reference, target: str, body: bytes, media: str) -> None:
        """PUT a manifest (or index) under `target`: its digest or a tag."""
        repo = ref.repository
        reply = self.request(
            "PUT", f"/v2/{repo}/manifests/{target}", repo, push=True, data=body,
            headers={"Content-Type": media},
        )  # fmt: skip
        self._check(reply, ref, f"manifest {target}", (201, 200))

    def get_manifest(self, ref: oci.Reference, target: str) -> dict[str, Any] | None:
        """The manifest or index at `target` (a digest or a tag), or None when there is none."""
        repo = ref.repository
        reply = self.request(
            "GET", f"/v2/{repo}/manifests/{target}", repo,
            headers={"Accept": ", ".join((oci.MANIFEST, oci.INDEX))},
        )  # fmt: skip
        if reply.status_code == 404:
            return None
        self._check(reply, ref, f"manifest {target}", (200,))
        if target.startswith("sha256:") and oci.digest_of(reply.content) != target:
            raise RegistryError(f"{ref}: the registry's manifest does not match {target}")
        doc = reply.json()
        return doc if isinstance(doc, dict) else None

    def get_blob(self, ref: oci.Reference, digest: str, limit: int = 1 << 20) -> bytes:
        """A small blob's bytes, checked against its digest (at most `limit` bytes)."""
        repo = ref.repository
        reply = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo)
        self._check(reply, ref, f"blob {digest[:19]}", (200,))
        data = reply.content
        if len(data) > limit or oci.digest_of(data) != digest:
            raise RegistryError(f"{ref}: blob {digest} does not match its digest")
        return data

    def referrers(self, ref: oci.Reference, digest: str) -> list[dict[str, Any]] | None:
        """The referrers API's descriptors for `digest`, or None where the registry has no
        referrers API (distribution-spec 1.1: a 404 there means "use the tag scheme")."""
        repo = ref.repository
        reply = self.request(
            "GET", f"/v2/{repo}/referrers/{digest}", repo, headers={"Accept": oci.INDEX}
        )
        if reply.status_code == 404 or not reply.headers.get("Content-Type", "").startswith(
            oci.INDEX
        ):
            return None
        self._check(reply, ref, "referrers", (200,))
        manifests = reply.json().get("manifests")
        return manifests if isinstance(manifests, list) else []

    def _upload(self, ref: oci.Reference, path: Path, digest: str) -> None:
        with open(path, "rb") as fh:
            self._send(ref, fh, path.stat().st_size, digest)

    def _send(self, ref: oci.Reference, data: Any, size: int, digest: str) -> None:
        repo = ref.repository
        reply = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, push=True)
        self._check(reply, ref, "blob upload", (202,))
        location = reply.headers.get("Location", "")
        if location.startswith("/"):
            location = self.base + location
        separator = "&" if "?" in location else "?"
        reply = self.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            repo,
            push=True,
            data=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        self._check(reply, ref, f"blob {digest[:19]}", (201,))


def pull(ref: oci.Reference, layout: oci.Layout, registry: Registry | None = None) -> str:
    """Copy the image `ref` names into `layout` (blobs it already has are not fetched again),
    tagged there by its digest; returns the digest. A manifest list picks linux/amd64."""
    registry = registry or Registry(ref.registry, credentials_for(ref.registry))
    digest, manifest, media, body = registry.resolve(ref)
    if media in (oci.INDEX, oci.DOCKER_LIST):
        chosen = [
            m
            for m in manifest.get("manifests", [])
            if m.get("platform", {}).get("os") == "linux"
            and m.get("platform", {}).get("architecture") == "amd64"
        ]
        if not chosen:
            raise RegistryError(
                f"{ref}: no linux/amd64 image in its index (manifest for another platform)"
            )
        pinned = oci.Reference(ref.registry, ref.repository, None, chosen[0]["digest"])
        return pull(pinned, layout, registry)
    if manifest.get("config", {}).get("mediaType") not in (
        oci.CONFIG,
        "application/vnd.docker.container.image.v1+json",
    ):
        raise RegistryError(
            f"{ref}: not a container image (config {manifest.get('config', {}).get('mediaType')})"
        )
    for desc in [manifest["config"], *manifest["layers"]]:
        path = layout.blob(desc["digest"])
        if not path.exists():
            registry.fetch_blob(ref, desc["digest"], path)
    layout.put(body)  # the registry's exact bytes: they are what the digest names
    layout.tag(digest, oci.descriptor(media or oci.MANIFEST, digest, len(body)))
    return digest


def _short(exc: BaseException) -> str:
    text = str(exc)
    found = re.search(r"\[Errno (\d+)\] ([^'\")\]]+)", text)
    if found:
        return found.group(2).strip()
    return text.split(": ")[-1][:160] or type(exc).__name__


def _errors(reply: Any) -> str:
    try:
        errors = reply.json().get("errors", [])
    except ValueError:
        return ""
    messages = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    return f" ({'; '.join(messages)})" if messages else ""
