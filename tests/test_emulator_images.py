"""The emulator runs OCI images from a registry, as Cloud Run does: a tag is pinned to its digest
when the revision is made, a moved tag changes nothing that runs (also across a restart), and
an unknown image or an unreachable registry fails the call in Cloud Run's words while the
service keeps its traffic. Real registry (docker-registry), real release, official client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_emulator import PARENT, get
from fixtures_registry import push_release_image

from pipeline.image import oci, registry
from pipeline.runtime.process import free_port


def run_v2() -> Any:
    from google.cloud import run_v2 as module

    return module


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def service_body(image: str, **env: str) -> Any:
    v2 = run_v2()
    variables = [v2.EnvVar(name=k, value=v) for k, v in env.items()]
    container = v2.Container(image=image, env=variables)
    return v2.Service(template=v2.RevisionTemplate(containers=[container]))


@pytest.fixture(scope="module")
def pushed(reference_tarball, local_registry, tmp_path_factory) -> dict[str, str]:
    """Images of 1.0.0 and 1.0.1 pushed under their versions; `stable` names 1.0.0 for now.
    Returns version → digest, and the repository."""
    base = tmp_path_factory.mktemp("images")
    out = {"repo": f"{local_registry.address}/taiea/tai_autonomics"}
    for version in ("1.0.0", "1.0.1"):
        digest, layout = push_release_image(
            reference_tarball(version=version), f"{out['repo']}:{version}", base / version
        )
        out[version] = digest
        out[f"layout-{version}"] = str(layout)
    tag("stable", "1.0.0", out)
    return out


def tag(name: str, version: str, pushed: dict[str, str]) -> None:
    ref = oci.Reference.parse(f"{pushed['repo']}:{name}")
    layout = oci.Layout.open(Path(pushed[f"layout-{version}"]))
    registry.Registry(ref.registry, None).push(layout, version, ref)


def test_a_tag_is_pinned_to_its_digest_and_a_moved_tag_changes_nothing_that_runs(
    start_emulator, pushed
):
    emulator = start_emulator()
    stable = f"{pushed['repo']}:stable"
    op = emulator.services().create_service(
        parent=PARENT, service_id="imaged", service=service_body(stable)
    )
    svc = op.result(timeout=120, polling=emulator.POLL)
    first = svc.latest_ready_revision
    revision = emulator.revisions().get_revision(name=first)
    assert revision.containers[0].image == f"{pushed['repo']}@{pushed['1.0.0']}"
    assert get(svc.uri)[:2] == (200, short(first))

    tag("stable", "1.0.1", pushed)  # the tag moves; the running revision must not
    emulator.restart()
    again = emulator.revisions().get_revision(name=first)
    assert again.containers[0].image == f"{pushed['repo']}@{pushed['1.0.0']}"
    svc = emulator.services().get_service(name=svc.name)
    assert get(svc.uri)[:2] == (200, short(first))

    # a new revision of the same tag (its template changed): now pinned to the tag's new digest
    update = svc.__class__(name=svc.name, template=service_body(stable, DEPLOY="2").template)
    svc = (
        emulator.services()
        .update_service(service=update)
        .result(timeout=120, polling=emulator.POLL)
    )
    second = emulator.revisions().get_revision(name=svc.latest_ready_revision)
    assert second.name != first
    assert second.containers[0].image == f"{pushed['repo']}@{pushed['1.0.1']}"
    tag("stable", "1.0.0", pushed)


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("{repo}:9.9.9", "Image '{repo}:9.9.9' not found."),
        ("{repo}-missing:1.0.0", "Image '{repo}-missing:1.0.0' not found."),
        ("127.0.0.1:{free}/taiea/tai_autonomics:1.0.0", "unreachable"),
    ],
    ids=["unknown-tag", "unknown-repository", "unreachable-registry"],
)
def test_a_bad_image_fails_the_call_and_the_service_keeps_its_traffic(
    emulator, pushed, image, says
):
    from google.api_core import exceptions

    svc = (
        emulator.services()
        .create_service(
            parent=PARENT,
            service_id="keeps",
            service=service_body(f"{pushed['repo']}:1.0.0"),
        )
        .result(timeout=120, polling=emulator.POLL)
    )
    serving = [(t.revision, t.percent) for t in svc.traffic_statuses]
    free = free_port("127.0.0.1")
    bad = image.format(repo=pushed["repo"], free=free)
    update = svc.__class__(name=svc.name, template=service_body(bad).template)
    with pytest.raises(exceptions.BadRequest) as caught:
        emulator.services().update_service(service=update)
    assert says.format(repo=pushed["repo"], free=free) in str(caught.value)
    after = emulator.services().get_service(name=svc.name)
    assert [(t.revision, t.percent) for t in after.traffic_statuses] == serving
    assert get(after.uri)[0] == 200
