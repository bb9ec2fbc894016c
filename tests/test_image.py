"""OCI images of the release: references, reproducible layers, the library closure, the layout,
and push/pull against a real registry (Debian's docker-registry) with and without auth.

Running the image under gVisor is test_image_sandbox.py (a sandbox module)."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline import config, release
from pipeline.errors import PipelineError
from pipeline.image import build, elf, layers, oci, registry
from pipeline.runtime.base import ImageRoot, LaunchSpec

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def extracted(reference_tarball, tmp_path_factory) -> release.Release:
    return release.extract(reference_tarball(), tmp_path_factory.mktemp("x") / "release")


@pytest.fixture(scope="module")
def built(extracted, tmp_path_factory) -> build.Built:
    return build.build(
        build.Recipe(extracted, {"TAIEA_ENV": "dev"}), tmp_path_factory.mktemp("l"), tag="1.0.0"
    )


# ------------------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "127.0.0.1:5000/taiea/tai_autonomics:1.0.0",
            ("127.0.0.1:5000", "taiea/tai_autonomics", "1.0.0", None),
        ),
        ("127.0.0.1:5000/taiea/app", ("127.0.0.1:5000", "taiea/app", "latest", None)),
        ("localhost/app:v1", ("localhost", "app", "v1", None)),
        (
            "us-central1-docker.pkg.dev/p/r/app@sha256:" + "a" * 64,
            ("us-central1-docker.pkg.dev", "p/r/app", None, "sha256:" + "a" * 64),
        ),
        (
            "reg.example:443/a/b:t@sha256:" + "b" * 64,
            ("reg.example:443", "a/b", "t", "sha256:" + "b" * 64),
        ),
    ],
    ids=["host-port-tag", "default-latest", "localhost", "digest-only", "tag-and-digest"],
)
def test_references_parse(text, expected):
    ref = oci.Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tai_autonomics:1.0.0", "names no registry"),
        ("127.0.0.1:5000/Taiea/App:1", "lowercase"),
        ("127.0.0.1:5000/a/b@sha256:abc", "64 hex"),
        ("127.0.0.1:5000/a/b:bad tag", "not a valid tag"),
    ],
    ids=["no-registry", "uppercase-repo", "short-digest", "bad-tag"],
)
def test_bad_references_are_one_clear_line(text, says):
    with pytest.raises(PipelineError, match=says) as caught:
        oci.Reference.parse(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("image", "registry_image"),
    [
        ("127.0.0.1:5000/taiea/app:1", True),
        ("us-central1-docker.pkg.dev/p/r/app:1", True),
        ("localhost/app", True),
        ("file:///tmp/x/tai_autonomics-1.0.0.tar.gz", False),
        ("https://example.com/app", False),
        ("taiea/app:1", False),
        ("tai_autonomics", False),
    ],
    ids=["host-port", "artifact-registry", "localhost", "file-url", "other-url", "no-host", "name"],
)
def test_what_names_a_registry_image(image, registry_image):
    assert oci.names_registry(image) is registry_image


# ------------------------------------------------------------------------------ layers


def members(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob, "r:gz") as tar:
        return tar.getmembers()


def test_a_layer_is_the_same_bytes_whatever_the_files_mtime_or_order(tmp_path):
    for n, name in enumerate(("b", "a", "c/d")):
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        os.utime(path, (1000 + n, 1000 + n))
    one = layers.write_layer(layers.tree(tmp_path / "src", "opt/x", (7, 7)), tmp_path / "one")
    for path in (tmp_path / "src").rglob("*"):
        os.utime(path, (5_000_000, 5_000_000))
    entries = list(reversed(layers.tree(tmp_path / "src", "opt/x", (7, 7))))
    two = layers.write_layer(entries, tmp_path / "two")
    assert (one.digest, one.diff_id) == (two.digest, two.diff_id)
    assert one.path.read_bytes() == two.path.read_bytes()
    found = members(one.path)
    assert [m.name for m in found] == ["opt", "opt/x", "opt/x/a", "opt/x/b", "opt/x/c", "opt/x/c/d"]
    assert {m.mtime for m in found} == {0}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in found[1:]} == {(7, 7, "", "")}
    with open(one.path, "rb") as fh:
        header = fh.read(10)
    assert header[4:8] == b"\0\0\0\0", "gzip header carries no time stamp"


def test_two_entries_for_one_path_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="two different entries for /etc/x"):
        layers.write_layer(
            [layers.text("etc/x", "one"), layers.text("etc/x", "two")], tmp_path / "l"
        )


def evil_layer(tmp_path: Path, *members_: tuple[str, str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in members_:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"evil-{len(list(tmp_path.iterdir()))}.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


@pytest.mark.parametrize(
    "members_",
    [
        [("../outside", "file", b"x")],
        [("lib", "symlink", b"/etc"), ("lib/written-through-a-link", "file", b"x")],
        [("up", "symlink", b"../.."), ("up/outside", "file", b"x")],
    ],
    ids=["dot-dot", "absolute-symlink-dir", "relative-symlink-dir"],
)
def test_unpacking_never_writes_outside_the_root(tmp_path, members_):
    before = set(Path("/etc").iterdir())
    blob = evil_layer(tmp_path, *members_)
    with pytest.raises(PipelineError, match="cannot unpack"):
        layers.unpack([blob], tmp_path / "root" / "fs")
    assert not (tmp_path / "root" / "outside").exists()
    assert not (tmp_path / "outside").exists()
    assert set(Path("/etc").iterdir()) == before


def test_whiteouts_remove_what_an_earlier_layer_laid(tmp_path):
    first = evil_layer(tmp_path, ("etc/a", "file", b"a"), ("etc/b", "file", b"b"))
    second = evil_layer(tmp_path, ("etc/.wh.a", "file", b""))
    layers.unpack([first, second], tmp_path / "fs")
    assert sorted(p.name for p in (tmp_path / "fs" / "etc").iterdir()) == ["b"]


# ------------------------------------------------------------------------------ the closure


def test_the_closure_is_read_from_the_elf_files(extracted):
    found = elf.closure(extracted.root, leave_out=frozenset(build.never_run(extracted)))
    names = found.names()
    for needed in ("libc.so.6", "libm.so.6", "libtinfo.so.6", "ld-linux-x86-64.so.2"):
        assert needed in names
    assert "/lib64/ld-linux-x86-64.so.2" in found.files  # beam.smp's PT_INTERP
    assert found.needed_by["/lib/x86_64-linux-gnu/libtinfo.so.6"].endswith("bin/beam.smp")
    assert "libsystemd.so.0" not in names, "epmd's libraries stay out without distribution"
    with_epmd = elf.closure(extracted.root)
    assert "libsystemd.so.0" in with_epmd.names()
    assert with_epmd.needed_by["/lib/x86_64-linux-gnu/libsystemd.so.0"].endswith("bin/epmd")


def test_a_release_with_distribution_keeps_epmd_and_its_libraries(extracted, tmp_path):
    copy = tmp_path / "release"
    subprocess.run(["cp", "-a", str(extracted.root), str(copy)], check=True)
    vm_args = copy / "releases" / extracted.info.version / "vm.args"
    vm_args.write_text(vm_args.read_text() + "-sname taiea\n")
    assert build.never_run(release.Release(extracted.info, copy)) == {}


def test_a_library_missing_on_the_host_is_named_with_who_needs_it(extracted, tmp_path):
    host = tmp_path / "host"
    (host / "lib64").mkdir(parents=True)
    (host / "lib64" / "ld-linux-x86-64.so.2").write_bytes(b"loader")
    with pytest.raises(PipelineError, match=r"beam.smp needs lib\S+\.so\.\d+, found nowhere"):
        elf.closure(extracted.root, host)


def test_taking_out_a_library_that_is_not_there_is_an_error(extracted):
    found = elf.closure(extracted.root)
    assert "libtinfo.so.6" not in found.without("libtinfo.so.6").names()
    with pytest.raises(PipelineError, match="libnope.so.1 is not in the closure"):
        found.without("libnope.so.1")


# ------------------------------------------------------------------------------ the image


def test_the_same_tarball_gives_the_same_image_digest(reference_tarball, built, tmp_path):
    again = release.extract(reference_tarball(), tmp_path / "again")
    second = build.build(build.Recipe(again, {"TAIEA_ENV": "dev"}), tmp_path / "l2", tag="1.0.0")
    assert second.digest == built.digest
    for a, b in zip(built.layers, second.layers, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
    other = build.build(build.Recipe(again, {"TAIEA_ENV": "prod"}), tmp_path / "l3", tag="x")
    assert other.digest != built.digest, "the config's environment is part of the image"


def test_the_image_says_which_release_it_holds_and_how_it_starts(built, extracted):
    config_ = built.config["config"]
    assert config_["Entrypoint"] == ["/opt/tai_autonomics/bin/tai_autonomics", "foreground"]
    assert config_["User"] == "65532:65532"
    assert "PORT=8080" in config_["Env"] and "TAIEA_ENV=dev" in config_["Env"]
    assert config_["ExposedPorts"] == {"8080/tcp": {}}
    notes = built.manifest["annotations"]
    assert notes["org.opencontainers.image.version"] == "1.0.0"
    assert notes[build.RELEASE_SHA256] == extracted.info.sha256
    release_layer, runtime_layer = (members(layer.path) for layer in built.layers)
    owners = {(m.uid, m.gid) for m in release_layer if m.name.startswith("opt/tai_autonomics")}
    assert owners == {(65532, 65532)}
    names = {m.name: m for m in runtime_layer}
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "/bin/busybox"
    assert names["tmp"].mode == 0o1777
    assert "taiea:x:65532:65532" in _read(built.layers[1].path, "etc/passwd")
    assert "etc/ssl/certs/ca-certificates.crt" in names
    ratio = built.size / extracted.info.size_bytes
    assert ratio <= 1.5, f"image {built.size} bytes is {ratio:.2f}× the tarball"


def _read(blob: Path, name: str) -> str:
    with tarfile.open(blob, "r:gz") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


def test_an_image_runs_from_its_own_root_with_nothing_of_the_host_mounted(tmp_path):
    from pipeline.runtime.gvisor import GvisorRuntime

    env = config.load_env("ccw-sandbox")
    image = ImageRoot(
        tmp_path / "rootfs",
        ("/opt/x/bin/x", "foreground"),
        {"PORT": "8080", "A": "1"},
        65532,
        65532,
        "/tmp",
    )
    spec = LaunchSpec(
        root=tmp_path, name="x", env={"HTTP_HOST": "127.0.0.1"}, port=4321, image=image
    )
    config_ = GvisorRuntime(env.sandbox, "runsc")._config(spec, "taiea-test", 4321)
    assert config_["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert [m["type"] for m in config_["mounts"]] == ["proc", "tmpfs"]
    assert config_["process"]["user"] == {"uid": 65532, "gid": 65532}
    assert config_["process"]["args"] == ["/opt/x/bin/x", "foreground"]
    assert "PORT=4321" in config_["process"]["env"] and "A=1" in config_["process"]["env"]


# ------------------------------------------------------------------------------ the registry


def test_push_then_pull_round_trips_and_never_uploads_a_blob_twice(built, local_registry, tmp_path):
    ref = oci.Reference.parse(f"{local_registry.address}/taiea/tai_autonomics:1.0.0")
    client = registry_client(ref)
    first = client.push(oci.Layout.open(built.layout), "1.0.0", ref)
    assert first.digest == built.digest
    assert len(first.uploaded) == 3 and first.skipped == []
    again = client.push(oci.Layout.open(built.layout), "1.0.0", ref)
    assert again.uploaded == [] and len(again.skipped) == 3 and again.bytes_sent == 0
    pulled = oci.Layout.create(tmp_path / "pulled")
    assert registry_module_pull(ref, pulled) == built.digest
    _, manifest = pulled.manifest(built.digest)
    layers.unpack([pulled.blob(d["digest"]) for d in manifest["layers"]], tmp_path / "a")
    layers.unpack([layer.path for layer in built.layers], tmp_path / "b")
    assert tree_of(tmp_path / "a") == tree_of(tmp_path / "b")
    assert os.access(tmp_path / "a" / "opt/tai_autonomics/bin/tai_autonomics", os.X_OK)


def registry_client(ref: oci.Reference) -> registry.Registry:
    return registry.Registry(ref.registry, registry.credentials_for(ref.registry, {}))


def registry_module_pull(ref: oci.Reference, layout: oci.Layout) -> str:
    return registry.pull(ref, layout, registry_client(ref))


def tree_of(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", hash(os.readlink(path)))
        elif path.is_file():
            out[rel] = ("file", hash(path.read_bytes()))
        else:
            out[rel] = ("dir", 0)
    return out


def test_unknown_images_and_unreachable_registries_are_named(local_registry, tmp_path):
    missing = oci.Reference.parse(f"{local_registry.address}/taiea/nothing:9.9.9")
    with pytest.raises(PipelineError, match=r"Image '.*nothing:9.9.9' not found"):
        registry_module_pull(missing, oci.Layout.create(tmp_path / "l"))
    from pipeline.runtime.process import free_port

    nowhere = oci.Reference.parse(f"127.0.0.1:{free_port('127.0.0.1')}/taiea/x:1")
    with pytest.raises(PipelineError, match=r"unreachable: Connection refused$"):
        registry_module_pull(nowhere, oci.Layout.create(tmp_path / "m"))


def test_a_registry_with_auth_wants_the_right_credentials(built, registry_factory):
    private = registry_factory(auth=True)
    ref = oci.Reference.parse(f"{private.address}/taiea/tai_autonomics:1.0.0")
    layout = oci.Layout.open(built.layout)
    with pytest.raises(PipelineError, match="wants credentials: set PIPELINE_REGISTRY_USER"):
        registry.Registry(ref.registry, None).push(layout, "1.0.0", ref)
    wrong = registry.Credentials(private.user or "", "not-the-password")
    with pytest.raises(PipelineError, match="credentials refused") as caught:
        registry.Registry(ref.registry, wrong).push(layout, "1.0.0", ref)
    assert "not-the-password" not in str(caught.value)
    environ = {
        "PIPELINE_REGISTRY_USER": private.user or "",
        "PIPELINE_REGISTRY_PASSWORD": private.password or "",
    }
    right = registry.credentials_for(ref.registry, environ)
    assert right is not None and private.password not in repr(right)
    report = registry.Registry(ref.registry, right).push(layout, "1.0.0", ref)
    assert report.digest == built.digest and len(report.uploaded) == 3


def test_google_registries_use_application_default_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(
        PipelineError, match="no Application Default Credentials for Artifact Registry"
    ):
        registry.credentials_for("us-central1-docker.pkg.dev", {})
    assert registry.credentials_for("127.0.0.1:5000", {}) is None


# ------------------------------------------------------------------------------ the tasks


def test_inspect_shows_digest_release_and_layers(built, local_registry):
    ref = f"{local_registry.address}/taiea/inspected:1.0.0"
    registry_client(oci.Reference.parse(ref)).push(
        oci.Layout.open(built.layout), "1.0.0", oci.Reference.parse(ref)
    )
    shown = run_cli("image.inspect", ref)
    assert shown.returncode == 0, shown.stderr
    assert built.digest in shown.stdout and "tai_autonomics 1.0.0" in shown.stdout
    assert "65532:65532" in shown.stdout
    local = run_cli("image.inspect", f"{built.layout}:1.0.0", "--json")
    assert local.returncode == 0, local.stderr
    assert f'"digest":"{built.digest}"' in local.stdout


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("tai_autonomics", "names no registry"),
        ("127.0.0.1:1/taiea/x:1", "registry 127.0.0.1:1 unreachable"),
    ],
    ids=["no-registry", "unreachable"],
)
def test_inspect_of_a_bad_reference_is_exit_2_and_one_line(ref, says):
    done = run_cli("image.inspect", ref)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and says in done.stderr


def test_registry_tasks_start_status_and_stop_in_the_background(tmp_path):
    state = str(tmp_path / "reg")
    started = run_cli("registry.start", "--background", "--port", "0", "--state-dir", state)
    try:
        assert started.returncode == 0, started.stderr
        status = run_cli("registry.status", "--state-dir", state, "--json")
        assert '"running": true' in status.stdout
        twice = run_cli("registry.start", "--background", "--port", "0", "--state-dir", state)
        assert twice.returncode == 2 and "already runs" in twice.stderr
    finally:
        stopped = run_cli("registry.stop", "--state-dir", state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert '"running": false' in run_cli("registry.status", "--state-dir", state, "--json").stdout


def test_a_wrapped_tarball_gives_the_same_release_layer_layout(reference_tarball, tmp_path):
    wrapped = release.extract(reference_tarball(layout="wrapped"), tmp_path / "release")
    assert wrapped.info.layout == "wrapped"
    image = build.build(build.Recipe(wrapped), tmp_path / "layout", tag="1.0.0")
    names = {m.name for m in members(image.layers[0].path)}
    assert "opt/tai_autonomics/bin/tai_autonomics" in names
    assert not any(n.startswith("opt/tai_autonomics/tai_autonomics/") for n in names)
    assert image.config["config"]["Entrypoint"][0] == "/opt/tai_autonomics/bin/tai_autonomics"
