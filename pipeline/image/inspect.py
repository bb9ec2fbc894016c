"""What an image is, from a registry or a layout on disk: digest, layers, config, the release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.image import build, oci, registry


def describe(where: str) -> dict[str, Any]:
    """`where` is a registry reference (REGISTRY/REPO[:TAG][@DIGEST]) or an image layout
    directory (`DIR` or `DIR:TAG`, as image.build writes under the run dir)."""
    path, tag = where, ""
    head, sep, tail = where.rpartition(":")
    if not Path(where).exists() and sep and "/" not in tail and Path(head).is_dir():
        path, tag = head, tail
    if Path(path).is_dir():
        layout = oci.Layout.open(Path(path))
        digest, manifest = layout.manifest(tag or None)
        config = layout.read_json(manifest["config"]["digest"])
        source = f"layout {path}"
    else:
        ref = oci.Reference.parse(where)
        client = registry.Registry(ref.registry, registry.credentials_for(ref.registry))
        digest, manifest, media, _ = client.resolve(ref)
        if media in (oci.INDEX, oci.DOCKER_LIST):
            raise PipelineError(f"{where} is an index of images: inspect one of its manifests")
        config = _config(client, ref, manifest["config"]["digest"])
        source = str(ref)
    notes = manifest.get("annotations") or config.get("config", {}).get("Labels") or {}
    runtime = config.get("config", {})
    return {
        "source": source,
        "digest": digest,
        "layers": [{"digest": d["digest"], "size": d["size"]} for d in manifest["layers"]],
        "size_bytes": sum(d["size"] for d in manifest["layers"]) + manifest["config"]["size"],
        "config": {
            "entrypoint": runtime.get("Entrypoint"),
            "cmd": runtime.get("Cmd"),
            "user": runtime.get("User"),
            "env": runtime.get("Env") or [],
            "exposed_ports": sorted(runtime.get("ExposedPorts") or {}),
            "working_dir": runtime.get("WorkingDir"),
            "platform": f"{config.get('os')}/{config.get('architecture')}",
        },
        "release": {
            "name": notes.get(build.RELEASE_NAME),
            "version": notes.get("org.opencontainers.image.version"),
            "sha256": notes.get(build.RELEASE_SHA256),
            "erts": notes.get(build.ERTS_VERSION),
            "source": notes.get("org.opencontainers.image.source"),
        },
        "annotations": notes,
    }


def _config(client: registry.Registry, ref: oci.Reference, digest: str) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="taiea-inspect-") as tmp:
        path = Path(tmp) / "config"
        client.fetch_blob(ref, digest, path)
        return json.loads(path.read_bytes())
