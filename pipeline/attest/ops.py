"""What the attest tasks and the phases do: attest a gate's verdict on an image, list an image's
attestations, check them against a policy (and, given the receipts, re-judge them).

The image is named by a registry reference; its tag is resolved once, and only the digest is
attested and checked (a tag moved afterwards changes nothing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import gates, receipts
from pipeline.attest import dsse, keys, policy, store
from pipeline.attest.statement import gate_statement
from pipeline.errors import PipelineError
from pipeline.image import oci
from pipeline.image.registry import Registry, credentials_for

RELEASE_SHA = "dev.taiea.release.sha256"


def registry_for(ref: oci.Reference) -> Registry:
    return Registry(ref.registry, credentials_for(ref.registry))


@dataclass
class Created:
    image: str  # repository@digest
    digest: str
    artifact: str  # the referrer manifest's digest
    gate: str
    passed: bool
    keyid: str
    seconds: float  # judging the receipts, statement, signature (no registry I/O)


def create(
    *,
    gate: str,
    receipts_path: Path,
    image: str,
    spec: gates.GateSpec,
    env_name: str,
    key_path: Path,
) -> Created:
    """Judge `gate` over the receipts, attest the verdict (PASS or FAIL: both are evidence) on
    the image's digest, store it next to the image. Refuses an image of another release."""
    ref = oci.Reference.parse(image)
    private = keys.load_private(key_path)
    judged = time.perf_counter()
    verdict = gates.check(receipts_path, spec)
    judging = time.perf_counter() - judged
    verification = verdict.verification
    if verification is None or not verification.ok or not verification.sealed:
        why = verification.describe() if verification else "unreadable"
        raise PipelineError(f"{receipts_path}: cannot attest an unverified run: {why}")
    run = verification.run or {}
    registry = registry_for(ref)
    digest, subject = store.subject_of(registry, ref)
    manifest = registry.get_manifest(ref, digest) or {}
    holds = (manifest.get("annotations") or {}).get(RELEASE_SHA)
    sha = (run.get("release") or {}).get("sha256")
    if holds and sha and holds != sha:
        raise PipelineError(
            f"{image}: the image holds release {holds[:12]}…, the receipts are of {sha[:12]}…: "
            "attest the image built from this tarball"
        )
    began = time.perf_counter()
    body = gate_statement(
        image_name=ref.name, digest=digest, spec=spec, verdict=verdict, run=run, env_name=env_name
    )
    envelope = dsse.sign(body, private)
    seconds = judging + time.perf_counter() - began
    annotations = {
        "dev.taiea.gate": verdict.gate,
        "dev.taiea.verdict": "PASS" if verdict.passed else "FAIL",
        "dev.taiea.keyid": dsse.key_id(private.public_key()),
        "dev.taiea.run": str(run.get("run_id")),
        "org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    artifact = store.attach(registry, ref, subject, envelope, annotations)
    return Created(
        ref.pinned(digest), digest, artifact, verdict.gate, verdict.passed,
        annotations["dev.taiea.keyid"], seconds,
    )  # fmt: skip


def listing(image: str) -> tuple[str, list[dict[str, Any]]]:
    """(digest, rows): each attestation as it states itself (gate, verdict, key id, run, when);
    not verified here (`verify` does that against a policy's keys)."""
    ref = oci.Reference.parse(image)
    registry = registry_for(ref)
    digest, _ = store.subject_of(registry, ref)
    rows = []
    for stored in store.fetch(registry, ref, digest):
        row: dict[str, Any] = {"artifact": stored.digest}
        try:
            opened = dsse.open_envelope(stored.envelope, {})
            predicate = dsse.statement_of(opened).get("predicate") or {}
            row.update(
                gate=predicate.get("gate"),
                verdict=predicate.get("verdict"),
                keyid=(opened.keyids or ("",))[0],
                run_id=(predicate.get("receipts") or {}).get("run_id"),
                issued_at=predicate.get("issuedAt"),
            )
        except PipelineError as exc:
            row.update(problem=str(exc))
        rows.append(row)
    return digest, rows


def envelopes_of(image: str) -> tuple[oci.Reference, str, list[bytes]]:
    """(reference, digest, envelopes): the image's tag resolved now (the digest counts)."""
    ref = oci.Reference.parse(image)
    registry = registry_for(ref)
    digest, _ = store.subject_of(registry, ref)
    return ref, digest, [s.envelope for s in store.fetch(registry, ref, digest)]


def admission(image: str, policy_path: Path) -> policy.Decision:
    """The policy's decision about the image."""
    the_policy = policy.load(policy_path)
    ref, digest, envelopes = envelopes_of(image)
    return policy.evaluate(the_policy, ref.name, digest, envelopes)


@dataclass
class Checked:
    decision: policy.Decision
    rejudged: list[str] = field(default_factory=list)  # problems found re-judging the receipts
    seconds: float = 0.0  # reading the policy and deciding (no registry I/O)

    @property
    def passed(self) -> bool:
        return self.decision.admitted and not self.decision.missing and not self.rejudged


def verify(
    image: str,
    policy_path: Path,
    *,
    receipts_files: Sequence[Path] = (),
    specs: dict[str, gates.GateSpec] | None = None,
) -> Checked:
    """The policy's decision about the image; with receipts files, each accepted attestation
    whose run is among them is re-judged: same sealed head, and the gate passes again."""
    began = time.perf_counter()
    the_policy = policy.load(policy_path)
    loading = time.perf_counter() - began
    ref, digest, envelopes = envelopes_of(image)
    began = time.perf_counter()
    decision = policy.evaluate(the_policy, ref.name, digest, envelopes)
    checked = Checked(decision, seconds=loading + time.perf_counter() - began)
    for path in receipts_files:
        checked.rejudged += rejudge(path, decision, envelopes, the_policy, specs or {})
    return checked


def rejudge(
    path: Path,
    decision: policy.Decision,
    envelopes: list[bytes],
    the_policy: policy.Policy,
    specs: dict[str, gates.GateSpec],
) -> list[str]:
    """Problems found checking the attestations about the run in `path` against the file."""
    verification = receipts.verify(path)
    if not verification.ok or not verification.sealed:
        return [f"{path}: {verification.describe()}"]
    run_id = (verification.run or {}).get("run_id")
    trusted = {k: v for a in the_policy.required for k, v in a.keys.items()}
    problems, seen = [], False
    for data in envelopes:
        try:
            statement = dsse.statement_of(dsse.open_envelope(data, trusted))
        except PipelineError:
            continue
        predicate = statement.get("predicate") or {}
        stated = predicate.get("receipts") or {}
        if stated.get("run_id") != run_id:
            continue
        seen = True
        if stated.get("head") != verification.head:
            problems.append(
                f"{path}: head {verification.head} does not match the attestation's "
                f"{stated.get('head')} (gate {predicate.get('gate')}, run {run_id})"
            )
            continue
        spec = specs.get(str(predicate.get("gate")))
        if spec is not None:
            again = gates.check(path, spec)
            if again.passed != (predicate.get("verdict") == "PASS"):
                problems.append(
                    f"{path}: judged again, gate {predicate.get('gate')} is "
                    f"{'PASS' if again.passed else 'FAIL'}, the attestation says {predicate.get('verdict')}"
                )
    if not seen:
        problems.append(f"{path}: no attestation on {decision.digest[:19]}… names run {run_id}")
    return problems
