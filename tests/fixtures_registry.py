"""pytest plugin: a real OCI registry (Debian's docker-registry) on 127.0.0.1, for the image tests.

Fixtures:
- ``local_registry`` (module): one open registry for a test module; its ``address`` is host:port.
- ``registry_factory`` (function): ``(auth=False) -> RegistryUnderTest``, a fresh one per call;
  with ``auth`` it asks for Basic credentials (an htpasswd file made with Debian's
  apache2-utils), given in ``user``/``password``. Every registry started is stopped at teardown.

Helper: ``push_release_image(tarball, ref, workdir) -> (digest, layout)`` builds a release's image
(pipeline/image/build.py, no sandbox proof) and pushes it to ``ref``.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_tool

from pipeline.image import server


def push_release_image(tarball: Path, ref: str, workdir: Path) -> tuple[str, Path]:
    from pipeline import release
    from pipeline.image import build, oci, registry

    parsed = oci.Reference.parse(ref)
    tag = parsed.tag or "latest"
    extracted = release.extract(tarball, workdir / "rel")
    built = build.build(build.Recipe(extracted), workdir / "layout", tag=tag)
    registry.Registry(parsed.registry, None).push(oci.Layout.open(built.layout), tag, parsed)
    return built.digest, built.layout


@dataclass
class RegistryUnderTest:
    running: server.Server
    user: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def storage(self) -> Path:
        return self.running.state_dir / "storage"


def start_registry(state_dir: Path, auth: bool = False) -> RegistryUnderTest:
    require_tool("docker-registry", "docker-registry")
    user = password = None
    htpasswd = None
    if auth:
        tool = require_tool("htpasswd", "apache2-utils")
        user, password = "release-engineer", secrets.token_urlsafe(12)
        state_dir.mkdir(parents=True, exist_ok=True)
        htpasswd = state_dir / "htpasswd"
        line = subprocess.run(
            [tool, "-Bbn", user, password], check=True, capture_output=True, text=True
        ).stdout
        htpasswd.write_text(line)
    return RegistryUnderTest(server.start(state_dir, 0, htpasswd=htpasswd), user, password)


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    started = start_registry(tmp_path_factory.mktemp("registry"))
    yield started
    started.running.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RegistryUnderTest]]:
    started: list[RegistryUnderTest] = []

    def make(auth: bool = False) -> RegistryUnderTest:
        started.append(start_registry(tmp_path / f"registry-{len(started)}", auth))
        return started[-1]

    yield make
    for each in started:
        each.running.stop()
