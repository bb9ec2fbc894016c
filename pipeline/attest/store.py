"""Attestations kept in the registry next to the image they are about, as OCI 1.1 referrers.

Each envelope is one artifact: an image manifest with `artifactType`
`application/vnd.dsse.envelope.v1+json`, the empty config, the envelope as its one layer and
`subject` = the image manifest's descriptor. Pushed by digest (nothing is overwritten, an
attestation is never lost to another). Found through the referrers API
(`GET /v2/<repo>/referrers/<digest>`) where the registry has it; where it does not (Debian's
docker-registry 2.8 here, older Artifact Registry repositories), through the spec's tag scheme:
the tag `sha256-<hex>` holds an index listing every referrer, updated read-modify-write on each
attach (two writers at once may drop one entry from the index, never the artifact itself).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from pipeline.attest.dsse import MEDIA_TYPE
from pipeline.errors import PipelineError
from pipeline.image import oci
from pipeline.image.registry import Registry

EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
MAX_ENVELOPE = 1 << 20


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


@dataclass(frozen=True)
class Stored:
    digest: str  # the artifact manifest's
    annotations: dict[str, str]
    envelope: bytes


def attach(
    registry: Registry,
    ref: oci.Reference,
    subject: dict[str, Any],
    envelope: bytes,
    annotations: dict[str, str],
) -> str:
    """Push `envelope` as a referrer of the manifest `subject` describes; returns the artifact
    manifest's digest."""
    registry.put_blob(ref, EMPTY)
    registry.put_blob(ref, envelope)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST,
        "artifactType": MEDIA_TYPE,
        "config": {**oci.descriptor(EMPTY_TYPE, EMPTY), "data": base64.b64encode(EMPTY).decode()},
        "layers": [oci.descriptor(MEDIA_TYPE, envelope)],
        "subject": subject,
        "annotations": annotations,
    }
    body = oci.canonical(manifest)
    digest = oci.digest_of(body)
    registry.put_manifest(ref, digest, body, oci.MANIFEST)
    if registry.referrers(ref, subject["digest"]) is None:
        _index_add(registry, ref, subject["digest"], oci.descriptor(
            oci.MANIFEST, body, artifactType=MEDIA_TYPE, annotations=annotations
        ))  # fmt: skip
    return digest


def _index_add(registry: Registry, ref: oci.Reference, subject: str, entry: dict[str, Any]) -> None:
    tag = fallback_tag(subject)
    index = registry.get_manifest(ref, tag) or {
        "schemaVersion": 2,
        "mediaType": oci.INDEX,
        "manifests": [],
    }
    manifests = [m for m in index.get("manifests", []) if m.get("digest") != entry["digest"]]
    index["manifests"] = [*manifests, entry]
    registry.put_manifest(ref, tag, oci.canonical(index), oci.INDEX)


def listed(registry: Registry, ref: oci.Reference, subject: str) -> list[dict[str, Any]]:
    """Descriptors of the envelopes referring to `subject` (referrers API, else the tag)."""
    found = registry.referrers(ref, subject)
    if found is None:
        index = registry.get_manifest(ref, fallback_tag(subject))
        found = list(index.get("manifests", [])) if index else []
    return [d for d in found if d.get("artifactType") == MEDIA_TYPE]


def fetch(registry: Registry, ref: oci.Reference, subject: str) -> list[Stored]:
    """Every envelope referring to `subject`, read and checked against its digests. An artifact
    that claims another subject is left out (a referrer index can be written by anyone with push
    rights; the artifact's own `subject` is what counts)."""
    out = []
    for desc in listed(registry, ref, subject):
        manifest = registry.get_manifest(ref, desc["digest"])
        if not manifest or (manifest.get("subject") or {}).get("digest") != subject:
            continue
        layers = [d for d in manifest.get("layers", []) if d.get("mediaType") == MEDIA_TYPE]
        if len(layers) != 1 or int(layers[0].get("size", 0)) > MAX_ENVELOPE:
            continue
        envelope = registry.get_blob(ref, layers[0]["digest"], MAX_ENVELOPE)
        out.append(Stored(desc["digest"], dict(manifest.get("annotations") or {}), envelope))
    return out


def subject_of(registry: Registry, ref: oci.Reference) -> tuple[str, dict[str, Any]]:
    """(digest, descriptor) of the image manifest `ref` names: the tag resolved now."""
    digest, _, media, body = registry.resolve(ref)
    if media != oci.MANIFEST:
        raise PipelineError(f"{ref}: a {media} cannot be attested: name the image manifest")
    return digest, oci.descriptor(oci.MANIFEST, body)
