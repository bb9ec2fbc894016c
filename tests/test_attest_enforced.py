"""Gate attestations stored in the real registry (Debian's docker-registry: no referrers API, so
the OCI 1.1 tag scheme), made and read through the CLI, and enforced by the emulator as Cloud
Run enforces Binary Authorization: every attack refused with its reason, nothing deployed,
traffic unchanged; a dry-run policy admits and logs."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_emulator import PARENT, get
from fixtures_registry import push_release_image

from pipeline import config, gates, receipts
from pipeline.attest import dsse, keys, ops, policy, store
from pipeline.attest.statement import gate_statement
from pipeline.image import oci, registry

REPO = Path(__file__).resolve().parent.parent
INVOKE = str(Path(sys.executable).parent / "invoke")
ATTESTOR = "projects/taiea/attestors/release-gates"
STRICT = gates.parse_gate("week3", {"startup.seconds": ["value < 0.001"]}, "strict")  # fails


def policy_file(path: Path, public: Path, mode: str) -> Path:
    doc = {
        "globalPolicyEvaluationMode": "ENABLE",
        "defaultAdmissionRule": {
            "evaluationMode": "REQUIRE_ATTESTATION",
            "enforcementMode": mode,
            "requireAttestationsBy": [ATTESTOR],
        },
        "attestors": [
            {
                "name": ATTESTOR,
                "userOwnedGrafeasNote": {
                    "publicKeys": [{"pkixPublicKey": {"publicKeyPem": public.read_text()}}]
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def world(reference_tarball, local_registry, tmp_path_factory) -> dict[str, Any]:
    """Images of 1.0.0 (weeks 3 and 4 passed and attested: the stable one), 1.0.1 (week 3
    passed, nothing attested: the one attacked) and 1.0.2 (weeks 3 and 4 passed, for the CLI);
    a trusted key and a stranger's; an enforcing and a dry-run policy."""
    from pipeline.phases.week3 import run_week3
    from pipeline.phases.week4 import run_week4

    base = tmp_path_factory.mktemp("attest")
    repo = f"{local_registry.address}/taiea/tai_autonomics"
    local = config.load_env("local")
    out: dict[str, Any] = {"repo": repo, "digest": {}, "layout": {}, "runs": {}}
    for version, weeks in (("1.0.0", (3, 4)), ("1.0.1", (3,)), ("1.0.2", (3, 4))):
        tarball = reference_tarball(version=version)
        digest, layout = push_release_image(tarball, f"{repo}:{version}", base / version)
        out["digest"][version], out["layout"][version] = digest, layout
        out["runs"][version] = {}
        if 3 in weeks:
            result = run_week3(tarball, local, duration=2, receipts=base / f"{version}-w3.jsonl")
            assert result.verdict.passed
            out["runs"][version]["week3"] = result.receipts
        if 4 in weeks:
            result = run_week4(tarball, local, receipts=base / f"{version}-w4.jsonl")
            assert result.verdict.passed
            out["runs"][version]["week4"] = result.receipts
    out["trusted"] = keys.keygen(base / "trusted")
    out["stranger"] = keys.keygen(base / "stranger")
    out["policy"] = policy_file(base / "policy.yaml", out["trusted"].public, policy.ENFORCED)
    out["dry_run"] = policy_file(base / "dry.yaml", out["trusted"].public, policy.DRY_RUN)
    for gate in ("week3", "week4"):
        ops.create(
            gate=gate,
            receipts_path=out["runs"]["1.0.0"][gate],
            image=f"{repo}:1.0.0",
            spec=local.gate_spec(gate),
            env_name="local",
            key_path=out["trusted"].private,
        )
    return out


def invoke(*args: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != keys.KEY_ENV}
    if key is not None:
        environ[keys.KEY_ENV] = str(key)
    return subprocess.run(
        [INVOKE, *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120
    )


def attach(world: dict[str, Any], version: str, envelope: bytes) -> None:
    """Store an envelope as a referrer of `version`'s image, whatever it says."""
    ref = oci.Reference.parse(f"{world['repo']}:{version}")
    client = registry.Registry(ref.registry, None)
    _, subject = store.subject_of(client, ref)
    store.attach(client, ref, subject, envelope, {"dev.taiea.gate": "attack"})


def signed_statement(world, version: str, gate: str, about: str, key: Path, spec=None) -> bytes:
    """A statement judged from `version`'s receipts, about `about`'s digest, signed by `key`."""
    spec = spec or config.load_env("local").gate_spec(gate)
    verdict = gates.check(world["runs"][version][gate], spec)
    body = gate_statement(
        image_name=world["repo"], digest=world["digest"][about], spec=spec, verdict=verdict,
        run=verdict.verification.run, env_name="local",
    )  # fmt: skip
    return dsse.sign(body, keys.load_private(key))


# -------------------------------------------------------------------------- the CLI


def test_attest_create_list_and_verify_through_the_cli(world, local_registry):
    image = f"{world['repo']}:1.0.2"
    for gate in ("week3", "week4"):
        done = invoke("attest.create", "--gate", gate, "--receipts",
                      str(world["runs"]["1.0.2"][gate]), "--image", image,
                      key=world["trusted"].private)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"attested {gate} PASS on {world['repo']}@{world['digest']['1.0.2']}" in done.stdout
    listed = invoke("attest.list", image, "--json")
    rows = json.loads(listed.stdout)["attestations"]
    assert sorted((r["gate"], r["verdict"], r["keyid"]) for r in rows) == [
        ("week3", "PASS", world["trusted"].keyid),
        ("week4", "PASS", world["trusted"].keyid),
    ]
    table = invoke("attest.list", image)
    assert "week3" in table.stdout and "✓ PASS" in table.stdout and "run" in table.stdout
    # no referrers API here: the spec's tag scheme holds the index
    ref = oci.Reference.parse(image)
    index = registry.Registry(ref.registry, None).get_manifest(
        ref, store.fallback_tag(world["digest"]["1.0.2"])
    )
    assert index is not None and len(index["manifests"]) == 2
    assert {m["artifactType"] for m in index["manifests"]} == {dsse.MEDIA_TYPE}
    verified = invoke("attest.verify", image, "--policy", str(world["policy"]))
    assert verified.returncode == 0 and "admitted" in verified.stdout, verified.stderr
    rejudged = invoke("attest.verify", image, "--policy", str(world["policy"]),
                      "--receipts", str(world["runs"]["1.0.2"]["week3"]),
                      "--receipts", str(world["runs"]["1.0.2"]["week4"]))  # fmt: skip
    assert rejudged.returncode == 0, rejudged.stdout + rejudged.stderr
    # the private key never leaves its file
    body = "".join(Path(world["trusted"].private).read_text().splitlines()[1:-1])
    storage = b"".join(p.read_bytes() for p in local_registry.storage.rglob("data"))
    assert body.encode() not in storage and body not in table.stdout + listed.stdout


def test_a_forged_receipts_file_does_not_match_its_attestation(world, tmp_path):
    """A forger rewrites a latency and re-chains the whole file (no HMAC key here: the chain
    alone cannot stop that); the attestation's sealed head gives it away."""
    forged = tmp_path / "forged.jsonl"
    prev, lines = "sha256:" + "0" * 64, []
    for record in receipts.iter_records(world["runs"]["1.0.0"]["week3"]):
        record.pop("hash")
        record["prev"] = prev
        if record["kind"] == "request":
            record["latency_ms"] = 1.0
        if record["kind"] == "seal":
            record["head"] = prev
        line, prev = receipts.chain_line(receipts.canonical(record))
        lines.append(line)
    forged.write_bytes(b"".join(lines))
    assert receipts.verify(forged).ok  # a valid chain…
    done = invoke("attest.verify", f"{world['repo']}:1.0.0", "--policy", str(world["policy"]),
                  "--receipts", str(forged))  # fmt: skip
    assert done.returncode == 99, done.stdout + done.stderr
    assert "does not match the attestation's" in done.stdout


def test_attest_create_refuses_the_image_of_another_release(world):
    done = invoke("attest.create", "--gate", "week3", "--receipts",
                  str(world["runs"]["1.0.1"]["week3"]), "--image", f"{world['repo']}:1.0.0",
                  key=world["trusted"].private)  # fmt: skip
    assert done.returncode == 2 and "the image holds release" in done.stderr, done.stderr
    missing = invoke("attest.create", "--gate", "week3", "--receipts",
                     str(world["runs"]["1.0.1"]["week3"]), "--image", f"{world['repo']}:1.0.1")  # fmt: skip
    assert missing.returncode == 2 and "PIPELINE_ATTEST_KEY" in missing.stderr


# -------------------------------------------------------------------------- enforced


def settings_for(service: str, **more: Any) -> Any:
    """cloudrun-local's [cloudrun], pointed at the test emulator's project and region."""
    base = config.load_env("cloudrun-local").cloudrun
    _, project, _, region = PARENT.split("/")
    return base.model_copy(
        update={"project": project, "region": region, "service": service, **more}
    )


def service_body(image: str) -> Any:
    from google.cloud import run_v2

    return run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)])
    )


def test_the_emulator_refuses_every_attack_and_keeps_the_traffic(world, start_emulator):
    from google.api_core import exceptions

    emulator = start_emulator(settings={"binauthz_policy": str(world["policy"])})
    svc = (
        emulator.services()
        .create_service(
            parent=PARENT, service_id="gated", service=service_body(f"{world['repo']}:1.0.0")
        )
        .result(timeout=120, polling=emulator.POLL)
    )  # weeks 3 and 4 attested: admitted
    serving = svc.latest_ready_revision
    assert get(svc.uri)[0] == 200

    def deploy(image: str) -> str:
        update = svc.__class__(name=svc.name, template=service_body(image).template)
        with pytest.raises(exceptions.BadRequest) as refused:  # HTTP 400: FAILED_PRECONDITION
            emulator.services().update_service(service=update).result(
                timeout=120, polling=emulator.POLL
            )
        assert refused.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
        now = emulator.services().get_service(name=svc.name)
        assert now.latest_ready_revision == serving  # nothing deployed
        assert [t.percent for t in now.traffic] == [100] and get(now.uri)[0] == 200
        assert len(list(emulator.revisions().list_revisions(parent=svc.name))) == 1
        return str(refused.value.response.json()["error"]["message"])

    target, trusted, stranger = "1.0.1", world["trusted"].private, world["stranger"].private
    candidate = f"{world['repo']}:{target}"
    said = deploy(candidate)
    assert said.startswith(f"Image '{world['repo']}@{world['digest'][target]}' denied by Binary")
    assert f"no valid attestation by {ATTESTOR} for gate week3" in said
    attacks = [
        ("another digest", signed_statement(world, "1.0.0", "week3", "1.0.0", trusted)),
        ("unknown key", signed_statement(world, target, "week3", target, stranger)),
        ("verdict FAIL", signed_statement(world, target, "week3", target, trusted, spec=STRICT)),
    ]
    for why, envelope in attacks:
        attach(world, target, envelope)
        assert why in deploy(candidate), why
    # the FAIL envelope with its payload edited to PASS: the signature no longer holds
    doc = json.loads(attacks[-1][1])
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"].update(verdict="PASS", passed=True)
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    attach(world, target, json.dumps(doc).encode())
    assert "bad signature" in deploy(candidate)
    # a tag moved from the attested image to this one: the digest is what counts
    ref = oci.Reference.parse(f"{world['repo']}:moved")
    layouts = world["layout"]
    registry.Registry(ref.registry, None).push(oci.Layout.open(layouts["1.0.0"]), "1.0.0", ref)
    registry.Registry(ref.registry, None).push(oci.Layout.open(layouts[target]), target, ref)
    assert world["digest"][target] in deploy(f"{world['repo']}:moved")


def test_a_dry_run_policy_admits_and_logs_what_it_would_deny(world, start_emulator):
    emulator = start_emulator(settings={"binauthz_policy": str(world["dry_run"])})
    svc = (
        emulator.services()
        .create_service(
            parent=PARENT, service_id="dry", service=service_body(f"{world['repo']}:1.0.1")
        )
        .result(timeout=120, polling=emulator.POLL)
    )
    assert get(svc.uri)[0] == 200
    log = emulator.log_tail(200)
    assert f"dry run: image {world['repo']}@{world['digest']['1.0.1']} would be denied" in log


def test_a_bad_policy_file_stops_the_emulator_before_it_listens(tmp_path, world):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaultAdmissionRule: {evaluationMode: REQUIRE_ATTESTATION}\n")
    env = tmp_path / "env.toml"
    env.write_text(
        f'extends = "{REPO / "envs" / "cloudrun-local.toml"}"\n[emulator]\nbinauthz_policy = "{bad}"\n'
    )
    done = subprocess.run(
        [INVOKE, "emulator.start", "--env", str(env), "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PIPELINE_RUNS_DIR": str(tmp_path / "runs")},
    )  # fmt: skip
    assert done.returncode == 2 and "enforcementMode must be" in done.stderr, done.stderr


def test_week3_attests_its_pass_on_the_releases_image_by_itself(
    world, reference_tarball, tmp_path, monkeypatch
):
    """A signing key and `[image] ref` set: the phase attests its own passing verdict."""
    from pipeline.phases.week3 import run_week3

    env_file = tmp_path / "attesting.toml"
    registry_repo = world["repo"].rsplit("/", 1)[0]
    env_file.write_text(
        f'extends = "{REPO / "envs" / "local.toml"}"\n[image]\nref = "{registry_repo}/{{name}}:{{version}}"\n'
    )
    monkeypatch.setenv(keys.KEY_ENV, str(world["trusted"].private))
    result = run_week3(reference_tarball(version="1.0.2"), config.load_env(env_file), duration=2)
    assert result.verdict.passed
    attested = result.facts["attestation"]
    assert attested["passed"] and attested["digest"] == world["digest"]["1.0.2"]
    _, rows = ops.listing(f"{world['repo']}:1.0.2")
    assert result.run_id in {r["run_id"] for r in rows}


def test_a_deploy_asks_the_platform_to_enforce_binary_authorization(world, start_emulator):
    """`[cloudrun] binary_authorization = "default"`: the service is created with
    binaryAuthorization.useDefault (on Google, the platform then enforces the project's
    policy at every deploy), and keeps it across later deploys."""
    from pipeline.cloudrun.client import RunV2, Template

    emulator = start_emulator()
    settings = settings_for("authorized", binary_authorization="default", min_instances=0)
    api = RunV2(settings, endpoint=emulator.url)
    for version in ("1.0.0", "1.0.2"):
        api.deploy(Template.of(settings, f"{world['repo']}:{version}"), None)
        svc = emulator.services().get_service(name=f"{PARENT}/services/authorized")
        assert svc.binary_authorization.use_default is True


def test_a_platform_denial_is_a_failed_deploy_not_a_crash(world, start_emulator):
    """The emulator enforcing, week 5's client deploying an unattested image without its own
    preflight: Cloud Run's FAILED_PRECONDITION (HTTP 400 over REST) is a refused deploy
    (DeployFailed: the step fails, the gate fails, exit 99), never an unexpected error (exit 1)."""
    from pipeline.cloudrun.client import DeployFailed, RunV2, Template

    emulator = start_emulator(settings={"binauthz_policy": str(world["policy"])})
    settings = settings_for("refused")
    api = RunV2(settings, endpoint=emulator.url)
    with pytest.raises(DeployFailed, match="denied by Binary Authorization policy"):
        api.deploy(Template.of(settings, f"{world['repo']}:1.0.1"), None)
    assert api.get_service() is None  # nothing was created
