"""image.build end to end: the image runs under gVisor from its own root (nothing of the host
mounted) and passes the five smoke tests, then is pushed; an image missing one library of its
closure does not start, names the library, and is not pushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config, receipts
from pipeline.errors import PipelineError
from pipeline.image import oci
from pipeline.image.registry import Registry
from pipeline.phases.image import run_image_build

pytestmark = pytest.mark.usefixtures("gvisor_clean")
REPO = Path(__file__).resolve().parent.parent


def of_kind(path: Path, kind: str) -> list[dict]:
    return [r for r in receipts.iter_records(Path(path)) if r["kind"] == kind]


def test_image_build_proves_the_image_under_gvisor_then_pushes_it(
    reference_tarball, local_registry, tmp_path
):
    target = f"{local_registry.address}/taiea/{{name}}:{{version}}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "image.build",
            "--tarball",
            str(reference_tarball()),
            "--tag",
            target,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIPELINE_RUNS_DIR": str(tmp_path / "runs")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (path,) = (tmp_path / "runs").glob("*-image-*/receipts.jsonl")
    assert receipts.verify_file(path).ok
    (image,) = of_kind(path, "image")
    (pushed,) = of_kind(path, "push")
    (startup,) = of_kind(path, "startup")
    assert startup["runtime"] == "gvisor"
    assert pushed["digest"] == image["digest"]
    assert pushed["ref"] == f"{local_registry.address}/taiea/tai_autonomics:1.0.0"
    assert sum(r["passed"] for r in of_kind(path, "receipt")) == 5
    ref = oci.Reference.parse(pushed["ref"])
    digest, *_ = _client(ref).resolve(ref)
    assert digest == image["digest"]
    assert (Path(image["layout"]) / "index.json").is_file()


def _client(ref: oci.Reference) -> Registry:
    return Registry(ref.registry, None)


def test_an_image_missing_a_library_does_not_start_names_it_and_is_not_pushed(
    reference_tarball, local_registry, tmp_path, monkeypatch
):
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))
    target = f"{local_registry.address}/taiea/broken:1.0.0"
    result = run_image_build(
        reference_tarball(),
        config.load_env("local"),
        tag=target,
        edit_closure=lambda closure: closure.without("libtinfo.so.6"),
    )
    assert not result.verdict.passed
    errors = of_kind(result.receipts, "error")
    assert errors and errors[0]["stage"] == "start"
    tail = " ".join(errors[0]["log_tail"])
    assert "libtinfo.so.6" in tail and "cannot open shared object file" in tail
    skipped = [
        r
        for r in of_kind(result.receipts, "stage")
        if r["stage"] == "push" and r["event"] == "skip"
    ]
    assert skipped, "an image that did not start is not pushed"
    with pytest.raises(PipelineError, match="not found"):
        _client(oci.Reference.parse(target)).resolve(oci.Reference.parse(target))
    assert json.loads(Path(result.receipts).read_text().splitlines()[-1])["kind"] == "seal"


def test_the_emulator_on_gvisor_runs_a_registry_image_as_its_container(
    reference_tarball, local_registry, start_emulator, tmp_path
):
    from fixtures_emulator import PARENT, get
    from fixtures_gvisor import runsc_ids
    from google.cloud import run_v2

    from pipeline import release
    from pipeline.image import build

    extracted = release.extract(reference_tarball(), tmp_path / "release")
    built = build.build(build.Recipe(extracted), tmp_path / "layout", tag="1.0.0")
    ref = oci.Reference.parse(f"{local_registry.address}/taiea/tai_autonomics:1.0.0")
    _client(ref).push(oci.Layout.open(built.layout), "1.0.0", ref)
    before = set(runsc_ids())
    emulator = start_emulator(settings={"runtime": "gvisor"})
    service = run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=str(ref))])
    )
    svc = (
        emulator.services()
        .create_service(parent=PARENT, service_id="contained", service=service)
        .result(timeout=120, polling=emulator.POLL)
    )
    assert get(svc.uri)[0] == 200
    assert set(runsc_ids()) - before, "the instance runs in a gVisor sandbox"
    revision = emulator.revisions().get_revision(name=svc.latest_ready_revision)
    assert revision.containers[0].image == ref.pinned(built.digest)
