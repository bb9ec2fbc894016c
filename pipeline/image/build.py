"""Build an OCI image from an extracted OTP release, like ko or jib do for Go and Java: no
Docker daemon, no base image pulled, two layers.

- the release layer: the release under `/opt/<name>`, owned by the runtime user;
- the runtime layer: the release's shared-library closure and its loader (elf.py), a static
  busybox as `/bin/sh` and the tools start scripts call (`busybox --list-full`), CA
  certificates, `/etc/passwd` and `/etc/group` with the runtime user, `/etc/hosts`, an empty
  `/tmp`.

The config starts the release in the foreground as the runtime user, PORT 8080 and the env
file's values in its environment, and names the release it holds in its annotations.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.image import elf, layers, oci
from pipeline.release import Release

RUNTIME_UID = 65532  # distroless's "nonroot": never root, never a host user
IMAGE_PORT = 8080  # Cloud Run's default PORT
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates
RELEASE_SHA256 = "dev.taiea.release.sha256"
RELEASE_NAME = "dev.taiea.release.name"
ERTS_VERSION = "dev.taiea.release.erts"
EPOCH_TS = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Host:
    """What the runtime layer takes from the build machine."""

    busybox: Path
    ca_bundle: Path = CA_BUNDLE
    root: Path = Path("/")

    @classmethod
    def find(cls) -> Host:
        found = shutil.which("busybox")
        if found is None:
            raise PipelineError(
                "busybox not found: install Debian's busybox-static (apt-get install -y "
                "busybox-static); the image's /bin/sh and tools come from it"
            )
        busybox = Path(found).resolve()
        if elf.read_elf(busybox).interpreter is not None:
            raise PipelineError(
                f"{busybox} is dynamically linked: install busybox-static, whose binary needs "
                "no library in the image"
            )
        if not CA_BUNDLE.is_file():
            raise PipelineError(f"{CA_BUNDLE} not found: apt-get install -y ca-certificates")
        return cls(busybox)


@dataclass(frozen=True)
class Built:
    """An image written into a layout: its manifest digest and documents."""

    layout: Path
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[layers.Layer, ...]
    closure: tuple[str, ...]  # the libraries taken from the host, by image path

    @property
    def size(self) -> int:
        """Bytes a registry stores: the layers, the config and the manifest."""
        config = self.manifest["config"]["size"]
        return sum(layer.size for layer in self.layers) + config + len(oci.canonical(self.manifest))


@dataclass(frozen=True)
class Recipe:
    release: Release
    env: Mapping[str, str] = field(default_factory=dict)  # the env file's values
    port: int = IMAGE_PORT
    uid: int = RUNTIME_UID
    source: str = ""  # where the tarball came from, for the annotations


def mount_point(release: Release) -> str:
    return f"/opt/{release.info.name}"


def applets(busybox: Path) -> list[str]:
    """Every tool this busybox provides, by its path (`bin/sh`, `usr/bin/awk`, …)."""
    done = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise PipelineError(f"{busybox} --list-full failed: {done.stderr.strip()}")
    return sorted({line.strip().strip("/") for line in done.stdout.splitlines() if line.strip()})


def runtime_entries(closure: elf.Closure, host: Host, uid: int) -> list[layers.Entry]:
    entries = [
        layers.file("bin/busybox", host.busybox),
        layers.directory("tmp", mode=0o1777),
        layers.text(
            "etc/passwd",
            f"root:x:0:0:root:/root:/sbin/nologin\ntaiea:x:{uid}:{uid}:taiea:/tmp:/sbin/nologin\n",
        ),
        layers.text("etc/group", f"root:x:0:\ntaiea:x:{uid}:\n"),
        layers.text("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"),
        layers.text("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
        layers.file("etc/ssl/certs/ca-certificates.crt", host.ca_bundle),
    ]
    for path in applets(host.busybox):
        if path != "bin/busybox":
            entries.append(layers.symlink(path, "/bin/busybox"))
    first: dict[Path, str] = {}  # one copy of a file needed under two names (the loader)
    for image_path, source in sorted(closure.files.items(), key=lambda kv: (len(kv[0]), kv[0])):
        if source in first:
            entries.append(layers.symlink(image_path, first[source]))
        else:
            first[source] = image_path
            entries.append(layers.file(image_path, source))
    return entries


def never_run(release: Release) -> dict[str, str]:
    """ERTS programs a release never runs, with why: their libraries stay out of the image.
    epmd serves distributed Erlang only, which starts with -name or -sname in vm.args."""
    vm_args = release.root / "releases" / release.info.version / "vm.args"
    try:
        lines = vm_args.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    flags = {
        line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")
    }
    if flags & {"-name", "-sname"}:
        return {}
    return {
        f"erts-{release.info.erts_version}/bin/epmd": "no distribution: vm.args has no -name/-sname"
    }


def image_config(recipe: Recipe, diff_ids: list[str], labels: dict[str, str]) -> dict[str, Any]:
    info = recipe.release.info
    env = {
        "PATH": "/bin:/usr/bin:/sbin:/usr/sbin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "ERL_CRASH_DUMP": "/tmp/erl_crash.dump",
        **dict(recipe.env),
        "PORT": str(recipe.port),
    }
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH_TS,
        "config": {
            "User": f"{recipe.uid}:{recipe.uid}",
            "Entrypoint": [f"{mount_point(recipe.release)}/bin/{info.name}", "foreground"],
            "Env": [f"{k}={v}" for k, v in env.items()],
            "ExposedPorts": {f"{recipe.port}/tcp": {}},
            "WorkingDir": "/tmp",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def image_annotations(recipe: Recipe) -> dict[str, str]:
    info = recipe.release.info
    return {
        "org.opencontainers.image.title": info.name,
        "org.opencontainers.image.version": info.version,
        # an OTP tarball carries no VCS revision: the tarball's own digest names the release
        "org.opencontainers.image.revision": f"sha256:{info.sha256}",
        "org.opencontainers.image.source": recipe.source or info.path.name,
        RELEASE_NAME: info.name,
        RELEASE_SHA256: info.sha256,
        ERTS_VERSION: info.erts_version,
    }


def build(
    recipe: Recipe,
    layout_dir: Path,
    *,
    tag: str,
    host: Host | None = None,
    closure: elf.Closure | None = None,
) -> Built:
    """Write the image of `recipe.release` into the layout at `layout_dir`, tagged `tag` there.
    `closure` replaces the computed one (a test takes a library out of it)."""
    host = host or Host.find()
    release = recipe.release
    if closure is None:
        closure = elf.closure(release.root, host.root, frozenset(never_run(release)))
    layout = oci.Layout.create(layout_dir)
    owner = (recipe.uid, recipe.uid)
    written = []
    for name, entries in (
        ("release", layers.tree(release.root, mount_point(release), owner)),
        ("runtime", runtime_entries(closure, host, recipe.uid)),
    ):
        layer = layers.write_layer(entries, layout.root / f"{name}.layer.partial")
        layout.adopt(layer.path, layer.digest)
        written.append(
            layers.Layer(
                layout.blob(layer.digest), layer.digest, layer.size, layer.diff_id, layer.entries
            )
        )
    notes = image_annotations(recipe)
    config = image_config(recipe, [layer.diff_id for layer in written], notes)
    config_bytes = oci.canonical(config)
    layout.put(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST,
        "config": oci.descriptor(oci.CONFIG, config_bytes),
        "layers": [oci.descriptor(oci.LAYER, layer.digest, layer.size) for layer in written],
        "annotations": notes,
    }
    manifest_bytes = oci.canonical(manifest)
    digest = layout.put(manifest_bytes)
    layout.tag(tag, oci.descriptor(oci.MANIFEST, manifest_bytes))
    return Built(
        layout.root, digest, manifest, config, tuple(written), tuple(sorted(closure.files))
    )
